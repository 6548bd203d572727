"""Shared vocabulary of the resilience policies: criticality, rejections and state-change events.

Every policy keeps its decision logic in a sans-I/O class: synchronous methods, O(1) per call,
time read from an injected :class:`~garrison.core.Clock`, no asyncio inside. The async pipeline
wraps these cores; the cores never await.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from garrison.core import ServiceUnavailable

__all__ = [
    "Criticality",
    "Listener",
    "PolicyEvent",
    "Rejected",
    "emit",
]


class Criticality(enum.IntEnum):
    """How much a request matters when capacity is short; lower values are shed first.

    Named after Google's criticality levels (SRE book, "Handling Overload").
    """

    SHEDDABLE = 0
    """Batch / prefetch work: dropped first."""
    DEFAULT = 1
    """Ordinary traffic."""
    CRITICAL = 2
    """User-visible work that must get through if anything does."""
    CRITICAL_PLUS = 3
    """The most important traffic (e.g. control-plane commands): shed last."""


class Rejected(ServiceUnavailable):
    """A policy refused a call before it started (open breaker, full bulkhead, shed, throttled).

    ``policy`` names the policy type (``breaker``, ``bulkhead``, ``limiter`` ...), ``reason`` says
    why in a word or two, and ``retry_after`` (seconds) is a hint when one is known. A rejection
    made because the callee is overloaded is not retryable at another layer (``retryable=False``),
    so that a chain of services does not multiply load.
    """

    def __init__(
        self,
        policy: str,
        reason: str,
        *,
        retry_after: float | None = None,
        retryable: bool = False,
    ) -> None:
        self.policy = policy
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"{policy} rejected the call: {reason}", retryable=retryable)


@dataclass(frozen=True, slots=True)
class PolicyEvent:
    """A state change of a policy (breaker opened, limit changed, instance ejected ...)."""

    policy: str
    """The policy type, e.g. ``breaker``."""
    name: str
    """The instance's name, usually the edge (``caller->callee``)."""
    kind: str
    """What happened, e.g. ``state_change``, ``limit_change``, ``ejected``."""
    at: float
    """When, on the policy's clock (monotonic seconds)."""
    data: dict[str, Any] = field(default_factory=dict)
    """Details: e.g. ``{"from": "closed", "to": "open", "failure_rate": 0.62}``."""


Listener = Callable[[PolicyEvent], None]
"""A callable receiving :class:`PolicyEvent`; must not block (it runs inside the decision)."""


def emit(listeners: list[Listener], event: PolicyEvent) -> None:
    """Deliver ``event`` to every listener; a failing listener never breaks the policy."""
    for listener in listeners:
        try:
            listener(event)
        except Exception:  # a metrics sink must never take the call path down with it
            import logging

            logging.getLogger("garrison.resilience").exception("policy listener failed")
