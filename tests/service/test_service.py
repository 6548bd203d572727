"""Service: responses, error mapping, lifespan and readiness, and the inbound middleware."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any

import httpx
import msgspec
import pytest
from starlette.responses import PlainTextResponse, Response

from garrison.core import (
    ClientConfig,
    ConfigError,
    DeadlineExceeded,
    GarrisonConfig,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RemoteProtocolError,
    RemoteStatusError,
    ServiceUnavailable,
    TransportError,
    Unauthenticated,
    UsageError,
    current_deadline,
    parse_config,
    remaining,
)
from garrison.service import NO_RETRY_HEADER, MockTransport, Service, current_trace
from tests._asgi import lifespan


class Reading(msgspec.Struct):
    device: str
    kw: float


@dataclasses.dataclass
class Ack:
    ok: bool


async def call(svc: Service, method: str, url: str, **kw: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=svc.asgi())
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        return await client.request(method, url, **kw)


def sample(svc: Service, name: str, **labels: str) -> float:
    return svc.metrics.registry.get_sample_value(name, labels) or 0.0


# -- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "Sites", "1st", "a_b", "a b", "x" * 64, "-a"])
def test_a_bad_service_name_is_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="service name"):
        Service(name)


def test_a_path_must_start_with_a_slash() -> None:
    svc = Service("svc")
    with pytest.raises(ValueError, match="must start with '/'"):
        svc.get("items")


def test_routes_are_listed_in_registration_order() -> None:
    svc = Service("svc")

    @svc.get("/a")
    async def a() -> None: ...

    @svc.route("/b", ["PUT", "POST"])
    async def b() -> None: ...

    assert svc.routes[0] == ("/a", ["GET", "HEAD"])
    assert svc.routes[1] == ("/b", ["POST", "PUT"])
    assert repr(svc) == "<Service svc routes=2>"


async def test_routes_added_after_serving_are_served() -> None:
    svc = Service("svc")

    @svc.get("/a")
    async def a() -> str:
        return "a"

    assert (await call(svc, "GET", "/a")).json() == "a"

    @svc.get("/b")
    async def b() -> str:
        return "b"

    assert (await call(svc, "GET", "/b")).json() == "b"


# -- return values ---------------------------------------------------------------------------


@pytest.fixture
def returns() -> Service:
    svc = Service("returns")

    @svc.get("/struct")
    async def struct() -> Reading:
        return Reading("d1", 2.5)

    @svc.get("/dataclass")
    async def dc() -> Ack:
        return Ack(ok=True)

    @svc.get("/dict")
    async def plain() -> dict[str, Any]:
        return {"a": [1, 2], "b": None}

    @svc.delete("/none")
    async def nothing() -> None:
        return None

    @svc.get("/bytes")
    async def raw() -> bytes:
        return b"\x00\x01"

    @svc.get("/response")
    async def passthrough() -> Response:
        return PlainTextResponse("teapot", status_code=418, headers={"x-extra": "1"})

    @svc.post("/created", status_code=201)
    async def created(reading: Reading) -> Reading:
        return reading

    @svc.post("/created-empty", status_code=201)
    async def created_empty() -> None:
        return None

    return svc


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/struct", {"device": "d1", "kw": 2.5}),
        ("/dataclass", {"ok": True}),
        ("/dict", {"a": [1, 2], "b": None}),
    ],
)
async def test_values_are_answered_as_json(returns: Service, path: str, body: Any) -> None:
    r = await call(returns, "GET", path)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == body


async def test_none_is_a_204_without_body(returns: Service) -> None:
    r = await call(returns, "DELETE", "/none")
    assert r.status_code == 204
    assert r.content == b""


async def test_bytes_are_answered_as_they_are(returns: Service) -> None:
    r = await call(returns, "GET", "/bytes")
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.content == b"\x00\x01"


async def test_a_response_is_passed_through(returns: Service) -> None:
    r = await call(returns, "GET", "/response")
    assert (r.status_code, r.text, r.headers["x-extra"]) == (418, "teapot", "1")


async def test_status_code_applies_to_the_answer(returns: Service) -> None:
    r = await call(returns, "POST", "/created", json={"device": "d", "kw": 1})
    assert r.status_code == 201
    assert r.json() == {"device": "d", "kw": 1.0}
    r = await call(returns, "POST", "/created-empty")
    assert r.status_code == 201
    assert r.content == b""


async def test_sync_handlers_run_off_the_event_loop_with_the_request_context() -> None:
    svc = Service("sync")
    loop_thread = threading.get_ident()

    @svc.get("/sync")
    def handler(n: int) -> dict[str, Any]:
        span = current_trace()
        return {
            "n": n,
            "off_loop": threading.get_ident() != loop_thread,
            "trace": span.trace_id if span else None,
            "has_deadline": current_deadline() is not None,
        }

    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = await call(
        svc,
        "GET",
        "/sync?n=3",
        headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01", "garrison-timeout-ms": "5000"},
    )
    assert r.json() == {"n": 3, "off_loop": True, "trace": trace, "has_deadline": True}


# -- errors ----------------------------------------------------------------------------------


class Shed(ServiceUnavailable):
    """Like the resilience layer's rejections: an overload with a retry hint."""

    def __init__(self, retry_after: float | None) -> None:
        super().__init__("shed: overloaded", retryable=False)
        self.retry_after = retry_after


