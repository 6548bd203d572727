"""The gateway: garrison's edge, a pure-ASGI reverse proxy that resolves identity once.

Theory of operation
-------------------
Every HTTP request goes through the same steps, in this order; each step that refuses the
request answers with a JSON error ``{"error", "message", "detail": [{"reason": ...}]}`` and
nothing after it runs:

1. **Strip.** :func:`~._headers.read_request` sorts the headers in one pass. Every inbound
   ``garrison-passport`` and every other internal header (``garrison-*``, ``x-garrison-*``,
   whatever their case, repetition or surrounding whitespace, ``_`` read as ``-``) is dropped
   *before anything reads the headers*, whatever the route and its auth mode: the only
   passport an upstream ever sees is the one minted below.
2. **Limits.** Header count and size (431), a declared body over the limit (413), a bad path
   (dot or empty segments, which an upstream could normalise into another route: 400), no
   route (404), a method the route does not allow (405), a malformed ``garrison-timeout-ms``
   (400).
3. **Identity.** :meth:`IdentityEdge.authenticate` finds and resolves the credentials the
   route allows and mints the passport; :meth:`AccessRule.check` applies the route's rules.
   No credential or a bad one: 401; known but not allowed: 403; an identity store or
   provider down: 503 (never a 401, which would log users out).
4. **Proxy.** An instance of the route's service is picked by garrison's
   :class:`~garrison.service.Balancer`; the request goes upstream through one pooled aiohttp
   session (:class:`~._upstream.AiohttpUpstream`) with its method, path (the prefix removed
   if the route says so), query and end-to-end headers, minus the credential the passport
   was made from, plus ``garrison-passport``, ``x-forwarded-*``, a child ``traceparent`` and
   the remaining budget in ``garrison-timeout-ms``. The body streams in both directions and
   is never buffered whole; a streamed request body over the limit is cut (413).
5. **Respond.** Status and end-to-end headers are relayed; hop-by-hop headers and any
   passport are dropped. Identity actions run here: those of the resolution (a renewed
   session cookie) and those the service asked for with ``garrison-identity-action``
   (``renew-session``, ``end-session``), which is stripped; each becomes a ``Set-Cookie``.

The budget of a request is the route's ``timeout`` (else the gateway's), cut by a smaller
``garrison-timeout-ms`` from the client. An upstream that cannot be reached answers 502, one
that sends no response in time 504; a response cut short mid-body closes the client's
connection (its status has been sent). When the client goes away during a long response,
the upstream request is cancelled.

``/_garrison/*`` is the gateway's own: ``healthz``, ``metrics``, and the auth endpoints a proxy
in front calls instead of proxying through the gateway: ``/_garrison/auth`` (nginx
``auth_request``, the original request in ``X-Original-URI`` / ``X-Original-Method``) and
``/_garrison/authz[/original/path]`` (Envoy HTTP ``ext_authz``). They run steps 1-3 and answer
200 with the passport in ``garrison-passport`` (and ``Set-Cookie`` for identity actions), or
401/403; only peers listed in ``auth_clients`` may call them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from starlette.types import Receive, Scope, Send

from garrison.core import (
    DEADLINE_HEADER,
    Clock,
    DeadlineExceeded,
    GarrisonConfig,
    PermissionDenied,
    ServiceUnavailable,
    TransportError,
    Unauthenticated,
    get_logger,
    json_encode,
)
from garrison.identity import IdentityAction
from garrison.identity._edge import EdgeResult, IdentityEdge
from garrison.identity._passport import PASSPORT_HEADER
from garrison.service import Balancer, ServiceMetrics, TraceContext, parse_traceparent

from ._config import GatewayConfig, RouteConfig
from ._headers import (
    HeaderPolicy,
    InboundHeaders,
    forwarded_headers,
    read_request,
    read_response,
    render_cookie,
    strip_credentials,
)
from ._routes import Route, RouteTable, bad_path, upstream_path
from ._upstream import AiohttpUpstream, Upstream, UpstreamResponse

__all__ = ["INTERNAL_PREFIX", "Gateway"]

_log = get_logger("gateway")

INTERNAL_PREFIX = "/_garrison/"
"""Paths under this prefix are the gateway's own and never proxied."""
MAX_BUDGET_MS = 24 * 3600 * 1000
_PASSPORT = PASSPORT_HEADER.encode()
_DEADLINE = DEADLINE_HEADER.encode()
_JSON = (b"content-type", b"application/json")
_LONG_BODY = 64 * 1024  # responses longer than this (or unsized) watch for the client leaving
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}
# The method is a metrics label and clients choose it: anything else is counted as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _outcome(status: int | None) -> str:
    # The outcome labels of garrison's service metrics.
    if status is None:
        return "error"
    if status < 400:
        return "ok"
    return "client_error" if status < 500 else "server_error"


