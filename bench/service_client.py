"""Inter-service call overhead: garrison's ServiceClient against bare aiohttp and httpx.

Every client calls the same server: a garrison ``Service("echo")`` with ``GET /ping -> {"pong":
true}`` under uvicorn (httptools, uvloop) in its own process. The clients share one event loop in
this process and run interleaved: each round runs every client at each concurrency, in an order
rotated per round, so a burst of load from elsewhere on the machine hits them all alike. With two
or more CPUs the server is pinned to one and this process to another.

Clients: bare ``aiohttp.ClientSession``, bare ``httpx.AsyncClient``, ``ServiceClient`` on its
default aiohttp transport and on ``HttpxTransport``, and a raw asyncio-streams HTTP/1.1 client with
a prebuilt request, no library: the practical limit of the server and loopback, shown as
``limit``. The overhead of garrison's client is against the bare call of the same library, paired
round by round. A pure-CPU micro benchmark measures the client's own per-call cost through the
chain (edge metrics + dispatch) on ``MockTransport``, against calling that transport directly.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from importlib.util import find_spec

import aiohttp
import httpx

from garrison.core import DEADLINE_HEADER
from garrison.service import CALLER_HEADER, HttpxTransport, MockTransport, ServiceClient

from ._echo import echo_server, pin
from ._harness import Better, Row, median, note, percentile, progress

PILLAR = "service"

Call = Callable[[], Awaitable[None]]
AIOHTTP, HTTPX, G_AIOHTTP, G_HTTPX, RAW = (
    "aiohttp",
    "httpx",
    "garrison[aiohttp]",
    "garrison[httpx]",
    "raw",
)
AIOHTTP_HEADERS = "aiohttp+headers"
"""Bare aiohttp sending the propagation headers garrison adds: splits the overhead in two."""
CLIENTS = (AIOHTTP, AIOHTTP_HEADERS, HTTPX, G_AIOHTTP, G_HTTPX, RAW)
CONCURRENCY = (1, 16)
GOAL = 10.0
"""Issue 2: the client's own overhead under 10% of the bare call."""


@dataclass(frozen=True)
class Plan:
    """How long to run: rounds, requests per batch by concurrency, micro calls per batch."""

    rounds: int
    requests: Mapping[int, int]
    warmup: int
    micro_rounds: int
    micro_calls: int


FULL = Plan(rounds=10, requests={1: 1000, 16: 2000}, warmup=300, micro_rounds=9, micro_calls=20000)
QUICK = Plan(rounds=3, requests={1: 150, 16: 320}, warmup=50, micro_rounds=3, micro_calls=2000)
# Each garrison client runs right next to the bare call of its library (which one goes first
# alternates per round) so that the paired overhead compares batches that saw the same load.
GROUPS = ((AIOHTTP, G_AIOHTTP, AIOHTTP_HEADERS), (HTTPX, G_HTTPX), (RAW,))


@dataclass
class Sample:
    """One batch of one client at one concurrency."""

    n: int
    wall_ns: int
    cpu_ns: int
    latencies_ns: list[int]

    @property
    def rps(self) -> float:
        return self.n / self.wall_ns * 1e9

    @property
    def per_request_us(self) -> float:
        return self.wall_ns / self.n / 1e3

    @property
    def cpu_us(self) -> float:
        return self.cpu_ns / self.n / 1e3

    def latency_us(self, q: float) -> float:
        return percentile(self.latencies_ns, q) / 1e3


# -- the clients -----------------------------------------------------------------------------


