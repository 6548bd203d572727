"""InboundMiddleware on a bare ASGI app: the deadline scope is always left, the span continues
the caller's trace, and every request is counted whatever happened inside."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message, Receive, Scope, Send

from garrison.core import current_deadline
from garrison.service import ServiceMetrics, TraceContext, current_trace
from garrison.service._middleware import ROUTE_SCOPE_KEY, InboundMiddleware

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def http_scope(*headers: tuple[str, str]) -> Scope:
    return {
        "type": "http",
        "method": "GET",
        "path": "/thing",
        "headers": [(k.encode(), v.encode()) for k, v in headers],
    }


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class Sent:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    scope[ROUTE_SCOPE_KEY] = "/thing"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def outcome_count(metrics: ServiceMetrics, outcome: str) -> int:
    route = metrics.snapshot().routes[("GET", "/thing")]
    return route.outcomes[outcome]


async def test_an_error_escaping_the_app_leaves_the_deadline_behind() -> None:
    # The request's deadline must not outlive the request: once the error has passed, the task
    # that ran it (here the test itself) is not cancelled when the budget runs out.
    metrics = ServiceMetrics("svc")

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        scope[ROUTE_SCOPE_KEY] = "/thing"
        raise ValueError("bug")

    mw = InboundMiddleware(broken, metrics)
    with pytest.raises(ValueError, match="bug"):
        await mw(http_scope(("garrison-timeout-ms", "20")), receive, Sent())
    await asyncio.sleep(0.1)  # well past the 20 ms budget: no CancelledError here
    assert outcome_count(metrics, "error") == 1
    assert metrics.snapshot().inflight == 0


async def test_the_budget_cancels_the_handler_with_a_504() -> None:
    metrics = ServiceMetrics("svc")
    seen: list[float | None] = []

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        scope[ROUTE_SCOPE_KEY] = "/thing"
        deadline = current_deadline()
        seen.append(None if deadline is None else deadline.remaining())
        await asyncio.sleep(10)

    sent = Sent()
    await InboundMiddleware(slow, metrics)(http_scope(("garrison-timeout-ms", "20")), receive, sent)
    assert sent.status == 504
    assert seen[0] is not None
    assert 0 < seen[0] <= 0.02
    assert current_deadline() is None
    assert outcome_count(metrics, "server_error") == 1
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_an_outer_cancellation_is_not_answered_as_a_504() -> None:
    metrics = ServiceMetrics("svc")
    started = asyncio.Event()

    async def hang(scope: Scope, receive: Receive, send: Send) -> None:
        scope[ROUTE_SCOPE_KEY] = "/thing"
        started.set()
        await asyncio.sleep(10)

    sent = Sent()
    mw = InboundMiddleware(hang, metrics)
    task = asyncio.create_task(mw(http_scope(("garrison-timeout-ms", "5000")), receive, sent))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sent.messages == []
    assert outcome_count(metrics, "error") == 1


@pytest.mark.parametrize(
    ("headers", "parent"),
    [
        ((("traceparent", f"00-{TRACE}-{SPAN}-01"), ("tracestate", "k=v")), SPAN),
        ((("traceparent", "garbage"),), None),
        ((), None),
    ],
)
async def test_the_server_span_continues_the_callers_trace(
    headers: tuple[tuple[str, str], ...], parent: str | None
) -> None:
    spans: list[TraceContext | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        spans.append(current_trace())
        await ok_app(scope, receive, send)

    await InboundMiddleware(app, ServiceMetrics("svc"))(http_scope(*headers), receive, Sent())
    span = spans[0]
    assert span is not None
    assert span.parent_id == parent
    if parent is not None:
        assert (span.trace_id, span.tracestate) == (TRACE, "k=v")
        assert span.span_id != SPAN
    assert current_trace() is None


async def test_every_request_is_counted_with_its_latency() -> None:
    metrics = ServiceMetrics("svc")
    mw = InboundMiddleware(ok_app, metrics)
    for headers in ((), (("garrison-timeout-ms", "1000"),)):
        await mw(http_scope(*headers), receive, Sent())
    snap = metrics.snapshot()
    route = snap.routes[("GET", "/thing")]
    assert route.outcomes == {"ok": 2, "client_error": 0, "server_error": 0, "error": 0}
    assert route.count == 2
    assert route.sum > 0
    assert snap.inflight == 0
