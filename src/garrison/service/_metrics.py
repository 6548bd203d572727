"""Metrics of one service process: inbound routes and outbound edges.

Theory of operation
-------------------
Every call records its outcome and latency twice (the caller's edge, the callee's route), so
recording sits on the hot path. prometheus-client's Counter / Gauge / Histogram take a lock per
update and a histogram walks its buckets; here each (edge, route) and each inbound (method,
route) owns plain accumulators instead: ints and a float updated in place, the histogram bucket
found with :func:`bisect.bisect_left`. There is no lock because everything that records runs on
the service's one event-loop thread; a scrape from another thread reads ints that are each
updated atomically, so the worst it sees is a call counted in one family and not yet in another.

Prometheus still sees the same families, names, labels and types as before (a custom collector
turns the accumulators into ``garrison_http_requests_total``, ``garrison_http_request_seconds``,
``garrison_http_inflight``, ``garrison_edge_requests_total``, ``garrison_edge_request_seconds``
and ``garrison_edge_inflight`` at scrape time), and :meth:`ServiceMetrics.snapshot` gives the
control plane the same numbers as plain data without going through the text format.

Each :class:`~garrison.Service` owns a :class:`ServiceMetrics` with its own registry (not the
global one), so several services can live in one process (tests, ``garrison dev``) without
clashing. Edge metrics are what the control plane draws: for every caller → callee → route,
the request count by outcome, a latency histogram and the calls in flight.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import metrics as _prometheus_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = [
    "EdgeMetrics",
    "EdgeSnapshot",
    "RouteSnapshot",
    "ServiceMetrics",
    "ServiceSnapshot",
]

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
OUTCOMES = ("ok", "client_error", "server_error", "error")
# The bucket labels exactly as prometheus_client's own Histogram writes them.
_LE = (*(floatToGoString(b) for b in LATENCY_BUCKETS), "+Inf")  # type: ignore[no-untyped-call]


def outcome_of(status: int | None) -> str:
    """Outcome label: ``ok`` (<400), ``client_error`` (4xx), ``server_error`` (5xx), ``error``."""
    if status is None:
        return "error"
    if status < 400:
        return "ok"
    return "client_error" if status < 500 else "server_error"


# -- the accumulators --------------------------------------------------------------------------


class Tally:
    """A counter: a plain int, bumped in place (the cheap stand-in for a Prometheus counter)."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0
        self.created = time.time()

    def inc(self, amount: int = 1) -> None:
        """Add ``amount`` (default 1)."""
        self.value += amount


