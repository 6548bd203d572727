"""`garrison demo examples/fleet` (what `make demo` runs) works end to end and leaves nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil
import pytest

from tests._asgi import lifespan

from ._procs import free_port_block

pytestmark = pytest.mark.e2e

FLEET = Path(__file__).parents[2] / "examples" / "fleet"


def test_demo_runs_the_fleet_and_stops_cleanly(tmp_path: Path) -> None:
    base = free_port_block(4)
    env = {
        **os.environ,
        "GARRISON_SERVICES__DEVICES__PORT": str(base),  # two replicas: base, base+1
        "GARRISON_SERVICES__SITES__PORT": str(base + 2),
        "GARRISON_SERVICES__DISPATCH__PORT": str(base + 3),
        # the dispatch workflows' store: the test's own, not a file in the source tree
        "GARRISON_DURABLE__STORE": f"sqlite:///{tmp_path}/{{service}}.durable.db",
        "NO_COLOR": "1",
        "COLUMNS": "120",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "garrison", "demo", str(FLEET), "--exit-after", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out_b, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = out_b.decode()
    assert proc.returncode == 0, out
    assert "fleet is up" in out
    assert f"http://127.0.0.1:{base + 2}" in out
    assert "dispatch north 150 kW" in out
    assert "bad input is refused with 422" in out
    flat = " ".join(out.split())
    # Dispatch is a durable workflow: it ended by the grid event and released its batteries;
    # a dispatch cancelled by an operator was compensated by its saga.
    assert "completed, ended by grid_event_over, 2 released" in flat
    assert "dispatch harbour cancelled by an operator -> cancelled; the saga released 2" in flat
    assert "GET /_garrison/workflows" in out
    assert "garrison workflows list --service dispatch" in flat
    assert (tmp_path / "dispatch.durable.db").exists()
    for edge in ("sites -> devices", "dispatch -> devices", "dispatch -> sites"):
        assert edge in out, out
    # The edge policy was replaced live through the operator API.
    assert "edge dispatch->devices now at version 2" in " ".join(out.split())
    # No service process outlives the demo: none is left running, nothing listens on its ports.
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if str(FLEET) in " ".join(p.info["cmdline"] or ()) and p.pid != os.getpid()
    ]
    assert leftovers == []
    listening = {
        c.laddr.port
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port in range(base, base + 4)
    }
    assert listening == set()


async def test_a_failed_command_is_compensated_by_the_dispatch_saga(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In process, with the devices answering from a fake: one battery refuses every
    set-point, so the dispatch fails and its saga sets every battery of the site back to 0."""
    monkeypatch.syspath_prepend(str(FLEET))
    from fleet.catalog import devices_at

    from fleet import dispatch
    from garrison.core import load_config
    from garrison.service import MockTransport

    batteries = [d for d in devices_at("north") if d.kind == "battery"]
    broken = batteries[0].id
    json_type = {"content-type": "application/json"}

    def devices(method: str, url: str, headers: Any, body: bytes | None) -> Any:
        device = url.split("/devices/")[1].split("/")[0]
        kw = msgspec.json.decode(body or b"{}")["kw"]
        if device == broken and kw != 0:
            return 503, json_type, b'{"error": "unavailable", "message": "inverter fault"}'
        return 200, json_type, msgspec.json.encode({"device": device, "accepted": True, "kw": kw})

    def sites(method: str, url: str, headers: Any, body: bytes | None) -> Any:
        return 200, json_type, msgspec.json.encode(devices_at("north"))

    svc = dispatch.svc
    svc.configure(load_config(FLEET, env={"GARRISON_DURABLE__STORE": "memory://"}))
    fake_devices = MockTransport(devices)
    for client, transport in (
        (dispatch.devices, fake_devices),
        (dispatch.sites, MockTransport(sites)),
    ):
        monkeypatch.setattr(client, "_transport", transport)
        monkeypatch.setattr(client, "_own_transport", False)

    async with lifespan(svc.asgi()):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=svc.asgi()), base_url="http://d")
        async with http:
            r = await http.post("/dispatch", json={"site": "north", "kw": 100, "id": "fail-1"})
            assert r.status_code == 202, r.text
            status = (await http.get("/dispatch/fail-1", params={"wait": 60})).json()
            assert status["status"] == "failed", status
            assert "activity 'command' (step 2) failed" in status["error"], status
            assert f"{broken}/commands answered 503" in status["error"], status
            missing = await http.get("/dispatch/nope")
            assert missing.status_code == 404
            unknown_site = await http.post("/dispatch", json={"site": "moon", "kw": 1})
            assert unknown_site.status_code == 404
    released = {
        url.split("/devices/")[1].split("/")[0]
        for method, url, _, body in fake_devices.requests
        if msgspec.json.decode(body or b"{}")["kw"] == 0
    }
    assert released == {d.id for d in batteries}
