"""The ``garrison`` command: help, bad input, ``config check``, and dev/demo/run end to end."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from typer.testing import CliRunner, Result

from garrison import cli
from garrison.cli import main
from garrison.core import GarrisonConfig, load_config

runner = CliRunner()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # dev/demo/run call configure_logging(), which would keep a handler on CliRunner's
    # (closed) stderr; put the "garrison" logger back as it was.
    logger = logging.getLogger("garrison")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_app(root: Path, toml: str, **files: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "garrison.toml").write_text(textwrap.dedent(toml))
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text))
    return root


def good_toml(api_port: int = 18000, orders_port: int = 18010, api_replicas: int = 2) -> str:
    return f"""
        [app]
        name = "shop"

        [services.api]
        app = "api:svc"
        port = {api_port}
        replicas = {api_replicas}
        env = {{ GREETING = "hello" }}

        [services.orders]
        app = "orders:svc"
        port = {orders_port}

        [dev]
        restart_initial_backoff = 0.1
        stop_timeout = 5
    """


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return write_app(tmp_path / "app", good_toml())


def invoke(*args: str) -> Result:
    return runner.invoke(main, list(args), prog_name="garrison")


def assert_one_line_error(result: Result, *fragments: str, code: int = 2) -> None:
    """Exit ``code``, one line on stderr naming every fragment, and no traceback."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


# -- help and version -------------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("run", "dev", "demo", "config", "version"):
        assert f" {command} " in result.stdout


def test_no_arguments_shows_help() -> None:
    result = invoke()
    assert result.exit_code == 2
    assert "Usage" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["run"], "Serve one replica of one service"),
        (["dev"], "Run every replica of every service"),
        (["demo"], "--exit-after"),
        (["config"], "check"),
        (["config", "check"], "Validate garrison.toml"),
        (["version"], "Print the version"),
    ],
)
def test_every_command_has_help(args: list[str], says: str) -> None:
    result = invoke(*args, "--help")
    assert result.exit_code == 0
    assert says in " ".join(result.stdout.split())  # rich may wrap lines


def test_version() -> None:
    result = invoke("version")
    assert result.exit_code == 0
    assert result.stdout.startswith("garrison ")
    assert "Python" in result.stdout


# -- config check -----------------------------------------------------------------------------


def test_config_check_lists_the_services(app_dir: Path) -> None:
    result = invoke("config", "check", str(app_dir))
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("api", "orders", "api:svc", "http://127.0.0.1:18000", "http://127.0.0.1:18001"):
        assert text in out
    assert "GREETING" in out
    assert "ok:" in out


def test_config_check_defaults_to_the_current_folder(
    app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(app_dir)
    assert invoke("config", "check").exit_code == 0


def test_config_check_applies_environment_overrides(
    app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GARRISON_SERVICES__ORDERS__PORT", "19999")
    result = invoke("config", "check", str(app_dir))
    assert result.exit_code == 0, result.output
    assert "http://127.0.0.1:19999" in result.stdout


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        ('[services.api]\napp = "api:svc"\nprt = 8000\n', ["services.api", "unknown key"]),
        ('[services.api]\napp = "api:svc"\nport = "x"\n', ["services.api.port"]),
        ('[services.api]\napp = "api:svc"\n', ["services.api", "port"]),
        ("[services.api\n", ["not valid TOML"]),
        ('[servics.api]\napp = "a:b"\nport = 1\n', ["servics", "unknown key"]),
        ('[services.api]\napp = "api:svc"\nport = 70000\n', ["services.api.port"]),
        ("[durable]\nlease_seconds = 0\n", ["durable.lease_seconds"]),
        ('[durable]\nstore = "ftp://x"\n', ["durable.store", "ftp"]),
        ("[streams]\nmax_records = 0\n", ["streams.max_records"]),
        ('[streams.topics."bad topic"]\npartitions = 2\n', ["streams.topics", "bad topic"]),
    ],
)
def test_config_check_reports_bad_config(tmp_path: Path, toml: str, fragments: list[str]) -> None:
    app = write_app(tmp_path / "bad", toml)
    result = invoke("config", "check", str(app))
    assert_one_line_error(result, "garrison.toml", *fragments)
    assert result.stdout == ""


