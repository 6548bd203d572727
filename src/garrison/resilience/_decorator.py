"""``@resilient``: put a pipeline around any function, async or sync.

Whether the function is async is decided once, at decoration: a coroutine function gets the
async :class:`Pipeline` and an async wrapper; a plain function gets a :class:`SyncPipeline` and
a plain wrapper (see ``_sync.py`` for what a sync pipeline can and cannot do).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from garrison.core import ConfigError

from ._pipeline import Pipeline, PolicyConfig
from ._settings import _validate_layer, parse_policy
from ._sync import SyncPipeline, check_sync_config

__all__ = ["resilient"]

P = ParamSpec("P")
T = TypeVar("T")


class _Decorator(Protocol):
    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]], /) -> Callable[P, Awaitable[T]]: ...

    @overload
    def __call__(self, fn: Callable[P, T], /) -> Callable[P, T]: ...


def resilient(
    config: PolicyConfig | None = None,
    /,
    *,
    name: str | None = None,
    fallback: Callable[[BaseException], Any] | None = None,
    **policies: Any,
) -> _Decorator:
    """Run every call of the decorated function through one pipeline.

    Policies are given as a :class:`PolicyConfig` or as keyword tables like garrison.toml's::

        @resilient(timeout=1.0, retry={"max_attempts": 4}, breaker={"minimum_number_of_calls": 20})
        async def fetch_quote(symbol: str) -> Quote: ...

        @resilient(retry={"max_attempts": 3}, bulkhead={"max_concurrent_calls": 8})
        def read_sensor(bus: int) -> float: ...   # sync: a sync wrapper, a SyncPipeline

    The pipeline is reachable as ``fetch_quote.pipeline`` (its state, its events). Bad policies
    raise :class:`~garrison.core.ConfigError` naming policy and field
    (``[resilient.breaker.failure_rate_threshold]``), and so do policies a sync function
    cannot have (``timeout``, ``hedge``, a Redis-shared rate limit). ``fallback`` is called with
    the final exception: an async callable for an async function, a plain one for a sync one.
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

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            raise TypeError(
                f"@resilient cannot protect a generator function ({fn!r}): the pipeline would "
                "only see the generator being created, not its work"
            )
        if not callable(fn):
            raise TypeError(f"@resilient needs a function, got {fn!r}")
        label = name or getattr(fn, "__qualname__", None) or repr(fn)
        if _is_async(fn):
            pipeline = Pipeline(cfg, name=label, fallback=fallback)

            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                return await pipeline.call(fn, *args, **kwargs)

            wrapper.pipeline = pipeline  # type: ignore[attr-defined]
            return wrapper
        return _sync(fn, cfg, label, fallback)

    return decorate


def _is_async(fn: Callable[..., Any]) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one (checked once)."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - the method itself is what is inspected
    return not inspect.isroutine(fn) and call is not None and inspect.iscoroutinefunction(call)


def _sync(
    fn: Callable[..., Any],
    cfg: PolicyConfig,
    label: str,
    fallback: Callable[[BaseException], Any] | None,
) -> Callable[..., Any]:
    try:
        check_sync_config(cfg)
    except ConfigError as exc:
        message = str(exc).split(": ", 1)[-1]
        raise ConfigError(
            f"{label} is synchronous: {message}", key=f"resilient.{exc.key}"
        ) from None
    if fallback is not None and _is_async(fallback):
        raise TypeError(
            f"{label} is synchronous, so its fallback must be too; got the async {fallback!r}"
        )
    pipeline = SyncPipeline(cfg, name=label, fallback=fallback)
    call = pipeline._call

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return call(fn, args, kwargs)

    wrapper.pipeline = pipeline  # type: ignore[attr-defined]
    return wrapper
