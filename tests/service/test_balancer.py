"""Balancer: power of two choices, least outstanding, round robin, quarantine and panic mode."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from garrison.core import ServiceUnavailable
from garrison.service import Balancer, Instance

URLS = [f"http://b-{i}:8000" for i in range(5)]


class RecordingRandom(random.Random):
    """A seeded Random that remembers the pairs p2c sampled."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.samples: list[list[Any]] = []

    def sample(self, population: Sequence[Any], k: int, **kw: Any) -> list[Any]:
        got = super().sample(population, k, **kw)
        self.samples.append(got)
        return got


def load(balancer: Balancer, counts: Sequence[int]) -> None:
    for inst, n in zip(balancer.instances, counts, strict=True):
        inst.outstanding = n


def test_no_instance_is_service_unavailable() -> None:
    with pytest.raises(ServiceUnavailable, match="'back'"):
        Balancer("back", []).pick()


@pytest.mark.parametrize("strategy", ["p2c", "least_outstanding", "round_robin"])
def test_a_single_instance_is_always_picked(strategy: Any) -> None:
    b = Balancer("back", ["http://only/"], strategy)
    assert {b.pick().url for _ in range(5)} == {"http://only"}


def test_p2c_never_picks_the_busier_of_its_two_samples() -> None:
    rand = RecordingRandom(7)
    b = Balancer("back", URLS, "p2c", rand=rand)
    load(b, [0, 3, 1, 9, 3])
    picks: Counter[str] = Counter()
    for _ in range(200):
        picked = b.pick()
        a, c = rand.samples[-1]
        assert picked in (a, c)
        assert picked.outstanding == min(a.outstanding, c.outstanding)
        picks[picked.url] += 1
    # The busiest instance always loses its pair; every other one wins some.
    assert set(picks) == set(URLS) - {URLS[3]}


def test_p2c_spreads_load_over_equal_instances() -> None:
    b = Balancer("back", URLS, "p2c", rand=random.Random(1))
    assert {b.pick().url for _ in range(100)} == set(URLS)


@given(
    counts=st.lists(st.integers(min_value=0, max_value=50), min_size=2, max_size=12),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_p2c_property_the_pick_is_never_busier_than_the_other_sample(
    counts: list[int], seed: int
) -> None:
    rand = RecordingRandom(seed)
    b = Balancer("back", [f"http://b-{i}" for i in range(len(counts))], "p2c", rand=rand)
    load(b, counts)
    picked = b.pick()
    (pair,) = rand.samples
    other = pair[1] if picked is pair[0] else pair[0]
    assert picked in pair
    assert picked.outstanding <= other.outstanding


def test_least_outstanding_picks_a_minimum() -> None:
    b = Balancer("back", URLS, "least_outstanding")
    load(b, [4, 2, 7, 2, 3])
    for _ in range(10):
        assert b.pick().outstanding == 2
    assert {b.pick().url for _ in range(10)} == {URLS[1], URLS[3]}  # ties share the load


@given(counts=st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=10))
def test_least_outstanding_property(counts: list[int]) -> None:
    b = Balancer("back", [f"http://b-{i}" for i in range(len(counts))], "least_outstanding")
    load(b, counts)
    assert b.pick().outstanding == min(counts)


def test_round_robin_cycles_through_every_instance() -> None:
    b = Balancer("back", URLS[:3], "round_robin")
    picks = [b.pick().url for _ in range(9)]
    assert sorted(picks[:3]) == sorted(URLS[:3])
    assert picks[:3] == picks[3:6] == picks[6:]


def test_excluded_instances_are_skipped() -> None:
    b = Balancer("back", URLS, "round_robin")
    ejected = {URLS[0], URLS[2]}
    b.exclude = lambda inst: inst.url in ejected
    assert {b.pick().url for _ in range(20)} == set(URLS) - ejected


@pytest.mark.parametrize("strategy", ["p2c", "least_outstanding", "round_robin"])
def test_panic_mode_uses_everyone_when_all_are_excluded(strategy: Any) -> None:
    b = Balancer("back", URLS[:3], strategy, rand=random.Random(3))
    b.exclude = lambda inst: True
    assert {b.pick().url for _ in range(60)} == set(URLS[:3])


def test_update_keeps_the_counts_of_instances_that_stay() -> None:
    b = Balancer("back", ["http://a/", "http://b"])
    load(b, [3, 5])
    kept = b.instances[0]
    b.update(["http://a", "http://c/"])
    assert b.instances[0] is kept
    assert [(i.url, i.outstanding) for i in b.instances] == [("http://a", 3), ("http://c", 0)]


def test_an_instance_is_printable() -> None:
    inst = Instance("http://a:1/")
    assert repr(inst) == "Instance('http://a:1', outstanding=0)"
