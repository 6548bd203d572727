"""Resilience between real services on loopback: retries, timeouts, breakers, quarantine,
live replacement, shedding at the door and retries at one layer only.

One set of processes (``resilience_app``) serves the whole module: front is the caller whose
edges garrison.toml configures; back, phoenix, pool (three replicas), middle and door misbehave on
demand through their ``/control`` endpoints and count what they saw on ``/stats``
(``POST /reset`` starts a test afresh). Waits are bounded polls; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from ._procs import free_port_block, run_processes, service_argv, wait_ready

pytestmark = pytest.mark.e2e

APP = Path(__file__).parent / "resilience_app"
NO_RETRY = "garrison-no-retry"
T = TypeVar("T")


class Fleet:
    """The URLs of the module's services, a shared HTTP client and the mortal phoenix."""

    def __init__(self, base: int, env: dict[str, str]) -> None:
        self.front = f"http://127.0.0.1:{base}"
        self.back = f"http://127.0.0.1:{base + 1}"
        self.phoenix = f"http://127.0.0.1:{base + 2}"
        self.middle = f"http://127.0.0.1:{base + 3}"
        self.door = f"http://127.0.0.1:{base + 4}"
        self.pools = [f"http://127.0.0.1:{base + 5 + i}" for i in range(3)]
        self.http = httpx.Client(timeout=30)
        self._env = env
        self._phoenix: subprocess.Popen[bytes] | None = None

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.http.get(url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        r = self.http.post(url, **kw)
        assert r.status_code < 300, r.text
        return r

    def stats(self, url: str) -> dict[str, Any]:
        r = self.http.get(url + "/stats", headers={"garrison-criticality": "critical"})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def state(self, url: str) -> dict[str, Any]:
        r = self.http.get(url + "/_garrison/resilience")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def pipeline(self, url: str, name: str) -> dict[str, Any]:
        (found,) = [p for p in self.state(url)["pipelines"] if p["name"] == name]
        return found

    # -- phoenix: a process of its own, killed and restarted by a test --------------------------

    def start_phoenix(self) -> None:
        self._phoenix = subprocess.Popen(
            service_argv(APP, "phoenix"),
            env={**os.environ, **self._env},
            start_new_session=True,
            stdout=subprocess.DEVNULL,
        )
        wait_ready([self.phoenix])

    def kill_phoenix(self) -> None:
        """SIGKILL: no graceful shutdown, connections die with the process."""
        proc = self._phoenix
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        self._phoenix = None

    def stop_phoenix(self) -> None:
        proc, self._phoenix = self._phoenix, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    base = free_port_block(8)
    env = {
        "GARRISON_SERVICES__FRONT__PORT": str(base),
        "GARRISON_SERVICES__BACK__PORT": str(base + 1),
        "GARRISON_SERVICES__PHOENIX__PORT": str(base + 2),
        "GARRISON_SERVICES__MIDDLE__PORT": str(base + 3),
        "GARRISON_SERVICES__DOOR__PORT": str(base + 4),
        "GARRISON_SERVICES__POOL__PORT": str(base + 5),
        "PYTHONPATH": str(APP),
    }
    argvs = [service_argv(APP, name) for name in ("front", "back", "middle", "door")] + [
        service_argv(APP, "pool", i) for i in range(3)
    ]
    f = Fleet(base, env)
    try:
        with run_processes(argvs, env):
            f.start_phoenix()
            wait_ready([f.front, f.back, f.middle, f.door, *f.pools])
            yield f
    finally:
        f.stop_phoenix()
        f.http.close()


def eventually(probe: Callable[[], T], what: str, timeout: float = 15.0) -> T:
    """Poll ``probe`` until it returns something truthy (bounded); return that."""
    end = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"not seen within {timeout}s: {what}")
        time.sleep(0.05)


# -- 1. a flaky callee ------------------------------------------------------------------------


def test_a_flaky_callee_is_retried_and_the_caller_sees_success(fleet: Fleet) -> None:
    fleet.post(fleet.back + "/reset")
    assert fleet.get(fleet.front + "/flaky").status_code == 200  # the route's pipeline exists
    fleet.post(fleet.back + "/reset")
    fleet.post(fleet.back + "/control/flaky", params={"pattern": "503,503,200"})
    before = fleet.pipeline(fleet.front, "front->back /flaky")
    for _ in range(10):
        r = fleet.get(fleet.front + "/flaky")
        assert r.status_code == 200, r.text
        assert r.json() == {"ok": True}
    seen = fleet.stats(fleet.back)
    # Each call took three attempts, and the callee saw them numbered.
    assert seen["requests"]["/flaky"] == 30
    assert seen["attempts"]["/flaky"] == {"1": 10, "2": 10, "3": 10}
    after = fleet.pipeline(fleet.front, "front->back /flaky")
    assert after["retry"]["retries"] - before["retry"]["retries"] == 20
    assert after["calls"] - before["calls"] == 10


