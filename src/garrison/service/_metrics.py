"""Prometheus metrics of one service process: inbound routes and outbound edges.

Each :class:`~garrison.Service` owns a :class:`ServiceMetrics` with its own registry (not the
global one), so several services can live in one process (tests, ``garrison dev`` later) without
clashing. Labelled children are cached per (edge, route): ``labels()`` is the slow part of
prometheus-client, and it must not run on every call.

Edge metrics are what the control plane draws: for every caller → callee → route, the request
count by outcome, a latency histogram and the calls in flight.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["EdgeMetrics", "ServiceMetrics"]

# Buckets from 0.5 ms to 30 s: loopback calls sit at the bottom, timeouts at the top.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
MAX_ROUTES_PER_EDGE = 200
"""Distinct route labels kept per edge; later ones count as ``other`` (bounded cardinality)."""


def outcome_of(status: int | None) -> str:
    """Outcome label: ``ok`` (<400), ``client_error`` (4xx), ``server_error`` (5xx), ``error``."""
    if status is None:
        return "error"
    if status < 400:
        return "ok"
    return "client_error" if status < 500 else "server_error"


class ServiceMetrics:
    """The metrics registry and families of one service."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "garrison_http_requests",
            "Inbound requests handled, by route and status class.",
            ["service", "method", "route", "outcome"],
            registry=r,
        )
        self.http_latency = Histogram(
            "garrison_http_request_seconds",
            "Inbound request handling time.",
            ["service", "method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_inflight = Gauge(
            "garrison_http_inflight", "Inbound requests being handled.", ["service"], registry=r
        )
        self.edge_requests = Counter(
            "garrison_edge_requests",
            "Calls made to another service, by edge, route and outcome.",
            ["caller", "callee", "route", "outcome"],
            registry=r,
        )
        self.edge_latency = Histogram(
            "garrison_edge_request_seconds",
            "Latency of calls to another service, as the caller sees it.",
            ["caller", "callee", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.edge_inflight = Gauge(
            "garrison_edge_inflight",
            "Calls to another service in flight.",
            ["caller", "callee"],
            registry=r,
        )
        self._inbound: dict[tuple[str, str], tuple[Histogram, dict[str, Counter]]] = {}
        self.inflight_in = self.http_inflight.labels(service)

    def inbound(self, method: str, route: str) -> tuple[Histogram, dict[str, Counter]]:
        """Cached children for one inbound route: (latency, {outcome: counter})."""
        key = (method, route)
        got = self._inbound.get(key)
        if got is None:
            got = (
                self.http_latency.labels(self.service, method, route),
                {
                    o: self.http_requests.labels(self.service, method, route, o)
                    for o in ("ok", "client_error", "server_error", "error")
                },
            )
            self._inbound[key] = got
        return got

    def edge(self, callee: str) -> EdgeMetrics:
        """The metrics of the edge from this service to ``callee``."""
        return EdgeMetrics(self, self.service, callee)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class EdgeMetrics:
    """Cached metric children for one caller → callee edge."""

    __slots__ = ("_m", "_routes", "callee", "caller", "inflight")

    def __init__(self, metrics: ServiceMetrics, caller: str, callee: str) -> None:
        self._m = metrics
        self.caller = caller
        self.callee = callee
        self.inflight = metrics.edge_inflight.labels(caller, callee)
        self._routes: dict[str, tuple[Histogram, dict[str, Counter]]] = {}

    def route(self, route: str) -> tuple[Histogram, dict[str, Counter]]:
        """(latency histogram, {outcome: counter}) for ``route`` on this edge."""
        got = self._routes.get(route)
        if got is None:
            if len(self._routes) >= MAX_ROUTES_PER_EDGE:
                route = "other"
                got = self._routes.get(route)
                if got is not None:
                    return got
            m = self._m
            got = (
                m.edge_latency.labels(self.caller, self.callee, route),
                {
                    o: m.edge_requests.labels(self.caller, self.callee, route, o)
                    for o in ("ok", "client_error", "server_error", "error")
                },
            )
            self._routes[route] = got
        return got
