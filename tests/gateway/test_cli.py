"""``garrison gateway``, and ``garrison dev`` starting the gateway next to the services."""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt as pyjwt
import pytest
from typer.testing import CliRunner

from garrison import cli
from garrison.cli import main
from garrison.core import load_config

runner = CliRunner()


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


APP = Path(__file__).parent.parent / "e2e" / "gateway_app"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    logger = logging.getLogger("garrison")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def app(root: Path, toml: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "garrison.toml").write_text(textwrap.dedent(toml))
    return root


def test_gateway_needs_a_gateway_section(tmp_path: Path) -> None:
    root = app(tmp_path, '[services.api]\napp = "m:svc"\nport = 18500\n')
    result = runner.invoke(main, ["gateway", str(root)])
    assert result.exit_code == 2
    assert "no [gateway] section" in result.output


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        (
            """
            [services.api]
            app = "m:svc"
            port = 18500
            [[gateway.routes]]
            prefix = "/api"
            service = "apii"
            """,
            "[gateway.routes.0.service]",
        ),
        (
            """
            [services.api]
            app = "m:svc"
            port = 18500
            [gateway]
            port = "eighty"
            """,
            "[gateway.port]",
        ),
        (
            """
            [services.api]
            app = "m:svc"
            port = 18500
            [gateway]
            port = 18501
            [identity.sesion]
            """,
            "[identity.sesion]",
        ),
    ],
)
def test_bad_configuration_is_one_line_naming_the_key(tmp_path: Path, toml: str, key: str) -> None:
    root = app(tmp_path, toml)
    for command in (["gateway", str(root)], ["dev", str(root)]):
        result = runner.invoke(main, command)
        assert result.exit_code == 2, result.output
        assert key in result.output
        assert "Traceback" not in result.output


def test_production_refuses_to_start_without_passport_keys(tmp_path: Path) -> None:
    root = app(
        tmp_path,
        """
        [gateway]
        port = 18502
        """,
    )
    result = runner.invoke(main, ["gateway", str(root)], env={"GARRISON_ENV": "production"})
    assert result.exit_code == 2
    assert "[identity.passport.keys]" in result.output
    assert not (root / ".garrison").exists()


def test_dev_adds_the_gateway_process() -> None:
    config = load_config(APP)
    specs = cli._process_specs(config)
    assert [s.name for s in specs] == ["whoami", "gateway"]
    gateway = specs[-1]
    assert list(gateway.argv[-2:]) == ["gateway", config.root]
    assert gateway.health_url == "http://127.0.0.1:18410/_garrison/healthz"


@pytest.mark.e2e
def test_dev_runs_the_gateway_with_the_services(tmp_path: Path) -> None:
    service, gateway = free_ports(2)
    secret = "cli-e2e-" + "s" * 40
    env = {
        **os.environ,
        "GARRISON_SERVICES__WHOAMI__PORT": str(service),
        "GARRISON_GATEWAY__PORT": str(gateway),
        "GARRISON_APP__DATA_DIR": str(tmp_path),
        "GW_E2E_PASSPORT_KEY": base64.urlsafe_b64encode(b"p" * 32).decode(),
        "GW_E2E_JWT_SECRET": secret,
        "PYTHONPATH": str(APP),
    }
    claims = {
        "iss": "https://corp.example",
        "aud": "fleet",
        "sub": "carol",
        "exp": int(time.time()) + 300,
        "scope": "read",
    }
    token = pyjwt.encode(claims, secret, algorithm="HS256")
    with subprocess.Popen(
        [sys.executable, "-m", "garrison", "dev", str(APP)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            url = f"http://127.0.0.1:{gateway}"
            deadline = time.monotonic() + 60
            r = None
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    r = httpx.get(
                        url + "/api/x", headers={"authorization": f"Bearer {token}"}, timeout=2
                    )
                    if r.status_code == 200:
                        break
                assert proc.poll() is None, proc.communicate()[0]
                time.sleep(0.2)
            assert r is not None
            assert r.status_code == 200, r.text
            assert r.json()["subject"] == "carol"
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "gateway" in out