def test_a_callee_failing_every_call_gets_max_attempts_and_no_more(fleet: Fleet) -> None:
    fleet.post(fleet.back + "/reset")
    fleet.post(fleet.back + "/control/flaky", params={"pattern": "503"})
    for _ in range(5):
        r = fleet.get(fleet.front + "/flaky")
        assert r.status_code == 502, r.text
        assert r.json() == {"error": "upstream_error", "message": "back answered 503"}
    seen = fleet.stats(fleet.back)
    assert seen["requests"]["/flaky"] == 15  # max_attempts = 3 per call
    assert seen["attempts"]["/flaky"] == {"1": 5, "2": 5, "3": 5}
    fleet.post(fleet.back + "/reset")


# -- 2. a slow callee ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cut_by", "headers"),
    [
        ("the edge timeout", {}),  # [..."front->back".routes."/slow"] timeout = 0.5
        ("the caller's deadline", {"garrison-timeout-ms": "300"}),
    ],
)
def test_a_slow_callee_is_cut_off_and_its_handler_cancelled(
    fleet: Fleet, cut_by: str, headers: dict[str, str]
) -> None:
    fleet.post(fleet.back + "/reset")
    r = fleet.get(fleet.front + "/slow", params={"seconds": 20}, headers=headers)
    assert r.status_code == 504, (cut_by, r.text)
    assert r.json()["error"] == "deadline_exceeded"
    assert r.headers[NO_RETRY] == "1"
    # The callee got the remaining budget with the call, and gave up when it was spent.
    seen = eventually(
        lambda: (s := fleet.stats(fleet.back))["cancelled"].get("/slow") and s,
        "the callee's handler cancelled",
    )
    assert seen["started"] == {"/slow": 1}
    assert seen["cancelled"] == {"/slow": 1}
    assert seen["completed"] == {}


# -- 3. a callee that dies and comes back -----------------------------------------------------


def test_the_breaker_opens_on_a_dead_callee_and_closes_when_it_returns(fleet: Fleet) -> None:
    edge = "front->phoenix"
    assert fleet.get(fleet.front + "/phoenix").status_code == 200
    assert fleet.pipeline(fleet.front, edge)["breaker"]["state"] == "closed"
    fleet.kill_phoenix()

    # Window of 4 calls, at least 4, 50% failures: the third failure opens the breaker.
    statuses = [fleet.get(fleet.front + "/phoenix").status_code for _ in range(4)]
    assert statuses == [502, 502, 502, 503]
    snap = fleet.pipeline(fleet.front, edge)
    assert snap["breaker"]["state"] == "open"

    # Open: calls fail at once with the breaker's 503, and nothing is sent.
    for _ in range(5):
        r = fleet.get(fleet.front + "/phoenix")
        assert r.status_code == 503
        assert r.json() == {"error": "unavailable", "message": "breaker rejected the call: open"}
        assert r.headers[NO_RETRY] == "1"
    opened = fleet.pipeline(fleet.front, edge)
    assert opened["attempts"] == snap["attempts"]
    assert opened["rejections"]["breaker"] - snap["rejections"]["breaker"] == 5
    assert opened["breaker"]["not_permitted"] - snap["breaker"]["not_permitted"] == 5

    # Back on the same port; once the open wait is over, two half-open probes close it.
    fleet.start_phoenix()
    refused: list[int] = []

    def answered() -> bool:
        status = fleet.get(fleet.front + "/phoenix").status_code
        if status != 200:
            refused.append(status)
        return status == 200

    eventually(answered, "a half-open probe let through")
    assert set(refused) <= {503}  # refused while still open: never sent to the callee
    assert fleet.get(fleet.front + "/phoenix").status_code == 200
    closed = fleet.pipeline(fleet.front, edge)
    assert closed["breaker"]["state"] == "closed"
    assert fleet.stats(fleet.phoenix)["requests"] == {"/ping": 2}  # the two probes


# -- 4. outlier ejection --------------------------------------------------------------------