ERRORS: dict[str, BaseException] = {
    "invalid": InvalidInput("bad kw", [{"loc": ["body", "kw"], "msg": "too big"}]),
    "not-found": NotFound("no device 'd9'"),
    "usage": UsageError("cannot do that"),
    "deadline": DeadlineExceeded("GET http://10.9.8.7:8000/x: no answer within 1.000s"),
    "unavailable": ServiceUnavailable("no instance of service 'back' is known"),
    "shed": Shed(retry_after=1.2),
    "shed-no-hint": Shed(retry_after=None),
    "remote": RemoteStatusError(500, b"Traceback: secret-token", service="back", path="/x"),
    "transport": TransportError("GET http://10.9.8.7:8000/x: ClientConnectorError: refused"),
    "config": ConfigError("no service named 'bck'", key="services.bck"),
    "crash": RuntimeError("password=hunter2"),
    "unauthenticated": Unauthenticated("token expired", reason="expired"),
    "forbidden": PermissionDenied("scope fleet:write required", reason="missing_scope"),
    "protocol": RemoteProtocolError("back/x: invalid response body"),
}


@pytest.fixture
def failing() -> Service:
    svc = Service("failing")

    @svc.get("/fail/{kind}")
    async def fail(kind: str) -> None:
        raise ERRORS[kind]

    return svc


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("invalid", 422, "invalid_input"),
        ("not-found", 404, "not_found"),
        ("usage", 400, "bad_request"),
        ("deadline", 504, "deadline_exceeded"),
        ("unavailable", 503, "unavailable"),
        ("shed", 503, "unavailable"),
        ("remote", 502, "upstream_error"),
        ("transport", 502, "upstream_error"),
        ("config", 500, "internal"),
        ("crash", 500, "internal"),
        ("unauthenticated", 401, "unauthenticated"),
        ("forbidden", 403, "forbidden"),
        ("protocol", 502, "upstream_error"),
    ],
)
async def test_handler_exceptions_map_to_json_errors(
    failing: Service, kind: str, status: int, code: str
) -> None:
    r = await call(failing, "GET", f"/fail/{kind}")
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"] == code


async def test_identity_errors_carry_their_reason(failing: Service) -> None:
    r = await call(failing, "GET", "/fail/unauthenticated")
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["detail"] == [{"reason": "expired"}]
    r = await call(failing, "GET", "/fail/forbidden")
    assert r.json()["detail"] == [{"reason": "missing_scope"}]


