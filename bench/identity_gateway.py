"""Gateway overhead: requests/s and p50/p99 through the garrison gateway versus straight to the
upstream, with nginx ``proxy_pass`` as the reference cost of a second hop.

Every path ends at the same upstream, a garrison ``Service("echo")`` (``GET /ping -> {"pong":
true}``, defined below as :data:`svc`) served by ``garrison run`` in its own process. The paths:

* **direct**: client -> upstream;
* **nginx proxy_pass**: client -> nginx (one worker, keep-alive upstream pool) -> upstream: what
  a second hop costs when it does nothing but forward;
* **gateway, anonymous route**: client -> ``garrison gateway`` -> upstream; the gateway strips
  internal headers, mints an anonymous passport and proxies; the upstream verifies it;
* **gateway, JWT route**: as above with ``Authorization: Bearer`` (ES256, from a JWK set file)
  on a route requiring a user and a scope; the same token every time, so the edge answers from
  its verified-credential cache, as it does for a client reusing its access token;
* **nginx auth_request -> garrison**: nginx proxies, asking the gateway's auth endpoint first
  (the "behind a real proxy" deployment): the JWT route's identity work plus nginx's hop.

The load generator is another process: ``wrk`` (one thread, closed loop, a Lua ``done`` hook
printing exact percentiles) when it is on PATH, else an aiohttp client started from this module
(``python -m bench.identity_gateway --loadgen``); ``BENCH_LOADGEN=aiohttp`` forces the latter.
Each run is a fixed duration at one concurrency: 1 (latency: the p50 the issue's goal is about)
and 16 (throughput). Runs are interleaved in rounds, the order of the paths rotated per round,
so that bursts of load from elsewhere on the machine hit every path alike; values are medians
over rounds. The added p50 is paired: (path p50 - direct p50) within each round, then the
median. Nothing is pinned: on two shared CPUs four processes compete for the cores, as they
would on a small host. Latency on a contended machine is mostly waiting for a CPU, so each path
also reports the CPU time its second hop spends per request (``/proc/PID/task/*/schedstat`` of
the gateway process, or of nginx's worker, over each c=16 run): the cost that remains on an
idle core.

Goal (issue 3): the gateway adds at most 1 ms at p50.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

from garrison.service import Service

from ._harness import Row, median, note, progress

PILLAR = "identity"

svc = Service("echo")
"""The upstream every path ends at (``garrison run echo`` imports it from here)."""


@svc.get("/ping")
async def ping() -> dict[str, bool]:
    return {"pong": True}


REPO = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
GOAL_US = 1000.0
"""Issue 3: the gateway adds at most 1 ms at p50."""
ISSUER = "https://issuer.bench.example"

DIRECT, NGINX_PEER, GW_ANON, GW_JWT, NGINX_AUTH = (
    "direct",
    "nginx proxy_pass",
    "gateway anonymous",
    "gateway JWT",
    "nginx auth_request → garrison",
)
CONCURRENCY = (1, 16)


@dataclass(frozen=True)
class Plan:
    rounds: int
    seconds: int
    warmup_seconds: int


FULL = Plan(rounds=5, seconds=2, warmup_seconds=1)
QUICK = Plan(rounds=2, seconds=1, warmup_seconds=1)


@dataclass(frozen=True)
class Result:
    """One run of the load generator against one path at one concurrency."""

    requests: int
    seconds: float
    p50_us: float
    p99_us: float
    cpu_us: Mapping[str, float] = field(default_factory=dict)
    """CPU time per request of each server process (gateway, upstream, nginx) during the run."""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


@dataclass(frozen=True)
class Target:
    url: str
    headers: Mapping[str, str]


# -- the stack -------------------------------------------------------------------------------

CONFIG = """\
# Written by bench/identity_gateway.py
[app]
name = "bench-gateway"
data_dir = "{data}"

[log]
level = "WARNING"

[services.echo]
app = "bench.identity_gateway:svc"
port = {upstream}

[identity]
allow_dev_key = false

[identity.passport]
active = "bench"
keys = {{ bench = "env:BENCH_GATEWAY_PASSPORT_KEY" }}

[identity.jwt.issuers.bench]
issuer = "{issuer}"
audiences = ["bench"]
algorithms = ["ES256"]
jwks_file = "jwks.json"

[gateway]
port = {gateway}

[[gateway.routes]]
prefix = "/public"
service = "echo"
strip_prefix = true
auth = "anonymous"

