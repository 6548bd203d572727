"""The registry: pipelines per edge, route and door, and their atomic replacement while running."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from garrison.core import ConfigError, FakeClock
from garrison.resilience import (
    BreakerConfig,
    BreakerState,
    PolicyEvent,
    PolicyRegistry,
    Rejected,
    ResilienceSettings,
)

RAW: dict[str, Any] = {
    "defaults": {"timeout": 2.0},
    "edges": {
        "a->b": {
            "bulkhead": {"max_concurrent_calls": 4},
            "routes": {"/slow": {"timeout": 10.0}},
        },
        "*->b": {"routes": {"/any": {"timeout": 0.5}}},
    },
    "inbound": {"b": {"limiter": {}}},
}


def registry(raw: dict[str, Any] | None = None, clock: FakeClock | None = None) -> PolicyRegistry:
    return PolicyRegistry(ResilienceSettings.from_raw(RAW if raw is None else raw), clock=clock)


class Gate:
    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.started = 0

    async def __call__(self) -> str:
        self.started += 1
        await self.event.wait()
        return "slow"


async def ok() -> str:
    return "ok"


async def until(predicate: Any, turns: int = 200) -> None:
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


# -- lookups -----------------------------------------------------------------------------------


def test_pipelines_are_built_once_per_edge() -> None:
    reg = registry()
    p = reg.pipeline("a", "b")
    assert reg.pipeline("a", "b") is p
    assert (p.name, p.version, p.config.timeout) == ("a->b", 1, 2.0)
    assert reg.pipeline("a", "c") is not p


def test_routes_without_a_layer_of_their_own_share_the_edges_pipeline() -> None:
    reg = registry()
    edge = reg.pipeline("a", "b")
    assert reg.pipeline("a", "b", "/devices/1") is edge  # one breaker per edge
    assert reg.pipeline("a", "b", "/devices/2") is edge
    slow = reg.pipeline("a", "b", "/slow")
    assert slow is not edge
    assert slow.name == "a->b /slow"
    assert slow.config.timeout == 10.0
    assert slow.config.bulkhead == edge.config.bulkhead  # the edge's layers, then the route's
    assert reg.pipeline("a", "b", "/slow") is slow
    assert reg.pipeline("z", "b", "/any").config.timeout == 0.5  # a route of "*->b"
    assert reg.pipeline("a", "b", "/any").config.timeout == 0.5


def test_inbound_pipelines() -> None:
    reg = registry()
    door = reg.inbound("b")
    assert reg.inbound("b") is door
    assert door.name == "->b"
    assert door.limiter is not None
    assert door.config.timeout is None
    assert reg.inbound("other").limiter is None


def test_effective_and_snapshot() -> None:
    reg = registry()
    assert reg.effective("a", "b", "/slow").timeout == 10.0
    reg.pipeline("a", "b", "/x")  # shares the edge's pipeline: listed once
    reg.inbound("b")
    names = sorted(s["name"] for s in reg.snapshot())
    assert names == ["->b", "a->b", "a->b /slow"]


def test_the_pipelines_use_the_registrys_clock() -> None:
    clock = FakeClock()
    breaker_cfg = {"wait_duration_in_open": 5.0, "minimum_number_of_calls": 1}
    reg = registry({"edges": {"a->b": {"breaker": breaker_cfg}}}, clock)
    breaker = reg.pipeline("a", "b").breaker
    assert breaker is not None
    breaker.on_failure(0.0)
    assert breaker.state is BreakerState.OPEN
    clock.advance(5.0)  # only the fake clock moved
    assert breaker.state is BreakerState.HALF_OPEN


# -- replacement -------------------------------------------------------------------------------


def test_replace_bumps_the_version_and_swaps_every_pipeline_of_the_edge() -> None:
    reg = registry()
    edge, slow = reg.pipeline("a", "b"), reg.pipeline("a", "b", "/slow")
    other = reg.pipeline("a", "c")
    assert reg.replace("a", "b", {"breaker": {"minimum_number_of_calls": 5}}) == 2
    assert reg.version("a", "b") == 2
    new_edge, new_slow = reg.pipeline("a", "b"), reg.pipeline("a", "b", "/slow")
    assert new_edge is not edge
    assert new_slow is not slow
    assert (new_edge.version, new_slow.version) == (2, 2)
    assert new_edge.config.breaker == BreakerConfig(minimum_number_of_calls=5)
    assert new_slow.config.breaker == new_edge.config.breaker
    assert new_slow.config.timeout == 10.0  # the route's own layer still applies
    assert reg.pipeline("a", "b", "/devices/1") is new_edge
    assert reg.pipeline("a", "c") is other
    assert reg.version("a", "c") == 1
    assert reg.override("a", "b") == {"breaker": BreakerConfig(minimum_number_of_calls=5)}
    assert reg.replace("a", "b", {"timeout": 1.0}) == 3
    assert reg.pipeline("a", "b").config.breaker is None  # the override is replaced whole


def test_replace_before_any_lookup() -> None:
    reg = registry()
    assert reg.replace("a", "b", {"timeout": 0.1}) == 2
    p = reg.pipeline("a", "b")
    assert (p.version, p.config.timeout) == (2, 0.1)
    assert reg.pipeline("a", "b", "/slow").version == 2


@pytest.mark.parametrize(
    ("policies", "key"),
    [
        (
            {"breaker": {"failure_rate_threshold": 2}},
            "override a->b.breaker.failure_rate_threshold",
        ),
        ({"breakr": {}}, "override a->b.breakr"),
        ({"timeout": -1}, "override a->b.timeout"),
        ({"routes": {"/x": {}}}, "override a->b.routes"),
        ({"hedge": {}, "retry": {}}, None),
        ({"shadow": ["limiter"]}, None),
    ],
)
def test_a_bad_replacement_raises_and_changes_nothing(
    policies: dict[str, Any], key: str | None
) -> None:
    reg = registry()
    reg.replace("a", "b", {"timeout": 0.3})
    before = reg.pipeline("a", "b"), reg.pipeline("a", "b", "/slow")
    with pytest.raises(ConfigError) as info:
        reg.replace("a", "b", policies)
    if key is not None:
        assert info.value.key == key
    assert (reg.pipeline("a", "b"), reg.pipeline("a", "b", "/slow")) == before
    assert reg.version("a", "b") == 2
    assert reg.override("a", "b") == {"timeout": 0.3}


def test_a_replacement_that_clashes_with_a_route_not_yet_built_is_refused() -> None:
    reg = registry({"edges": {"a->b": {"routes": {"/r": {"retry": {}}}}}})
    edge = reg.pipeline("a", "b")  # the route's pipeline has not been built
    with pytest.raises(ConfigError, match="hedge"):
        reg.replace("a", "b", {"hedge": {}})
    assert reg.pipeline("a", "b") is edge
    assert reg.version("a", "b") == 1
    assert reg.pipeline("a", "b", "/r").config.retry is not None  # still builds


def test_an_empty_replacement_clears_the_override() -> None:
    reg = registry({"defaults": {"breaker": {}}})
    assert reg.replace("a", "b", {"breaker": False}) == 2
    assert reg.effective("a", "b").breaker is None
    assert reg.replace("a", "b", {}) == 3
    assert reg.override("a", "b") == {}
    assert reg.effective("a", "b").breaker == BreakerConfig()
    assert reg.pipeline("a", "b").version == 3


async def test_a_call_in_flight_finishes_on_the_old_pipeline() -> None:
    reg = registry({"edges": {"a->b": {"bulkhead": {"max_concurrent_calls": 1}}}})
    old = reg.pipeline("a", "b")
    gate = Gate()
    call = asyncio.create_task(old.call(gate))
    await until(lambda: gate.started == 1)
    reg.replace("a", "b", {"bulkhead": {"max_concurrent_calls": 1}, "timeout": 5.0})
    new = reg.pipeline("a", "b")
    assert new is not old
    assert old.bulkhead is not None
    assert new.bulkhead is not None
    assert (old.bulkhead.core.active, new.bulkhead.core.active) == (1, 0)
    # The new pipeline has its own slots: the swap refuses no call because of the old one.
    assert await new.call(ok) == "ok"
    gate.event.set()
    assert await call == "slow"
    assert (old.calls, old.attempts, old.version, old.bulkhead.core.active) == (1, 1, 1, 0)
    assert (new.calls, new.attempts, new.version, new.bulkhead.core.active) == (1, 1, 2, 0)


async def test_replacement_under_load_fails_no_call() -> None:
    reg = registry({"edges": {"a->b": {"bulkhead": {"max_concurrent_calls": 50}}}})
    results: list[str] = []

    async def caller() -> None:
        for _ in range(20):
            p = reg.pipeline("a", "b")
            results.append(await p.call(asyncio.sleep, 0.001, "ok"))

    tasks = [asyncio.create_task(caller()) for _ in range(10)]
    for i in range(10):
        await asyncio.sleep(0.002)
        reg.replace("a", "b", {"bulkhead": {"max_concurrent_calls": 50}, "timeout": 1.0 + i})
    await asyncio.gather(*tasks)
    assert results == ["ok"] * 200
    assert reg.version("a", "b") == 11


def test_reload_rebuilds_on_next_use_and_keeps_overrides() -> None:
    reg = registry()
    old = reg.pipeline("a", "b")
    reg.replace("a", "b", {"breaker": {}})
    reg.reload(ResilienceSettings.from_raw({"defaults": {"timeout": 9.0}}))
    new = reg.pipeline("a", "b")
    assert new is not old
    assert new.version == 3
    assert (new.config.timeout, new.config.breaker) == (9.0, BreakerConfig())


# -- events ------------------------------------------------------------------------------------


def test_listeners_get_the_events_of_pipelines_built_later() -> None:
    reg = registry({"edges": {"a->b": {"breaker": {}}, "a->c": {"breaker": {}}}})
    early = reg.pipeline("a", "b")
    events: list[PolicyEvent] = []
    reg.add_listener(events.append)
    late = reg.pipeline("a", "c")  # built after the listener was added
    assert early.breaker is not None
    assert late.breaker is not None
    early.breaker.force_open()
    late.breaker.force_open()
    assert [(e.policy, e.name, e.data["to"]) for e in events] == [
        ("breaker", "a->b", "forced_open"),
        ("breaker", "a->c", "forced_open"),
    ]


async def test_listeners_follow_replacements_and_hear_them() -> None:
    clock = FakeClock()
    reg = registry({"edges": {"a->b": {"breaker": {}}}}, clock)
    events: list[PolicyEvent] = []
    reg.add_listener(events.append)
    reg.pipeline("a", "b")
    clock.advance(3.0)
    reg.replace("a", "b", {"rate_limit": {"rate": 0.001, "burst": 1}, "shadow": ["rate_limit"]})
    replaced = [e for e in events if e.kind == "replaced"]
    assert [(e.policy, e.name, e.data, e.at) for e in replaced] == [
        ("pipeline", "a->b", {"version": 2}, clock.monotonic())
    ]
    new = reg.pipeline("a", "b")
    await new.call(ok)
    await new.call(ok)  # the bucket is empty: a shadow rejection, heard by the listener
    assert [e.policy for e in events if e.kind == "shadow_rejection"] == ["rate_limit"]
    assert new.breaker is not None
    new.breaker.force_open()
    assert events[-1].name == "a->b"
    assert events[-1].policy == "breaker"
    with pytest.raises(Rejected):
        await new.call(ok)
