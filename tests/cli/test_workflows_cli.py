"""``garrison workflows ...`` against a real service process on loopback, and its bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from garrison.cli import main
from tests.e2e._procs import free_port_block, run_processes, service_argv, wait_ready

runner = CliRunner()

APP = """
from __future__ import annotations

from datetime import timedelta
from typing import Any

from garrison import Service, WorkflowContext

svc = Service("orders")


@svc.activity(retry=None)
async def charge(order: str, amount: float) -> str:
    return f"charged {order} {amount}"


@svc.workflow(name="checkout")
async def checkout(ctx: WorkflowContext, order: str, amount: float) -> dict[str, Any]:
    receipt = await ctx.activity(charge, order, amount)
    approval = await ctx.wait_event("approved", timeout=timedelta(minutes=10))
    return {"receipt": receipt, "approval": approval}
"""

# The same workflow name, changed incompatibly: it now waits before charging.
CHANGED = APP.replace(
    """    receipt = await ctx.activity(charge, order, amount)
    approval = await ctx.wait_event("approved", timeout=timedelta(minutes=10))""",
    """    approval = await ctx.wait_event("approved", timeout=timedelta(minutes=10))
    receipt = await ctx.activity(charge, order, amount)""",
)


def write_app(root: Path, port: int, code: str = APP) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "garrison.toml").write_text(
        textwrap.dedent(
            f"""
            [services.orders]
            app = "orders_app:svc"
            port = {port}

            [services.other]
            app = "other_app:svc"
            port = {port + 1}

            [durable]
            poll_interval = 0.2
            """
        )
    )
    (root / "orders_app.py").write_text(code)
    return root


def wf(*args: str, env: dict[str, str] | None = None) -> Result:
    # wide, so that rich does not fold the values the tests look for
    return runner.invoke(main, ["workflows", *args], env={"COLUMNS": "200", **(env or {})})


def until(get: Callable[[], Any], cond: Callable[[Any], bool], timeout: float = 60) -> Any:
    """Poll ``get()`` until ``cond`` holds (generous bound: the machine may be loaded)."""
    end = time.monotonic() + timeout
    while True:
        value = get()
        if cond(value):
            return value
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout}s: {value}")
        time.sleep(0.05)


def wf_json(*args: str) -> Any:
    r = wf(*args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.fixture(autouse=True)
def _forget_app_modules() -> Iterator[None]:
    # --offline imports the app's code into this (test) process: forget it after each test, so
    # the next app folder's module of the same name is imported afresh.
    path = list(sys.path)
    yield
    for name in ("orders_app", "other_app"):
        sys.modules.pop(name, None)
    sys.path[:] = path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    port = free_port_block(2)
    root = write_app(tmp_path_factory.mktemp("wfcli") / "app", port)
    with run_processes([service_argv(root, "orders")], env={}):
        url = f"http://127.0.0.1:{port}"
        wait_ready([url], timeout=60)
        yield root, url


# -- without a service ------------------------------------------------------------------------


def test_help_lists_the_commands_and_says_what_replay_check_reads() -> None:
    r = wf("--help")
    assert r.exit_code == 0
    for cmd in ("list", "show", "start", "signal", "cancel", "terminate", "history"):
        assert cmd in r.output
    r = wf("replay-check", "--help")
    assert "--offline" in r.output
    assert "store" in r.output
    assert "Online" in r.output


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["list"], "give --service NAME"),
        (["list", "--service", "orders", "--url", "http://x"], "not both"),
        (["list", "--url", "ftp://x"], "http:// or https://"),
        (["list", "--service", "nope"], "no service named 'nope'"),
        (["list", "--service", "orders", "--replica", "3"], "--replica 3"),
        (["list", "--service", "orders", "--status", "sleeping"], "--status must be one of"),
        (["list", "--service", "orders", "--limit", "0"], "--limit"),
        (["replay-check", "--offline", "--url", "http://x"], "give --service, not --url"),
        (["replay-check", "--offline"], "--offline needs --service"),
        (["show"], "Missing argument 'ID'"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str], what: str) -> None:
    root = write_app(tmp_path / "app", 18500)
    r = wf(*args, "--app-dir", str(root))
    assert r.exit_code == 2, r.output
    assert what in r.output
    assert "Traceback" not in r.output


def test_a_missing_app_dir_and_an_unreachable_service(tmp_path: Path) -> None:
    r = wf("list", "--service", "orders", "--app-dir", str(tmp_path / "nowhere"))
    assert r.exit_code == 2
    assert "does not exist" in r.output
    port = free_port_block(1)
    r = wf("list", "--url", f"http://127.0.0.1:{port}")
    assert r.exit_code == 1
    assert "cannot reach" in r.output


def test_offline_check_without_a_store_or_workflows(tmp_path: Path) -> None:
    root = write_app(tmp_path / "app", 18500)
    r = wf("replay-check", "--offline", "--service", "orders", "--app-dir", str(root))
    assert r.exit_code == 1
    assert "no store at" in r.output
    (root / "other_app.py").write_text("from garrison import Service\nsvc = Service('other')\n")
    r = wf("replay-check", "--offline", "--service", "other", "--app-dir", str(root))
    assert r.exit_code == 1
    assert "declares no workflows" in r.output


# -- against a running service ------------------------------------------------------------------


@pytest.mark.e2e
def test_start_show_signal_history_list(served: tuple[Path, str]) -> None:
    root, url = served
    on = ["--service", "orders", "--app-dir", str(root)]
    r = wf("start", "checkout", "o-1", "12.5", "--id", "cli-1", *on)
    assert r.exit_code == 0, r.output
    assert "started cli-1 (checkout, running)" in r.output
    r = wf("start", "checkout", "o-1", "12.5", "--id", "cli-1", *on)
    assert r.exit_code == 0
    assert "already exists: cli-1" in r.output

    shown = wf_json("show", "cli-1", "--url", url)
    assert shown["args"] == ["o-1", 12.5]
    assert shown["status"] == "running"
    r = wf("show", "cli-1", *on)
    assert r.exit_code == 0
    assert "checkout" in r.output
    assert "running" in r.output

    r = wf("signal", "cli-1", "approved", '{"by": "ops"}', *on)
    assert r.exit_code == 0, r.output
    assert "sent event 'approved' to cli-1" in r.output
    shown = until(lambda: wf_json("show", "cli-1", *on), lambda w: w["status"] == "completed")
    assert shown["result"] == {"receipt": "charged o-1 12.5", "approval": {"by": "ops"}}

    hist = wf_json("history", "cli-1", *on)
    assert [i["kind"] for b in hist["batches"] for i in b["inputs"]] == [
        "ActivityCompleted",
        "EventReceived",
    ]
    r = wf("history", "cli-1", *on)
    assert r.exit_code == 0
    assert "ActivityCompleted" in r.output
    assert "EventReceived" in r.output

    listed = wf_json("list", "--status", "completed", "--id-prefix", "cli-", *on)
    assert [w["id"] for w in listed["workflows"]] == ["cli-1"]
    r = wf("list", "--workflow", "checkout", *on)
    assert r.exit_code == 0
    assert "cli-1" in r.output
    assert "shown" in r.output


@pytest.mark.e2e
def test_errors_from_the_service(served: tuple[Path, str]) -> None:
    root, _ = served
    on = ["--service", "orders", "--app-dir", str(root)]
    r = wf("show", "no-such-id", *on)
    assert r.exit_code == 1
    assert "no workflow instance 'no-such-id'" in r.output
    r = wf("start", "nope", *on)
    assert r.exit_code == 1
    assert "no workflow named 'nope'" in r.output
    r = wf("start", "checkout", "o-2", "a lot", *on)
    assert r.exit_code == 2
    assert "bad argument" in r.output
    r = wf("start", "checkout", "o-2", *on)
    assert r.exit_code == 2
    assert "missing a required argument" in r.output
    r = wf("signal", "no-such-id", "approved", *on)
    assert r.exit_code == 1


@pytest.mark.e2e
def test_cancel_terminate_and_replay_checks(served: tuple[Path, str], tmp_path: Path) -> None:
    root, _url = served
    on = ["--service", "orders", "--app-dir", str(root)]
    for wid in ("cli-c", "cli-t", "cli-r"):
        assert wf("start", "checkout", wid, "1", "--id", wid, *on).exit_code == 0
    r = wf("cancel", "cli-c", "--reason", "changed my mind", *on)
    assert r.exit_code == 0
    assert "cancel requested for cli-c" in r.output
    r = wf("terminate", "cli-t", *on)
    assert r.exit_code == 0
    assert "status now terminated" in r.output
    r = wf("terminate", "cli-t", *on)
    assert r.exit_code == 1
    assert "has ended" in r.output

    # online: the service replays its running instances against its own code
    # charged, now waiting for approval
    until(lambda: wf_json("show", "cli-r", *on), lambda w: w["steps"] >= 2)
    r = wf("replay-check", *on)
    assert r.exit_code == 0, r.output
    assert "ok:" in r.output
    assert "would not replay" in r.output
    # offline, against the code on disk: the same code replays ...
    r = wf("replay-check", "--offline", "--json", *on)
    assert r.exit_code == 0, r.output
    body = json.loads(r.stdout)
    assert body["ok"] is True
    assert "cli-r" in {x["workflow_id"] for x in body["reports"]}
    # ... and changed code, pointed at the same store, is refused before its deploy
    changed = write_app(tmp_path / "changed", 18500, CHANGED)
    sys.modules.pop("orders_app", None)
    store = f"sqlite:///{root.resolve()}/.garrison/orders.durable.db"
    r = wf(
        "replay-check",
        "--offline",
        "--service",
        "orders",
        "--app-dir",
        str(changed),
        env={"GARRISON_DURABLE__STORE": store},
    )
    assert r.exit_code == 1, r.output
    assert "FAILED" in r.output
    assert "cli-r" in r.output


def test_garrison_run_refuses_a_bad_durable_section_in_one_line(tmp_path: Path) -> None:
    root = write_app(tmp_path / "app", 18500)
    with (root / "garrison.toml").open("a") as f:
        f.write("max_active = 0\n")  # under [durable]
    proc = subprocess.run(
        [sys.executable, "-m", "garrison", "run", "orders", "--app-dir", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "[durable.max_active]: Expected `int` >= 1; got 0" in proc.stderr
    assert "Traceback" not in proc.stderr