[[gateway.routes]]
prefix = "/api"
service = "echo"
strip_prefix = true
auth = "user"
scopes = ["read"]
"""

NGINX_CONF = """
worker_processes 1;
user root;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 100000;

    upstream echo {{ server 127.0.0.1:{upstream}; keepalive 32; keepalive_requests 100000; }}
    upstream garrison {{ server 127.0.0.1:{gateway}; keepalive 32; keepalive_requests 100000; }}

    server {{
        listen 127.0.0.1:{port};

        location = /_garrison_auth {{
            internal;
            proxy_pass http://garrison/_garrison/auth;
            proxy_pass_request_body off;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
        }}

        location = /api/ping {{
            auth_request /_garrison_auth;
            auth_request_set $garrison_passport $upstream_http_garrison_passport;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header garrison-passport $garrison_passport;
            proxy_set_header Authorization "";
            proxy_pass http://echo/ping;
        }}

        location / {{
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://echo;
        }}
    }}
}}
"""


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _es256_jwks_and_token() -> tuple[bytes, str]:
    """A JWK set file's content and a token signed with its key (valid for an hour)."""
    import jwt as pyjwt
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwks = json.dumps({"keys": [{**jwk, "kid": "bench-1", "use": "sig", "alg": "ES256"}]})
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "bench", "sub": "bench-user", "scope": "read", "iat": now}
    token = pyjwt.encode(
        {**claims, "exp": now + 3600}, key, algorithm="ES256", headers={"kid": "bench-1"}
    )
    return jwks.encode(), token