async def test_invalid_input_lists_the_fields(failing: Service) -> None:
    r = await call(failing, "GET", "/fail/invalid")
    assert r.json() == {
        "error": "invalid_input",
        "message": "bad kw",
        "detail": [{"loc": ["body", "kw"], "msg": "too big"}],
    }


async def test_a_deadline_answer_says_do_not_retry(failing: Service) -> None:
    r = await call(failing, "GET", "/fail/deadline")
    assert r.headers[NO_RETRY_HEADER] == "1"
    assert "10.9.8.7" not in r.text  # the transport's message names an internal address


async def test_unavailable_carries_retry_after_when_given(failing: Service) -> None:
    r = await call(failing, "GET", "/fail/unavailable")
    assert "retry-after" not in r.headers
    assert NO_RETRY_HEADER not in r.headers  # retryable elsewhere
    r = await call(failing, "GET", "/fail/shed")
    assert r.headers["retry-after"] == "2"  # rounded up, never sooner than the hint
    assert r.headers[NO_RETRY_HEADER] == "1"
    r = await call(failing, "GET", "/fail/shed-no-hint")
    assert "retry-after" not in r.headers


@pytest.mark.parametrize("kind", ["remote", "transport", "config", "crash"])
async def test_failures_do_not_leak_internals(failing: Service, kind: str) -> None:
    r = await call(failing, "GET", f"/fail/{kind}")
    for secret in ("secret-token", "Traceback", "10.9.8.7", "hunter2", "bck"):
        assert secret not in r.text
    if kind == "remote":
        assert r.json() == {"error": "upstream_error", "message": "back answered 500"}
    if kind == "crash":
        assert r.json() == {"error": "internal", "message": "internal server error"}


async def test_an_unknown_path_is_a_json_404() -> None:
    svc = Service("svc")
    r = await call(svc, "GET", "/nowhere")
    assert r.status_code == 404
    assert r.json() == {"error": "not_found", "message": "Not Found"}


async def test_a_wrong_method_is_a_json_405_with_allow() -> None:
    svc = Service("svc")

    @svc.get("/only-get")
    async def handler() -> None: ...

    r = await call(svc, "POST", "/only-get")
    assert r.status_code == 405
    assert r.json()["error"] == "method_not_allowed"
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}


# -- injection, lifespan, readiness ----------------------------------------------------------


async def test_lifespan_runs_hooks_in_order_and_readyz_follows() -> None:
    svc = Service("life")
    events: list[str] = []
    healthy = True

    @svc.on_startup
    async def first() -> None:
        events.append("start 1")

    @svc.on_startup
    async def second() -> None:
        events.append("start 2")

    @svc.on_shutdown
    async def stop_a() -> None:
        events.append("stop a")

    @svc.on_shutdown
    async def stop_b() -> None:
        events.append("stop b")
        raise RuntimeError("a failing hook does not stop the others")

    @svc.readiness_check
    async def database() -> bool:
        return healthy

    app = svc.asgi()
    r = await call(svc, "GET", "/readyz")
    assert r.status_code == 503
    assert r.json() == {"status": "not ready", "failing": ["startup"]}
    assert not svc.ready
    async with lifespan(app):
        assert svc.ready
        r = await call(svc, "GET", "/readyz")
        assert (r.status_code, r.json()) == (200, {"status": "ready"})
        healthy = False
        r = await call(svc, "GET", "/readyz")
        assert (r.status_code, r.json()["failing"]) == (503, ["database"])
    assert not svc.ready
    assert events == ["start 1", "start 2", "stop b", "stop a"]
    assert (await call(svc, "GET", "/readyz")).status_code == 503


async def test_shutdown_closes_the_clients() -> None:
    svc = Service("life")
    closed: list[str] = []

    class Closing(MockTransport):
        async def aclose(self) -> None:
            closed.append("closed")

    client = svc.client("back")
    client._transport = Closing(lambda *a: (200, {}, b""))
    async with lifespan(svc.asgi()):
        assert closed == []
    assert closed == ["closed"]


