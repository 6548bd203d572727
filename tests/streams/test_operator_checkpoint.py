"""Incremental checkpoints of the window operator: storing only the keys fed or drained in each
step and restoring from those parts gives back exactly the operator's state."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.core import InvalidInput
from garrison.streams import Aggregation, Hopping, Sample, Session, Tumbling, WindowOperator

kinds = st.sampled_from([Tumbling(10), Hopping(20, 10), Session(7)])
events = st.lists(
    st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 200)), max_size=8),
    min_size=1,
    max_size=12,
)


def _make(kind: Tumbling | Hopping | Session) -> WindowOperator:
    return WindowOperator(kind, Aggregation(("count", "mean")), allowed_lateness=15)


@settings(max_examples=60, deadline=None)
@given(kinds, events)
def test_parts_restore_the_whole_state(
    kind: Tumbling | Hopping | Session, batches: list[list[tuple[str, int]]]
) -> None:
    op = _make(kind)
    stored: dict[str, bytes] = {}
    meta = b""
    for batch in batches:
        dirty = set()
        for key, ts in batch:
            op.feed(key, Sample(ts, float(ts)))
            dirty.add(key)
        for out in op.drain():
            dirty.add(out.key)
        for key in dirty:
            blob = op.snapshot_key(key)
            if blob is None:
                stored.pop(key, None)
            else:
                stored[key] = blob
        meta = op.snapshot_meta()
        copy = _make(kind)
        copy.restore_parts(meta, stored.values())
        assert copy.snapshot() == op.snapshot()


def test_bad_parts_are_refused() -> None:
    op = _make(Tumbling(10))
    with pytest.raises(InvalidInput, match="not a checkpoint"):
        op.restore_parts(b"junk", [])
    with pytest.raises(InvalidInput, match="not a checkpoint"):
        op.restore_parts(op.snapshot_meta(), [b"junk"])
    other = WindowOperator(Tumbling(20))
    with pytest.raises(InvalidInput, match="configured with"):
        other.restore_parts(op.snapshot_meta(), [])
    assert op.snapshot_key("nobody") is None
