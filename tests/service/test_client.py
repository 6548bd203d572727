"""ServiceClient: propagation headers, budgets, the interceptor chain and edge metrics (no sockets),
then the two real transports against a tiny uvicorn server on loopback."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec
import pytest
import uvicorn

from garrison.core import (
    ClientConfig,
    DeadlineExceeded,
    InvalidInput,
    RemoteProtocolError,
    RemoteStatusError,
    ServiceUnavailable,
    TransportError,
    deadline_scope,
)
from garrison.service import (
    AiohttpTransport,
    CallNext,
    ClientRequest,
    ClientResponse,
    HttpxTransport,
    MockTransport,
    Service,
    ServiceClient,
    ServiceMetrics,
    TraceContext,
    Transport,
    parse_traceparent,
)
from garrison.service._tracing import reset_current_trace, set_current_trace

JSON = {"content-type": "application/json"}


class Reading(msgspec.Struct):
    device: str
    kw: float


def ok(method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> Any:
    return 200, JSON, b'{"device":"d1","kw":1.5}'


def make(
    handler: Any = ok,
    *,
    urls: tuple[str, ...] = ("http://back-0:8000",),
    metrics: ServiceMetrics | None = None,
    **kw: Any,
) -> tuple[ServiceClient, MockTransport]:
    transport = MockTransport(handler)
    client = ServiceClient("back", urls, caller="front", transport=transport, metrics=metrics, **kw)
    return client, transport


def sent_headers(transport: MockTransport, i: int = -1) -> dict[str, str]:
    return transport.requests[i][2]


def edge_count(metrics: ServiceMetrics, route: str, outcome: str) -> float:
    labels = {"caller": "front", "callee": "back", "route": route, "outcome": outcome}
    return metrics.registry.get_sample_value("garrison_edge_requests_total", labels) or 0.0


# -- propagation headers and budgets ---------------------------------------------------------


async def test_the_propagation_headers_are_added() -> None:
    client, transport = make(config=ClientConfig(timeout=2.5))
    await client.get("/info", headers={"X-Custom": "1"})
    (method, url, headers, body) = transport.requests[0]
    assert (method, url, body) == ("GET", "http://back-0:8000/info", None)
    assert headers["garrison-caller"] == "front"
    assert headers["garrison-timeout-ms"] == "2500"
    assert headers["x-custom"] == "1"
    span = parse_traceparent(headers["traceparent"])
    assert span is not None  # a fresh trace: there is no current span
    assert "tracestate" not in headers


async def test_the_timeout_of_a_call_overrides_the_default() -> None:
    client, transport = make(config=ClientConfig(timeout=2.5))
    await client.get("/info", timeout=0.25)
    assert sent_headers(transport)["garrison-timeout-ms"] == "250"


async def test_the_budget_is_cut_to_the_callers_deadline() -> None:
    client, transport = make(config=ClientConfig(timeout=30.0))
    with deadline_scope(0.5):
        await client.get("/info")
    assert 0 < int(sent_headers(transport)["garrison-timeout-ms"]) <= 500
    with deadline_scope(60):
        await client.get("/info", timeout=0.1)
    assert sent_headers(transport)["garrison-timeout-ms"] == "100"


async def test_the_transport_gets_the_same_budget_as_the_header() -> None:
    seen: list[float] = []

    class Recording(MockTransport):
        async def send(
            self,
            method: str,
            url: str,
            headers: Mapping[str, str],
            content: bytes | None,
            timeout: float,
        ) -> Any:
            seen.append(timeout)
            return await super().send(method, url, headers, content, timeout)

    transport = Recording(ok)
    client = ServiceClient("back", ["http://b"], caller="front", transport=transport)
    with deadline_scope(0.5):
        await client.get("/info", timeout=5)
    assert 0 < seen[0] <= 0.5


async def test_a_spent_deadline_fails_without_sending() -> None:
    metrics = ServiceMetrics("front")
    client, transport = make(metrics=metrics)
    with deadline_scope(0), pytest.raises(DeadlineExceeded, match="already spent"):
        await client.get("/info")
    assert transport.requests == []
    assert edge_count(metrics, "/info", "error") == 1


async def test_the_traceparent_is_a_child_of_the_current_span() -> None:
    client, transport = make()
    current = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1, None, "k=v")
    token = set_current_trace(current)
    try:
        await client.get("/info")
        await client.get("/info")
    finally:
        reset_current_trace(token)
    spans = [parse_traceparent(sent_headers(transport, i)["traceparent"]) for i in (0, 1)]
    for span in spans:
        assert span is not None
        assert span.trace_id == current.trace_id
        assert span.span_id != current.span_id
        assert span.flags == 1
    assert spans[0] != spans[1]  # each call is its own span
    assert sent_headers(transport)["tracestate"] == "k=v"


# -- building the request --------------------------------------------------------------------


async def test_json_is_encoded_with_a_content_type() -> None:
    client, transport = make()
    await client.post("/readings", json=Reading("d1", 2.0))
    await client.post("/readings", json=None)
    await client.put("/raw", content=b"\x00", headers={"content-type": "application/x-raw"})
    await client.patch("/x", json={"a": 1}, headers={"Content-Type": "application/merge+json"})
    assert transport.requests[0][3] == b'{"device":"d1","kw":2.0}'
    assert transport.requests[0][2]["content-type"] == "application/json"
    assert transport.requests[1][3] == b"null"
    assert transport.requests[2][2]["content-type"] == "application/x-raw"
    assert transport.requests[2][3] == b"\x00"
    assert transport.requests[3][2]["content-type"] == "application/merge+json"
    assert [r[0] for r in transport.requests] == ["POST", "POST", "PUT", "PATCH"]


async def test_params_are_appended_to_the_query() -> None:
    client, transport = make()
    await client.get("/s", params={"q": "a b", "tag": ["x", "y"]})
    await client.delete("/s?fixed=1", params={"n": 2})
    assert transport.requests[0][1] == "http://back-0:8000/s?q=a+b&tag=x&tag=y"
    assert transport.requests[1][:2] == ("DELETE", "http://back-0:8000/s?fixed=1&n=2")


async def test_the_route_label_is_the_path_without_query_unless_given() -> None:
    metrics = ServiceMetrics("front")
    client, _ = make(metrics=metrics)
    await client.get("/devices/d1?full=1")
    await client.get("/devices/d2", route="/devices/{id}")
    await client.get("/devices/d3", route="/devices/{id}", params={"x": 1})
    assert edge_count(metrics, "/devices/d1", "ok") == 1
    assert edge_count(metrics, "/devices/{id}", "ok") == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"path": "info"},
        {"path": "http://elsewhere/info"},
        {"path": "/x", "json": {}, "content": b"{}"},
    ],
)
async def test_bad_arguments_raise_value_error(kwargs: dict[str, Any]) -> None:
    client, transport = make()
    with pytest.raises(ValueError, match=r"path must start|either json"):
        await client.request("POST", **kwargs)
    assert transport.requests == []


# -- responses -------------------------------------------------------------------------------


async def test_the_response_carries_what_was_answered() -> None:
    client, _ = make()
    r = await client.get("/info")
    assert (r.status, r.ok, r.service, r.path) == (200, True, "back", "/info")
    assert r.instance == "http://back-0:8000"
    assert r.elapsed >= 0
    assert r.json() == {"device": "d1", "kw": 1.5}
    assert r.json(Reading) == Reading("d1", 1.5)
    assert r.text == '{"device":"d1","kw":1.5}'
    assert r.raise_for_status() is r
    assert repr(r) == "<ClientResponse 200 from back/info>"


async def test_mock_response_headers_are_case_insensitive_like_real_ones() -> None:
    client, _ = make(lambda *a: (503, {"Retry-After": "2", "Garrison-No-Retry": "1"}, b""))
    r = await client.get("/info")
    assert r.headers.get("retry-after") == "2"
    assert r.headers["garrison-no-retry"] == "1"


async def test_a_peers_invalid_body_is_a_remote_protocol_error_naming_the_field() -> None:
    # The peer broke its contract: that must not surface as our caller's InvalidInput (422).
    client, _ = make(lambda *a: (200, JSON, b'{"device":"d1","kw":"lots"}'))
    r = await client.get("/info")
    with pytest.raises(RemoteProtocolError) as info:
        r.json(Reading)
    assert not isinstance(info.value, InvalidInput)
    assert "$.kw" in str(info.value)
    assert "/info" in str(info.value)


@pytest.mark.parametrize("status", [400, 404, 500, 503])
async def test_raise_for_status_raises_for_error_statuses(status: int) -> None:
    client, _ = make(lambda *a: (status, JSON, b'{"error":"x"}'))
    r = await client.get("/info")
    assert not r.ok
    with pytest.raises(RemoteStatusError) as info:
        r.raise_for_status()
    assert (info.value.status, info.value.body) == (status, b'{"error":"x"}')
    assert (info.value.service, info.value.path) == ("back", "/info")


async def test_a_slow_async_handler_is_cut_by_the_budget() -> None:
    async def slow(*args: Any) -> Any:
        await asyncio.Event().wait()

    client, _ = make(slow)
    with pytest.raises(DeadlineExceeded):
        await client.get("/info", timeout=0.01)


# -- interceptors ----------------------------------------------------------------------------


def recorder(name: str, log: list[str]) -> Any:
    async def interceptor(request: ClientRequest, call_next: CallNext) -> ClientResponse:
        log.append(f"{name} in")
        response = await call_next(request)
        log.append(f"{name} out")
        return response

    return interceptor


async def test_interceptors_run_outermost_first() -> None:
    log: list[str] = []
    client, _ = make(interceptors=[recorder("a", log), recorder("b", log)])
    client.add_interceptor(recorder("inner", log))
    client.add_interceptor(recorder("outer", log), outermost=True)
    await client.get("/info")
    assert log == [
        "outer in", "a in", "b in", "inner in", "inner out", "b out", "a out", "outer out",
    ]  # fmt: skip
    assert len(client.interceptors) == 4


async def test_an_interceptor_sees_and_changes_the_request() -> None:
    seen: list[ClientRequest] = []

    async def stamp(request: ClientRequest, call_next: CallNext) -> ClientResponse:
        seen.append(request)
        request.headers["x-passport"] = "signed"
        response = await call_next(request)
        assert request.instance is not None  # dispatch has chosen by now
        return response

    client, transport = make(interceptors=[stamp])
    await client.get("/info", route="/info")
    (req,) = seen
    assert (req.method, req.path, req.caller, req.callee, req.attempt) == (
        "GET", "/info", "front", "back", 1,
    )  # fmt: skip
    assert sent_headers(transport)["x-passport"] == "signed"
    assert repr(req) == "<ClientRequest GET back/info attempt=1>"


async def test_an_interceptor_can_answer_without_calling_on() -> None:
    async def cached(request: ClientRequest, call_next: CallNext) -> ClientResponse:
        return ClientResponse(
            200, {}, b"[]", service="back", path=request.path, instance="cache", elapsed=0
        )

    client, transport = make(interceptors=[cached])
    assert (await client.get("/info")).instance == "cache"
    assert transport.requests == []


async def test_a_swap_leaves_calls_in_flight_on_their_chain() -> None:
    log: list[str] = []
    entered, release = asyncio.Event(), asyncio.Event()

    async def gated(method: str, url: str, headers: Any, body: Any) -> Any:
        if url.endswith("/first"):
            entered.set()
            await release.wait()
        return 200, {}, b""

    client, _ = make(gated, interceptors=[recorder("old", log)])
    first = asyncio.create_task(client.get("/first"))
    await entered.wait()
    client.set_interceptors([recorder("new", log)])
    await client.get("/second")
    release.set()
    await first
    # The first call went in through "old" and came back out through it, after the swap.
    assert log == ["old in", "new in", "new out", "old out"]
    assert [getattr(i, "__qualname__", "") for i in client.interceptors] == [
        "recorder.<locals>.interceptor"
    ]


async def test_service_interceptors_reach_present_and_future_clients() -> None:
    svc = Service("front")
    log: list[str] = []
    present = svc.client("back")
    svc.add_client_interceptor(recorder("x", log))
    future = svc.client("other")
    added = present.interceptors[-1]
    assert added.__qualname__.startswith("recorder")  # type: ignore[attr-defined]
    assert future.interceptors[-1] is added
    assert len(present.interceptors) == len(future.interceptors)
    await present.aclose()
    await future.aclose()


# -- edge metrics ----------------------------------------------------------------------------


async def test_edge_metrics_count_every_outcome() -> None:
    metrics = ServiceMetrics("front")
    answers = {"/ok": 200, "/moved": 302, "/missing": 404, "/broken": 500}

    def handler(method: str, url: str, headers: Any, body: Any) -> Any:
        path = url.removeprefix("http://back-0:8000")
        if path == "/down":
            raise TransportError("connection refused")
        return answers[path], {}, b""

    async def refuse(request: ClientRequest, call_next: CallNext) -> ClientResponse:
        if request.path == "/refused":
            raise ServiceUnavailable("breaker open", retryable=False)
        return await call_next(request)

    client, _ = make(handler, metrics=metrics, interceptors=[refuse])
    for path in answers:
        await client.get(path)
    for path, error in (("/down", TransportError), ("/refused", ServiceUnavailable)):
        with pytest.raises(error):
            await client.get(path)
    assert edge_count(metrics, "/ok", "ok") == 1
    assert edge_count(metrics, "/moved", "ok") == 1
    assert edge_count(metrics, "/missing", "client_error") == 1
    assert edge_count(metrics, "/broken", "server_error") == 1
    assert edge_count(metrics, "/down", "error") == 1
    assert edge_count(metrics, "/refused", "error") == 1
    labels = {"caller": "front", "callee": "back"}
    reg = metrics.registry
    assert reg.get_sample_value("garrison_edge_inflight", labels) == 0
    count = reg.get_sample_value("garrison_edge_request_seconds_count", {**labels, "route": "/ok"})
    assert count == 1


async def test_calls_in_flight_are_counted_on_the_edge_and_the_instance() -> None:
    metrics = ServiceMetrics("front")
    entered, release = asyncio.Event(), asyncio.Event()

    async def gated(*args: Any) -> Any:
        entered.set()
        await release.wait()
        return 200, {}, b""

    client, _ = make(gated, metrics=metrics)
    task = asyncio.create_task(client.get("/info"))
    await entered.wait()
    labels = {"caller": "front", "callee": "back"}
    assert metrics.registry.get_sample_value("garrison_edge_inflight", labels) == 1
    assert client.balancer.instances[0].outstanding == 1
    release.set()
    await task
    assert metrics.registry.get_sample_value("garrison_edge_inflight", labels) == 0
    assert client.balancer.instances[0].outstanding == 0


async def test_a_failed_send_releases_the_instance() -> None:
    def down(*args: Any) -> Any:
        raise TransportError("refused")

    client, _ = make(down)
    with pytest.raises(TransportError):
        await client.get("/info")
    assert client.balancer.instances[0].outstanding == 0


# -- instances -------------------------------------------------------------------------------


async def test_instances_are_resolved_lazily_at_the_first_call() -> None:
    calls: list[int] = []

    def resolve() -> list[str]:
        calls.append(1)
        return ["http://b-0:1", "http://b-1:1/"]

    client, transport = make(urls=(), resolver=resolve)
    assert calls == []
    await client.get("/a")
    await client.get("/b")
    assert calls == [1]
    assert {i.url for i in client.balancer.instances} == {"http://b-0:1", "http://b-1:1"}
    assert transport.requests[0][1] in ("http://b-0:1/a", "http://b-1:1/a")


@pytest.mark.parametrize("resolver", [None, list])
async def test_no_instance_is_service_unavailable(resolver: Any) -> None:
    metrics = ServiceMetrics("front")
    client, transport = make(urls=(), resolver=resolver, metrics=metrics)
    with pytest.raises(ServiceUnavailable, match="'back'"):
        await client.get("/info")
    assert transport.requests == []
    assert edge_count(metrics, "/info", "error") == 1


async def test_the_balancer_strategy_comes_from_the_config() -> None:
    urls = ("http://b-0", "http://b-1", "http://b-2")
    client, transport = make(urls=urls, config=ClientConfig(load_balancer="round_robin"))
    for _ in range(6):
        await client.get("/x")
    hosts = [url.removesuffix("/x") for _, url, _, _ in transport.requests]
    assert sorted(hosts) == sorted(urls * 2)
    assert hosts[:3] == hosts[3:]


async def test_the_client_is_an_async_context_manager() -> None:
    closed: list[bool] = []

    class Closing(MockTransport):
        async def aclose(self) -> None:
            closed.append(True)

    async with ServiceClient("back", ["http://b"], transport=Closing(ok)) as client:
        assert repr(client) == "<ServiceClient client->back>"
    assert closed == [True]


# -- real transports on loopback -------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """A garrison service under uvicorn on 127.0.0.1, in this event loop."""
    svc = Service("echo")
    release = asyncio.Event()

    @svc.post("/echo/{word}")
    async def echo(word: str, reading: Reading) -> dict[str, Any]:
        return {"word": word, "reading": reading}

    @svc.get("/hang")
    async def hang() -> None:
        await release.wait()

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        svc.asgi(), lifespan="off", log_level="warning", access_log=False, ws="none"
    )
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    while not srv.started:
        assert not task.done(), "the server did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        release.set()
        srv.should_exit = True
        await task
        sock.close()


@pytest.fixture
def refusing_url() -> Any:
    """A loopback port that is bound but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(params=["aiohttp", "httpx"])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    t: Transport = AiohttpTransport() if request.param == "aiohttp" else HttpxTransport()
    try:
        yield t
    finally:
        await t.aclose()