def test_a_bad_instance_is_ejected_and_returns_once_healed(fleet: Fleet) -> None:
    for url in fleet.pools:
        fleet.post(url + "/reset")
    bad = fleet.pools[1]
    fleet.post(bad + "/control/bad", params={"bad": True})

    def bad_served() -> int:
        return int(fleet.stats(bad)["requests"].get("/work", 0))

    # consecutive_5xx = 3: three 500s from the bad replica eject it (within a bounded count).
    for _ in range(60):
        fleet.get(fleet.front + "/pool")
        if bad_served() >= 3:
            break
    assert bad_served() == 3

    # Ejected: it gets no more traffic and every call succeeds on the other two.
    replicas = set()
    for _ in range(30):
        r = fleet.get(fleet.front + "/pool")
        assert r.status_code == 200, r.text
        replicas.add(r.json()["replica"])
    assert replicas <= {0, 2}
    assert bad_served() == 3

    # Healed, it is sent traffic again once its ejection time (3 s) is over.
    fleet.post(bad + "/control/bad", params={"bad": False})

    def back_in_pool() -> bool:
        r = fleet.get(fleet.front + "/pool")
        assert r.status_code == 200, r.text
        return bad_served() > 3

    eventually(back_in_pool, "the healed replica back in the pool")


# -- 5. live replacement under load ------------------------------------------------------------

SWAP_TABLES: list[dict[str, Any]] = [
    {
        "timeout": 5.0,
        "retry": {"max_attempts": 2, "initial_backoff": 0.01, "max_backoff": 0.05},
        "bulkhead": {"max_concurrent_calls": 64, "max_queue": 64},
    },
    {
        "timeout": 4.0,
        "breaker": {"sliding_window_size": 1000, "minimum_number_of_calls": 1000},
        "limiter": {"limit": {"algorithm": "fixed", "limit": 256}},
    },
]
BAD_TABLE = {"breaker": {"failure_rate_threshold": 7}}


async def test_replacing_an_edge_under_load_fails_no_call(fleet: Fleet) -> None:
    edge_url = fleet.front + "/_garrison/resilience/edges/pool"
    assert fleet.get(fleet.front + "/pool").status_code == 200  # the edge's pipeline exists
    v0 = fleet.pipeline(fleet.front, "front->pool")["version"]
    total, cap, concurrency, swaps = 2000, 4000, 16, 6
    done = sent = 0
    failed: list[tuple[int, str]] = []
    versions: list[int] = []  # as the PUTs answered
    seen_versions: list[int] = []  # as GET /_garrison/resilience showed right after
    refused: list[httpx.Response] = []
    swapping = True
    next_swap_at = total
    progress = asyncio.Event()

    async with httpx.AsyncClient(timeout=30) as client:

        async def caller() -> None:
            nonlocal done, sent
            # Until the bounded count is reached and every swap has happened under load.
            while (done < total or swapping) and sent < cap:
                sent += 1
                r = await client.get(fleet.front + "/pool")
                if r.status_code != 200:
                    failed.append((r.status_code, r.text))
                done += 1
                if done >= next_swap_at or sent >= cap:
                    progress.set()

        async def swapper() -> None:
            nonlocal swapping, next_swap_at
            try:
                for i in range(swaps):
                    next_swap_at = (i + 1) * total // (swaps + 1)  # spread over the load
                    progress.clear()
                    if done < next_swap_at:
                        await progress.wait()
                    r = await client.put(edge_url, json=SWAP_TABLES[i % 2])
                    assert r.status_code == 200, r.text
                    versions.append(r.json()["version"])
                    state = (await client.get(fleet.front + "/_garrison/resilience")).json()
                    (snap,) = [p for p in state["pipelines"] if p["name"] == "front->pool"]
                    seen_versions.append(snap["version"])
                    if i == swaps // 2:  # a bad table in the middle of it all
                        refused.append(await client.put(edge_url, json=BAD_TABLE))
            finally:
                swapping = False

        await asyncio.gather(swapper(), *(caller() for _ in range(concurrency)))

    assert failed == []
    assert done >= total
    assert versions == seen_versions == list(range(v0 + 1, v0 + swaps + 1))
    (bad,) = refused
    assert bad.status_code == 422
    assert "breaker.failure_rate_threshold" in bad.json()["message"]
    state = fleet.state(fleet.front)
    (snap,) = [p for p in state["pipelines"] if p["name"] == "front->pool"]
    assert snap["version"] == v0 + swaps  # the refused table changed nothing
    last = SWAP_TABLES[(swaps - 1) % 2]
    override = state["overrides"]["pool"]
    assert set(override) == set(last)
    assert override["timeout"] == last["timeout"]

    r = fleet.http.delete(edge_url)
    assert r.status_code == 200
    assert r.json() == {"edge": "front->pool", "version": v0 + swaps + 1}
    assert fleet.state(fleet.front)["overrides"]["pool"] == {}


