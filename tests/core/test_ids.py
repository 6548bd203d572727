"""UUIDv7 ids: layout, strict order within the process, and the time they carry."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from garrison.core import _ids, new_id, new_uuid7, uuid7_time

MAX_MS = (1 << 48) - 1
# version nibble 7, but the variant bits are 0b11 (reserved), so it is not an RFC 9562 UUIDv7
V7_BITS_WRONG_VARIANT = uuid.UUID("01890a5d-ac96-774b-ccde-3f1b2c4d5e6f")


@contextmanager
def frozen_time_ns(*values: int) -> Iterator[None]:
    """Make ``new_uuid7`` read ``values`` as the time (the last one repeats), from fresh state."""
    queue = list(values)

    def time_ns() -> int:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    # _last_ms and _counter are restored too: a far-future time must not leak into later ids
    with (
        mock.patch.object(_ids, "time", SimpleNamespace(time_ns=time_ns)),
        mock.patch.object(_ids, "_last_ms", 0),
        mock.patch.object(_ids, "_counter", 0),
    ):
        yield


def increasing(values: Sequence[Any]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


def ms_of(u: uuid.UUID) -> int:
    return u.int >> 80


def counter_of(u: uuid.UUID) -> int:
    return (u.int >> 64) & 0xFFF


def test_version_and_variant_bits() -> None:
    for _ in range(1000):
        u = new_uuid7()
        assert u.version == 7
        assert u.variant == uuid.RFC_4122
        assert (u.int >> 76) & 0xF == 0x7
        assert (u.int >> 62) & 0b11 == 0b10


def test_new_id_is_32_lowercase_hex_of_a_uuid7() -> None:
    value = new_id()
    assert len(value) == 32
    assert value == value.lower()
    assert int(value, 16) >= 0
    assert uuid.UUID(value).version == 7


def test_strictly_increasing_over_many_calls() -> None:
    ids = [new_uuid7() for _ in range(100_000)]
    assert increasing(ids)
    # the hex form sorts the same way, so stores can index the string
    hexes = [u.hex for u in ids]
    assert hexes == sorted(hexes)
    assert len(set(hexes)) == len(hexes)


def test_new_id_strings_strictly_increase() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert increasing(ids)


def test_strictly_increasing_within_one_millisecond() -> None:
    now = 1_700_000_000_123_456_789
    with frozen_time_ns(now):
        ids = [new_uuid7() for _ in range(1000)]
    assert increasing(ids)
    assert {ms_of(u) for u in ids} == {now // 1_000_000}
    counters = [counter_of(u) for u in ids]
    assert counters == list(range(counters[0], counters[0] + 1000))


def test_exhausted_counter_borrows_the_next_millisecond() -> None:
    now_ms = 1_700_000_000_000
    with frozen_time_ns(now_ms * 1_000_000):
        ids = [new_uuid7() for _ in range(10_000)]
    assert increasing(ids)
    assert ms_of(ids[0]) == now_ms
    assert ms_of(ids[-1]) > now_ms  # ran ahead of the clock rather than repeat or wrap


def test_strictly_increasing_when_the_wall_clock_steps_back() -> None:
    second = 1_000_000_000
    t = 1_700_000_000 * second
    with frozen_time_ns(t, t + second, t - 5 * second, t, t + 2 * second):
        ids = [new_uuid7() for _ in range(6)]
    assert increasing(ids)
    assert ms_of(ids[-1]) == (t + 2 * second) // 1_000_000


def test_strictly_increasing_per_thread_and_unique_across_threads() -> None:
    results: list[list[uuid.UUID]] = [[] for _ in range(4)]

    def work(out: list[uuid.UUID]) -> None:
        out.extend(new_uuid7() for _ in range(5_000))

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out in results:
        assert increasing(out)
    assert len({u for out in results for u in out}) == 20_000


@given(st.lists(st.integers(min_value=1, max_value=MAX_MS), min_size=1, max_size=50))
def test_strictly_increasing_whatever_the_clock_does(times_ms: list[int]) -> None:
    with frozen_time_ns(*(ms * 1_000_000 for ms in times_ms)):
        ids = [new_uuid7() for _ in range(len(times_ms) + 5)]
    assert increasing(ids)


@given(st.integers(min_value=1, max_value=MAX_MS), st.integers(min_value=0, max_value=999_999))
def test_uuid7_time_round_trip(ms: int, sub_ms_ns: int) -> None:
    with frozen_time_ns(ms * 1_000_000 + sub_ms_ns):
        u = new_uuid7()
    assert ms_of(u) == ms
    assert uuid7_time(u) == ms / 1000
    assert uuid7_time(str(u)) == ms / 1000
    assert uuid7_time(u.hex) == ms / 1000


def test_uuid7_time_of_a_fresh_id_is_now() -> None:
    before = time.time()
    u = new_uuid7()
    after = time.time()
    # millisecond resolution; the counter may borrow a few milliseconds ahead
    assert before - 0.001 <= uuid7_time(u) <= after + 1


@pytest.mark.parametrize(
    "value",
    [
        uuid.uuid4(),
        uuid.uuid1(),
        str(uuid.uuid4()),
        uuid.UUID(int=0),
        V7_BITS_WRONG_VARIANT,
    ],
)
def test_uuid7_time_rejects_other_uuids(value: uuid.UUID | str) -> None:
    with pytest.raises(ValueError, match="not a UUIDv7"):
        uuid7_time(value)


def test_uuid7_time_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="hexadecimal UUID"):
        uuid7_time("not-a-uuid")