async def test_a_real_transport_carries_a_call(server: str, transport: Transport) -> None:
    client = ServiceClient("echo", [server], caller="front", transport=transport)
    r = await client.post("/echo/hi", json=Reading("d1", 3.0))
    assert r.status == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"word": "hi", "reading": {"device": "d1", "kw": 3.0}}
    r = await client.post("/echo/hi", content=b"{")
    assert r.status == 422
    with pytest.raises(RemoteStatusError):
        r.raise_for_status()


async def test_a_real_transport_times_out_as_deadline_exceeded(
    server: str, transport: Transport
) -> None:
    with pytest.raises(DeadlineExceeded):
        await transport.send("GET", server + "/hang", {}, None, 0.05)


async def test_a_refused_connection_is_a_transport_error(
    refusing_url: str, transport: Transport
) -> None:
    with pytest.raises(TransportError):
        await transport.send("GET", refusing_url + "/x", {}, None, 5.0)


async def test_the_aiohttp_budget_is_never_early_and_leaves_no_cancellation(server: str) -> None:
    # aiohttp's budget runs on the shared timeout wheel, not on a timer per request.
    transport = AiohttpTransport()
    try:
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="no answer within"):
            await transport.send("GET", server + "/hang", {}, None, 0.05)
        assert 0.05 <= time.monotonic() - start < 5
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0
        await asyncio.sleep(0.02)  # no stray cancellation is pending either
        status, _, _ = await transport.send("POST", server + "/echo/x", JSON, b"{", 5.0)
        assert status == 422  # and the transport still works
    finally:
        await transport.aclose()


async def test_an_outer_cancellation_of_an_aiohttp_call_stays_a_cancellation(server: str) -> None:
    transport = AiohttpTransport()
    try:
        call = asyncio.create_task(transport.send("GET", server + "/hang", {}, None, 5.0))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    finally:
        await transport.aclose()
