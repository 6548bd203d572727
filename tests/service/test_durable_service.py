"""Workflows in a service: the decorators, the engine in the lifespan, ``[durable]`` config, the
``/_garrison/workflows`` endpoints with bad input, and a real process restarted after SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from garrison import Service, WorkflowContext
from garrison.core import ConfigError, UsageError, load_config, parse_config
from garrison.durable import DurableSettings, EngineConfig, WaitTimeout, activity_info
from garrison.durable._activity import activity_options
from garrison.resilience import RetryPolicy
from tests._asgi import lifespan

# -- helpers -----------------------------------------------------------------------------------


class Report(msgspec.Struct):
    site: str
    acks: list[str]
    ended_by: str


def make_service(root: Path, durable: dict[str, Any] | None = None) -> Service:
    svc = Service("dispatch")
    calls: list[str] = []

    @svc.activity(retry={"max_attempts": 2, "initial_backoff": 0.01}, timeout=5)
    async def command(device: str, kw: float) -> str:
        calls.append(activity_info().idempotency_key)
        if device == "broken":
            raise RuntimeError("device broken")
        return f"{device}:{kw}"

    @svc.workflow
    async def discharge(ctx: WorkflowContext, site: str, kw: float) -> Report:
        acks = await ctx.gather(*(ctx.activity(command, d, kw) for d in ("a", "b")))
        try:
            await ctx.wait_event("grid_event_over", timeout=timedelta(seconds=30))
            ended = "event"
        except WaitTimeout:
            ended = "timeout"
        return Report(site, acks, ended)

    @svc.workflow(name="fail-fast")
    async def failing(ctx: WorkflowContext, device: str) -> str:
        return str(await ctx.activity(command, device, 1.0))

    @svc.post("/discharge/{site}")
    async def start(site: str, kw: float) -> dict[str, str]:
        handle = await svc.workflows.start(discharge, site, kw, id=f"discharge-{site}")
        return {"id": handle.id}

    svc.calls = calls  # type: ignore[attr-defined]
    svc.configure(
        parse_config({"durable": durable or {}}, root=str(root), source=str(root / "g.toml"))
    )
    return svc


async def http(svc: Service) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=svc.asgi()), base_url="http://t")


async def wait_status(c: httpx.AsyncClient, wid: str, status: str) -> dict[str, Any]:
    end = time.monotonic() + 60  # generous: the machine may be loaded
    while time.monotonic() < end:
        r = await c.get(f"/_garrison/workflows/{wid}")
        if r.status_code == 200 and r.json()["status"] == status:
            body: dict[str, Any] = r.json()
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"{wid} never reached {status}: {r.text}")


# -- decorators --------------------------------------------------------------------------------


def test_activity_decorator_attaches_options_and_keeps_the_function() -> None:
    svc = Service("s")

    @svc.activity(retry={"max_attempts": 5}, timeout=3, name="cmd")
    async def command(x: int) -> int:
        return x

    @svc.activity
    def plain(x: int) -> int:
        return x

    opts = activity_options(command)
    assert opts is not None
    assert isinstance(opts.retry, RetryPolicy)
    assert opts.retry.max_attempts == 5
    assert opts.timeout == 3
    assert opts.name == "cmd"
    assert plain(2) == 2
    assert activity_options(plain) is not None


def test_workflow_decorator_validates() -> None:
    svc = Service("s")
    with pytest.raises(UsageError, match="async def"):
        svc.workflow(lambda ctx: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(UsageError, match="non-empty string"):
        svc.workflow(name="")

    @svc.workflow(name="wf")
    async def one(ctx: WorkflowContext) -> None: ...

    async def two(ctx: WorkflowContext) -> None: ...

    with pytest.raises(UsageError, match="already has a workflow named 'wf'"):
        svc.workflow(name="wf")(two)
    with pytest.raises(UsageError, match="activity retry"):
        svc.activity(retry={"max_attemps": 2})


def test_workflows_is_an_error_outside_the_lifespan(tmp_path: Path) -> None:
    svc = make_service(tmp_path)
    with pytest.raises(UsageError, match="runs only while the service does"):
        _ = svc.workflows
    with pytest.raises(UsageError, match="runs no workflow engine"):
        _ = Service("plain").workflows


# -- lifespan ----------------------------------------------------------------------------------


async def test_the_engine_runs_in_the_lifespan_on_the_default_sqlite_store(
    tmp_path: Path,
) -> None:
    svc = make_service(tmp_path)
    async with lifespan(svc.asgi()), await http(svc) as c:
        assert (await c.get("/readyz")).status_code == 200
        engine = svc.workflows
        assert engine.worker_id.startswith("dispatch-0@")
        r = await c.post("/discharge/north", params={"kw": 50})
        assert r.status_code == 200, r.text
        wid = r.json()["id"]
        handle = engine.handle(wid)
        await handle.signal("grid_event_over")
        report = await handle.result(timeout=60)
        assert report == Report("north", ["a:50.0", "b:50.0"], "event")
        # the idempotency keys of both activities were exposed to them
        assert sorted(svc.calls) == [f"{wid}:1", f"{wid}:2"]  # type: ignore[attr-defined]
    # the store is an SQLite file under the app root's data dir, named after the service
    assert (tmp_path / ".garrison" / "dispatch.durable.db").exists()
    with pytest.raises(UsageError):
        _ = svc.workflows


async def test_no_engine_without_workflows_unless_enabled(tmp_path: Path) -> None:
    plain = Service("plain")
    plain.configure(parse_config({}, root=str(tmp_path)))
    async with lifespan(plain.asgi()), await http(plain) as c:
        assert (await c.get("/readyz")).status_code == 200
        r = await c.get("/_garrison/workflows")
        assert r.status_code == 404
        assert "runs no workflow engine" in r.json()["message"]
    assert not (tmp_path / ".garrison").exists()

    on = Service("on")
    on.configure(parse_config({"durable": {"enabled": True, "store": "memory://"}}))
    async with lifespan(on.asgi()):
        assert await on.workflows.list() == []

    off = make_service(tmp_path, {"enabled": False})
    async with lifespan(off.asgi()), await http(off) as c:
        r = await c.post("/discharge/x", params={"kw": 1})
        assert r.status_code == 400
        assert "[durable] enabled = false" in r.json()["message"]


def test_a_bad_durable_section_fails_configure_naming_the_key(tmp_path: Path) -> None:
    # as with [resilience]: before anything is served (garrison run prints it as one line)
    with pytest.raises(ConfigError, match=r"durable\.lease_seconds"):
        make_service(tmp_path, {"lease_seconds": -1})
    plain = Service("plain")  # a service without workflows refuses a bad section too
    with pytest.raises(ConfigError, match=r"durable\.store"):
        plain.configure(parse_config({"durable": {"store": "nowhere"}}))


async def test_a_restarted_service_takes_its_workflows_back(tmp_path: Path) -> None:
    svc = make_service(tmp_path)
    async with lifespan(svc.asgi()), await http(svc) as c:
        assert (await c.post("/discharge/harbour", params={"kw": 10})).status_code == 200
    # as a new process would: the same code, the same store and worker id
    again = make_service(tmp_path)
    async with lifespan(again.asgi()):
        handle = again.workflows.handle("discharge-harbour")
        await handle.signal("grid_event_over")
        assert (await handle.result(timeout=60)).ended_by == "event"


# -- [durable] configuration -------------------------------------------------------------------


def write_toml(root: Path, body: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "garrison.toml").write_text(
        textwrap.dedent(
            """
            [services.dispatch]
            app = "app:svc"
            port = 18104
            """
        )
        + textwrap.dedent(body)
    )
    return root


def test_settings_defaults_templates_and_overrides(tmp_path: Path) -> None:
    root = write_toml(
        tmp_path / "app",
        """
        [app]
        data_dir = "state"

        [durable]
        lease_seconds = 12
        limits = { max_steps = 500 }

        [durable.services.dispatch]
        poll_interval = 0.5
        store = "sqlite:///db/{service}-{replica}.db?synchronous=normal"
        worker_id = "w-{service}-{replica}"
        limits = { max_payload_bytes = 1000 }
        """,
    )
    config = load_config(root)
    s = DurableSettings.from_config(config).for_service("dispatch", replica=1, config=config)
    assert s.store == f"sqlite:///{root.resolve()}/db/dispatch-1.db?synchronous=normal"
    assert s.worker_id == "w-dispatch-1"
    cfg = s.engine_config()
    assert isinstance(cfg, EngineConfig)
    assert (cfg.lease_seconds, cfg.poll_interval) == (12.0, 0.5)
    assert (cfg.limits.max_steps, cfg.limits.max_payload_bytes) == (500, 1000)
    other = DurableSettings.from_config(config).for_service("sites", config=config)
    assert other.store == f"sqlite:///{root.resolve()}/state/sites.durable.db"
    assert other.poll_interval == 1.0


@pytest.mark.parametrize(
    ("body", "key", "what"),
    [
        ("lease_seconds = 0", "durable.lease_seconds", "> 0"),
        ('poll_interval = "soon"', "durable.poll_interval", "Expected `float`"),
        ("max_active = 0", "durable.max_active", ">= 1"),
        ("limits = { max_steps = 0 }", "durable.limits.max_steps", ">= 1"),
        ("lease = 3", "durable.lease", "unknown key; expected one of: blocked_retry"),
        ('store = "mysql://x"', "durable.store", "expected a store URL"),
        ('store = "sqlite:///{svc}.db"', "durable.store", "unknown placeholder(s) ['svc']"),
        ('worker_id = "{nope}"', "durable.worker_id", "unknown placeholder"),
        ('worker_id = ""', "durable.worker_id", "non-empty"),
        ("enabled = 3", "durable.enabled", "Expected `bool | null`"),
        ("services.sites = {}", "durable.services.sites", "no service 'sites' is declared"),
        ("services.dispatch = { max_active = -2 }", "durable.services.dispatch.max_active", ">="),
        ('services.dispatch = { store = "x" }', "durable.services.dispatch.store", "store URL"),
        ("services.dispatch = { x = 1 }", "durable.services.dispatch.x", "unknown key"),
    ],
)
def test_bad_durable_settings_name_the_key_and_the_file(
    tmp_path: Path, body: str, key: str, what: str
) -> None:
    root = write_toml(tmp_path / "app", "[durable]\n" + body + "\n")
    with pytest.raises(ConfigError) as err:
        DurableSettings.from_config(load_config(root))
    assert err.value.key == key
    assert str(root / "garrison.toml") in err.value.source
    assert what in str(err.value)


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("GARRISON_DURABLE__LEASE_SECONDS", "-3", "durable.lease_seconds"),
        ("GARRISON_DURABLE__STORE", "nowhere", "durable.store"),
        ("GARRISON_DURABLE__LIMITS__MAX_STEPS", "many", "durable.limits.max_steps"),
        ("GARRISON_DURABLE__SERVICES__DISPATCH__HOT_HORIZON", "0", "durable.services.dispatch"),
    ],
)
def test_bad_env_overrides_name_the_variable(
    tmp_path: Path, name: str, value: str, key: str
) -> None:
    root = write_toml(tmp_path / "app", "")
    with pytest.raises(ConfigError) as err:
        DurableSettings.from_config(load_config(root, env={name: value}))
    assert err.value.key.startswith(key)
    assert err.value.source == f"environment {name}"


def test_env_overrides_apply(tmp_path: Path) -> None:
    root = write_toml(tmp_path / "app", "")
    env = {"GARRISON_DURABLE__STORE": "memory://", "GARRISON_DURABLE__MAX_ACTIVE": "7"}
    config = load_config(root, env=env)
    s = DurableSettings.from_config(config).for_service("dispatch", config=config)
    assert (s.store, s.max_active) == ("memory://", 7)


# -- /_garrison/workflows ----------------------------------------------------------------------

WF = "/_garrison/workflows"


async def test_endpoints_start_show_signal_history_list(tmp_path: Path) -> None:
    svc = make_service(tmp_path)
    name = "make_service.<locals>.discharge"
    async with lifespan(svc.asgi()), await http(svc) as c:
        r = await c.post(WF, json={"workflow": name, "args": ["north", 5], "id": "d-1"})
        assert r.status_code == 201, r.text
        assert r.json() == {"id": "d-1", "workflow": name, "created": True, "status": "running"}
        again = await c.post(WF, json={"workflow": name, "args": ["north", 5], "id": "d-1"})
        assert again.status_code == 200
        assert again.json()["created"] is False
        shown = (await c.get(f"{WF}/d-1")).json()
        assert shown["args"] == ["north", 5]
        assert shown["status"] == "running"
        r = await c.post(f"{WF}/d-1/signal/grid_event_over", json={"at": "now"})
        assert r.status_code == 202, r.text
        done = await wait_status(c, "d-1", "completed")
        assert done["result"] == {"site": "north", "acks": ["a:5.0", "b:5.0"], "ended_by": "event"}
        assert done["failure"] is None
        assert done["closed_at"] is not None
        hist = (await c.get(f"{WF}/d-1/history")).json()
        kinds = [i["kind"] for b in hist["batches"] for i in b["inputs"]]
        assert sorted(kinds) == ["ActivityCompleted", "ActivityCompleted", "EventReceived"]
        event = next(
            i for b in hist["batches"] for i in b["inputs"] if i["kind"] == "EventReceived"
        )
        assert event["payload"] == {"at": "now"}

        r = await c.post(WF, json={"workflow": "fail-fast", "args": ["broken"], "id": "f-1"})
        assert r.status_code == 201
        failed = await wait_status(c, "f-1", "failed")
        assert "device broken" in failed["failure"]["message"] + str(failed["failure"]["cause"])

        listed = (await c.get(WF)).json()
        assert {w["id"] for w in listed["workflows"]} == {"d-1", "f-1"}
        only = (await c.get(WF, params={"status": "failed"})).json()["workflows"]
        assert [w["id"] for w in only] == ["f-1"]
        assert "device broken" in only[0]["failure"]
        by_wf = (await c.get(WF, params={"workflow": "fail-fast", "limit": 1})).json()
        assert [w["id"] for w in by_wf["workflows"]] == ["f-1"]
        assert by_wf["limit"] == 1
        assert (await c.get(WF, params={"id_prefix": "d-"})).json()["workflows"][0]["id"] == "d-1"
        assert (await c.get(WF, params={"offset": 5})).json()["workflows"] == []


async def test_cancel_terminate_and_replay_check(tmp_path: Path) -> None:
    svc = make_service(tmp_path)
    name = "make_service.<locals>.discharge"
    async with lifespan(svc.asgi()), await http(svc) as c:
        for wid in ("c-1", "t-1"):
            r = await c.post(WF, json={"workflow": name, "args": ["x", 1], "id": wid})
            assert r.status_code == 201
        check = (await c.post(f"{WF}/replay-check")).json()
        assert check["ok"] is True
        assert check["checked"] == 2
        assert check["failed"] == 0
        r = await c.post(f"{WF}/c-1/cancel", json={"reason": "operator"})
        assert r.status_code == 202
        assert r.json()["requested"] == "cancel"
        cancelled = await wait_status(c, "c-1", "cancelled")
        assert "operator" in cancelled["failure"]["message"]
        r = await c.post(f"{WF}/t-1/terminate")
        assert r.status_code == 202
        assert r.json()["status"] == "terminated"
        for verb in ("cancel", "terminate"):
            r = await c.post(f"{WF}/t-1/{verb}")
            assert r.status_code == 409
            assert "has ended" in r.json()["message"]
        r = await c.post(f"{WF}/t-1/signal/grid_event_over")
        assert r.status_code == 409
        assert "has ended" in r.json()["message"]


@pytest.mark.parametrize(
    ("method", "path", "kw", "status", "what"),
    [
        ("GET", WF, {"params": {"status": "sleeping"}}, 422, "status must be one of"),
        ("GET", WF, {"params": {"limit": "ten"}}, 422, "limit must be an integer"),
        ("GET", WF, {"params": {"limit": 0}}, 422, "limit must be between 1 and 1000"),
        ("GET", WF, {"params": {"limit": 5000}}, 422, "between 1 and 1000"),
        ("GET", WF, {"params": {"offset": -1}}, 422, "offset must be >= 0"),
        ("GET", WF, {"params": {"colour": "red"}}, 422, "unknown filter(s) ['colour']"),
        ("GET", WF, {"params": {"workflow": ""}}, 422, "workflow must not be empty"),
        ("GET", f"{WF}/nope", {}, 404, "no workflow instance 'nope'"),
        ("GET", f"{WF}/nope/history", {}, 404, "no workflow instance 'nope'"),
        ("POST", WF, {"json": {"workflow": "nope"}}, 404, "no workflow named 'nope'"),
        ("POST", WF, {"json": {"args": []}}, 422, "the workflow's name"),
        ("POST", WF, {"json": ["x"]}, 422, "expected a JSON object"),
        ("POST", WF, {"content": b"{oops"}, 422, "not valid JSON"),
        ("POST", WF, {"json": {"workflow": "fail-fast", "x": 1}}, 422, "unknown key(s) ['x']"),
        ("POST", WF, {"json": {"workflow": "fail-fast", "args": "a"}}, 422, "a JSON array"),
        ("POST", WF, {"json": {"workflow": "fail-fast", "args": []}}, 422, "missing a required"),
        ("POST", WF, {"json": {"workflow": "fail-fast", "args": [1, 2]}}, 422, "too many"),
        ("POST", WF, {"json": {"workflow": "fail-fast", "args": [3]}}, 422, "Expected `str`"),
        ("POST", WF, {"json": {"workflow": "fail-fast", "args": ["a"], "id": ""}}, 422, "id"),
        ("POST", f"{WF}/nope/signal/go", {}, 404, "nope"),
        ("POST", f"{WF}/nope/cancel", {}, 404, "no workflow instance 'nope'"),
        ("POST", f"{WF}/nope/terminate", {}, 404, "no workflow instance 'nope'"),
        ("POST", f"{WF}/nope/cancel", {"json": {"reason": 3}}, 422, "reason must be a string"),
        ("POST", f"{WF}/replay-check", {"json": {"limit": 0}}, 422, "limit must be an integer"),
    ],
)
async def test_bad_input_gets_a_json_4xx_naming_it(
    tmp_path: Path, method: str, path: str, kw: dict[str, Any], status: int, what: str
) -> None:
    svc = make_service(tmp_path, {"store": "memory://"})
    async with lifespan(svc.asgi()), await http(svc) as c:
        r = await c.request(method, path, **kw)
    assert r.status_code == status, r.text
    assert what in r.json()["message"], r.json()


async def test_an_id_taken_by_another_workflow_is_a_conflict(tmp_path: Path) -> None:
    svc = make_service(tmp_path, {"store": "memory://"})
    async with lifespan(svc.asgi()), await http(svc) as c:
        r = await c.post(WF, json={"workflow": "fail-fast", "args": ["a"], "id": "same"})
        assert r.status_code == 201
        name = "make_service.<locals>.discharge"
        r = await c.post(WF, json={"workflow": name, "args": ["x", 1], "id": "same"})
        assert r.status_code == 409
        assert "taken by an instance of 'fail-fast'" in r.json()["message"]


# -- a real process, SIGKILLed and restarted ----------------------------------------------------

CRASH_APP = """
from __future__ import annotations

