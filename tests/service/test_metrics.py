"""Service metrics: outcomes, per-edge children, bounded route cardinality, separate registries."""

from __future__ import annotations

import pytest

from garrison.service import ServiceMetrics
from garrison.service._metrics import LATENCY_BUCKETS, MAX_ROUTES_PER_EDGE, outcome_of


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


def test_edges_are_one_per_callee() -> None:
    metrics = ServiceMetrics("front")
    assert metrics.edge("back") is metrics.edge("back")
    assert metrics.edge("back") is not metrics.edge("other")


def test_a_snapshot_has_every_number_of_the_edges_and_routes() -> None:
    metrics = ServiceMetrics("front")
    edge = metrics.edge("back")
    latency, outcomes = edge.route("/a")
    for seconds in (0.0001, 0.0005, 0.003, 100.0):  # 0.0005 is in the 0.0005 bucket (le)
        latency.observe(seconds)
    outcomes["ok"].inc()
    outcomes["ok"].inc()
    outcomes["server_error"].inc()
    outcomes["error"].inc()
    edge.inflight.inc()
    inbound_latency, inbound_outcomes = metrics.inbound("GET", "/in")
    inbound_latency.observe(0.02)
    inbound_outcomes["client_error"].inc()
    metrics.inflight_in.inc()

    snap = metrics.snapshot()
    assert snap.service == "front"
    assert snap.inflight == 1
    e = snap.edges["back"]
    assert (e.caller, e.callee, e.inflight) == ("front", "back", 1)
    r = e.routes["/a"]
    assert r.outcomes == {"ok": 2, "client_error": 0, "server_error": 1, "error": 1}
    assert r.count == 4
    assert r.sum == pytest.approx(100.0036)
    assert len(r.buckets) == len(LATENCY_BUCKETS) + 1
    assert r.buckets[0] == 2  # <= 0.5 ms
    assert r.buckets[LATENCY_BUCKETS.index(0.005)] == 1
    assert r.buckets[-1] == 1  # above the largest bound
    i = snap.routes[("GET", "/in")]
    assert (i.count, i.outcomes["client_error"]) == (1, 1)


def test_a_snapshot_is_a_copy() -> None:
    metrics = ServiceMetrics("front")
    latency, outcomes = metrics.edge("back").route("/a")
    before = metrics.snapshot()
    latency.observe(0.01)
    outcomes["ok"].inc()
    assert before.edges["back"].routes["/a"].count == 0
    assert metrics.snapshot().edges["back"].routes["/a"].count == 1


def test_the_exposition_keeps_the_prometheus_names_types_and_labels() -> None:
    metrics = ServiceMetrics("svc")
    latency, outcomes = metrics.inbound("GET", "/a")
    latency.observe(0.7)
    outcomes["ok"].inc()
    edge_latency, edge_outcomes = metrics.edge("back").route("/b")
    edge_latency.observe(0.002)
    edge_outcomes["error"].inc()
    families = {f.name: f for f in metrics.registry.collect()}
    assert {name: f.type for name, f in families.items()} == {
        "garrison_http_requests": "counter",
        "garrison_http_request_seconds": "histogram",
        "garrison_http_inflight": "gauge",
        "garrison_edge_requests": "counter",
        "garrison_edge_request_seconds": "histogram",
        "garrison_edge_inflight": "gauge",
    }
    reg = metrics.registry
    http = {"service": "svc", "method": "GET", "route": "/a"}
    assert reg.get_sample_value("garrison_http_request_seconds_bucket", {**http, "le": "0.5"}) == 0
    assert reg.get_sample_value("garrison_http_request_seconds_bucket", {**http, "le": "1.0"}) == 1
    assert reg.get_sample_value("garrison_http_request_seconds_bucket", {**http, "le": "+Inf"}) == 1
    assert reg.get_sample_value("garrison_http_request_seconds_sum", http) == pytest.approx(0.7)
    assert reg.get_sample_value("garrison_http_inflight", {"service": "svc"}) == 0
    edge = {"caller": "svc", "callee": "back", "route": "/b"}
    assert reg.get_sample_value("garrison_edge_requests_total", {**edge, "outcome": "error"}) == 1
    assert reg.get_sample_value("garrison_edge_request_seconds_count", edge) == 1
    assert reg.get_sample_value("garrison_edge_requests_created", {**edge, "outcome": "ok"})
    assert reg.get_sample_value("garrison_edge_request_seconds_created", edge)
    assert reg.get_sample_value("garrison_edge_inflight", {"caller": "svc", "callee": "back"}) == 0
