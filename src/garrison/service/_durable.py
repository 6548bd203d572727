"""Durable workflows inside a service: ``@svc.workflow``, ``@svc.activity`` and the engine.

The decorators only record: a service is plain data until it is served. When it starts, its
lifespan opens a :class:`~garrison.durable.Engine` on the store ``[durable]`` names (an embedded
SQLite file per service by default), before the user's startup hooks, so they and every route
can use ``svc.workflows``; the service reports ready only after that. The engine is closed after
the user's shutdown hooks: in-flight activities stop (they run again after the restart: at
least once) and the leases are released, so the next process takes the workflows at once.

Each replica's worker id is stable (``{service}-{replica}@{host}`` by default), so a replica
restarted after a crash takes its previous incarnation's leases back at once instead of waiting
for them to expire.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from garrison.core import GarrisonConfig, UsageError, get_logger
from garrison.durable import ActorSystem, Engine, activity, actor
from garrison.durable._activity import UNSET
from garrison.durable._actor import actor_name
from garrison.durable._settings import DurableSettings, ServiceDurableSettings
from garrison.resilience import RetryPolicy

if TYPE_CHECKING:
    from ._service import Service

__all__ = ["UNSET", "ServiceWorkflows"]

F = TypeVar("F", bound=Callable[..., Any])
_log = get_logger("service")


class ServiceWorkflows:
    """The durable part of one service: its declared workflows and, while it runs, its engine."""

    def __init__(self, svc: Service) -> None:
        self._svc = svc
        self.declared: list[tuple[Callable[..., Any], str | None]] = []
        self.actor_types: list[type] = []
        self.engine: Engine | None = None
        self.settings: ServiceDurableSettings | None = None

    # -- decorators ----------------------------------------------------------------------------

    def workflow(self, fn: F | None = None, *, name: str | None = None) -> Any:
        """Record ``fn`` as a workflow of the service (see :meth:`Service.workflow`)."""
        if name is not None and (not isinstance(name, str) or not name):
            raise UsageError(f"workflow name: expected a non-empty string, got {name!r}")

        def mark(f: F) -> F:
            if not inspect.iscoroutinefunction(inspect.unwrap(f)):
                raise UsageError(
                    f"@{self._svc.name}.workflow expects an async def function taking a "
                    f"WorkflowContext first, got {f!r}"
                )
            wanted = name or f.__qualname__
            for other, other_name in self.declared:
                if (other_name or other.__qualname__) == wanted and other is not f:
                    raise UsageError(
                        f"service {self._svc.name!r} already has a workflow named {wanted!r}"
                    )
            self.declared.append((f, name))
            if self.engine is not None:  # declared while running: let the engine run it too
                self.engine.register(f, name=name)
            return f

        return mark if fn is None else mark(fn)

    def actor(self, cls: type | None = None, *, name: str | None = None) -> Any:
        """Record ``cls`` as an actor type hosted by this service (see :meth:`Service.actor`)."""

        def mark(c: type) -> type:
            c = actor(name=name)(c)
            wanted = actor_name(c)
            for other in self.actor_types:
                if actor_name(other) == wanted and other is not c:
                    raise UsageError(
                        f"service {self._svc.name!r} already hosts an actor named {wanted!r}"
                    )
            if self.engine is not None:
                raise UsageError(
                    f"@{self._svc.name}.actor: declare actors before the service starts "
                    f"({wanted!r} came too late)"
                )
            if c not in self.actor_types:
                self.actor_types.append(c)
            return c

        return mark if cls is None else mark(cls)

    @property
    def actors(self) -> ActorSystem:
        """The running actor system; :class:`UsageError` saying why there is none."""
        engine = self.running
        if not self.actor_types:
            raise UsageError(
                f"service {self._svc.name!r} hosts no actors: declare one with @svc.actor"
            )
        return engine.actors

    @staticmethod
    def activity(
        fn: F | None,
        *,
        retry: RetryPolicy | Mapping[str, Any] | Any | None,
        timeout: float | timedelta | None,
        name: str | None,
    ) -> Any:
        """Mark ``fn`` as an activity (see :func:`garrison.durable.activity`)."""
        mark = activity(retry=retry, timeout=timeout, name=name)
        return mark if fn is None else mark(fn)

    # -- the engine ----------------------------------------------------------------------------

    @property
    def running(self) -> Engine:
        """The open engine; :class:`UsageError` saying why there is none."""
        if self.engine is not None:
            return self.engine
        if self.settings is not None and self.settings.enabled is False:
            raise UsageError(
                f"service {self._svc.name!r} runs no workflow engine: [durable] enabled = false"
            )
        if not self._needs_engine and not (self.settings and self.settings.enabled):
            raise UsageError(
                f"service {self._svc.name!r} runs no workflow engine: declare a workflow with "
                "@svc.workflow or an actor with @svc.actor, or set [durable] enabled = true"
            )
        raise UsageError(
            f"the workflow engine of service {self._svc.name!r} runs only while the service "
            "does (from its startup until its shutdown)"
        )

    def resolve_settings(
        self, config: GarrisonConfig | None = None, replica: int | None = None
    ) -> ServiceDurableSettings:
        """This service's ``[durable]`` settings, validated (a ConfigError names the key)."""
        config = config or self._svc._config()
        settings = DurableSettings.from_config(config).for_service(
            self._svc.name,
            replica=self._svc.replica if replica is None else replica,
            config=config,
        )
        self.settings = settings
        return settings

    async def start(self) -> None:
        """Open the engine if the service has workflows (or ``[durable]`` says so)."""
        settings = self.resolve_settings()
        if not settings.wants_engine(self._needs_engine):
            return
        engine = Engine(
            settings.store,
            config=settings.engine_config(),
            worker=settings.worker,
            actors=self.actor_types,
        )
        for fn, name in self.declared:
            engine.register(fn, name=name)
        await engine.open()
        self.engine = engine
        _log.info(
            "service %s: workflow engine open on %s as %s (%d workflow(s), %d actor type(s)%s)",
            self._svc.name,
            _redact(settings.store),
            engine.worker_id,
            len(self.declared),
            len(self.actor_types),
            "" if settings.worker else ", not a worker",
        )

    async def stop(self) -> None:
        """Close the engine (workflows stay in the store; leases are released)."""
        engine, self.engine = self.engine, None
        if engine is not None:
            await engine.close()

    async def workflow_engine(self) -> bool:
        """Readiness: the engine is open, or the service needs none (before the first start
        the settings are unknown: the service's own "startup" check covers that time)."""
        if self.engine is not None or self.settings is None:
            return True
        return not self.settings.wants_engine(self._needs_engine)

    @property
    def _needs_engine(self) -> bool:
        """Whether the service declares anything the engine runs (workflows or actors)."""
        return bool(self.declared or self.actor_types)


def _redact(url: str) -> str:
    """``url`` without a password, for logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