async def test_a_readiness_check_that_raises_counts_as_failing() -> None:
    svc = Service("life")

    @svc.readiness_check
    async def broken() -> bool:
        raise OSError("cannot reach the database")

    async with lifespan(svc.asgi()):
        r = await call(svc, "GET", "/readyz")
    assert (r.status_code, r.json()["failing"]) == (503, ["broken"])


async def test_a_failing_startup_hook_fails_startup() -> None:
    svc = Service("life")

    @svc.on_startup
    async def boom() -> None:
        raise RuntimeError("no database")

    with pytest.raises(RuntimeError, match="no database"):
        async with lifespan(svc.asgi()):
            pass
    assert not svc.ready


async def test_healthz_answers_whatever_the_readiness() -> None:
    svc = Service("life")
    r = await call(svc, "GET", "/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


async def test_the_metrics_endpoint_renders_prometheus_text() -> None:
    svc = Service("m")

    @svc.get("/x")
    async def x() -> None: ...

    await call(svc, "GET", "/x")
    r = await call(svc, "GET", "/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    assert 'garrison_http_requests_total{method="GET",outcome="ok",route="/x",service="m"}' in (
        r.text
    )


async def test_clients_created_early_take_the_configuration_given_later() -> None:
    svc = Service("front")
    early = svc.client("back")
    config: GarrisonConfig = parse_config(
        {
            "services": {"back": {"app": "b:svc", "port": 9100, "replicas": 2}},
            "client": {"timeout": 3.0, "load_balancer": "round_robin"},
        }
    )
    svc.configure(config)
    assert early.config == ClientConfig(timeout=3.0, load_balancer="round_robin")
    assert early.balancer.strategy == "round_robin"
    assert svc.client("back") is early
    assert svc.client("other").config.timeout == 3.0
    await early.aclose()


# -- the inbound middleware ------------------------------------------------------------------


@pytest.fixture
def inbound() -> Service:
    svc = Service("inbound")
    svc.cancelled = []  # type: ignore[attr-defined]

    @svc.get("/budget")
    async def budget() -> dict[str, Any]:
        left = remaining()
        return {"ms": None if left is None else left * 1000}

    @svc.get("/hang")
    async def hang() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            svc.cancelled.append(True)  # type: ignore[attr-defined]
            raise

    @svc.get("/trace")
    async def trace() -> dict[str, Any]:
        span = current_trace()
        assert span is not None
        return {"trace": span.trace_id, "span": span.span_id, "parent": span.parent_id}

    @svc.get("/items/{item}")
    async def item(item: str) -> str:
        return item

    return svc


async def test_the_callers_budget_becomes_the_handlers_deadline(inbound: Service) -> None:
    r = await call(inbound, "GET", "/budget", headers={"garrison-timeout-ms": "4000"})
    assert 0 < r.json()["ms"] <= 4000
    r = await call(inbound, "GET", "/budget")
    assert r.json()["ms"] is None


async def test_a_spent_budget_is_a_504_without_running_the_handler(inbound: Service) -> None:
    r = await call(inbound, "GET", "/hang", headers={"garrison-timeout-ms": "0"})
    assert r.status_code == 504
    assert r.json()["error"] == "deadline_exceeded"
    assert r.headers[NO_RETRY_HEADER] == "1"
    assert inbound.cancelled == []  # type: ignore[attr-defined]


async def test_the_handler_is_cancelled_when_the_budget_runs_out(inbound: Service) -> None:
    r = await call(inbound, "GET", "/hang", headers={"garrison-timeout-ms": "20"})
    assert r.status_code == 504
    assert r.json()["error"] == "deadline_exceeded"
    assert r.headers[NO_RETRY_HEADER] == "1"
    assert inbound.cancelled == [True]  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["-5", "soon", "1.5", "", "86400001", "9" * 5000])
