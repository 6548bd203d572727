"""``Service``: the unit a team writes: typed routes, clients to other services, lifecycle hooks.

A :class:`Service` is plain data until it is served: decorators record routes and hooks;
:meth:`Service.asgi` assembles the Starlette application in one visible place
(:meth:`Service._build`), with the inbound middleware around the router, and probes and metrics
beside the user's routes.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from garrison.core import GarrisonConfig, get_logger, json_encode, load_config
from garrison.identity import Requires
from garrison.resilience import PolicyRegistry, ResilienceSettings, close_shared_redis_clients

from ._admin import admin_routes
from ._client import Interceptor, ServiceClient
from ._durable import UNSET, ServiceWorkflows
from ._http_errors import error_response
from ._identity import PassportMiddleware, ServiceIdentity
from ._metrics import ServiceMetrics
from ._middleware import ROUTE_SCOPE_KEY, InboundMiddleware
from ._params import Injector, ParamSpec, analyse, resolve
from ._resilience import InboundGuard, ResilienceInterceptor
from ._streams import ServiceStreams
from ._streams_admin import streams_admin_routes
from ._workflows_admin import workflow_admin_routes

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import timedelta

    from garrison.durable import ActorSystem, Engine
    from garrison.resilience import RetryPolicy
    from garrison.streams import StreamApp

__all__ = ["Service"]

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)
Hook = Callable[[], Awaitable[None]]
ReadinessCheck = Callable[[], Awaitable[bool]]
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_PATH_PARAM = re.compile(r"{([A-Za-z_]\w*)(?::\w+)?}")
_log = get_logger("service")


class Service:
    """A named service: routes, clients to other services and lifecycle hooks.

    ::

        svc = Service("sites")

        @svc.get("/sites/{site}")
        async def site(site: str, verbose: bool = False) -> SiteView: ...
    """

    def __init__(self, name: str) -> None:
        if not _NAME.match(name):
            raise ValueError(
                f"service name {name!r}: use lowercase letters, digits and '-', "
                "starting with a letter (at most 63 characters)"
            )
        self.name = name
        self.metrics = ServiceMetrics(name)
        self.config: GarrisonConfig | None = None
        self.replica = 0
        self._routes: list[Route] = []
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._readiness: list[ReadinessCheck] = []
        self._injectors: dict[Any, Injector] = {}
        self._interceptors: list[Interceptor] = []
        self._clients: dict[str, ServiceClient] = {}
        self.resilience = PolicyRegistry()
        """The live resilience pipelines of this service's edges and of its door; see
        :class:`~garrison.resilience.PolicyRegistry` (``replace`` changes an edge live)."""
        self._app: ASGIApp | None = None
        self._ready = False
        self.identity = ServiceIdentity(self)
        """The passport side: ``Passport`` handler parameters, ``requires=``, forwarding."""
        self._durable = ServiceWorkflows(self)
        self._readiness.append(self._durable.workflow_engine)
        self._streams = ServiceStreams(self)

    # -- configuration -------------------------------------------------------------------------

    def configure(self, config: GarrisonConfig, replica: int = 0) -> None:
        """Bind the service to an application's configuration (done by the runner and tests)."""
        settings = ResilienceSettings.from_config(config)  # validate before changing anything
        self._durable.resolve_settings(config, replica)  # [durable] too: fail before serving
        self.config = config
        self.replica = replica
        self.resilience.reload(settings)
        # Clients made before (at import time, as the docs allow) take the [client] section too.
        for client in self._clients.values():
            client._reconfigure(config.client)

    def _config(self) -> GarrisonConfig:
        if self.config is None:
            self.configure(load_config(), self.replica)
            assert self.config is not None
        return self.config

    # -- routes --------------------------------------------------------------------------------

    def route(
        self,
        path: str,
        methods: Sequence[str],
        *,
        status_code: int = 200,
        requires: Requires | None = None,
    ) -> Callable[[F], F]:
        """Register ``fn`` for ``methods`` on ``path`` (a Starlette path template); ``requires``
        states what the request's passport must show (401/403 otherwise)."""
        if not path.startswith("/"):
            raise ValueError(f"route path must start with '/': {path!r}")

        def decorator(fn: F) -> F:
            params = set(_PATH_PARAM.findall(path))
            specs = analyse(fn, params, self._injectors)
            endpoint = _endpoint(fn, specs, path, status_code)
            if requires is not None:
                endpoint = self.identity.guard(endpoint, requires, path)
            self._routes.append(Route(path, endpoint, methods=list(methods), name=fn.__name__))
            self._app = None
            return fn

        return decorator

    def get(
        self, path: str, *, status_code: int = 200, requires: Requires | None = None
    ) -> Callable[[F], F]:
        """Register a ``GET`` handler."""
        return self.route(path, ["GET"], status_code=status_code, requires=requires)

    def post(
        self, path: str, *, status_code: int = 200, requires: Requires | None = None
    ) -> Callable[[F], F]:
        """Register a ``POST`` handler."""
        return self.route(path, ["POST"], status_code=status_code, requires=requires)

    def put(
        self, path: str, *, status_code: int = 200, requires: Requires | None = None
    ) -> Callable[[F], F]:
        """Register a ``PUT`` handler."""
        return self.route(path, ["PUT"], status_code=status_code, requires=requires)

    def patch(
        self, path: str, *, status_code: int = 200, requires: Requires | None = None
    ) -> Callable[[F], F]:
        """Register a ``PATCH`` handler."""
        return self.route(path, ["PATCH"], status_code=status_code, requires=requires)

    def delete(
        self, path: str, *, status_code: int = 200, requires: Requires | None = None
    ) -> Callable[[F], F]:
        """Register a ``DELETE`` handler."""
        return self.route(path, ["DELETE"], status_code=status_code, requires=requires)

    @property
    def routes(self) -> list[tuple[str, list[str]]]:
        """(path, methods) of every user route, in registration order."""
        return [(r.path, sorted(r.methods or ())) for r in self._routes]

    # -- durable workflows (see _durable.py) ----------------------------------------------------

    @overload
    def workflow(self, fn: F, /) -> F: ...
    @overload
    def workflow(self, /, *, name: str | None = ...) -> Callable[[F], F]: ...
    def workflow(self, fn: Any = None, /, *, name: str | None = None) -> Any:
        """Declare a durable workflow of this service (``@svc.workflow`` or
        ``@svc.workflow(name="...")``; the name defaults to the function's qualified name).
        The service then runs a workflow engine; start instances with ``svc.workflows``."""
        return self._durable.workflow(fn, name=name)

    @overload
    def activity(self, fn: F, /) -> F: ...
    @overload
    def activity(
        self,
        /,
        *,
        retry: RetryPolicy | Mapping[str, Any] | None = ...,
        timeout: float | timedelta | None = ...,
        name: str | None = ...,
    ) -> Callable[[F], F]: ...
    def activity(
        self,
        fn: Any = None,
        /,
        *,
        retry: Any = UNSET,
        timeout: float | timedelta | None = None,
        name: str | None = None,
    ) -> Any:
        """Mark a function as an activity with default options, as
        :func:`garrison.durable.activity` does (``retry``: a policy, a mapping of its fields, or
        None for one attempt; ``timeout`` per attempt; ``name`` in the journal)."""
        return self._durable.activity(fn, retry=retry, timeout=timeout, name=name)

    @overload
    def actor(self, cls: C, /) -> C: ...
    @overload
    def actor(self, /, *, name: str | None = ...) -> Callable[[C], C]: ...
    def actor(self, cls: Any = None, /, *, name: str | None = None) -> Any:
        """Declare an actor type hosted by this service (``@svc.actor`` or
        ``@svc.actor(name="...")``; see :func:`garrison.durable.actor`). The service's engine
        hosts it on the same store as its workflows; address actors with ``svc.actors``."""
        return self._durable.actor(cls, name=name)

    @property
    def actors(self) -> ActorSystem:
        """The running actor system (``await svc.actors.ref(Battery, "b-17").call(...)``);
        :class:`UsageError` before startup, after shutdown, or without actors."""
        return self._durable.actors

    @property
    def workflows(self) -> Engine:
        """The running workflow engine (``await svc.workflows.start(wf, *args, id=...)``);
        :class:`UsageError` before startup, after shutdown, or without workflows."""
        return self._durable.running

    # -- stream processors (see _streams.py) ----------------------------------------------------

    def processor(
        self, topic: str | Sequence[str], *, group: str | None = None, **options: Any
    ) -> Callable[[F], F]:
        """Run the decorated handler ``(ctx, record)`` over ``topic`` as a member of consumer
        group ``group`` (default ``{service}-{function}``) while the service runs; options as
        :class:`garrison.streams.Processor` (``stores``, ``outputs``, ``decode``, ``dlq`` ...)."""
        return self._streams.processor(topic, group=group, **options)

    @property
    def streams(self) -> StreamApp:
        """The running stream app (``svc.streams.producer``, ``svc.streams.log``);
        :class:`UsageError` when the service runs no streams."""
        return self._streams.running

    # -- extension points for the pillars ------------------------------------------------------

    def inject(self, type_: Any, factory: Injector) -> None:
        """Let handlers take a parameter of ``type_``, built per request by ``factory``.

        Register before the routes that use it are declared.
        """
        self._injectors[type_] = factory

    def add_client_interceptor(self, interceptor: Interceptor) -> None:
        """Add an interceptor to every client of this service, present and future."""
        self._interceptors.append(interceptor)
        for client in self._clients.values():
            client.add_interceptor(interceptor)

    def on_startup(self, fn: Hook) -> Hook:
        """Run ``fn`` when the service starts, before it reports ready."""
        self._startup.append(fn)
        return fn

    def on_shutdown(self, fn: Hook) -> Hook:
        """Run ``fn`` when the service stops."""
        self._shutdown.append(fn)
        return fn

    def readiness_check(self, fn: ReadinessCheck) -> ReadinessCheck:
        """Add a check that must return True for ``/readyz`` to answer 200."""
        self._readiness.append(fn)
        return fn

    @property
    def callees(self) -> list[str]:
        """The services this one has clients for."""
        return sorted(self._clients)

    # -- clients -------------------------------------------------------------------------------

    def client(self, name: str) -> ServiceClient:
        """The client for calls from this service to service ``name`` (one per callee).

        Instances are looked up in the application's configuration at the first call, so clients
        can be created at import time.
        """
        client = self._clients.get(name)
        if client is None:

            def resolve_urls() -> list[str]:
                return self._config().service(name).urls()

            cfg = self.config.client if self.config is not None else None
            client = ServiceClient(
                name,
                caller=self.name,
                config=cfg,
                metrics=self.metrics,
                resolver=resolve_urls,
                interceptors=self._interceptors,
            )
            # Resilience runs first after the edge metrics, so that every other interceptor
            # (identity, fault injection) runs once per attempt.
            client.add_interceptor(
                ResilienceInterceptor(self.resilience, self.name, name, client.balancer),
                outermost=True,
            )
            self._clients[name] = client
        return client

    # -- the ASGI application ------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether startup has finished and shutdown has not begun."""
        return self._ready

    def asgi(self) -> ASGIApp:
        """The ASGI application serving this service (built once, rebuilt after new routes)."""
        if self._app is None:
            self._app = self._build()
        return self._app

    def _build(self) -> ASGIApp:
        probes = [
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/readyz", self._readyz, methods=["GET"]),
            Route("/metrics", self._metrics_endpoint, methods=["GET"]),
            *admin_routes(self),
            *workflow_admin_routes(self),
            *streams_admin_routes(self),
        ]
        app = Starlette(
            routes=[*probes, *self._routes],
            lifespan=self._lifespan,
            exception_handlers={HTTPException: _http_exception},
            middleware=[Middleware(PassportMiddleware, identity=self.identity)],
        )
        return InboundMiddleware(app, self.metrics, guard=InboundGuard(self.resilience, self.name))

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self._durable.start()  # before the hooks: they may start workflows
        try:
            for hook in self._startup:
                await hook()
            await self._streams.start()  # after the hooks: handlers may use what they set up
        except BaseException:
            await self._durable.stop()  # a failed startup leaves no engine (nor store) open
            raise
        self._ready = True
        _log.info("service %s ready (replica %d)", self.name, self.replica)
        try:
            yield
        finally:
            self._ready = False
            try:
                await self._streams.stop()  # before the hooks: handlers may use what they own
            except Exception:
                _log.exception("stopping the stream processors of %s failed", self.name)
            for hook in reversed(self._shutdown):
                try:
                    await hook()
                except Exception:
                    _log.exception("shutdown hook %s of %s failed", hook, self.name)
            await self._durable.stop()
            for client in self._clients.values():
                await client.aclose()
            await close_shared_redis_clients()  # shared rate limits' Redis connections

    async def _healthz(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def _readyz(self, request: Request) -> Response:
        failing = []
        if not self._ready:
            failing.append("startup")
        for check in self._readiness:
            try:
                ok = await check()
            except Exception:
                ok = False
            if not ok:
                failing.append(getattr(check, "__name__", "check"))
        if failing:
            return Response(
                json_encode({"status": "not ready", "failing": failing}),
                status_code=503,
                media_type="application/json",
            )
        return Response(b'{"status":"ready"}', media_type="application/json")

    async def _metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    def __repr__(self) -> str:
        return f"<Service {self.name} routes={len(self._routes)}>"


async def _http_exception(request: Request, exc: Exception) -> Response:
    return error_response(exc)


def _endpoint(
    fn: Callable[..., Any], specs: list[ParamSpec], template: str, status_code: int
) -> Callable[[Request], Awaitable[Response]]:
    is_async = inspect.iscoroutinefunction(fn)  # decided once, not per call

    async def endpoint(request: Request) -> Response:
        request.scope[ROUTE_SCOPE_KEY] = template
        try:
            kwargs = await resolve(specs, request) if specs else {}
            result = await fn(**kwargs) if is_async else await run_in_threadpool(fn, **kwargs)
        except Exception as exc:
            return error_response(exc)
        return _to_response(result, status_code)

    endpoint.__name__ = fn.__name__
    return endpoint


def _to_response(result: Any, status_code: int) -> Response:
    if isinstance(result, Response):
        return result
    if result is None:
        return Response(status_code=204 if status_code == 200 else status_code)
    if isinstance(result, bytes):
        return Response(result, status_code=status_code, media_type="application/octet-stream")
    return Response(json_encode(result), status_code=status_code, media_type="application/json")