class _Refusal(Exception):
    """A request refused before it reaches an upstream: status, code, reason, message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        reason: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.reason = reason or code
        self.message = message
        self.headers = headers or []


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


@dataclass(slots=True)
class _BodyState:
    sent: int = 0
    done: bool = False
    too_large: bool = False
    gone: bool = False


class Gateway:
    """The edge as an ASGI application (see the module docstring).

    Build it with :meth:`from_config`; serve it with any ASGI server (``garrison gateway`` runs
    it under uvicorn). Its lifespan closes the upstream pool and the resolvers; without a
    lifespan, call :meth:`aclose`.
    """

    def __init__(
        self,
        config: GatewayConfig,
        routes: list[RouteConfig],
        edge: IdentityEdge,
        balancers: Mapping[str, Balancer],
        *,
        upstream: Upstream | None = None,
    ) -> None:
        self.config = config
        self.edge = edge
        self.table = RouteTable(routes)
        self.balancers = dict(balancers)
        self.upstream: Upstream = upstream or AiohttpUpstream(
            max_connections=config.max_connections, connect_timeout=config.connect_timeout
        )
        self.metrics = ServiceMetrics("gateway")
        self._policy = HeaderPolicy.create(
            config.pass_headers, config.strip_headers, config.trust_forwarded
        )
        self._limits = config.limits
        self._auth_clients = frozenset(config.auth_clients)
        for route in self.table.routes:
            svc = route.config.service
            if svc is not None and svc not in self.balancers:
                raise ValueError(f"route {route.prefix!r}: no balancer for service {svc!r}")
        # Metric children made once: labels() costs microseconds per call.
        self._edges = {name: self.metrics.edge(name) for name in self.balancers}

    @classmethod
    def from_config(
        cls,
        config: GarrisonConfig,
        *,
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
        upstream: Upstream | None = None,
        edge: IdentityEdge | None = None,
    ) -> Gateway:
        """The gateway ``[gateway]`` and ``[identity]`` describe; upstreams from ``[services]``.

        Raises :class:`~garrison.core.ConfigError` naming the key.
        """
        from garrison.identity._config import IdentityConfig

        # Validated before anything is built (secrets read, stores opened).
        names = (
            IdentityConfig.from_config(config).resolver_names()
            if edge is None
            else edge.resolver_names
        )
        gw, routes = GatewayConfig.from_config(config, resolvers=names)
        if edge is None:
            edge = IdentityEdge.from_config(config, clock=clock, env=env)
        balancers = {}
        for route in routes:
            name = route.service
            if name is not None and name not in balancers:
                svc = config.service(name)
                urls = svc.urls() if svc.instances else [_local(u) for u in svc.urls()]
                balancers[name] = Balancer(name, urls, config.client.load_balancer)
        return cls(gw, routes, edge, balancers, upstream=upstream)

    async def aclose(self) -> None:
        """Close the upstream pool and the resolvers."""
        await self.upstream.aclose()
        await self.edge.aclose()

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # websockets are not proxied (yet): refuse the handshake
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path.startswith(INTERNAL_PREFIX):
            await self._internal(scope, send, path)
            return
        start = time.perf_counter()
        metrics = self.metrics
        metrics.inflight_in.inc()
        status = 0
        label = "<unmatched>"
        try:
            inbound = read_request(scope["headers"], self._policy)  # step 1: strip first
            route = self._route(scope, inbound, path)
            label = route.prefix
            budget = self._budget(route, inbound)
            result = await self._authenticate(route, inbound)
            if route.config.service is None:
                raise _Refusal(404, "not_found", "this route is served by the proxy in front only")
            status = await self._proxy(scope, receive, send, route, inbound, result, budget)
        except _Refusal as r:
            status = r.status
            await _send_error(send, r)
        finally:
            metrics.inflight_in.dec()
            method = scope["method"] if scope["method"] in _METHODS else "other"
            latency, outcomes = metrics.inbound(method, label)
            latency.observe(time.perf_counter() - start)
            outcomes[_outcome(status or None)].inc()

    # -- steps 2 and 3 -------------------------------------------------------------------

    def _route(self, scope: Scope, inbound: InboundHeaders, path: str) -> Route:
        limits = self._limits
        if inbound.count > limits.max_headers:
            raise _Refusal(
                431,
                "headers_too_large",
                f"{inbound.count} request headers; at most {limits.max_headers} are accepted",
            )
        if inbound.size > limits.max_header_bytes:
            raise _Refusal(
                431,
                "headers_too_large",
                f"request headers of {inbound.size} bytes; at most {limits.max_header_bytes}",
            )
        declared = _content_length(inbound)
        if declared is not None and declared > limits.max_body_bytes:
            raise _Refusal(
                413,
                "too_large",
                f"request body of {declared} bytes; at most {limits.max_body_bytes}",
            )
        problem = bad_path(path)
        if problem is not None:
            raise _Refusal(400, "bad_request", problem, "bad_path")
        route = self.table.match(path)
        if route is None:
            raise _Refusal(404, "not_found", f"no route for {path[:200]!r}")
        if route.methods and scope["method"] not in route.methods:
            allow = ", ".join(sorted(route.methods)).encode()
            raise _Refusal(
                405,
                "method_not_allowed",
                f"{scope['method'][:16]} is not allowed here",
                headers=[(b"allow", allow)],
            )
        return route

    def _budget(self, route: Route, inbound: InboundHeaders) -> float:
        budget = route.config.timeout or self.config.timeout
        raw = inbound.timeout_ms
        if raw is not None:
            try:
                ms = int(raw)
            except ValueError:
                ms = -1
            if not 0 <= ms <= MAX_BUDGET_MS:
                raise _Refusal(
                    400,
                    "bad_request",
                    f"header {DEADLINE_HEADER} must be an integer number of milliseconds in "
                    f"[0, {MAX_BUDGET_MS}], got {raw[:40].decode('latin-1')!r}",
                    "bad_deadline",
                )
            if ms == 0:
                raise _Refusal(504, "deadline_exceeded", "the client's deadline is spent")
            budget = min(budget, ms / 1000)
        return budget

    async def _authenticate(self, route: Route, inbound: InboundHeaders) -> EdgeResult:
        rule = route.rule
        try:
            result = await self.edge.authenticate(
                inbound.credentials,
                allowed=route.resolvers,
                anonymous=rule.allows_anonymous,
                ignore_invalid=route.config.ignore_invalid,
            )
            rule.check(result.passport)
        except Unauthenticated as exc:
            raise _Refusal(
                401, "unauthenticated", str(exc), exc.reason, [(b"www-authenticate", b"Bearer")]
            ) from None
        except PermissionDenied as exc:
            raise _Refusal(403, "forbidden", str(exc), exc.reason) from None
        except ServiceUnavailable as exc:
            _log.warning("identity unavailable: %s", exc)
            raise _Refusal(
                503,
                "unavailable",
                "identity could not be checked right now; try again",
                "identity_unavailable",
            ) from None
        except Exception:
            _log.exception("identity check failed")
            raise _Refusal(500, "internal", "internal error", "internal") from None
        return result

    # -- steps 4 and 5 -------------------------------------------------------------------

    async def _proxy(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: Route,
        inbound: InboundHeaders,
        result: EdgeResult,
        budget: float,
    ) -> int:
        service = route.config.service
        assert service is not None
        balancer = self.balancers[service]
        try:
            instance = balancer.pick()
        except ServiceUnavailable as exc:
            raise _Refusal(503, "unavailable", str(exc), "no_instance") from None
        method: str = scope["method"]
        target = upstream_path(route, scope["path"], scope.get("raw_path"))
        qs: bytes = scope.get("query_string", b"")
        url = instance.url + target.decode("latin-1") + ("?" + qs.decode("latin-1") if qs else "")
        headers = self._upstream_headers(scope, route, inbound, result, budget)
        state = _BodyState()
        declared = _content_length(inbound)
        body: AsyncIterator[bytes] | None = None
        if inbound.chunked or (declared is not None and declared > 0):
            body = _request_body(receive, state, self._limits.max_body_bytes)
        else:
            state.done = True
        edge = self._edges[service]
        latency, outcomes = edge.route(route.prefix)
        edge.inflight.inc()
        instance.outstanding += 1
        start = time.perf_counter()
        status = 0
        try:
            try:
                resp = await self.upstream.open(method, url, headers, body, budget)
            except Exception as exc:
                if state.gone:
                    return 499  # the client left while sending its body: nobody to answer
                if state.too_large:
                    raise _Refusal(
                        413,
                        "too_large",
                        f"request body over {self._limits.max_body_bytes} bytes",
                    ) from None
                if isinstance(exc, DeadlineExceeded):
                    _log.info("upstream %s timed out: %s", service, exc)
                    raise _Refusal(
                        504,
                        "deadline_exceeded",
                        f"service {service} did not answer within {budget:g}s",
                        headers=[(b"garrison-no-retry", b"1")],
                    ) from None
                if isinstance(exc, TransportError):
                    _log.warning("upstream %s unreachable: %s", service, exc)
                    raise _Refusal(
                        502, "bad_gateway", f"service {service} could not be reached"
                    ) from None
                raise
            try:
                complete = await self._relay(resp, receive, send, result, state)
            finally:
                await resp.aclose()
            status = resp.status if complete else 0  # 0: counted as an error
            return status
        finally:
            instance.outstanding -= 1
            edge.inflight.dec()
            latency.observe(time.perf_counter() - start)
            outcomes[_outcome(status or None)].inc()

    def _upstream_headers(
        self,
        scope: Scope,
        route: Route,
        inbound: InboundHeaders,
        result: EdgeResult,
        budget: float,
    ) -> list[tuple[bytes, bytes]]:
        kept = inbound.kept
        if not self.config.forward_credentials:
            kept = strip_credentials(kept, result.credentials)
        traceparent = tracestate = None
        headers: list[tuple[bytes, bytes]] = []
        for name, value in kept:
            if name == b"traceparent":
                traceparent = value.decode("latin-1")
            elif name == b"tracestate":
                tracestate = value.decode("latin-1")
            else:
                headers.append((name, value))
        parent = parse_traceparent(traceparent, tracestate)
        span = parent.child() if parent is not None else TraceContext.new()
        stripped = route.config.strip_prefix and route.prefix != "/"
        headers += forwarded_headers(
            inbound,
            client=scope.get("client"),
            scheme=scope.get("scheme", "http"),
            prefix=route.prefix if stripped else None,
        )
        headers.append((b"traceparent", span.traceparent.encode()))
        if span.tracestate:
            headers.append((b"tracestate", span.tracestate.encode("latin-1")))
        declared = _content_length(inbound)
        if declared is not None and not inbound.chunked:
            headers.append((b"content-length", str(declared).encode()))
        headers.append((_PASSPORT, result.token.encode("ascii")))
        headers.append((_DEADLINE, str(max(1, int(budget * 1000))).encode()))
        headers.append((b"garrison-caller", b"gateway"))
        return headers

    async def _relay(
        self,
        resp: UpstreamResponse,
        receive: Receive,
        send: Send,
        result: EdgeResult,
        state: _BodyState,
    ) -> bool:
        """Relay the response; False when it could not be relayed whole."""
        headers, asked = read_response(resp.headers)
        actions = list(result.actions)
        for name in asked:
            try:
                actions.extend(await self.edge.execute(name, result))
            except Exception:  # the response itself must still reach the client
                _log.exception("identity action %r failed", name[:40])
        headers += self._cookies(actions)
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        me = asyncio.current_task()
        watcher: asyncio.Task[None] | None = None
        finished = left = False
        if me is not None and state.done and _long(headers):

            async def watch() -> None:
                nonlocal left
                while (await receive())["type"] != "http.disconnect":
                    pass
                if not finished:
                    left = True
                    me.cancel()

            watcher = asyncio.create_task(watch())
        try:
            async for chunk in resp.body():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            finished = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not left or me is None:
                raise
            me.uncancel()
            _log.info("client left during the response; upstream request cancelled")
            return False
        except (TransportError, DeadlineExceeded) as exc:
            # The status is sent: all that is left is to end without completing the body, so
            # that the server closes the connection and the client cannot mistake what it got
            # for the whole answer.
            _log.warning("upstream response cut short: %s", exc)
            return False
        finally:
            if watcher is not None:
                watcher.cancel()
        return True

    def _cookies(self, actions: Iterable[IdentityAction]) -> list[tuple[bytes, bytes]]:
        out = []
        for action in actions:
            value = render_cookie(
                action, secure=self.config.cookie_secure, samesite=self.config.cookie_samesite
            )
            if value is None:
                _log.error("identity action %s for %r cannot be applied", action.kind, action.name)
            else:
                out.append((b"set-cookie", value))
        return out

    # -- /_garrison/* --------------------------------------------------------------------

    async def _internal(self, scope: Scope, send: Send, path: str) -> None:
        if path in ("/_garrison/healthz", "/_garrison/readyz"):
            await _send(send, 200, [_JSON], b'{"status":"ok"}')
        elif path == "/_garrison/metrics":
            ctype = (b"content-type", b"text/plain; version=0.0.4")
            await _send(send, 200, [ctype], self.metrics.render())
        elif self.config.auth_endpoint and (
            path == "/_garrison/auth"
            or path == "/_garrison/authz"
            or path.startswith("/_garrison/authz/")
        ):
            try:
                result = await self._check(scope, path)
            except _Refusal as r:
                await _send_error(send, r)
            else:
                headers = [_JSON, (_PASSPORT, result.token.encode("ascii"))]
                headers += self._cookies(list(result.actions))
                await _send(send, 200, headers, b'{"status":"allowed"}')
        else:
            await _send_error(send, _Refusal(404, "not_found", f"no such endpoint {path[:80]!r}"))

    async def _check(self, scope: Scope, path: str) -> EdgeResult:
        client = scope.get("client")
        if self._auth_clients and (client is None or client[0] not in self._auth_clients):
            raise _Refusal(
                403, "forbidden", "the auth endpoint is for the proxy only", "untrusted_client"
            )
        inbound = read_request(scope["headers"], self._policy)
        values = inbound.credentials.headers
        original = values.get("x-original-uri")
        if path == "/_garrison/auth" or original is not None:
            if original is None:
                raise _Refusal(
                    400, "bad_request", "X-Original-URI is missing", "missing_original_uri"
                )
            try:
                target = unquote(urlsplit(original).path, errors="strict")
            except (UnicodeDecodeError, ValueError):
                raise _Refusal(
                    403, "forbidden", "X-Original-URI is not a valid URI", "bad_path"
                ) from None
            method = values.get("x-original-method", "GET").strip().upper()
        else:  # Envoy ext_authz: the original path follows the prefix, the method is ours
            target = path[len("/_garrison/authz") :] or "/"
            method = scope["method"]
        scope = {**scope, "method": method[:16]}
        try:
            route = self._route(scope, inbound, target)
        except _Refusal as r:
            # nginx treats any status but 2xx/401/403 as an error of its own (500): refuse
            # with a 403 that still names the reason.
            raise _Refusal(403, "forbidden", r.message, r.reason) from None
        self._budget(route, inbound)
        return await self._authenticate(route, inbound)


def _content_length(inbound: InboundHeaders) -> int | None:
    raw = inbound.content_length
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise _Refusal(400, "bad_request", "Content-Length is not a single number", "bad_length")
    return int(raw)


async def _request_body(receive: Receive, state: _BodyState, limit: int) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            state.gone = True
            raise _ClientGone
        chunk: bytes = message.get("body", b"")
        state.sent += len(chunk)
        if state.sent > limit:
            state.too_large = True
            raise _BodyTooLarge
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            state.done = True
            return


def _long(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-length":
            return not value.isdigit() or int(value) > _LONG_BODY
    return True


def _local(url: str) -> str:
    scheme, _, rest = url.partition("://")
    host, _, port = rest.rpartition(":")
    host = _LOOPBACK.get(host, host)
    return f"{scheme}://{host}:{port}"


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, r: _Refusal) -> None:
    body = json_encode({"error": r.code, "message": r.message, "detail": [{"reason": r.reason}]})
    await _send(send, r.status, [_JSON, *r.headers], body)
