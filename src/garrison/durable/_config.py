"""Settings of the durable engine: limits and worker behaviour, with documented defaults."""

from __future__ import annotations

import msgspec

from garrison.resilience import RetryPolicy

__all__ = ["DEFAULT_ACTIVITY_RETRY", "EngineConfig", "Limits"]

DEFAULT_ACTIVITY_RETRY = RetryPolicy(
    max_attempts=3, initial_backoff=0.1, max_backoff=10.0, retry_on=(Exception,)
)
"""Activities retry any ``Exception`` (but never a :class:`~garrison.core.UsageError`, which
says the input is wrong) up to 3 attempts with jittered exponential backoff."""


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Hard limits that keep one workflow from exhausting the store or the worker."""

    max_payload_bytes: int = 2 * 1024 * 1024
    """Largest serialized argument list, result or event payload."""
    max_steps: int = 20_000
    """Most steps one run may issue; a longer-lived workflow continues as new."""

    def __post_init__(self) -> None:
        from garrison.core import ConfigError

        for key in ("max_payload_bytes", "max_steps"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"expected an integer >= 1, got {value!r}", key=key)


class EngineConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How an :class:`Engine` runs workflows in this process."""

    worker_id: str | None = None
    """This worker's name in leases. ``None``: a fresh id per process. A process restarted with
    the same ``worker_id`` takes its previous incarnation's leases back at once instead of
    waiting for them to expire, so give one only to a single process at a time."""
    lease_seconds: float = 30.0
    """How long a claim on a workflow lasts without renewal (renewed every third of it)."""
    poll_interval: float = 1.0
    """Longest pause between looks at the store for due timers and work from elsewhere."""
    hot_horizon: float = 2.0
    """A waiting workflow whose next timer is nearer than this stays in memory; one that waits
    longer is unloaded (its coroutine dropped, replayed on wake-up)."""
    idle_unload: float = 5.0
    """A workflow waiting only for events or children stays in memory this long, then unloads."""
    max_active: int = 10_000
    """Most workflows held in memory; starts beyond it wait in the store for a free slot."""
    blocked_retry: float = 300.0
    """A workflow blocked by non-determinism is retried after this many seconds (a deploy of
    fixed code unblocks it)."""
    limits: Limits = Limits()
    """Payload and history limits."""

    def __post_init__(self) -> None:
        from garrison.core import ConfigError

        seconds = ("lease_seconds", "poll_interval", "hot_horizon", "idle_unload", "blocked_retry")
        for key in seconds:
            value = getattr(self, key)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"expected seconds > 0, got {value!r}", key=key)
        if not isinstance(self.max_active, int) or self.max_active < 1:
            got = self.max_active
            raise ConfigError(f"expected an integer >= 1, got {got!r}", key="max_active")
