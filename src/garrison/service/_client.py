"""The inter-service client: every call from one service to another goes through it.

Theory of operation
-------------------
A call becomes a :class:`ClientRequest` that travels down one chain, assembled once per client
(not per call) in :meth:`ServiceClient._build`::

    edge metrics  ->  interceptors...  ->  dispatch: deadline -> instance -> headers -> transport

* **edge metrics** (outermost, in :meth:`ServiceClient.request` itself) count every call on the
  caller → callee → route edge with its outcome, latency and in-flight gauge, whatever the
  layers inside decide (a rejection by a breaker is an error on the edge too).
* **interceptors** are where the pillars plug in without touching call sites: the resilience
  pipeline, the identity passport, fault injection. Each is ``async (request, call_next) ->
  response``; :meth:`ServiceClient.add_interceptor` swaps the chain atomically, so calls in
  flight finish on the chain they started with.
* **dispatch** computes the budget (the smaller of the caller's remaining deadline and this
  call's timeout; a spent budget fails before anything is sent), picks an instance with the
  balancer (each retry attempt picks again), adds the propagation headers (remaining budget,
  W3C trace context as a child span, the caller's name) and sends through the transport, which
  enforces the budget.

Every call pays for this chain, so it is kept flat: the links between interceptors are plain
functions (no coroutine of their own), the metrics are plain counters (see ``_metrics``), the
trace header is written without building a span object, and the transport's budget is an entry
on the loop's shared timeout wheel rather than a timer of its own.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, overload
from urllib.parse import urlencode

from garrison.core import (
    DEADLINE_HEADER,
    ClientConfig,
    DeadlineExceeded,
    InvalidInput,
    RemoteProtocolError,
    RemoteStatusError,
    current_deadline,
    json_decode,
    json_encode,
)

from ._balancer import Balancer, Instance
from ._metrics import EdgeMetrics, ServiceMetrics, outcome_of
from ._tracing import TRACEPARENT, TRACESTATE, child_traceparent, current_trace
from ._transport import AiohttpTransport, Transport

__all__ = [
    "CALLER_HEADER",
    "CallNext",
    "ClientRequest",
    "ClientResponse",
    "Interceptor",
    "ServiceClient",
]

CALLER_HEADER = "garrison-caller"
T = TypeVar("T")
_MISSING: Any = object()


class ClientRequest:
    """One outbound call as it travels through the interceptor chain (mutable by design)."""

    __slots__ = (
        "attempt",
        "callee",
        "caller",
        "content",
        "extensions",
        "headers",
        "instance",
        "method",
        "path",
        "route",
        "timeout",
    )

    def __init__(
        self,
        method: str,
        path: str,
        *,
        caller: str,
        callee: str,
        headers: dict[str, str],
        content: bytes | None,
        timeout: float,
        route: str,
    ) -> None:
        self.method = method
        self.path = path
        self.caller = caller
        self.callee = callee
        self.headers = headers
        self.content = content
        self.timeout = timeout
        """This call's own budget in seconds (the caller's deadline may cut it shorter)."""
        self.route = route
        """The metrics label of the route (a template, not the raw path)."""
        self.attempt = 1
        """1 for the first try; a retry interceptor raises it per attempt."""
        self.instance: Instance | None = None
        """The instance chosen by dispatch, once chosen."""
        self.extensions: dict[str, Any] = {}
        """Scratch space for interceptors."""

    def __repr__(self) -> str:
        return f"<ClientRequest {self.method} {self.callee}{self.path} attempt={self.attempt}>"


class ClientResponse:
    """A whole response from another service."""

    __slots__ = ("content", "elapsed", "headers", "instance", "path", "service", "status")

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str],
        content: bytes,
        *,
        service: str,
        path: str,
        instance: str,
        elapsed: float,
    ) -> None:
        self.status = status
        self.headers = headers
        self.content = content
        self.service = service
        self.path = path
        self.instance = instance
        """Base URL of the instance that answered."""
        self.elapsed = elapsed
        """Seconds from sending to the whole body received."""

    @property
    def ok(self) -> bool:
        """True for a 2xx or 3xx status."""
        return self.status < 400

    @overload
    def json(self) -> Any: ...
    @overload
    def json(self, type: type[T]) -> T: ...
    def json(self, type: Any = Any) -> Any:
        """Decode the JSON body, validated against ``type`` when given.

        A body that is not valid JSON or fails validation raises
        :class:`~garrison.core.RemoteProtocolError`: the peer broke its contract, so it must
        not surface as a 422 blaming our own caller.
        """
        try:
            return json_decode(self.content, type)
        except InvalidInput as exc:
            raise RemoteProtocolError(
                f"{self.service}{self.path}: invalid response body: {exc}"
            ) from None

    @property
    def text(self) -> str:
        """The body as UTF-8 text."""
        return self.content.decode("utf-8", "replace")

    def raise_for_status(self) -> ClientResponse:
        """Raise :class:`RemoteStatusError` for a 4xx/5xx answer; return ``self`` otherwise."""
        if self.status >= 400:
            raise RemoteStatusError(self.status, self.content, service=self.service, path=self.path)
        return self

    def __repr__(self) -> str:
        return f"<ClientResponse {self.status} from {self.service}{self.path}>"


CallNext = Callable[[ClientRequest], Awaitable[ClientResponse]]
Interceptor = Callable[[ClientRequest, CallNext], Awaitable[ClientResponse]]
"""``async def interceptor(request, call_next) -> ClientResponse``."""


class ServiceClient:
    """An async client for one callee service, used as ``svc.client("name")``.

    Requests return a :class:`ClientResponse` whatever the status (``raise_for_status()`` turns an
    error status into :class:`RemoteStatusError`); failures to get any answer raise
    :class:`~garrison.core.TransportError`, :class:`~garrison.core.DeadlineExceeded` or
    :class:`~garrison.core.ServiceUnavailable`.
    """

    def __init__(
        self,
        callee: str,
        urls: Sequence[str] | None = None,
        *,
        caller: str = "client",
        config: ClientConfig | None = None,
        transport: Transport | None = None,
        interceptors: Sequence[Interceptor] = (),
        metrics: ServiceMetrics | None = None,
        resolver: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        self.callee = callee
        self.caller = caller
        self.config = config or ClientConfig()
        self.balancer = Balancer(callee, urls or (), self.config.load_balancer)
        self._resolver = resolver
        self._own_transport = transport is None
        self._transport: Transport = transport or AiohttpTransport(
            max_connections=self.config.max_connections,
            connect_timeout=self.config.connect_timeout,
        )
        self._metrics = metrics or ServiceMetrics(caller)
        self.edge: EdgeMetrics = self._metrics.edge(callee)
        self._interceptors: tuple[Interceptor, ...] = tuple(interceptors)
        self._chain: CallNext = self._build()

    def _reconfigure(self, config: ClientConfig) -> None:
        """Adopt ``config``: the owning service was configured after this client was made."""
        self.config = config
        self.balancer.strategy = config.load_balancer
        t = self._transport
        if self._own_transport and isinstance(t, AiohttpTransport) and not t.connected:
            self._transport = AiohttpTransport(
                max_connections=config.max_connections, connect_timeout=config.connect_timeout
            )

    # -- the chain ---------------------------------------------------------------------------

    @property
    def interceptors(self) -> tuple[Interceptor, ...]:
        """The interceptors between edge metrics and dispatch, outermost first."""
        return self._interceptors

    def set_interceptors(self, interceptors: Sequence[Interceptor]) -> None:
        """Replace the interceptors atomically; calls in flight finish on the old chain."""
        self._interceptors = tuple(interceptors)
        self._chain = self._build()

    def add_interceptor(self, interceptor: Interceptor, *, outermost: bool = False) -> None:
        """Add an interceptor innermost (next to dispatch) or outermost (next to metrics)."""
        ics = (
            (interceptor, *self._interceptors) if outermost else (*self._interceptors, interceptor)
        )
        self.set_interceptors(ics)

    def _build(self) -> CallNext:
        # The interceptors and dispatch; request() wraps the edge metrics around them.
        call: CallNext = self._dispatch
        for ic in reversed(self._interceptors):
            call = _bind(ic, call)
        return call

    async def _dispatch(self, request: ClientRequest) -> ClientResponse:
        budget = request.timeout
        deadline = current_deadline()
        if deadline is not None:
            left = deadline.remaining()
            if left <= 0:
                raise DeadlineExceeded(
                    f"{self.caller}->{self.callee} {request.path}: caller's deadline already spent"
                )
            if left < budget:
                budget = left
        balancer = self.balancer
        if not balancer.instances and self._resolver is not None:
            balancer.update(self._resolver())
        inst = request.instance = balancer.pick()
        headers = request.headers
        ms = int(budget * 1000)
        headers[DEADLINE_HEADER] = _MS_TEXT.get(ms) or _ms_text(ms)
        headers[CALLER_HEADER] = self.caller
        parent = current_trace()
        headers[TRACEPARENT] = child_traceparent(parent)
        if parent is not None and parent.tracestate:
            headers[TRACESTATE] = parent.tracestate
        inst.outstanding += 1
        start = time.perf_counter()
        try:
            status, rheaders, body = await self._transport.send(
                request.method, inst.url + request.path, headers, request.content, budget
            )
        finally:
            inst.outstanding -= 1
        return ClientResponse(
            status,
            rheaders,
            body,
            service=self.callee,
            path=request.path,
            instance=inst.url,
            elapsed=time.perf_counter() - start,
        )

    # -- the public calls --------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = _MISSING,
        content: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        route: str | None = None,
    ) -> ClientResponse:
        """Call ``method path`` on the callee.

        ``json`` is encoded with msgspec (structs, dataclasses, builtins); ``timeout`` bounds this
        call (default ``[client] timeout``), and the caller's own deadline bounds it further;
        ``route`` is the metrics label (default: the path without its query).
        """
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        hdrs = {k.lower(): v for k, v in headers.items()} if headers else {}
        if json is not _MISSING:
            if content is not None:
                raise ValueError("pass either json= or content=, not both")
            content = json_encode(json)
            hdrs.setdefault("content-type", "application/json")
        label = route or path.partition("?")[0]
        if params:
            path = f"{path}{'&' if '?' in path else '?'}{urlencode(params, doseq=True)}"
        request = ClientRequest(
            method.upper(),
            path,
            caller=self.caller,
            callee=self.callee,
            headers=hdrs,
            content=content,
            timeout=self.config.timeout if timeout is None else timeout,
            route=label,
        )
        # The edge metrics, outermost (inline: one coroutine less per call): whatever the chain
        # inside decides is counted. The chain this call starts on is the one it finishes on.
        chain = self._chain
        edge = self.edge
        latency, outcomes = edge.route(label)
        inflight = edge.inflight
        inflight.value += 1
        start = time.perf_counter()
        status: int | None = None
        try:
            response = await chain(request)
            status = response.status
            return response
        finally:
            latency.observe(time.perf_counter() - start)
            outcomes[outcome_of(status)].value += 1
            inflight.value -= 1

    async def get(self, path: str, **kw: Any) -> ClientResponse:
        """``GET path``; keyword arguments as for :meth:`request`."""
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> ClientResponse:
        """``POST path``; keyword arguments as for :meth:`request`."""
        return await self.request("POST", path, **kw)

    async def put(self, path: str, **kw: Any) -> ClientResponse:
        """``PUT path``; keyword arguments as for :meth:`request`."""
        return await self.request("PUT", path, **kw)

    async def patch(self, path: str, **kw: Any) -> ClientResponse:
        """``PATCH path``; keyword arguments as for :meth:`request`."""
        return await self.request("PATCH", path, **kw)

    async def delete(self, path: str, **kw: Any) -> ClientResponse:
        """``DELETE path``; keyword arguments as for :meth:`request`."""
        return await self.request("DELETE", path, **kw)

    async def aclose(self) -> None:
        """Close the transport's connections."""
        await self._transport.aclose()

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<ServiceClient {self.caller}->{self.callee}>"


_MS_TEXT: dict[int, str] = {}
"""Budget header values by milliseconds: budgets repeat (the default timeout, round numbers)."""


def _ms_text(ms: int) -> str:
    text = str(max(1, ms))
    if len(_MS_TEXT) < 4096:
        _MS_TEXT[ms] = text
    return text


def _bind(interceptor: Interceptor, call_next: CallNext) -> CallNext:
    # A plain function handing back the interceptor's own awaitable: no coroutine frame of its
    # own per link, which every resumption of the call would otherwise pass through.
    def call(request: ClientRequest) -> Awaitable[ClientResponse]:
        return interceptor(request, call_next)

    return call
