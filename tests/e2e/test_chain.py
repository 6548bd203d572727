"""Three real services on loopback calling each other: front -> middle -> back (two replicas)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ._procs import free_port_block, run_processes, service_argv, wait_ready

pytestmark = pytest.mark.e2e

APP = Path(__file__).parent / "chain_app"


class Chain:
    def __init__(self, base: int) -> None:
        self.front = f"http://127.0.0.1:{base}"
        self.middle = f"http://127.0.0.1:{base + 1}"
        self.backs = [f"http://127.0.0.1:{base + 2}", f"http://127.0.0.1:{base + 3}"]


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    base = free_port_block(4)
    env = {
        "GARRISON_SERVICES__FRONT__PORT": str(base),
        "GARRISON_SERVICES__MIDDLE__PORT": str(base + 1),
        "GARRISON_SERVICES__BACK__PORT": str(base + 2),
        "PYTHONPATH": str(APP),
    }
    argvs = [
        service_argv(APP, "front"),
        service_argv(APP, "middle"),
        service_argv(APP, "back", 0),
        service_argv(APP, "back", 1),
    ]
    c = Chain(base)
    with run_processes(argvs, env):
        wait_ready([c.front, c.middle, *c.backs])
        yield c


def test_trace_context_is_present_on_every_hop(chain: Chain) -> None:
    r = httpx.get(chain.front + "/chain", timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    front, middle, back = body["front"], body["middle"], body["back"]
    # One trace across the three services; each hop's parent is the caller's client span.
    assert front["trace_id"] == middle["trace_id"] == back["trace_id"]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", middle["traceparent"])
    assert middle["traceparent"].split("-")[1] == front["trace_id"]
    assert back["traceparent"].split("-")[1] == front["trace_id"]
    assert len({front["span_id"], middle["span_id"], back["span_id"]}) == 3
    assert middle["caller"] == "front"
    assert back["caller"] == "middle"


def test_an_incoming_traceparent_is_continued(chain: Chain) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = httpx.get(
        chain.front + "/chain", headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
    )
    assert r.json()["back"]["trace_id"] == trace


def test_the_callee_sees_the_callers_remaining_budget(chain: Chain) -> None:
    r = httpx.get(chain.front + "/chain", headers={"garrison-timeout-ms": "4000"}, timeout=10)
    body = r.json()
    f, m, b = (body[k]["budget_ms"] for k in ("front", "middle", "back"))
    assert 0 < b <= m <= f <= 4000


def test_a_spent_budget_makes_the_whole_chain_give_up(chain: Chain) -> None:
    backs = [httpx.get(u + "/stats").json() for u in chain.backs]
    r = httpx.get(chain.front + "/slow", params={"seconds": 30, "timeout": 0.5}, timeout=20)
    assert r.status_code == 504, r.text
    assert r.json()["error"] == "deadline_exceeded"
    after = [httpx.get(u + "/stats").json() for u in chain.backs]
    started = sum(a["started"] - b["started"] for a, b in zip(after, backs, strict=True))
    cancelled = sum(a["cancelled"] - b["cancelled"] for a, b in zip(after, backs, strict=True))
    completed = sum(a["completed"] - b["completed"] for a, b in zip(after, backs, strict=True))
    # The back service received the call, then gave up when the budget was spent.
    assert (started, cancelled, completed) == (1, 1, 0)


def test_a_failing_dependency_is_a_502_with_a_json_body(chain: Chain) -> None:
    r = httpx.get(chain.middle + "/fail")
    assert r.status_code == 502
    assert r.json() == {"error": "upstream_error", "message": "back answered 500"}


def _samples(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line.rpartition(" ")
            out[labels[len(name) :]] = float(value)
    return out


def test_metrics_are_counted_per_edge(chain: Chain) -> None:
    for _ in range(6):
        assert httpx.get(chain.front + "/chain").status_code == 200
    metrics = httpx.get(chain.middle + "/metrics").text
    edges = _samples(metrics, "garrison_edge_requests_total")
    ok = [
        v
        for k, v in edges.items()
        if 'callee="back"' in k
        and 'route="/info"' in k
        and 'outcome="ok"' in k
        and 'caller="middle"' in k
    ]
    assert ok
    assert ok[0] >= 6
    hist = _samples(metrics, "garrison_edge_request_seconds_count")
    assert any('callee="back"' in k and v >= 6 for k, v in hist.items())
    inbound = _samples(metrics, "garrison_http_requests_total")
    assert any('route="/info"' in k and 'outcome="ok"' in k and v >= 6 for k, v in inbound.items())
    # Both replicas of back took part (power of two choices spreads the load).
    served = [
        sum(
            v
            for k, v in _samples(
                httpx.get(u + "/metrics").text, "garrison_http_requests_total"
            ).items()
            if 'route="/info"' in k
        )
        for u in chain.backs
    ]
    assert all(s > 0 for s in served), served


def test_bad_deadline_header_is_rejected_with_a_clear_error(chain: Chain) -> None:
    r = httpx.get(chain.front + "/chain", headers={"garrison-timeout-ms": "-5"})
    assert r.status_code == 400
    assert "garrison-timeout-ms" in r.json()["message"]