class RawClient:
    """HTTP/1.1 keep-alive over asyncio streams with a prebuilt request: no HTTP library."""

    def __init__(self, url: str, path: str) -> None:
        hostport = url.removeprefix("http://")
        host, _, port = hostport.partition(":")
        self._host, self._port = host, int(port)
        self._request = f"GET {path} HTTP/1.1\r\nhost: {hostport}\r\n\r\n".encode()
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def call(self) -> None:
        while self._idle:
            reader, writer = self._idle.pop()
            try:
                await self._exchange(reader, writer)
                return
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()  # the server closed it while idle: try another, or a new one
        await self._exchange(*await asyncio.open_connection(self._host, self._port))

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self._request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"raw client: unexpected answer {head[:40]!r}")
        lower = head.lower()
        i = lower.index(b"content-length:") + 15
        await reader.readexactly(int(lower[i : lower.index(b"\r\n", i)]))
        self._idle.append((reader, writer))

    async def aclose(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


@dataclass
class Clients:
    """The calls under test, by name, and how to close them."""

    calls: dict[str, Call]
    closers: list[Callable[[], Awaitable[None]]]

    async def aclose(self) -> None:
        for close in self.closers:
            await close()


def make_clients(url: str) -> Clients:
    """Every client, each with its own keep-alive pool, all calling ``url/ping``."""
    ping = f"{url}/ping"
    session = aiohttp.ClientSession()
    hx = httpx.AsyncClient()
    g_aio = ServiceClient("echo", [url], caller="bench")
    g_hx = ServiceClient("echo", [url], caller="bench", transport=HttpxTransport())
    raw = RawClient(url, "/ping")

    async def call_aiohttp() -> None:
        async with session.get(ping) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"aiohttp: status {resp.status}")

    # What ServiceClient adds on the wire: the remaining budget, the caller, a trace context.
    propagation = {
        DEADLINE_HEADER: "10000",
        CALLER_HEADER: "bench",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }

    async def call_aiohttp_headers() -> None:
        async with session.get(ping, headers=propagation) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"aiohttp: status {resp.status}")

    async def call_httpx() -> None:
        resp = await hx.get(ping)
        if resp.status_code != 200:
            raise RuntimeError(f"httpx: status {resp.status_code}")

    def garrison(client: ServiceClient) -> Call:
        async def call() -> None:
            resp = await client.get("/ping")
            if resp.status != 200:
                raise RuntimeError(f"{client!r}: status {resp.status}")

        return call

    return Clients(
        calls={
            AIOHTTP: call_aiohttp,
            AIOHTTP_HEADERS: call_aiohttp_headers,
            HTTPX: call_httpx,
            G_AIOHTTP: garrison(g_aio),
            G_HTTPX: garrison(g_hx),
            RAW: raw.call,
        },
        closers=[session.close, hx.aclose, g_aio.aclose, g_hx.aclose, raw.aclose],
    )


async def batch(call: Call, n: int, concurrency: int) -> Sample:
    """``n`` calls by ``concurrency`` workers, each timing its own calls."""
    per_worker = n // concurrency
    latencies: list[int] = []
    clock = time.perf_counter_ns

    async def worker() -> None:
        for _ in range(per_worker):
            t0 = clock()
            await call()
            latencies.append(clock() - t0)

    gc.collect()
    cpu0, t0 = time.process_time_ns(), clock()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = clock() - t0, time.process_time_ns() - cpu0
    return Sample(per_worker * concurrency, wall, cpu, latencies)


# -- the network benchmark -------------------------------------------------------------------


async def measure_network(url: str, plan: Plan) -> dict[tuple[str, int], list[Sample]]:
    """Every client at every concurrency, interleaved in rounds; the samples by (client, c)."""
    clients = make_clients(url)
    samples: dict[tuple[str, int], list[Sample]] = {
        (name, c): [] for name in CLIENTS for c in CONCURRENCY
    }
    try:
        for c in CONCURRENCY:  # warm up: fill every pool, touch every code path
            for name in CLIENTS:
                await batch(clients.calls[name], plan.warmup, c)
        steps = plan.rounds * len(CONCURRENCY) * len(CLIENTS)
        with progress("network", steps) as advance:
            for r in range(plan.rounds):
                groups = GROUPS[r % len(GROUPS) :] + GROUPS[: r % len(GROUPS)]
                order = [n for g in groups for n in (g if r % 2 == 0 else reversed(g))]
                for c in CONCURRENCY:
                    for name in order:
                        s = await batch(clients.calls[name], plan.requests[c], c)
                        samples[name, c].append(s)
                        advance(f"round {r + 1} c={c} {name}: {s.rps:,.0f} req/s")
    finally:
        await clients.aclose()
    return samples


