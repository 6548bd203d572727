"""Resilience on both sides of a service: the client's edge pipeline and the door's guard.

Outbound, :class:`ResilienceInterceptor` is one interceptor of the client chain. Per call it
looks up the edge's live :class:`~garrison.resilience.Pipeline` (one dict lookup), and runs the
request through it: each attempt picks an instance anew, carries ``garrison-attempt`` and the
criticality, gets its budget from the pipeline (the transport enforces it: no extra timer), and
reports its outcome to the edge's outlier detector, which hides ejected instances from the
balancer (quarantine).

Inbound, :class:`InboundGuard` is what the service middleware asks before running a handler:
the door's limiter / bulkhead / rate limit (``[resilience.inbound.NAME]``) admit the request
by its criticality and remaining deadline, or refuse it with 503 + ``garrison-no-retry``
before any work is done (shed at the door).

The signals that cross services live here too: ``garrison-criticality`` (how much a request
matters, inherited by every call made while handling it) and whether this layer may retry
(``garrison-attempt`` / ``garrison-no-retry`` on the inbound request: retries happen at one
layer only).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any

from garrison.core import DeadlineExceeded, TransportError
from garrison.resilience import (
    ATTEMPT_HEADER,
    NO_RETRY_HEADER,
    Criticality,
    Outcome,
    OutlierConfig,
    OutlierDetector,
    Pipeline,
    PolicyRegistry,
    Rejected,
    Token,
)

from ._balancer import Balancer, Instance
from ._client import CallNext, ClientRequest, ClientResponse

__all__ = [
    "CRITICALITY_HEADER",
    "InboundGuard",
    "InboundSignals",
    "ResilienceInterceptor",
    "criticality",
    "current_criticality",
    "inbound_signals",
]

CRITICALITY_HEADER = "garrison-criticality"
_BY_NAME = {c.name.lower(): c for c in Criticality}


class InboundSignals:
    """What the inbound request said about retries and criticality."""

    __slots__ = ("criticality", "may_retry")

    def __init__(self, criticality: Criticality, may_retry: bool) -> None:
        self.criticality = criticality
        self.may_retry = may_retry


_DEFAULT = InboundSignals(Criticality.DEFAULT, True)
_signals: contextvars.ContextVar[InboundSignals] = contextvars.ContextVar(
    "garrison_signals", default=_DEFAULT
)


def inbound_signals(headers: Mapping[str, str]) -> InboundSignals:
    """Read the signals of an inbound request (lowercase header names).

    An unknown criticality is read as ``default`` rather than refused: a newer caller may know
    levels this service does not.
    """
    crit = _BY_NAME.get(headers.get(CRITICALITY_HEADER, ""), Criticality.DEFAULT)
    attempt = headers.get(ATTEMPT_HEADER)
    may = headers.get(NO_RETRY_HEADER) != "1" and (attempt is None or attempt == "1")
    if crit is Criticality.DEFAULT and may:
        return _DEFAULT
    return InboundSignals(crit, may)


def set_signals(signals: InboundSignals) -> contextvars.Token[InboundSignals]:
    """Make ``signals`` those of the request being handled (the middleware does this)."""
    return _signals.set(signals)


def reset_signals(token: contextvars.Token[InboundSignals]) -> None:
    """Undo :func:`set_signals`."""
    _signals.reset(token)


class _Answer:
    """Per inbound request: did this layer retry a dependency and give up? A mutable holder
    (not a bool in the context variable) so that calls made in tasks the handler spawns
    (``asyncio.gather`` copies the context) still mark the request they belong to."""

    __slots__ = ("gave_up",)

    def __init__(self) -> None:
        self.gave_up = False


_answer: contextvars.ContextVar[_Answer | None] = contextvars.ContextVar(
    "garrison_answer", default=None
)


def begin_answer() -> contextvars.Token[_Answer | None]:
    """Start the answer of a request (the middleware does this): no retry layer gave up yet."""
    return _answer.set(_Answer())


def end_answer(token: contextvars.Token[_Answer | None]) -> None:
    """Undo :func:`begin_answer`."""
    _answer.reset(token)


def answer_forbids_retry() -> bool:
    """Whether this layer retried a call of this request and gave up: a 5xx answer then
    carries ``garrison-no-retry`` so that the caller's layer does not retry it again."""
    answer = _answer.get()
    return answer is not None and answer.gave_up


def _gave_up() -> None:
    answer = _answer.get()
    if answer is not None:
        answer.gave_up = True


def current_criticality() -> Criticality:
    """The criticality of the request being handled (``DEFAULT`` outside requests)."""
    return _signals.get().criticality


@contextlib.contextmanager
def criticality(level: Criticality) -> Iterator[None]:
    """Make calls in this block carry ``level`` (e.g. mark background work sheddable)."""
    token = _signals.set(InboundSignals(level, _signals.get().may_retry))
    try:
        yield
    finally:
        _signals.reset(token)


def _classify(response: ClientResponse) -> Outcome:
    status = response.status
    if status < 400:
        return _OK
    headers = response.headers
    return Outcome(status, headers.get("retry-after"), headers.get(NO_RETRY_HEADER) == "1")


_OK = Outcome()