class Level:
    """A gauge: a plain int that goes up and down."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        """Raise the level by ``amount``."""
        self.value += amount

    def dec(self, amount: int = 1) -> None:
        """Lower the level by ``amount``."""
        self.value -= amount


class Latency:
    """A latency histogram over :data:`LATENCY_BUCKETS`: a count per bucket and a sum."""

    __slots__ = ("counts", "created", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        """Observations per bucket, *not* cumulative; the last is above the largest bound."""
        self.sum = 0.0
        self.created = time.time()

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # le: seconds <= bound
        self.sum += seconds

    def snapshot(self, outcomes: Mapping[str, Tally]) -> RouteSnapshot:
        """This histogram and ``outcomes`` as plain data."""
        counts = tuple(self.counts)
        return RouteSnapshot(
            {o: t.value for o, t in outcomes.items()}, sum(counts), self.sum, counts
        )


Children = tuple[Latency, dict[str, Tally]]
"""What one route records into: its latency histogram and a tally per outcome."""


def _children() -> Children:
    return Latency(), {o: Tally() for o in OUTCOMES}


# -- snapshots ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteSnapshot:
    """The numbers of one route (inbound) or one route of an edge (outbound)."""

    outcomes: Mapping[str, int]
    """Requests by outcome: ``ok``, ``client_error``, ``server_error``, ``error``."""
    count: int
    """Latencies observed (normally the sum of ``outcomes``)."""
    sum: float
    """Sum of the observed latencies, in seconds."""
    buckets: tuple[int, ...]
    """Observations per bucket of :data:`LATENCY_BUCKETS`, not cumulative; one more entry at
    the end for those above the largest bound."""


@dataclass(frozen=True, slots=True)
class EdgeSnapshot:
    """The numbers of one caller → callee edge."""

    caller: str
    callee: str
    inflight: int
    """Calls in flight on the edge."""
    routes: Mapping[str, RouteSnapshot]
    """By route label (``other`` once the edge has :data:`MAX_ROUTES_PER_EDGE` routes)."""


@dataclass(frozen=True, slots=True)
class ServiceSnapshot:
    """The numbers of one service: its inbound routes and its outbound edges."""

    service: str
    inflight: int
    """Inbound requests being handled."""
    routes: Mapping[tuple[str, str], RouteSnapshot]
    """Inbound, by (method, route template)."""
    edges: Mapping[str, EdgeSnapshot]
    """Outbound, by callee."""


# -- the metrics of a service and of its edges -------------------------------------------------


class ServiceMetrics:
    """The metrics of one service: its inbound routes, its edges and their registry."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.inflight_in = Level()
        """Inbound requests being handled."""
        self._inbound: dict[tuple[str, str], Children] = {}
        self._edges: dict[str, EdgeMetrics] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(self))

    def inbound(self, method: str, route: str) -> Children:
        """The accumulators of one inbound route: (latency, {outcome: tally})."""
        got = self._inbound.get((method, route))
        if got is None:
            got = self._inbound[method, route] = _children()
        return got

    def edge(self, callee: str) -> EdgeMetrics:
        """The metrics of the edge from this service to ``callee`` (one per callee)."""
        got = self._edges.get(callee)
        if got is None:
            got = self._edges[callee] = EdgeMetrics(self, self.service, callee)
        return got

    def snapshot(self) -> ServiceSnapshot:
        """Every number of this service as plain data (cheap: no text format, no locks)."""
        return ServiceSnapshot(
            self.service,
            self.inflight_in.value,
            {key: lat.snapshot(outs) for key, (lat, outs) in list(self._inbound.items())},
            {callee: e.snapshot() for callee, e in list(self._edges.items())},
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class EdgeMetrics:
    """The accumulators of one caller → callee edge: in flight, and per route."""

    __slots__ = ("_routes", "callee", "caller", "inflight")

    def __init__(self, metrics: ServiceMetrics, caller: str, callee: str) -> None:
        self.caller = caller
        self.callee = callee
        self.inflight = Level()
        """Calls in flight on this edge."""
        self._routes: dict[str, Children] = {}

    def route(self, route: str) -> Children:
        """(latency histogram, {outcome: tally}) for ``route`` on this edge."""
        got = self._routes.get(route)
        if got is None:
            if len(self._routes) >= MAX_ROUTES_PER_EDGE:
                route = "other"
                got = self._routes.get(route)
                if got is not None:
                    return got
            got = self._routes[route] = _children()
        return got

    def snapshot(self) -> EdgeSnapshot:
        """This edge's numbers as plain data."""
        routes = {r: lat.snapshot(outs) for r, (lat, outs) in list(self._routes.items())}
        return EdgeSnapshot(self.caller, self.callee, self.inflight.value, routes)


# -- the Prometheus view -----------------------------------------------------------------------


class _Collector:
    """Turns a :class:`ServiceMetrics` into Prometheus families at scrape time."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._m = metrics

    def describe(self) -> list[Metric]:
        # The families without routes or edges: their names are what the registry checks.
        return list(self._families([], []))

    def collect(self) -> Iterator[Metric]:
        m = self._m
        return self._families(list(m._inbound.items()), list(m._edges.values()))

    def _families(
        self, inbound: list[tuple[tuple[str, str], Children]], edges: list[EdgeMetrics]
    ) -> Iterator[Metric]:
        svc = self._m.service
        # Like prometheus_client's own metrics: *_created series unless they are disabled.
        created = bool(getattr(_prometheus_metrics, "_use_created", True))
        requests = CounterMetricFamily(
            "garrison_http_requests",
            "Inbound requests handled, by route and status class.",
            labels=(*_HTTP, "outcome"),
        )
        latencies = HistogramMetricFamily(
            "garrison_http_request_seconds", "Inbound request handling time.", labels=_HTTP
        )
        for (method, route), children in inbound:
            _add_route(requests, latencies, _HTTP, (svc, method, route), children, created)
        inflight = GaugeMetricFamily(
            "garrison_http_inflight", "Inbound requests being handled.", labels=["service"]
        )
        inflight.add_metric([svc], self._m.inflight_in.value)
        yield from (requests, latencies, inflight)

        requests = CounterMetricFamily(
            "garrison_edge_requests",
            "Calls made to another service, by edge, route and outcome.",
            labels=(*_EDGE, "outcome"),
        )
        latencies = HistogramMetricFamily(
            "garrison_edge_request_seconds",
            "Latency of calls to another service, as the caller sees it.",
            labels=_EDGE,
        )
        inflight = GaugeMetricFamily(
            "garrison_edge_inflight", "Calls to another service in flight.", labels=_EDGE[:2]
        )
        for edge in edges:
            for route, children in list(edge._routes.items()):
                labels = (edge.caller, edge.callee, route)
                _add_route(requests, latencies, _EDGE, labels, children, created)
            inflight.add_metric([edge.caller, edge.callee], edge.inflight.value)
        yield from (requests, latencies, inflight)


_HTTP = ("service", "method", "route")
_EDGE = ("caller", "callee", "route")


def _add_route(
    requests: CounterMetricFamily,
    latencies: HistogramMetricFamily,
    names: tuple[str, ...],
    labels: tuple[str, ...],
    children: Children,
    created: bool,
) -> None:
    latency, outcomes = children
    for outcome, tally in outcomes.items():
        requests.add_metric([*labels, outcome], tally.value, tally.created if created else None)
    cumulative = 0
    buckets = []
    for le, n in zip(_LE, list(latency.counts), strict=True):
        cumulative += n
        buckets.append((le, cumulative))
    latencies.add_metric(labels, buckets, latency.sum)
    if created:  # HistogramMetricFamily has no created= of its own
        label_set = dict(zip(names, labels, strict=True))
        latencies.samples.append(Sample(latencies.name + "_created", label_set, latency.created))
