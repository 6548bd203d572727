"""Deadlines in a context variable: scopes only tighten, reset on exit, and stay in their task."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from garrison.core import (
    DEADLINE_HEADER,
    Deadline,
    DeadlineExceeded,
    RemoteError,
    current_deadline,
    deadline_scope,
    remaining,
)

HOUR = 3600.0


def test_no_deadline_by_default() -> None:
    assert current_deadline() is None
    assert remaining() is None


def test_header_name() -> None:
    assert DEADLINE_HEADER == "garrison-timeout-ms"


def test_deadline_after_is_in_the_future() -> None:
    before = time.monotonic()
    d = Deadline.after(HOUR)
    assert before + HOUR <= d.at <= time.monotonic() + HOUR
    assert 0 < d.remaining() <= HOUR
    assert not d.expired()
    d.check()  # does not raise


def test_deadline_is_frozen() -> None:
    d = Deadline.after(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.at = 0  # type: ignore[misc]


def test_passed_deadline() -> None:
    d = Deadline(time.monotonic() - 1)
    assert d.expired()
    assert d.remaining() < 0
    with pytest.raises(DeadlineExceeded, match="fetch site: deadline exceeded"):
        d.check("fetch site")
    with pytest.raises(DeadlineExceeded, match="request: deadline exceeded"):
        d.check()


def test_deadline_exceeded_is_a_remote_error() -> None:
    assert issubclass(DeadlineExceeded, RemoteError)


def test_zero_budget_is_already_expired() -> None:
    with deadline_scope(0) as d:
        assert d is not None
        assert d.expired()
        with pytest.raises(DeadlineExceeded):
            d.check()


def test_scope_sets_and_resets() -> None:
    with deadline_scope(HOUR) as d:
        assert d is not None
        assert current_deadline() is d
        left = remaining()
        assert left is not None
        assert 0 < left <= HOUR
    assert current_deadline() is None
    assert remaining() is None


def test_scope_resets_after_an_error() -> None:
    with pytest.raises(RuntimeError), deadline_scope(HOUR):
        raise RuntimeError("boom")
    assert current_deadline() is None


def test_none_scope_keeps_the_current_deadline() -> None:
    with deadline_scope(None) as none:
        assert none is None
        assert current_deadline() is None
    with deadline_scope(HOUR) as outer, deadline_scope(None) as inner:
        assert inner is outer
        assert current_deadline() is outer


def test_nested_looser_scope_keeps_the_outer_deadline() -> None:
    with deadline_scope(1.0) as outer:
        with deadline_scope(HOUR) as inner:
            assert inner is outer
            assert current_deadline() is outer
        assert current_deadline() is outer


def test_nested_tighter_scope_tightens_and_then_restores() -> None:
    with deadline_scope(HOUR) as outer:
        assert outer is not None
        with deadline_scope(1.0) as inner:
            assert inner is not None
            assert inner.at < outer.at
            assert current_deadline() is inner
            with deadline_scope(HOUR) as innermost:
                assert innermost is inner
        assert current_deadline() is outer
    assert current_deadline() is None


def test_scope_under_an_expired_deadline_stays_expired() -> None:
    with deadline_scope(-1) as outer, deadline_scope(HOUR) as inner:
        assert inner is outer
        assert inner is not None
        with pytest.raises(DeadlineExceeded):
            inner.check()


@given(st.lists(st.one_of(st.none(), st.floats(min_value=-HOUR, max_value=HOUR)), max_size=8))
def test_nested_scopes_only_tighten(budgets: list[float | None]) -> None:
    def nest(i: int, enclosing: Deadline | None) -> None:
        if i == len(budgets):
            return
        with deadline_scope(budgets[i]) as d:
            assert d is current_deadline()
            if enclosing is not None:
                assert d is not None
                assert d.at <= enclosing.at
            if budgets[i] is None:
                assert d is enclosing
            nest(i + 1, d)
        assert current_deadline() is enclosing

    nest(0, None)
    assert current_deadline() is None


async def test_scope_does_not_leak_between_tasks() -> None:
    inside = asyncio.Event()
    release = asyncio.Event()
    seen: dict[str, Deadline | None] = {}

    async def with_scope() -> None:
        with deadline_scope(1.0) as d:
            seen["a"] = d
            inside.set()
            await release.wait()
            assert current_deadline() is d

    async def without_scope() -> None:
        await inside.wait()
        seen["b"] = current_deadline()
        release.set()

    await asyncio.gather(with_scope(), without_scope())
    assert seen["a"] is not None
    assert seen["b"] is None
    assert current_deadline() is None


async def test_tasks_inherit_the_deadline_of_their_creator() -> None:
    async def child() -> Deadline | None:
        return current_deadline()

    with deadline_scope(HOUR) as d:
        assert await asyncio.create_task(child()) is d


async def test_a_task_tightening_its_deadline_does_not_change_the_caller() -> None:
    async def child() -> Deadline | None:
        with deadline_scope(1.0) as d:
            await asyncio.sleep(0)
            return d

    with deadline_scope(HOUR) as outer:
        inner = await asyncio.create_task(child())
        assert inner is not None
        assert outer is not None
        assert inner.at < outer.at
        assert current_deadline() is outer


async def test_concurrent_tasks_each_keep_their_own_deadline() -> None:
    async def worker(budget: float) -> bool:
        with deadline_scope(budget) as d:
            for _ in range(5):
                await asyncio.sleep(0)
                if current_deadline() is not d:
                    return False
            return True

    results = await asyncio.gather(*(worker(10.0 + i) for i in range(20)))
    assert all(results)