def overhead(garrison: list[Sample], bare: list[Sample], c: int) -> tuple[float, float, str]:
    """garrison's overhead over the bare call of its library: (%, µs, what was compared).

    Paired round by round (the two batches ran back to back), median over rounds. At c=1 the
    measure is the p50 latency (the typical call, robust to bursts of load from elsewhere on
    the machine); under concurrency it is the time per request (1 / throughput).
    """
    measure: Callable[[Sample], float]
    if c == 1:
        measure, what = (lambda s: s.latency_us(0.5)), "p50 latency"
    else:
        measure, what = (lambda s: s.per_request_us), "time per request"
    pairs = [(measure(g), measure(b)) for g, b in zip(garrison, bare, strict=True)]
    pct = median([g / b - 1 for g, b in pairs]) * 100
    return pct, median([g - b for g, b in pairs]), what


def network_rows(samples: dict[tuple[str, int], list[Sample]]) -> list[Row]:
    """Per concurrency: req/s, p50, p99 and client CPU per transport, then the overheads."""

    def med(name: str, c: int, f: Callable[[Sample], float]) -> float:
        return median([f(s) for s in samples[name, c]])

    metrics: list[tuple[str, str, Better, Callable[[Sample], float]]] = [
        ("req/s", "req/s", "higher", lambda s: s.rps),
        ("p50 latency", "µs", "lower", lambda s: s.latency_us(0.5)),
        ("p99 latency", "µs", "lower", lambda s: s.latency_us(0.99)),
        ("client CPU / request", "µs", "lower", lambda s: s.cpu_us),
    ]
    rows: list[Row] = []
    for c in CONCURRENCY:
        for label, unit, better, f in metrics:
            peers = {AIOHTTP: med(AIOHTTP, c, f), HTTPX: med(HTTPX, c, f)}
            for g, lib in ((G_AIOHTTP, AIOHTTP), (G_HTTPX, HTTPX)):
                rows.append(
                    Row(
                        f"{label} c={c} · {lib} transport",
                        unit,
                        med(g, c, f),
                        peers=peers,
                        better=better,
                        vs=lib,
                        limit=med(RAW, c, f),
                    )
                )
        for g, lib in ((G_AIOHTTP, AIOHTTP), (G_HTTPX, HTTPX)):
            pct, extra_us, what = overhead(samples[g, c], samples[lib, c], c)
            verdict = "met" if pct < GOAL else "NOT met"
            rows.append(
                Row(
                    f"client overhead c={c} · {lib} transport",
                    "%",
                    pct,
                    better="lower",
                    notes=f"vs bare {lib}: {what}, paired by round; "
                    f"{extra_us:+.0f} µs/request; goal < {GOAL:.0f}%: {verdict}",
                )
            )
        pct, extra_us, what = overhead(samples[AIOHTTP_HEADERS, c], samples[AIOHTTP, c], c)
        cpu_of = metrics[3][3]
        cpu_headers = med(AIOHTTP_HEADERS, c, cpu_of) - med(AIOHTTP, c, cpu_of)
        cpu_total = med(G_AIOHTTP, c, cpu_of) - med(AIOHTTP, c, cpu_of)
        rows.append(
            Row(
                f"  of which propagation headers c={c} · aiohttp",
                "%",
                pct,
                better="lower",
                notes=f"bare aiohttp sending the 3 headers garrison adds: {what} "
                f"{extra_us:+.0f} µs; client CPU {cpu_headers:+.0f} of garrison's "
                f"{cpu_total:+.0f} µs/request",
            )
        )
    return rows


def choice(samples: dict[tuple[str, int], list[Sample]]) -> str:
    """The transport the numbers pick, and why, in one sentence."""

    def rps(name: str, c: int) -> float:
        return median([s.rps for s in samples[name, c]])

    def cpu(name: str) -> float:
        return median([s.cpu_us for s in samples[name, 1]])

    bare = [rps(AIOHTTP, c) / rps(HTTPX, c) for c in CONCURRENCY]
    ours = [rps(G_AIOHTTP, c) / rps(G_HTTPX, c) for c in CONCURRENCY]
    winner = AIOHTTP if median(bare + ours) >= 1 else HTTPX
    cs = "/".join(f"c={c}" for c in CONCURRENCY)
    return (
        f"{winner}. aiohttp ÷ httpx req/s at {cs}: bare "
        + " / ".join(f"{x:.2f}x" for x in bare)
        + ", through garrison's client "
        + " / ".join(f"{x:.2f}x" for x in ours)
        + f"; client CPU per request at c=1: aiohttp {cpu(AIOHTTP):.0f} µs, httpx {cpu(HTTPX):.0f}"
        f" µs (garrison on them: {cpu(G_AIOHTTP):.0f} / {cpu(G_HTTPX):.0f} µs)"
    )


