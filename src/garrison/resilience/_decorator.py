"""``@resilient``: put a pipeline around any async function."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from ._pipeline import Pipeline, PolicyConfig
from ._settings import _validate_layer, parse_policy

__all__ = ["resilient"]

P = ParamSpec("P")
T = TypeVar("T")


def resilient(
    config: PolicyConfig | None = None,
    /,
    *,
    name: str | None = None,
    fallback: Callable[[BaseException], Awaitable[Any]] | None = None,
    **policies: Any,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Run every call of the decorated async function through one :class:`Pipeline`.

    Policies are given as a :class:`PolicyConfig` or as keyword tables like garrison.toml's::

        @resilient(timeout=1.0, retry={"max_attempts": 4}, breaker={"minimum_number_of_calls": 20})
        async def fetch_quote(symbol: str) -> Quote: ...

    The pipeline is reachable as ``fetch_quote.pipeline`` (its state, its events). Bad policies
    raise :class:`~garrison.core.ConfigError` naming policy and field
    (``[resilient.breaker.failure_rate_threshold]``).
    """
    if config is not None and not isinstance(config, PolicyConfig):
        raise TypeError(
            f"@resilient takes a PolicyConfig or keyword policies, got {config!r} "
            "(write @resilient(...) with parentheses)"
        )
    if config is not None and policies:
        raise TypeError("pass a PolicyConfig or keyword policies, not both")
    # Policy by policy, as garrison.toml's layers are, so an error names policy and field.
    cfg = (
        config
        if config is not None
        else parse_policy([("resilient", _validate_layer(policies, "resilient", None))])
    )

    def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@resilient needs an async function, got {fn!r}")
        pipeline = Pipeline(cfg, name=name or fn.__qualname__, fallback=fallback)

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return await pipeline.call(fn, *args, **kwargs)

        wrapper.pipeline = pipeline  # type: ignore[attr-defined]
        return wrapper

    return decorate
