"""``@resilient``: a pipeline around an async function, configured like garrison.toml."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from garrison.core import ConfigError, TransportError
from garrison.resilience import (
    BreakerConfig,
    Pipeline,
    PolicyConfig,
    Rejected,
    RetryPolicy,
    resilient,
)


def test_generator_functions_are_rejected_at_decoration() -> None:
    # Plain sync functions get a sync pipeline (tests/resilience/test_sync.py); generators
    # cannot be protected: the pipeline would only see the generator being created.
    def gen() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        resilient(retry={})(gen)


def test_the_decorator_needs_its_parentheses() -> None:
    async def fetch() -> int:
        return 1

    with pytest.raises(TypeError, match="parentheses"):
        resilient(fetch)  # type: ignore[arg-type]


def test_a_config_and_keyword_policies_do_not_mix() -> None:
    with pytest.raises(TypeError, match="not both"):
        resilient(PolicyConfig(), timeout=1.0)


@pytest.mark.parametrize(
    ("policies", "key"),
    [
        ({"breakr": {}}, "resilient.breakr"),
        ({"breaker": {"failure_rate_threshold": 2}}, "resilient.breaker.failure_rate_threshold"),
        ({"breaker": {"failure_rate": 0.5}}, "resilient.breaker.failure_rate"),
        ({"bulkhead": {"max_concurrent_calls": 0}}, "resilient.bulkhead.max_concurrent_calls"),
        (
            {"limiter": {"limit": {"algorithm": "fixed", "limit": 0}}},
            "resilient.limiter.limit.limit",
        ),
        ({"retry": {"max_attempts": "3"}}, "resilient.retry.max_attempts"),
        ({"timeout": 0}, "resilient.timeout"),
        ({"timeout": float("inf")}, "resilient.timeout"),
        ({"shadow": ["bulkhead"]}, "resilient.shadow"),
        ({"hedge": {}, "retry": {}}, "resilient.hedge"),
    ],
)
def test_keyword_policies_are_validated_naming_policy_and_field(
    policies: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        resilient(**policies)
    assert info.value.key == key


async def test_the_pipeline_is_exposed_and_every_call_goes_through_it() -> None:
    @resilient(timeout=1, retry={"max_attempts": 2}, breaker=BreakerConfig())
    async def fetch(symbol: str, *, scale: int = 1) -> str:
        """Fetch a quote."""
        return symbol * scale

    pipeline = fetch.pipeline  # type: ignore[attr-defined]
    assert isinstance(pipeline, Pipeline)
    assert pipeline.name.endswith("fetch")
    assert pipeline.config.timeout == 1.0
    assert pipeline.config.retry == RetryPolicy(max_attempts=2)
    assert (fetch.__name__, fetch.__doc__) == ("fetch", "Fetch a quote.")
    assert await fetch("ab", scale=2) == "abab"
    assert (pipeline.calls, pipeline.attempts) == (1, 1)


async def test_a_policy_config_and_a_name() -> None:
    cfg = PolicyConfig(breaker=BreakerConfig())

    @resilient(cfg, name="quotes->prices")
    async def fetch() -> int:
        return 1

    pipeline = fetch.pipeline  # type: ignore[attr-defined]
    assert (pipeline.config, pipeline.name) == (cfg, "quotes->prices")
    assert await fetch() == 1
    pipeline.breaker.force_open()
    with pytest.raises(Rejected):
        await fetch()


async def test_retries_timeouts_and_fallback() -> None:
    failures = [TransportError("flaky")]

    @resilient(retry={"max_attempts": 2, "initial_backoff": 0, "jitter": False})
    async def flaky() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    assert await flaky() == "ok"
    assert flaky.pipeline.attempts == 2  # type: ignore[attr-defined]

    async def fallback(exc: BaseException) -> str:
        return f"fallback after {type(exc).__name__}"

    @resilient(timeout=0.02, fallback=fallback)
    async def slow() -> str:
        await asyncio.sleep(1)
        return "late"

    assert await slow() == "fallback after TimeoutError"


async def test_methods_can_be_decorated() -> None:
    class Client:
        def __init__(self) -> None:
            self.calls = 0

        @resilient(timeout=1.0)
        async def get(self, x: int) -> int:
            self.calls += 1
            return x + 1

    client = Client()
    assert await client.get(1) == 2
    assert client.calls == 1
    assert Client.get.pipeline.calls == 1  # type: ignore[attr-defined]
