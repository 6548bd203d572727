"""Service metrics: outcomes, per-edge children, bounded route cardinality, separate registries."""

from __future__ import annotations

import pytest

from garrison.service import ServiceMetrics
from garrison.service._metrics import MAX_ROUTES_PER_EDGE, outcome_of


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (None, "error"),
        (200, "ok"),
        (204, "ok"),
        (304, "ok"),
        (400, "client_error"),
        (499, "client_error"),
        (500, "server_error"),
        (504, "server_error"),
    ],
)
def test_outcome_of_a_status(status: int | None, outcome: str) -> None:
    assert outcome_of(status) == outcome


def edge_total(metrics: ServiceMetrics, route: str) -> float:
    labels = {"caller": "front", "callee": "back", "route": route, "outcome": "ok"}
    return metrics.registry.get_sample_value("garrison_edge_requests_total", labels) or 0.0


def test_route_labels_are_capped_per_edge() -> None:
    metrics = ServiceMetrics("front")
    edge = metrics.edge("back")
    for i in range(MAX_ROUTES_PER_EDGE + 50):
        _, outcomes = edge.route(f"/devices/{i}")
        outcomes["ok"].inc()
    # The first routes keep their own label; every later one is counted as "other".
    assert edge_total(metrics, "/devices/0") == 1
    assert edge_total(metrics, f"/devices/{MAX_ROUTES_PER_EDGE - 1}") == 1
    assert edge_total(metrics, f"/devices/{MAX_ROUTES_PER_EDGE}") == 0
    assert edge_total(metrics, "other") == 50
    routes = {
        s.labels["route"]
        for family in metrics.registry.collect()
        if family.name == "garrison_edge_requests"
        for s in family.samples
    }
    assert len(routes) == MAX_ROUTES_PER_EDGE + 1


def test_known_routes_keep_their_label_after_the_cap() -> None:
    metrics = ServiceMetrics("front")
    edge = metrics.edge("back")
    for i in range(MAX_ROUTES_PER_EDGE):
        edge.route(f"/r/{i}")
    edge.route("/late")[1]["ok"].inc()
    edge.route("/r/3")[1]["ok"].inc()
    assert edge_total(metrics, "/r/3") == 1
    assert edge_total(metrics, "other") == 1


def test_children_are_cached() -> None:
    metrics = ServiceMetrics("front")
    edge = metrics.edge("back")
    assert edge.route("/a") is edge.route("/a")
    assert metrics.inbound("GET", "/a") is metrics.inbound("GET", "/a")


def test_the_cap_is_per_edge() -> None:
    metrics = ServiceMetrics("front")
    a, b = metrics.edge("back"), metrics.edge("other")
    for i in range(MAX_ROUTES_PER_EDGE):
        a.route(f"/r/{i}")
    b.route("/fresh")[1]["ok"].inc()
    labels = {"caller": "front", "callee": "other", "route": "/fresh", "outcome": "ok"}
    assert metrics.registry.get_sample_value("garrison_edge_requests_total", labels) == 1


def test_each_service_has_its_own_registry() -> None:
    a, b = ServiceMetrics("a"), ServiceMetrics("b")
    a.edge("x").route("/r")[1]["ok"].inc()
    assert b"garrison_edge_requests_total" in a.render()
    assert b'callee="x"' not in b.render()


def test_inbound_children_count_by_route_and_outcome() -> None:
    metrics = ServiceMetrics("svc")
    latency, outcomes = metrics.inbound("GET", "/a")
    latency.observe(0.01)
    outcomes["server_error"].inc()
    reg = metrics.registry
    labels = {"service": "svc", "method": "GET", "route": "/a"}
    assert reg.get_sample_value("garrison_http_request_seconds_count", labels) == 1
    assert reg.get_sample_value("garrison_http_requests_total", {**labels, "outcome": "ok"}) == 0
    assert (
        reg.get_sample_value("garrison_http_requests_total", {**labels, "outcome": "server_error"})
        == 1
    )