# -- bad input, every command -----------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["run", "api", "--app-dir"], ["dev"], ["demo"], ["config", "check"]],
    ids=["run", "dev", "demo", "config-check"],
)
def test_a_missing_folder_is_one_clear_line(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "nowhere"
    assert_one_line_error(invoke(*command, str(missing)), str(missing), "does not exist")


@pytest.mark.parametrize(
    "command",
    [["run", "api", "--app-dir"], ["dev"], ["demo"], ["config", "check"]],
    ids=["run", "dev", "demo", "config-check"],
)
def test_a_folder_without_garrison_toml_is_one_clear_line(
    tmp_path: Path, command: list[str]
) -> None:
    assert_one_line_error(invoke(*command, str(tmp_path)), "garrison.toml", "not found")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["run", "nope"], ["no service named 'nope'", "api, orders"]),
        (["run", "api", "--replica", "-1"], ["--replica"]),
        (["run", "api", "--replica", "two"], ["--replica"]),
        (["run", "api", "--replica", "2"], ["--replica 2", "2 replica(s)"]),
        (["run", "orders", "--replica", "1"], ["--replica 1", "1 replica(s)"]),
        (["run"], ["Missing argument"]),
        (["demo", "--exit-after", "-5"], ["--exit-after"]),
        (["demo", "--health-timeout", "soon"], ["--health-timeout"]),
        (["nonsense"], ["No such command 'nonsense'"]),
    ],
)
def test_bad_arguments_are_one_clear_line(
    app_dir: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], fragments: list[str]
) -> None:
    monkeypatch.chdir(app_dir)
    assert_one_line_error(invoke(*args), *fragments)


@pytest.mark.parametrize("command", ["dev", "demo"])
def test_an_app_without_services_is_an_error(tmp_path: Path, command: str) -> None:
    app = write_app(tmp_path / "empty", '[app]\nname = "empty"\n')
    assert_one_line_error(invoke(command, str(app)), "no services")


@pytest.mark.parametrize(
    ("demo", "fragments"),
    [
        ("def main(:\n", ["demo.py", "SyntaxError"]),
        ("raise RuntimeError('broken at import')\n", ["demo.py", "broken at import"]),
        ("x = 1\n", ["demo.py", "async def main(config)"]),
        ("def main(config):\n    pass\n", ["demo.py", "async def main(config)"]),
    ],
)
def test_a_broken_demo_py_is_reported_before_anything_starts(
    tmp_path: Path, demo: str, fragments: list[str]
) -> None:
    app = write_app(tmp_path / "app", good_toml(), **{"demo.py": demo})
    result = invoke("demo", str(app))
    assert_one_line_error(result, *fragments)
    assert psutil.Process().children() == []


# -- dev and demo with stand-in services (no real garrison service needed) -------------------

ArgvFactory = Callable[[GarrisonConfig, str, int], list[str]]


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ArgvFactory:
    """Replace the service processes by static HTTP servers that answer /healthz."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "healthz").write_text("ok")

    def argv(config: GarrisonConfig, name: str, replica: int) -> list[str]:
        port = config.services[name].port + replica
        return [
            sys.executable, "-m", "http.server", str(port),
            "--bind", "127.0.0.1", "--directory", str(www),
        ]  # fmt: skip

    monkeypatch.setattr(cli, "_service_argv", argv)
    return argv


def ports_of(app: Path) -> dict[str, int]:
    return {name: svc.port for name, svc in load_config(app).services.items()}


def one_replica_app(root: Path, **files: str) -> Path:
    return write_app(root, good_toml(free_port(), free_port(), api_replicas=1), **files)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.e2e
def test_demo_waits_for_health_shows_the_urls_and_runs_demo_py(
    tmp_path: Path, stand_in: ArgvFactory
) -> None:
    demo = """
        async def main(config) -> None:
            print("demo ran for", config.app.name, sorted(config.services))
    """
    app = one_replica_app(tmp_path / "app", **{"demo.py": demo})
    result = invoke("demo", str(app), "--exit-after", "0")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "shop is up" in out
    port = ports_of(app)
    assert f"http://127.0.0.1:{port['api']}" in out
    assert "/healthz" in out
    assert "/metrics" in out
    assert "demo ran for shop ['api', 'orders']" in out
    assert out.index("shop is up") < out.index("demo ran for")
    assert psutil.Process().children(recursive=True) == []


@pytest.mark.e2e
def test_demo_without_demo_py_just_shows_the_urls(tmp_path: Path, stand_in: ArgvFactory) -> None:
    result = invoke("demo", str(one_replica_app(tmp_path / "app")), "--exit-after", "0")
    assert result.exit_code == 0, result.output
    assert "shop is up" in result.stdout


@pytest.mark.e2e
def test_demo_fails_when_demo_py_fails(tmp_path: Path, stand_in: ArgvFactory) -> None:
    demo = """
        async def main(config) -> None:
            raise RuntimeError("the demo broke")
    """
    app = one_replica_app(tmp_path / "app", **{"demo.py": demo})
    result = invoke("demo", str(app), "--exit-after", "0")
    assert result.exit_code == 1
    assert psutil.Process().children(recursive=True) == []


@pytest.mark.e2e
def test_demo_names_the_service_that_never_became_healthy(
    tmp_path: Path, stand_in: ArgvFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def argv(config: GarrisonConfig, name: str, replica: int) -> list[str]:
        if name == "orders":
            return [sys.executable, "-c", "raise SystemExit(1)"]
        return stand_in(config, name, replica)

    monkeypatch.setattr(cli, "_service_argv", argv)
    app = one_replica_app(tmp_path / "app")
    result = invoke("demo", str(app), "--exit-after", "0", "--health-timeout", "1")
    assert result.exit_code == 1
    assert "orders" in result.stderr
    assert "not healthy" in result.stderr
    assert "api (" not in result.stderr
    assert "shop is up" not in result.stdout
    assert psutil.Process().children(recursive=True) == []


def signal_self_when(condition: Callable[[], bool], signum: int) -> threading.Thread:
    """Send ``signum`` to this process once ``condition()`` holds (checked for 60 s at most).

    Only then: run() has installed its handler by the time any child exists, and a signal
    without that handler would end the test run.
    """

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if condition():
                os.kill(os.getpid(), signum)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.e2e
def test_dev_runs_every_replica_and_stops_cleanly_on_sigterm(
    tmp_path: Path, stand_in: ArgvFactory
) -> None:
    app = write_app(tmp_path / "app", good_toml(free_port(), free_port(), api_replicas=2))
    ports = ports_of(app)
    seen: list[int] = []

    def all_up() -> bool:
        children = psutil.Process().children()
        seen[:] = [c.pid for c in children]
        if len(children) < 3:
            return False
        with httpx.Client(trust_env=False, timeout=1) as client:
            try:
                return all(
                    client.get(f"http://127.0.0.1:{p}/healthz").status_code == 200
                    for p in (ports["api"], ports["api"] + 1, ports["orders"])
                )
            except httpx.HTTPError:
                return False

    thread = signal_self_when(all_up, signal.SIGTERM)
    result = invoke("dev", str(app))
    thread.join(timeout=5)
    assert result.exit_code == 0, result.output
    assert len(seen) == 3
    assert not any(alive(pid) for pid in seen)
    assert psutil.Process().children(recursive=True) == []
    # Each replica's log lines carry its own prefix (http.server logs each request on stderr).
    assert "api.0  | " in result.stdout
    assert "api.1  | " in result.stdout
    assert "orders | " in result.stdout


# -- the real thing: python -m garrison with real services ------------------------------------

SERVICE = """
    from garrison.service import Service

    svc = Service("{name}")
