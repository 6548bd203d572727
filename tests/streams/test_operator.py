"""The window operator: revisions, lateness, sessions, callbacks, snapshots and closing cost."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.core import InvalidInput, UsageError
from garrison.streams import (
    Aggregation,
    BoundedOutOfOrderness,
    Hopping,
    Sample,
    Session,
    StatusCode,
    TooLate,
    Tumbling,
    Window,
    WindowClosed,
    WindowOperator,
    WindowOutput,
    WindowResult,
    WindowRetracted,
)


def results(out: list[WindowOutput]) -> list[tuple[str, int, int, int, float | None]]:
    """(key, start, end, revision, count) of each result."""
    return [
        (o.key, o.window.start, o.window.end, o.revision, o.values["count"].value)
        for o in out
        if isinstance(o, WindowResult)
    ]


def test_a_late_event_revises_the_result_instead_of_vanishing() -> None:
    op = WindowOperator(Tumbling(10), Aggregation(("count", "sum")), allowed_lateness=10)
    op.feed("a", Sample(1, 1.0))
    op.feed("a", Sample(15, 2.0))  # watermark 15: [0, 10) fires
    assert results(op.drain()) == [("a", 0, 10, 0, 1.0)]
    op.feed("a", Sample(5, 4.0))  # late but within the lateness: revision 1 at once
    (revised,) = op.drain()
    assert isinstance(revised, WindowResult)
    assert (revised.revision, revised.values["sum"].value) == (1, 5.0)
    op.feed("a", Sample(25, 0.0))  # watermark 25: [0, 10) closes, [10, 20) fires
    out = op.drain()
    assert WindowClosed("a", Window(0, 10), 1) in out
    assert results(out) == [("a", 10, 20, 0, 1.0)]
    assert op.stats.revisions == 1


def test_an_event_after_the_lateness_is_reported_too_late_with_the_reason() -> None:
    op = WindowOperator(Tumbling(10), allowed_lateness=5)
    op.feed("a", Sample(30, 1.0))
    op.feed("a", Sample(3, 9.0))
    late = [o for o in op.drain() if isinstance(o, TooLate)]
    assert len(late) == 1
    assert late[0].sample == Sample(3, 9.0)
    assert late[0].watermark == 30
    assert "window [0, 10) closed at 15" in late[0].reason
    assert op.stats.too_late == 1


def test_the_window_closed_callback_sees_every_window_once() -> None:
    closed: list[WindowClosed] = []
    op = WindowOperator(Hopping(20, 10), on_close=closed.append)
    for ts in (0, 5, 12, 31):
        op.feed("k", Sample(ts, 1.0))
    op.flush()
    assert [c.window for c in closed] == [
        Window(-10, 10),
        Window(0, 20),
        Window(10, 30),
        Window(20, 40),
        Window(30, 50),
    ]
    assert closed == [o for o in op.drain() if isinstance(o, WindowClosed)]


def test_flush_marks_unfinished_windows_partial() -> None:
    op = WindowOperator(Tumbling(10))
    op.feed("a", Sample(0, 1.0))
    op.feed("a", Sample(12, 1.0))
    op.flush()
    out = [o for o in op.drain() if isinstance(o, WindowResult)]
    assert [StatusCode.is_partial(o.status) for o in out] == [False, True]


def test_a_late_event_bridging_two_sessions_retracts_them_and_emits_the_merge() -> None:
    op = WindowOperator(Session(10), Aggregation(("count",)), allowed_lateness=100)
    for ts in (0, 5, 30, 60):
        op.feed("a", Sample(ts, 1.0))
    assert results(op.drain()) == [("a", 0, 15, 0, 2.0), ("a", 30, 40, 0, 1.0)]
    op.feed("a", Sample(22, 1.0))  # 15 <= 22 < 30: joins [30, 40) only (gap 10 from 5? no)
    out = op.drain()
    assert out[0] == WindowRetracted("a", Window(30, 40), 0)
    assert results(out[1:]) == [("a", 22, 40, 1, 2.0)]
    op.feed("a", Sample(14, 1.0))  # bridges [0, 15) and [22, 40)
    out = op.drain()
    assert [o for o in out if isinstance(o, WindowRetracted)] == [
        WindowRetracted("a", Window(0, 15), 0),
        WindowRetracted("a", Window(22, 40), 1),
    ]
    assert results(out) == [("a", 0, 40, 2, 5.0)]


def test_the_watermark_can_be_driven_from_outside() -> None:
    op = WindowOperator(Tumbling(10), watermark=BoundedOutOfOrderness(1_000))
    op.feed("a", Sample(3, 1.0))
    assert op.drain() == []
    op.advance_watermark(10)
    assert results(op.drain()) == [("a", 0, 10, 0, 1.0)]
    assert op.watermark == 10


def test_outputs_travel_as_tagged_msgpack() -> None:
    op = WindowOperator(Tumbling(10), Aggregation(("mean", "percent_good")))
    op.feed("a", Sample(1, 2.0, StatusCode.UNCERTAIN_LAST_USABLE_VALUE, u=0.1, flags=1))
    op.flush()
    out = op.drain()
    wire = msgspec.msgpack.encode(out)
    assert msgspec.msgpack.decode(wire, type=list[WindowOutput]) == out


@pytest.mark.parametrize("windows", [Tumbling(10), Hopping(30, 10), Session(7)])
@settings(max_examples=40, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.builds(
                Sample,
                ts=st.integers(0, 80),
                value=st.integers(0, 9).map(float),
                status=st.sampled_from([StatusCode.GOOD, StatusCode.BAD_SENSOR_FAILURE]),
            ),
        ),
        max_size=30,
    ),
    cut=st.integers(0, 30),
)
def test_snapshot_and_restore_continue_exactly_where_the_crash_was(
    windows: Tumbling | Hopping | Session, events: list[tuple[str, Sample]], cut: int
) -> None:
    def make() -> WindowOperator:
        agg = Aggregation(("count", "time_average", "last"))
        return WindowOperator(windows, agg, watermark=BoundedOutOfOrderness(5), allowed_lateness=8)

    straight = make()
    straight.feed_many(events)
    straight.flush()
    expected = straight.drain()

    first = make()
    first.feed_many(events[:cut])
    before = first.drain()
    blob = first.snapshot()
    second = make()
    second.restore(blob)  # a new process after the crash
    second.feed_many(events[cut:])
    second.flush()
    assert before + second.drain() == expected
    # the same counters, except the work of skipping stale session deadlines (not restored)
    after, want = msgspec.structs.asdict(second.stats), msgspec.structs.asdict(straight.stats)
    assert {**after, "touched": 0} == {**want, "touched": 0}


def test_restore_refuses_a_snapshot_of_another_configuration() -> None:
    blob = WindowOperator(Tumbling(10)).snapshot()
    with pytest.raises(InvalidInput, match="configured with"):
        WindowOperator(Tumbling(20)).restore(blob)
    with pytest.raises(InvalidInput, match="not a window snapshot"):
        WindowOperator(Tumbling(10)).restore(b"\x00garbage")


def test_snapshot_needs_the_outputs_drained_first() -> None:
    op = WindowOperator(Tumbling(10))
    op.feed("a", Sample(30, 1.0))
    op.feed("a", Sample(0, 1.0))  # too late: an output is pending
    with pytest.raises(UsageError, match="drain"):
        op.snapshot()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Tumbling(0), "not a positive duration"),
        (lambda: Hopping(10, 20), "hop"),
        (lambda: BoundedOutOfOrderness(-1), "negative"),
        (lambda: WindowOperator(Tumbling(10), allowed_lateness=-1), "negative"),
    ],
)
def test_bad_configuration_is_refused(make: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        make()  # type: ignore[operator]


def closing_work(idle_keys: int) -> int:
    """Due-index entries touched while one busy key moves the watermark through 50 windows,
    with ``idle_keys`` keys whose windows closed long ago and as many with windows far ahead."""
    op = WindowOperator(Tumbling(1_000), watermark=BoundedOutOfOrderness(10**12))
    for i in range(idle_keys):
        op.feed(f"idle-{i}", Sample(0, 1.0))
        op.feed(f"future-{i}", Sample(10**9, 1.0))
    op.advance_watermark(5_000)  # the idle keys' windows fire and close
    op.drain()
    before = op.stats.touched
    for t in range(5_000, 55_000, 250):
        op.feed("busy", Sample(t, 1.0))
        op.advance_watermark(t)
    op.drain()
    return op.stats.touched - before


def test_closing_costs_the_windows_due_not_the_number_of_keys() -> None:
    # count operations, not time: the same work with 10 or 10 000 idle keys
    small, large = closing_work(10), closing_work(10_000)
    assert small == large
    assert small == 2 * 49  # the busy key's 49 windows that came due: one fire + one purge each
