"""W3C Trace Context (``traceparent`` / ``tracestate``) carried on every hop.

Each inbound request continues the caller's trace (or starts one) with a new span id; each
outbound call is a child span of the current one. The context lives in a context variable so
handler code never passes it around. Exporting spans is OpenTelemetry's job (``garrison[otel]``);
this module only keeps the ids flowing so logs, metrics and traces join up.

Both ends of a call are hot paths, so each has a fused form: :func:`continue_trace` parses the
caller's header and makes the server span in one step, and :func:`child_traceparent` writes the
header of an outbound child span without building a :class:`TraceContext` for it.
"""

from __future__ import annotations

import contextvars
import os
import random
import re
from dataclasses import dataclass

__all__ = [
    "TraceContext",
    "child_traceparent",
    "continue_trace",
    "current_trace",
    "parse_traceparent",
]

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

# version-traceid-parentid-flags; lowercase hex only, as the spec requires.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_FLAGS = {i: f"{i:02x}" for i in range(256)}
# Ids need uniqueness, not secrecy: a PRNG, reseeded in a forked child so that two processes
# never replay the same sequence of ids.
_rand = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_rand.seed)


def _span_id() -> str:
    span = _rand.getrandbits(64).to_bytes(8).hex()
    return span if span != _ZERO_SPAN else _span_id()  # all zeros is invalid


def _flags(flags: int) -> str:
    return _FLAGS.get(flags) or f"{flags:02x}"


def _trace_id() -> str:
    trace = _rand.getrandbits(128).to_bytes(16).hex()
    return trace if trace != _ZERO_TRACE else _trace_id()


@dataclass(frozen=True, slots=True)
class TraceContext:
    """One span's position in a distributed trace."""

    trace_id: str
    """32 lowercase hex digits shared by every span of the trace."""
    span_id: str
    """16 lowercase hex digits naming this span."""
    flags: int = 1
    """Trace flags; bit 0 = sampled."""
    parent_id: str | None = None
    """The span this one continues from, if any."""
    tracestate: str = ""
    """Vendor state passed through unchanged."""

    @classmethod
    def new(cls) -> TraceContext:
        """Start a new trace."""
        return cls(_trace_id(), _span_id())

    def child(self) -> TraceContext:
        """A new span in the same trace, whose parent is this span."""
        return TraceContext(self.trace_id, _span_id(), self.flags, self.span_id, self.tracestate)

    @property
    def traceparent(self) -> str:
        """The ``traceparent`` header value of this span."""
        return f"00-{self.trace_id}-{self.span_id}-{_flags(self.flags)}"


def _parse(value: str) -> tuple[str, str, int] | None:
    """(trace id, span id, flags) of a valid ``traceparent``, else None."""
    m = _TRACEPARENT.fullmatch(value)
    if m is None:
        m = _TRACEPARENT.fullmatch(value.strip())
        if m is None:
            return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE:
        return None
    if span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id, int(flags, 16)


def _bounded(tracestate: str | None) -> str:
    state = tracestate or ""
    if len(state) > 512:  # the spec's limit; drop whole list members, never cut one in half
        state = state[:513].rpartition(",")[0].rstrip(" \t,")
    return state


def parse_traceparent(value: str | None, tracestate: str | None = None) -> TraceContext | None:
    """Parse a ``traceparent`` header; ``None`` when absent or invalid (then a new trace starts)."""
    parts = _parse(value) if value else None
    if parts is None:
        return None
    trace_id, span_id, flags = parts
    return TraceContext(trace_id, span_id, flags, None, _bounded(tracestate))


def continue_trace(traceparent: str | None, tracestate: str | None = None) -> TraceContext:
    """The span of an inbound request: a child of the caller's span, or a new trace's root.

    The same as ``parse_traceparent(...).child()`` (or :meth:`TraceContext.new` when the header
    is absent or invalid), in one step.
    """
    parts = _parse(traceparent) if traceparent else None
    if parts is None:
        return TraceContext(_trace_id(), _span_id())
    trace_id, span_id, flags = parts
    return TraceContext(trace_id, _span_id(), flags, span_id, _bounded(tracestate))


def child_traceparent(parent: TraceContext | None) -> str:
    """The ``traceparent`` of a new child span of ``parent`` (of a new trace when None).

    What ``parent.child().traceparent`` gives, without building the child.
    """
    if parent is None:
        return f"00-{_trace_id()}-{_span_id()}-01"
    return f"00-{parent.trace_id}-{_span_id()}-{_flags(parent.flags)}"


_current: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar(
    "garrison_trace", default=None
)


def current_trace() -> TraceContext | None:
    """The span of the request being handled, if any."""
    return _current.get()


def set_current_trace(ctx: TraceContext | None) -> contextvars.Token[TraceContext | None]:
    """Make ``ctx`` the current span; returns the token to reset it."""
    return _current.set(ctx)


def reset_current_trace(token: contextvars.Token[TraceContext | None]) -> None:
    """Restore the span that was current before :func:`set_current_trace`."""
    _current.reset(token)
