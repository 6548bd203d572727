"""W3C Trace Context (``traceparent`` / ``tracestate``) carried on every hop.

Each inbound request continues the caller's trace (or starts one) with a new span id; each
outbound call is a child span of the current one. The context lives in a context variable so
handler code never passes it around. Exporting spans is OpenTelemetry's job (``garrison[otel]``);
this module only keeps the ids flowing so logs, metrics and traces join up.
"""

from __future__ import annotations

import contextvars
import random
import re
from dataclasses import dataclass

__all__ = ["TraceContext", "current_trace", "parse_traceparent"]

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

# version-traceid-parentid-flags; lowercase hex only, as the spec requires.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_rand = random.Random()  # ids need uniqueness, not secrecy


def _span_id() -> str:
    return f"{_rand.getrandbits(64) or 1:016x}"


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
        return cls(f"{_rand.getrandbits(128) or 1:032x}", _span_id())

    def child(self) -> TraceContext:
        """A new span in the same trace, whose parent is this span."""
        return TraceContext(self.trace_id, _span_id(), self.flags, self.span_id, self.tracestate)

    @property
    def traceparent(self) -> str:
        """The ``traceparent`` header value of this span."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"


def parse_traceparent(value: str | None, tracestate: str | None = None) -> TraceContext | None:
    """Parse a ``traceparent`` header; ``None`` when absent or invalid (then a new trace starts)."""
    if not value:
        return None
    m = _TRACEPARENT.match(value.strip())
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE:
        return None
    if span_id == _ZERO_SPAN:
        return None
    state = tracestate or ""
    if len(state) > 512:  # the spec's limit; drop whole list members, never cut one in half
        state = state[:513].rpartition(",")[0].rstrip(" \t,")
    return TraceContext(trace_id, span_id, int(flags, 16), None, state)


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
