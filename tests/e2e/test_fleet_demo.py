"""`garrison demo examples/fleet` (what `make demo` runs) works end to end and leaves nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from ._procs import free_port_block

pytestmark = pytest.mark.e2e

FLEET = Path(__file__).parents[2] / "examples" / "fleet"


def test_demo_runs_the_fleet_and_stops_cleanly() -> None:
    base = free_port_block(4)
    env = {
        **os.environ,
        "GARRISON_SERVICES__DEVICES__PORT": str(base),  # two replicas: base, base+1
        "GARRISON_SERVICES__SITES__PORT": str(base + 2),
        "GARRISON_SERVICES__DISPATCH__PORT": str(base + 3),
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