"""

REAL_DEMO = """
    import httpx

    async def main(config) -> None:
        url = config.services["api"].urls()[0]
        async with httpx.AsyncClient(trust_env=False) as client:
            r = await client.get(url + "/healthz")
        print("demo: api /healthz answered", r.status_code)
"""


def real_app(root: Path, *, demo: bool = False) -> Path:
    files = {"api.py": SERVICE.format(name="api"), "orders.py": SERVICE.format(name="orders")}
    if demo:
        files["demo.py"] = REAL_DEMO
    return write_app(root, good_toml(free_port(), free_port(), api_replicas=1), **files)


def garrison(*args: str) -> list[str]:
    return [sys.executable, "-m", "garrison", *args]


def child_env() -> dict[str, str]:
    return {**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}


def wait_http_ok(url: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=1) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the command exited early"
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    pytest.fail(f"{url} never answered 200")


@pytest.mark.e2e
def test_python_m_garrison_help_and_errors(tmp_path: Path) -> None:
    ok = subprocess.run(garrison("--help"), capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0
    assert "Usage: garrison" in ok.stdout
    bad = subprocess.run(
        garrison("run", "api", "--app-dir", str(tmp_path / "nowhere")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"garrison: error: app folder {str(tmp_path / 'nowhere')!r} does not exist"
    ]


@pytest.mark.e2e
def test_run_serves_one_service_until_sigterm(tmp_path: Path) -> None:
    app = real_app(tmp_path / "app")
    port = ports_of(app)["orders"]
    with subprocess.Popen(
        garrison("run", "orders", "--app-dir", str(app)),
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.e2e
def test_dev_with_real_services_stops_on_ctrl_c_without_orphans(tmp_path: Path) -> None:
    app = real_app(tmp_path / "app")
    ports = ports_of(app)
    with subprocess.Popen(
        garrison("dev", str(app)),
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            for port in ports.values():
                wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc)
            family = psutil.Process(proc.pid).children(recursive=True)
            assert len(family) >= 2
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, out
    assert not any(alive(p.pid) for p in family)
    assert "api    | " in out
    assert "orders | " in out


@pytest.mark.e2e
def test_demo_with_real_services(tmp_path: Path) -> None:
    app = real_app(tmp_path / "app", demo=True)
    done = subprocess.run(
        garrison("demo", str(app), "--exit-after", "0"),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "shop is up" in done.stdout
    assert "demo: api /healthz answered 200" in done.stdout