# -- the CPU micro benchmark -----------------------------------------------------------------


async def measure_micro(plan: Plan) -> tuple[float, float]:
    """µs per call through ServiceClient on MockTransport, and on the transport directly."""
    headers: Mapping[str, str] = {"content-type": "application/json"}
    body = b'{"pong":true}'
    transport = MockTransport(lambda method, url, hdrs, content: (200, headers, body))
    client = ServiceClient("echo", ["http://echo"], caller="bench", transport=transport)
    empty: dict[str, str] = {}

    async def chain() -> None:
        await client.get("/ping")

    async def direct() -> None:
        await transport.send("GET", "http://echo/ping", empty, None, 10.0)

    async def per_call_us(call: Call) -> float:
        transport.requests.clear()
        gc.collect()
        t0 = time.perf_counter_ns()
        for _ in range(plan.micro_calls):
            await call()
        return (time.perf_counter_ns() - t0) / plan.micro_calls / 1e3

    await per_call_us(chain)
    await per_call_us(direct)
    chains: list[float] = []
    directs: list[float] = []
    with progress("micro", plan.micro_rounds) as advance:
        for r in range(plan.micro_rounds):
            pair = (chain, direct) if r % 2 == 0 else (direct, chain)
            for call in pair:
                (chains if call is chain else directs).append(await per_call_us(call))
            advance(f"round {r + 1}: chain {chains[-1]:.1f} µs, direct {directs[-1]:.1f} µs")
    transport.requests.clear()
    await client.aclose()
    return median(chains), median(directs)


# -- the benchmark ---------------------------------------------------------------------------


async def run(quick: bool) -> list[Row]:
    """The whole benchmark: network rows, overheads, then the micro benchmark."""
    plan = QUICK if quick else FULL
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pinning = len(cpus) >= 2 and os.environ.get("BENCH_PIN", "1") != "0"
    server_cpu, client_cpu = (cpus[0], cpus[1]) if pinning else (None, None)
    with echo_server(server_cpu) as url:
        before = pin(client_cpu)
        try:
            samples = await measure_network(url, plan)
            chain_us, direct_us = await measure_micro(plan)
        finally:
            if before is not None:
                os.sched_setaffinity(0, before)
    rows = network_rows(samples)
    bare_p50 = median([s.latency_us(0.5) for s in samples[AIOHTTP, 1]])
    own = chain_us - direct_us
    rows += [
        Row(
            "client chain per call (MockTransport)",
            "µs",
            chain_us,
            peers={"transport direct": direct_us},
            better="lower",
            notes="pure CPU: ServiceClient.get → edge metrics → dispatch → MockTransport",
        ),
        Row(
            "client's own cost per call",
            "µs",
            own,
            better="lower",
            notes=f"= {own / bare_p50 * 100:.1f}% of a bare aiohttp call at c=1 "
            f"(p50 {bare_p50:.0f} µs); goal < {GOAL:.0f}%",
        ),
    ]
    placement = (
        f"server pinned to CPU {server_cpu}, clients to CPU {client_cpu} (sched_setaffinity)"
        if pinning
        else "not pinned (fewer than 2 usable CPUs or BENCH_PIN=0)"
    )
    note(
        "setup",
        f"uvicorn serving garrison Service('echo') GET /ping → {{\"pong\":true}} (httptools, "
        f"uvloop) in its own process; all clients on one event loop here; {placement}; "
        f"{plan.rounds} rounds x {dict(plan.requests)} requests per client and concurrency, "
        "each garrison client next to its bare library, order rotated per round; "
        "each value is the median over rounds",
    )
    note("limit", "a raw asyncio-streams HTTP/1.1 client, prebuilt request, no library")
    note("transport choice", choice(samples))
    if find_spec("sniffio") is None:
        note(
            "httpx caveat",
            "sniffio is not installed, so httpcore retries `import sniffio` (a failed import that "
            "scans sys.path) 4 times per request: part of httpx's CPU per request here",
        )
    note(
        "versions",
        ", ".join(f"{p} {version(p)}" for p in ("aiohttp", "httpx", "uvicorn", "starlette")),
    )
    return rows