# -- 6. shedding at the door by criticality -------------------------------------------------


async def test_the_door_sheds_sheddable_work_before_critical_work(fleet: Fleet) -> None:
    # [resilience.inbound.door]: fixed limit 4; sheddable refused from 2 in flight, default
    # from 3, critical from 4.
    door = fleet.door
    fleet.post(door + "/reset")

    def crit(level: str) -> dict[str, str]:
        return {"garrison-criticality": level}

    async with httpx.AsyncClient(timeout=30) as client:

        async def quick(level: str) -> httpx.Response:
            return await client.get(door + "/quick", headers=crit(level))

        async def holding(n: int) -> None:
            for _ in range(300):
                r = await client.get(door + "/stats", headers=crit("critical"))
                if r.json()["holding"] == n:
                    return
                await asyncio.sleep(0.02)
            raise AssertionError(f"{n} requests never held at the door")

        def assert_shed(r: httpx.Response) -> None:
            assert r.status_code == 503, r.text
            assert r.headers[NO_RETRY] == "1"
            assert r.json()["error"] == "overloaded"

        holds: list[asyncio.Task[httpx.Response]] = []
        try:
            # Under the limit nothing is refused, whatever the criticality.
            for level in ("sheddable", "default", "critical"):
                assert (await quick(level)).status_code == 200
            for level in ("sheddable", "sheddable"):
                holds.append(asyncio.create_task(client.get(door + "/hold", headers=crit(level))))
            await holding(2)

            # Two in flight: sheddable work is shed, the rest admitted.
            assert_shed(await quick("sheddable"))
            assert (await quick("default")).status_code == 200
            assert (await quick("critical")).status_code == 200

            holds.append(asyncio.create_task(client.get(door + "/hold", headers=crit("default"))))
            await holding(3)
            # Three in flight: default work is shed too; critical work still gets in, also
            # among a burst of concurrent sheddable requests (each of which is refused).
            assert_shed(await quick("default"))
            burst = await asyncio.gather(*(quick("sheddable") for _ in range(6)), quick("critical"))
            for r in burst[:-1]:
                assert_shed(r)
            assert burst[-1].status_code == 200
            # An operator still reaches the overloaded service.
            r = await client.get(door + "/_garrison/resilience")
            assert r.status_code == 200
        finally:
            await client.post(door + "/release", headers=crit("critical"))
            held = await asyncio.gather(*holds)
        assert [r.status_code for r in held] == [200, 200, 200]

    seen = fleet.stats(door)
    # Refused at the door: the handler never ran for the shed requests.
    assert seen["requests"] == {
        "/quick sheddable": 1,
        "/quick default": 2,
        "/quick critical": 3,
        "/hold": 3,
    }
    (snap,) = [p for p in fleet.state(door)["pipelines"] if p["name"] == "->door"]
    assert snap["rejections"] == {"limiter": 8}
    assert snap["limiter"]["inflight"] == 0


# -- 7. retries at one layer only -----------------------------------------------------------


def test_a_request_that_is_a_retry_is_not_retried_again_below(fleet: Fleet) -> None:
    fleet.post(fleet.back + "/reset")
    # A first attempt: middle is the retrying layer (middle->back retry, max_attempts = 3).
    assert fleet.get(fleet.middle + "/relay").status_code == 502
    seen = fleet.stats(fleet.back)
    assert seen["attempts"]["/always503"] == {"1": 1, "2": 1, "3": 1}
    assert seen["no_retry"] == {}

    # A retry from the layer above, or a request marked no-retry: one call, and the mark
    # passed on so that no layer below retries either.
    for headers in ({"garrison-attempt": "2"}, {NO_RETRY: "1"}):
        fleet.post(fleet.back + "/reset")
        assert fleet.get(fleet.middle + "/relay", headers=headers).status_code == 502
        seen = fleet.stats(fleet.back)
        assert seen["requests"] == {"/always503": 1}
        assert seen["no_retry"] == {"/always503": 1}


def test_a_chain_retries_at_one_layer_only(fleet: Fleet) -> None:
    # front -> middle -> back/always503, with retry max_attempts = 3 on both edges.
    fleet.post(fleet.back + "/reset")
    calls = 3
    answers = [fleet.get(fleet.front + "/chain") for _ in range(calls)]
    assert all(r.status_code >= 500 for r in answers)
    # 3 per call (middle's retries), not 9 (3 x 3) nor 5 (3 + a retry from front)
    assert fleet.stats(fleet.back)["requests"]["/always503"] == 3 * calls
    assert all(r.headers.get(NO_RETRY) == "1" for r in answers)


