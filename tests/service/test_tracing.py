"""W3C trace context: strict parsing, child spans, and the current span."""

from __future__ import annotations

import os
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from garrison.service import TraceContext, current_trace, parse_traceparent
from garrison.service._tracing import (
    child_traceparent,
    continue_trace,
    reset_current_trace,
    set_current_trace,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


def test_a_valid_traceparent_is_parsed() -> None:
    ctx = parse_traceparent(VALID, "vendor=opaque")
    assert ctx == TraceContext(TRACE, SPAN, 1, None, "vendor=opaque")
    assert ctx.traceparent == VALID


def test_flags_are_kept() -> None:
    ctx = parse_traceparent(f"00-{TRACE}-{SPAN}-00")
    assert ctx is not None
    assert ctx.flags == 0
    assert ctx.child().traceparent.endswith("-00")


def test_surrounding_whitespace_is_ignored() -> None:
    assert parse_traceparent(f"  {VALID} ") is not None


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        VALID.upper(),
        f"00-{TRACE.upper()}-{SPAN}-01",
        f"00-{TRACE}-{SPAN.upper()}-01",
        f"00-{'0' * 32}-{SPAN}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"ff-{TRACE}-{SPAN}-01",
        f"00-{TRACE[:-1]}-{SPAN}-01",
        f"00-{TRACE}0-{SPAN}-01",
        f"00-{TRACE}-{SPAN[:-1]}-01",
        f"00-{TRACE}-{SPAN}-1",
        f"0-{TRACE}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}-01-extra",
        f"00-{TRACE}-{SPAN}",
        f"00_{TRACE}_{SPAN}_01",
        f"00-{TRACE[:-1]}g-{SPAN}-01",
    ],
)
def test_an_invalid_traceparent_is_rejected(value: str | None) -> None:
    assert parse_traceparent(value) is None


def test_a_future_version_may_carry_more_fields() -> None:
    ctx = parse_traceparent(f"cc-{TRACE}-{SPAN}-01-what-the-future-holds")
    assert ctx is not None
    assert ctx.trace_id == TRACE
    assert ctx.traceparent.startswith("00-")  # we answer in the version we speak


def test_tracestate_is_bounded_by_whole_members() -> None:
    members = [f"k{i}={'v' * 40}" for i in range(20)]  # 20 x 43 characters, plus commas
    ctx = parse_traceparent(VALID, ",".join(members))
    assert ctx is not None
    assert len(ctx.tracestate) <= 512
    assert ctx.tracestate == ",".join(members[: len(ctx.tracestate.split(","))])
    ctx = parse_traceparent(VALID, "k=" + "v" * 2000)  # one member too long to keep
    assert ctx is not None
    assert ctx.tracestate == ""


def test_a_child_keeps_the_trace_and_points_at_its_parent() -> None:
    parent = TraceContext(TRACE, SPAN, 1, None, "k=v")
    child = parent.child()
    assert child.trace_id == TRACE
    assert child.parent_id == SPAN
    assert child.span_id != SPAN
    assert (child.flags, child.tracestate) == (1, "k=v")
    assert parse_traceparent(child.traceparent) is not None


def test_a_new_trace_is_valid_and_unique() -> None:
    spans = [TraceContext.new() for _ in range(50)]
    assert len({s.trace_id for s in spans}) == 50
    for s in spans:
        assert s.parent_id is None
        assert parse_traceparent(s.traceparent) == TraceContext(s.trace_id, s.span_id, s.flags)


def test_the_current_span_is_set_and_restored() -> None:
    assert current_trace() is None
    ctx = TraceContext.new()
    token = set_current_trace(ctx)
    assert current_trace() is ctx
    reset_current_trace(token)
    assert current_trace() is None


@given(
    trace=st.integers(min_value=1, max_value=2**128 - 1),
    span=st.integers(min_value=1, max_value=2**64 - 1),
    flags=st.integers(min_value=0, max_value=255),
    state=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789=,", max_size=40),
)
def test_round_trip(trace: int, span: int, flags: int, state: str) -> None:
    ctx = TraceContext(f"{trace:032x}", f"{span:016x}", flags, None, state)
    assert parse_traceparent(ctx.traceparent, state) == ctx


@given(st.text(max_size=80))
def test_parsing_never_raises_and_only_accepts_valid_ids(value: str) -> None:
    ctx = parse_traceparent(value)
    if ctx is not None:
        assert len(ctx.trace_id) == 32
        assert ctx.trace_id != "0" * 32
        assert len(ctx.span_id) == 16


@pytest.mark.parametrize(
    ("traceparent", "tracestate"),
    [(VALID, "k=v"), (f"  {VALID} ", None), ("garbage", "k=v"), (None, None), ("", "k=v")],
)
def test_continue_trace_is_parse_then_child(
    traceparent: str | None, tracestate: str | None
) -> None:
    span = continue_trace(traceparent, tracestate)
    parent = parse_traceparent(traceparent, tracestate)
    if parent is None:  # a new trace's root
        assert span.parent_id is None
        assert (span.flags, span.tracestate) == (1, "")
    else:
        expected = parent.child()
        assert (span.trace_id, span.parent_id, span.flags, span.tracestate) == (
            expected.trace_id,
            expected.parent_id,
            expected.flags,
            expected.tracestate,
        )
    assert parse_traceparent(span.traceparent) is not None


def test_child_traceparent_is_a_child_span_header() -> None:
    parent = TraceContext(TRACE, SPAN, 0, None, "k=v")
    header = child_traceparent(parent)
    child = parse_traceparent(header)
    assert child is not None
    assert (child.trace_id, child.flags) == (TRACE, 0)
    assert child.span_id != SPAN
    root = parse_traceparent(child_traceparent(None))
    assert root is not None
    assert root.flags == 1


def test_child_span_ids_are_unique() -> None:
    parent = TraceContext(TRACE, SPAN)
    ids = {child_traceparent(parent) for _ in range(10_000)}
    ids |= {parent.child().traceparent for _ in range(10_000)}
    assert len(ids) == 20_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_does_not_repeat_the_parents_ids() -> None:
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, on 3.12+
        pid = os.fork()
    if pid == 0:  # the child: its next id, then out without running any cleanup
        os.write(write, TraceContext.new().span_id.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child_id = os.read(read, 64).decode()
    os.close(read)
    assert len(child_id) == 16
    assert child_id != TraceContext.new().span_id