async def test_a_malformed_budget_is_a_400_naming_the_header(inbound: Service, value: str) -> None:
    r = await call(inbound, "GET", "/budget", headers={"garrison-timeout-ms": value})
    assert r.status_code == 400
    assert r.json()["error"] == "bad_request"
    assert "garrison-timeout-ms" in r.json()["message"]
    outcome = {"service": "inbound", "method": "GET", "route": "<unmatched>"}
    assert sample(inbound, "garrison_http_requests_total", **outcome, outcome="client_error") == 1


async def test_a_valid_traceparent_is_continued(inbound: Service) -> None:
    trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    r = await call(inbound, "GET", "/trace", headers={"traceparent": f"00-{trace}-{parent}-01"})
    body = r.json()
    assert body["trace"] == trace
    assert body["parent"] == parent
    assert body["span"] != parent


@pytest.mark.parametrize(
    "value",
    [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "garbage",
    ],
)
async def test_an_invalid_traceparent_starts_a_new_trace(inbound: Service, value: str) -> None:
    r = await call(inbound, "GET", "/trace", headers={"traceparent": value})
    body = r.json()
    assert body["parent"] is None
    assert body["trace"] not in value.lower()
    assert len(body["trace"]) == 32


async def test_each_request_without_traceparent_gets_its_own_trace(inbound: Service) -> None:
    a = (await call(inbound, "GET", "/trace")).json()
    b = (await call(inbound, "GET", "/trace")).json()
    assert a["trace"] != b["trace"]
    assert a["parent"] is None


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_probes_bypass_deadlines_and_metrics(inbound: Service, path: str) -> None:
    r = await call(inbound, "GET", path, headers={"garrison-timeout-ms": "-1"})
    assert r.status_code in (200, 503)  # /readyz: not started
    assert r.headers["content-type"] != "application/json" or "error" not in r.json()
    text = inbound.metrics.render().decode()
    assert f'route="{path}"' not in text
    assert 'route="<unmatched>"' not in text


async def test_inbound_metrics_use_the_route_template(inbound: Service) -> None:
    for item in ("a", "b", "c"):
        assert (await call(inbound, "GET", f"/items/{item}")).status_code == 200
    await call(inbound, "GET", "/hang", headers={"garrison-timeout-ms": "0"})
    await call(inbound, "GET", "/nowhere")
    await call(inbound, "GET", "/elsewhere")
    m = {"service": "inbound", "method": "GET"}
    items = {**m, "route": "/items/{item}"}
    assert sample(inbound, "garrison_http_requests_total", **items, outcome="ok") == 3
    assert sample(inbound, "garrison_http_request_seconds_count", **items) == 3
    unmatched = {**m, "route": "<unmatched>"}
    assert sample(inbound, "garrison_http_requests_total", **unmatched, outcome="client_error") == 2
    assert sample(inbound, "garrison_http_requests_total", **unmatched, outcome="server_error") == 1
    assert sample(inbound, "garrison_http_inflight", service="inbound") == 0


async def test_inbound_metrics_bound_the_method_label(inbound: Service) -> None:
    for method in ("BREW", "WHEN", "PROPFIND"):
        assert (await call(inbound, method, "/nowhere")).status_code == 404
    labels = {"service": "inbound", "route": "<unmatched>", "outcome": "client_error"}
    assert sample(inbound, "garrison_http_requests_total", **labels, method="other") == 3
    assert "BREW" not in inbound.metrics.render().decode()


async def test_a_handler_error_is_a_server_error_outcome() -> None:
    svc = Service("errs")

    @svc.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    await call(svc, "GET", "/boom")
    labels = {"service": "errs", "method": "GET", "route": "/boom", "outcome": "server_error"}
    assert sample(svc, "garrison_http_requests_total", **labels) == 1