# -- 8. bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (b"{not json", "malformed JSON"),
        (b"", "malformed JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b"null", "expected a JSON object"),
        (b'{"retries": {"max_attempts": 3}}', "retries"),
        (b'{"breaker": {"failure_rate_threshold": 7}}', "breaker.failure_rate_threshold"),
        (b'{"timeout": -1}', "timeout"),
        (b'{"timeout": "soon"}', "timeout"),
        (b'{"retry": {"max_attempt": 3}}', "retry.max_attempt"),
        (b'{"breaker": 5}', "breaker"),
        (b'{"limiter": {"limit": {"algorithm": "fixed", "limit": 0}}}', "limiter.limit.limit"),
        (b'{"hedge": {"delay": 0.1}, "retry": {"max_attempts": 2}}', "hedge"),
        (b'{"shadow": ["breaker"]}', "shadow"),
    ],
)
def test_the_operator_api_refuses_a_bad_policy_table(fleet: Fleet, body: bytes, names: str) -> None:
    url = fleet.front + "/_garrison/resilience/edges/back"
    assert fleet.get(fleet.front + "/flaky").status_code == 200  # the edge exists
    before = fleet.state(fleet.front)
    r = fleet.http.put(url, content=body)
    assert r.status_code == 422, r.text
    error = r.json()
    assert names in error["message"]
    if error["error"] == "invalid_policy":  # the edge, then the policy and its field
        loc = error["detail"][0]["loc"]
        assert loc[0] == "override front->back"
        assert names in ".".join(loc[1:])
    after = fleet.state(fleet.front)
    versions = {p["name"]: p["version"] for p in before["pipelines"]}
    assert {p["name"]: p["version"] for p in after["pipelines"]} == versions
    assert after["overrides"] == before["overrides"]


@pytest.mark.parametrize(
    ("method", "callee", "status"),
    [
        ("PUT", "nosuch", 404),
        ("DELETE", "nosuch", 404),
        ("PUT", "a->b", 422),
        ("PUT", "Not-A-Name", 422),
    ],
)
def test_the_operator_api_refuses_an_edge_that_cannot_exist(
    fleet: Fleet, method: str, callee: str, status: int
) -> None:
    r = fleet.http.request(
        method, f"{fleet.front}/_garrison/resilience/edges/{callee}", content=b"{}"
    )
    assert r.status_code == status, r.text
    assert callee in r.json()["message"]


@pytest.mark.parametrize(
    ("section", "key"),
    [
        (
            '[resilience.edges."solo->other"]\nbreaker = { failure_rate_threshold = 7 }',
            "[resilience.edges.solo->other.breaker.failure_rate_threshold]",
        ),
        ("[resilience.defaults]\nretries = { max_attempts = 3 }", "[resilience.defaults.retries]"),
        ("[resilience.inbound.solo]\ntimeout = 1.0", "[resilience.inbound.solo.timeout]"),
        (
            '[resilience.edges."solo->*"]\nhedge = { delay = 0.1 }\nretry = { max_attempts = 2 }',
            "[resilience.edges.solo->*.hedge]",
        ),
        ("[resilience.edge]\ntimeout = 1.0", "[resilience.edge]"),
    ],
)
def test_a_bad_resilience_section_stops_garrison_run(
    tmp_path: Path, section: str, key: str
) -> None:
    (tmp_path / "solo_services.py").write_text(
        "from garrison import Service\n\nsolo = Service('solo')\n"
    )
    port = free_port_block(1)
    (tmp_path / "garrison.toml").write_text(
        f'[app]\nname = "bad"\n\n[services.solo]\napp = "solo_services:solo"\nport = {port}\n\n'
        f"{section}\n"
    )
    try:
        done = subprocess.run(
            service_argv(tmp_path, "solo"), capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        pytest.fail("garrison run served a service whose [resilience] section is invalid")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert key in lines[0]
    assert lines[0].startswith("garrison: error: ")


def test_the_admin_state_is_json_with_every_override(fleet: Fleet) -> None:
    """GET /_garrison/resilience must stay readable whatever was put (retry holds types)."""
    url = fleet.front + "/_garrison/resilience/edges/middle"
    r = fleet.http.put(url, content=json.dumps({"retry": {"max_attempts": 2}}))
    assert r.status_code == 200, r.text
    try:
        override = fleet.state(fleet.front)["overrides"]["middle"]
        assert override["retry"]["max_attempts"] == 2
        assert "timeout" in override["retry"]["retry_on"]
    finally:
        assert fleet.http.delete(url).status_code == 200