import os

from garrison import Service, WorkflowContext
from garrison.durable import activity_info

svc = Service("worker")


@svc.activity
async def step(n: int) -> int:
    with open(os.environ["STEPS_LOG"], "a") as f:
        f.write(activity_info().idempotency_key + "\\n")
    return n * 10


@svc.workflow(name="pipeline")
async def pipeline(ctx: WorkflowContext, n: int) -> list[int]:
    out = []
    for i in range(n):
        out.append(await ctx.activity(step, i))
        if i == 1:
            await ctx.wait_event("go")  # the process is killed while the workflow waits here
    return out


@svc.workflow(name="sleeper")
async def sleeper(ctx: WorkflowContext) -> int:
    await ctx.sleep(1.0)
    return await ctx.activity(step, 7)
"""


@pytest.mark.e2e
def test_workflows_continue_after_the_service_is_killed_and_restarted(tmp_path: Path) -> None:
    from tests.e2e._procs import free_port_block, run_processes, service_argv, wait_ready

    port = free_port_block(1)
    root = tmp_path / "app"
    root.mkdir()
    # A lease far longer than the test: the restarted process can only continue the workflows
    # if it takes its previous incarnation's leases back (same worker id), not by expiry.
    (root / "garrison.toml").write_text(
        textwrap.dedent(
            f"""
            [services.worker]
            app = "crash_app:svc"
            port = {port}

            [durable]
            lease_seconds = 3600
            poll_interval = 0.2
            """
        )
    )
    (root / "crash_app.py").write_text(CRASH_APP)
    log = tmp_path / "steps.log"
    env = {"STEPS_LOG": str(log)}
    url = f"http://127.0.0.1:{port}"
    argv = [service_argv(root, "worker")]

    def get(path: str) -> Any:
        r = httpx.get(f"{url}/_garrison/workflows{path}", timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def until(path: str, cond: Any) -> Any:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            body = get(path)
            if cond(body):
                return body
            time.sleep(0.05)
        raise AssertionError(f"condition not met on {path}: {body}")

    with run_processes(argv, env=env) as procs:
        wait_ready([url], timeout=60)
        for wf, args, wid in (("pipeline", [4], "p-1"), ("sleeper", [], "s-1")):
            body = {"workflow": wf, "args": args, "id": wid}
            r = httpx.post(f"{url}/_garrison/workflows", json=body, timeout=10)
            assert r.status_code == 201, r.text
        until("/p-1", lambda b: b["steps"] >= 3)  # two activities done, waiting for "go"
        os.killpg(procs[0].pid, signal.SIGKILL)
        procs[0].wait(timeout=10)
        assert procs[0].returncode == -signal.SIGKILL

    with run_processes(argv, env=env):
        wait_ready([url], timeout=60)
        info = get("/p-1")
        assert info["status"] == "running"
        r = httpx.post(f"{url}/_garrison/workflows/p-1/signal/go", timeout=10)
        assert r.status_code == 202, r.text
        done = until("/p-1", lambda b: b["status"] != "running")
        assert done["status"] == "completed", done
        assert done["result"] == [0, 10, 20, 30]
        slept = until("/s-1", lambda b: b["status"] != "running")
        assert slept["status"] == "completed"
        assert slept["result"] == 70
        assert done["owner"] is None or done["owner"].startswith("worker-0@")

    keys = log.read_text().split()
    # No activity of p-1 was in flight at the kill (it was waiting for "go"): each ran once.
    assert [k for k in keys if k.startswith("p-1:")] == ["p-1:1", "p-1:2", "p-1:4", "p-1:5"]
    # The sleeper's activity may have been in flight: at least once, a repeat only then.
    assert 1 <= keys.count("s-1:2") <= 2
    assert {k for k in keys if k.startswith("s-1")} == {"s-1:2"}


async def test_startup_hooks_see_the_engine_and_a_failing_hook_closes_it(tmp_path: Path) -> None:
    svc = make_service(tmp_path, {"store": "memory://"})
    seen: list[Any] = []

    @svc.on_startup
    async def schedule() -> None:
        seen.append(svc.workflows)
        raise RuntimeError("startup hook failed")

    with pytest.raises(RuntimeError, match="startup hook failed"):
        async with lifespan(svc.asgi()):
            pass
    assert len(seen) == 1
    with pytest.raises(UsageError, match="runs only while the service does"):
        _ = svc.workflows


async def test_an_unusable_store_fails_startup(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    svc = make_service(tmp_path, {"store": f"sqlite:///{tmp_path}/file/sub/x.db"})
    with pytest.raises(RuntimeError):
        async with lifespan(svc.asgi()):
            pass


async def test_a_client_only_engine_starts_and_queries_but_runs_nothing(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/shared.db"
    client = make_service(tmp_path, {"store": store, "worker": False})
    async with lifespan(client.asgi()), await http(client) as c:
        r = await c.post(WF, json={"workflow": "fail-fast", "args": ["a"], "id": "w-1"})
        assert r.status_code == 201
        info = (await c.get(f"{WF}/w-1")).json()
        assert info["steps"] == 0
        assert info["owner"] is None
    worker = make_service(tmp_path, {"store": store})
    async with lifespan(worker.asgi()), await http(worker) as c:
        done = await wait_status(c, "w-1", "completed")
        assert done["result"] == "a:1.0"


async def test_ids_with_slashes_are_addressable(tmp_path: Path) -> None:
    svc = make_service(tmp_path, {"store": "memory://"})
    name = "make_service.<locals>.discharge"
    async with lifespan(svc.asgi()), await http(svc) as c:
        r = await c.post(WF, json={"workflow": name, "args": ["x", 1], "id": "site/north/1"})
        assert r.status_code == 201
        assert (await c.get(f"{WF}/site%2Fnorth%2F1")).json()["id"] == "site/north/1"
        assert (await c.get(f"{WF}/site/north/1/history")).json()["workflow_id"] == "site/north/1"
        r = await c.post(f"{WF}/site/north/1/signal/grid_event_over")
        assert r.status_code == 202
        assert (await wait_status(c, "site/north/1", "completed"))["result"]["ended_by"] == "event"


# -- actors in a service -----------------------------------------------------------------------


class Twin(msgspec.Struct):
    soc: float = 0.0
    reports: int = 0


def make_actor_service(root: Path) -> Service:
    svc = Service("devices")

    @svc.actor
    class Battery:
        state: Twin

        async def report(self, soc: float) -> int:
            self.state.soc = soc
            self.state.reports += 1
            return self.state.reports

    @svc.post("/batteries/{device}/report")
    async def report(device: str, soc: float) -> dict[str, int]:
        n = await svc.actors.ref(Battery, device).call("report", soc)
        return {"reports": n}

    @svc.get("/batteries/{device}")
    async def twin(device: str) -> Twin:
        state: Twin = await svc.actors.ref(Battery, device).state()
        return state

    svc.configure(parse_config({}, root=str(root), source=str(root / "g.toml")))
    return svc


async def test_an_actor_declared_on_a_service_is_hosted_and_reached_from_routes(
    tmp_path: Path,
) -> None:
    svc = make_actor_service(tmp_path)  # no workflow: the actor alone starts the engine
    async with lifespan(svc.asgi()), await http(svc) as c:
        for i in range(3):
            r = await c.post("/batteries/b-1/report", params={"soc": 0.5 + i / 10})
            assert r.status_code == 200, r.text
            assert r.json() == {"reports": i + 1}
        r = await c.get("/batteries/b-1")
        assert r.json() == {"soc": 0.7, "reports": 3}
    # the state outlives the process: a new service on the same store sees it
    again = make_actor_service(tmp_path)
    async with lifespan(again.asgi()), await http(again) as c:
        assert (await c.get("/batteries/b-1")).json() == {"soc": 0.7, "reports": 3}


def test_actor_declarations_are_checked(tmp_path: Path) -> None:
    svc = Service("devices")
    with pytest.raises(UsageError, match="class"):
        svc.actor(lambda: None)  # type: ignore[call-overload]
    with pytest.raises(UsageError, match="runs no workflow engine"):
        _ = svc.actors  # nothing declared

    @svc.actor(name="battery")
    class A:
        state: Twin

        async def go(self) -> None: ...

    with pytest.raises(UsageError, match="already hosts an actor named 'battery'"):

        @svc.actor(name="battery")
        class B:
            state: Twin

            async def go(self) -> None: ...

    with pytest.raises(UsageError, match="only while the service"):
        _ = svc.actors  # declared, but the service is not running