class ResilienceInterceptor:
    """Runs every call of one client (caller → callee) through the edge's live pipeline."""

    def __init__(
        self, registry: PolicyRegistry, caller: str, callee: str, balancer: Balancer
    ) -> None:
        self.registry = registry
        self.caller = caller
        self.callee = callee
        self.balancer = balancer
        self.outlier: OutlierDetector[Instance] | None = None
        self._outlier_config: OutlierConfig | None = None
        self.listeners: list[Any] = []

    def _detector(self, pipeline: Pipeline) -> OutlierDetector[Instance] | None:
        # The edge's pipeline decides whether quarantine is on; a replacement that changes the
        # outlier policy gets a fresh detector (and the balancer's filter follows).
        cfg = pipeline.config.outlier
        if cfg is not self._outlier_config:
            self._outlier_config = cfg
            if cfg is None:
                self.outlier = None
                self.balancer.filter = None
            else:
                det: OutlierDetector[Instance] = OutlierDetector(
                    cfg, name=pipeline.name, listeners=self.listeners
                )
                det.update_pool(self.balancer.instances)
                self.outlier = det
                self.balancer.filter = det.available
        return self.outlier

    async def __call__(self, request: ClientRequest, call_next: CallNext) -> ClientResponse:
        """Send ``request`` through the pipeline of its edge and route."""
        registry = self.registry
        pipeline = registry.pipeline(self.caller, self.callee, request.route)
        edge = (
            pipeline
            if request.route is None
            else registry.pipeline(self.caller, self.callee)  # outlier policy is per edge
        )
        detector = self._detector(edge)
        signals = _signals.get()
        crit = signals.criticality
        may_retry = signals.may_retry
        headers = request.headers
        if crit is not Criticality.DEFAULT:
            headers[CRITICALITY_HEADER] = crit.name.lower()
        if not may_retry:
            headers[NO_RETRY_HEADER] = "1"  # this layer does not retry, nor may those below
        base_timeout = request.timeout

        async def attempt(timeout: float | None) -> ClientResponse:
            n = request.attempt = request.extensions.get("attempts", 0) + 1
            request.extensions["attempts"] = n
            if n > 1:
                headers[ATTEMPT_HEADER] = str(n)
                request.instance = None
            request.timeout = base_timeout if timeout is None else min(base_timeout, timeout)
            if detector is not None:
                detector.tick()
            try:
                response = await call_next(request)
            except (TransportError, DeadlineExceeded, TimeoutError):
                if detector is not None and request.instance is not None:
                    detector.on_result(request.instance, False, local_origin=True)
                raise
            if detector is not None and request.instance is not None:
                status = response.status
                detector.on_result(request.instance, status < 500, status=status)
            return response

        # This layer owns the retries of the call when it may retry and has a retry policy;
        # if the call still fails, it gave up, and the layers above must not retry it again.
        owns_retries = may_retry and pipeline.retrier is not None
        try:
            response = await pipeline.execute(
                attempt, criticality=crit, may_retry=may_retry, classify=_classify
            )
        except Exception:
            if owns_retries:
                _gave_up()
            raise
        if owns_retries and response.status >= 500:
            _gave_up()
        return response


class InboundGuard:
    """Admission at a service's door: the ``[resilience.inbound.NAME]`` policies.

    :meth:`admit` returns a ticket to hand back to :meth:`release` with how the request went,
    or raises :class:`~garrison.resilience.Rejected` (answered 503 + ``garrison-no-retry``).
    """

    def __init__(self, registry: PolicyRegistry, service: str) -> None:
        self.registry = registry
        self.service = service

    def active(self) -> bool:
        """Whether the door has any policy at all (if not, the middleware skips the guard)."""
        cfg = self.registry.inbound(self.service).config
        return any((cfg.limiter, cfg.bulkhead, cfg.rate_limit))

    def admit(
        self, criticality: Criticality, remaining: float | None
    ) -> tuple[Pipeline, Token | None, bool]:
        """Admit a request, or raise Rejected; the door's bulkhead never queues (it sheds)."""
        p = self.registry.inbound(self.service)
        rate = p.rate
        if rate is not None and not rate.try_acquire():
            p._refuse("rate_limit", Rejected("rate_limit", "rate exceeded", retry_after=1.0))
        in_bulkhead = False
        if p.bulkhead is not None:
            if p.bulkhead.core.try_acquire():
                in_bulkhead = True
            else:
                p._refuse("bulkhead", Rejected("bulkhead", "full"))
        token = None
        if p.limiter is not None:
            try:
                token = p.limiter.acquire(criticality, remaining)
            except Rejected as rej:
                if in_bulkhead:
                    p.bulkhead.release()  # type: ignore[union-attr]
                p._refuse("limiter", rej)
        return p, token, in_bulkhead

    @staticmethod
    def release(ticket: tuple[Pipeline, Token | None, bool], status: int, timed_out: bool) -> None:
        """Hand back what :meth:`admit` gave, saying how the request went."""
        p, token, in_bulkhead = ticket
        if in_bulkhead:
            p.bulkhead.release()  # type: ignore[union-attr]
        if token is not None:
            if timed_out or status in (429, 503):
                token.on_dropped()
            elif status >= 500 or status == 0:
                token.on_ignore()
            else:
                token.on_success()