@contextmanager
def _process(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> Iterator[Any]:
    """Run ``argv`` (stderr to ``log``) and stop it, by its pid, at the end."""
    with log.open("ab") as err:
        proc = subprocess.Popen(
            list(argv),
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(url: str, procs: Sequence[Any], log: Path, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[:4]} exited ({p.returncode}): {_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s: {_tail(log)}")


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return ""


@dataclass(frozen=True)
class Stack:
    targets: dict[str, Target]
    pids: dict[str, int]
    """The server processes whose CPU time is measured: gateway, upstream, nginx (its worker)."""


def _cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in ns (``/proc/PID/task/*/schedstat``)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.append(int(entry.name))
    return out


@contextmanager
def stack(tmp: Path) -> Iterator[Stack]:
    """Upstream, gateway and nginx running; the targets by path name and the servers' pids."""
    upstream, gateway, nginx = _free_ports(3)
    jwks, token = _es256_jwks_and_token()
    app = tmp / "app"
    app.mkdir()
    (app / "jwks.json").write_bytes(jwks)
    (app / "garrison.toml").write_text(
        CONFIG.format(data=tmp / "data", upstream=upstream, gateway=gateway, issuer=ISSUER)
    )
    key = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    env = {"BENCH_GATEWAY_PASSPORT_KEY": key, "PYTHONPATH": str(REPO)}
    prefix = tmp / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(prefix=prefix, port=nginx, upstream=upstream, gateway=gateway)
    )
    log = tmp / "processes.log"
    garrison = [sys.executable, "-m", "garrison"]
    with ExitStack() as stack:
        up = stack.enter_context(
            _process([*garrison, "run", "echo", "--app-dir", str(app)], log, env)
        )
        gw = stack.enter_context(_process([*garrison, "gateway", str(app)], log, env))
        ng = stack.enter_context(
            _process([NGINX, "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"], log)
        )
        procs = [up, gw, ng]
        _wait_ready(f"http://127.0.0.1:{upstream}/readyz", procs, log)
        _wait_ready(f"http://127.0.0.1:{gateway}/_garrison/healthz", procs, log)
        _wait_ready(f"http://127.0.0.1:{nginx}/ping", procs, log)
        bearer = {"Authorization": f"Bearer {token}"}
        targets = {
            DIRECT: Target(f"http://127.0.0.1:{upstream}/ping", {}),
            NGINX_PEER: Target(f"http://127.0.0.1:{nginx}/ping", {}),
            GW_ANON: Target(f"http://127.0.0.1:{gateway}/public/ping", {}),
            GW_JWT: Target(f"http://127.0.0.1:{gateway}/api/ping", bearer),
            NGINX_AUTH: Target(f"http://127.0.0.1:{nginx}/api/ping", bearer),
        }
        for name, t in targets.items():  # every path answers 200 before anything is measured
            request = urllib.request.Request(t.url, headers=dict(t.headers))
            with urllib.request.urlopen(request, timeout=5) as resp:
                body = resp.read()
            if body != b'{"pong":true}':
                raise RuntimeError(f"{name}: unexpected answer {body[:100]!r}")
        workers = _children(ng.pid)
        if len(workers) != 1:
            raise RuntimeError(f"expected one nginx worker, found {workers}")
        yield Stack(targets, {"gateway": gw.pid, "upstream": up.pid, "nginx": workers[0]})


# -- the load generators ---------------------------------------------------------------------

WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("GARRISON-BENCH %d %d %d %d %d %d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def _wrk(wrk: str, script: Path, target: Target, concurrency: int, seconds: int) -> Result:
    headers = [a for k, v in target.headers.items() for a in ("-H", f"{k}: {v}")]
    argv = [wrk, "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script)]
    out = subprocess.run(
        [*argv, *headers, target.url], capture_output=True, text=True, timeout=seconds + 30
    )
    m = re.search(r"GARRISON-BENCH (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", out.stdout)
    if out.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr}")
    n, duration_us, p50, p99, bad_status, socket_errors = map(int, m.groups())
    if bad_status or socket_errors:
        raise RuntimeError(f"{target.url}: {bad_status} non-2xx answers, {socket_errors} errors")
    return Result(n, duration_us / 1e6, float(p50), float(p99))


class AiohttpLoad:
    """The fallback load generator: one process of this module (``--loadgen``) started once,
    running one load per command line it reads (JSON), answering with one JSON line."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.identity_gateway", "--loadgen"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, target: Target, concurrency: int, seconds: int) -> Result:
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        command: dict[str, Any] = {"url": target.url, "headers": dict(target.headers)}
        command.update(concurrency=concurrency, seconds=seconds)
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"aiohttp load generator exited ({self._proc.wait()})")
        data = json.loads(line)
        if "error" in data:
            raise RuntimeError(f"aiohttp load generator: {data['error']}")
        return Result(data["requests"], data["seconds"], data["p50_us"], data["p99_us"])

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


async def _load(
    url: str, headers: Mapping[str, str], concurrency: int, seconds: float
) -> dict[str, Any]:
    """One closed-loop run: ``concurrency`` workers for ``seconds``, on fresh connections."""
    import aiohttp

    from ._harness import percentile

    latencies: list[int] = []
    errors = 0
    clock = time.perf_counter_ns
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        end = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < end:
                t0 = clock()
                async with session.get(url, headers=headers) as resp:
                    await resp.read()
                    errors += resp.status != 200
                latencies.append(clock() - t0)

        start = clock()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = (clock() - start) / 1e9
    if errors:
        return {"error": f"{errors} non-200 answers from {url}"}
    return {
        "requests": len(latencies),
        "seconds": wall,
        "p50_us": percentile(latencies, 0.5) / 1e3,
        "p99_us": percentile(latencies, 0.99) / 1e3,
    }


async def _loadgen_main() -> None:
    """``--loadgen``: run the load each stdin line asks for, answer on stdout, until EOF."""
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        c = json.loads(line)
        result = await _load(c["url"], c["headers"], c["concurrency"], c["seconds"])
        print(json.dumps(result), flush=True)


# -- the benchmark ---------------------------------------------------------------------------


def measure(
    running: Stack, plan: Plan, tmp: Path
) -> tuple[dict[tuple[str, int], list[Result]], str]:
    """Every path at every concurrency, in rounds; the results and the load generator used."""
    wrk = shutil.which("wrk")
    if os.environ.get("BENCH_LOADGEN", "").lower() == "aiohttp":
        wrk = None
    script = tmp / "report.lua"
    script.write_text(WRK_SCRIPT)
    fallback = AiohttpLoad() if wrk is None else None

    targets, pids = running.targets, running.pids

    def run_one(name: str, c: int, seconds: int) -> Result:
        before = {k: _cpu_ns(pid) for k, pid in pids.items()}
        if wrk is not None:
            res = _wrk(wrk, script, targets[name], c, seconds)
        else:
            assert fallback is not None
            res = fallback.run(targets[name], c, seconds)
        cpu = {k: (_cpu_ns(pid) - before[k]) / 1e3 / res.requests for k, pid in pids.items()}
        return replace(res, cpu_us=cpu)

    names = list(targets)
    results: dict[tuple[str, int], list[Result]] = {(n, c): [] for n in names for c in CONCURRENCY}
    try:
        for c in CONCURRENCY:  # warm up: pools filled, caches and code paths hot
            for name in names:
                run_one(name, c, plan.warmup_seconds)
        with progress("gateway", plan.rounds * len(names) * len(CONCURRENCY)) as advance:
            for r in range(plan.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for c in CONCURRENCY:
                    for name in order:
                        res = run_one(name, c, plan.seconds)
                        results[name, c].append(res)
                        advance(f"round {r + 1} c={c} {name}: p50 {res.p50_us:.0f} µs")
    finally:
        if fallback is not None:
            fallback.close()
    if wrk is not None:
        v = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.split()
        return results, f"wrk {v[1] if len(v) > 1 else '?'} (one thread, closed loop)"
    return results, f"aiohttp {version('aiohttp')} in its own process (closed loop)"


def rows_for(results: dict[tuple[str, int], list[Result]]) -> list[Row]:
    def med(name: str, c: int, attr: str) -> float:
        return median([getattr(r, attr) for r in results[name, c]])

    def cpu(name: str, process: str) -> float:
        return median([r.cpu_us[process] for r in results[name, 16]])

    def added(name: str) -> float:
        pairs = zip(results[name, 1], results[DIRECT, 1], strict=True)
        return median([a.p50_us - d.p50_us for a, d in pairs])

    direct_cpu = cpu(DIRECT, "upstream")
    rows: list[Row] = []
    for label, gw, extra in (
        ("anonymous route", GW_ANON, ()),
        ("JWT route, cached credential", GW_JWT, (NGINX_AUTH,)),
    ):
        peers = (DIRECT, NGINX_PEER, *extra)
        for c, metric, unit, attr, better in (
            (1, "p50 latency", "µs", "p50_us", "lower"),
            (1, "p99 latency", "µs", "p99_us", "lower"),
            (16, "req/s", "req/s", "rps", "higher"),
            (16, "p50 latency", "µs", "p50_us", "lower"),
            (16, "p99 latency", "µs", "p99_us", "lower"),
        ):
            rows.append(
                Row(
                    f"{metric} c={c} · {label}",
                    unit,
                    med(gw, c, attr),
                    peers={p: med(p, c, attr) for p in peers},
                    better=better,  # type: ignore[arg-type]
                    vs=NGINX_PEER,
                )
            )
        extra_us = added(gw)
        verdict = "met" if extra_us <= GOAL_US else "NOT met"
        rows.append(
            Row(
                f"p50 added vs direct, c=1 · {label}",
                "µs",
                extra_us,
                peers={p: added(p) for p in peers if p != DIRECT},
                better="lower",
                vs=NGINX_PEER,
                notes=f"paired by round; goal ≤ {GOAL_US:.0f} µs: {verdict}",
            )
        )
        hop = {NGINX_PEER: cpu(NGINX_PEER, "nginx"), "upstream service (direct)": direct_cpu}
        if extra:
            hop[NGINX_AUTH] = cpu(NGINX_AUTH, "nginx") + cpu(NGINX_AUTH, "gateway")
        rows.append(
            Row(
                f"CPU per request of the second hop c=16 · {label}",
                "µs",
                cpu(gw, "gateway"),
                peers=hop,
                better="lower",
                vs=NGINX_PEER,
                notes="CPU time of the gateway process per request (nginx: its worker; "
                "upstream service: the garrison service itself, straight from the client, "
                "for scale); less sensitive to contention than latency",
            )
        )
    return rows


def run(quick: bool) -> list[Row]:
    plan = QUICK if quick else FULL
    if not os.path.exists(NGINX):
        raise RuntimeError("nginx is not installed (apt-get install nginx): it is the peer")
    with (
        tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp,
        stack(Path(tmp)) as running,
    ):
        results, loadgen = measure(running, plan, Path(tmp))
    rows = rows_for(results)
    nginx_v = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    note(
        "setup",
        "upstream: garrison Service('echo') GET /ping (35-byte JSON) under `garrison run` "
        "(uvicorn, httptools, uvloop); gateway: `garrison gateway` (one process); "
        f"{nginx_v.removeprefix('nginx version: ')}: one worker, keep-alive pools; "
        f"load generator: {loadgen}; every process separate, none pinned",
    )
    note(
        "method",
        f"{plan.rounds} rounds x {plan.seconds} s per path and concurrency after "
        f"{plan.warmup_seconds} s of warm-up each; path order rotated per round; medians over "
        "rounds; c=1 for latency, c=16 for throughput; ratio vs nginx proxy_pass (the cost of "
        "a hop that only forwards)",
    )
    note(
        "paths",
        "gateway anonymous: strip, anonymous passport minted (HS256), proxied, verified by the "
        "upstream; gateway JWT: ES256 bearer token on a user+scope route, verified-credential "
        "cache hit; nginx auth_request → garrison: nginx asks /_garrison/auth (same JWT) then "
        "proxies with the passport",
    )
    note(
        "versions",
        ", ".join(f"{p} {version(p)}" for p in ("uvicorn", "aiohttp", "starlette", "uvloop")),
    )
    return rows


if __name__ == "__main__":
    if sys.argv[1:] == ["--loadgen"]:
        try:
            import uvloop
        except ImportError:
            asyncio.run(_loadgen_main())
        else:
            uvloop.run(_loadgen_main())
    else:
        sys.exit("run it with `python -m bench identity_gateway [--quick]`")
