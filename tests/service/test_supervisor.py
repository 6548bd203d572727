"""The process supervisor: its restart policy (sans-I/O, FakeClock) and real child processes."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import signal
import socket
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from garrison.core import DevConfig, FakeClock
from garrison.service._supervisor import (
    ProcessSpec,
    RestartPolicy,
    RestartTracker,
    Supervisor,
    describe_exit,
    wait_healthy,
)

# -- the policy: sans-I/O ---------------------------------------------------------------------


def test_backoff_doubles_from_initial_up_to_the_cap() -> None:
    policy = RestartPolicy(initial_backoff=0.5, max_backoff=4.0)
    assert [policy.backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert policy.backoff(10_000) == 4.0  # no overflow on a very long streak


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_backoff": 0},
        {"max_backoff": -1},
        {"reset_after": -1},
        {"initial_backoff": 2, "max_backoff": 1},
    ],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="RestartPolicy"):
        RestartPolicy(**kwargs)


def test_backoff_counts_crashes_from_one() -> None:
    with pytest.raises(ValueError, match="crashes"):
        RestartPolicy().backoff(0)


def test_policy_from_dev_config() -> None:
    dev = DevConfig(restart_initial_backoff=0.25, restart_max_backoff=30.0, stop_timeout=1.0)
    policy = RestartPolicy.from_config(dev)
    assert policy.initial_backoff == 0.25
    assert policy.max_backoff == 30.0
    assert policy.reset_after >= policy.max_backoff


def test_crashes_in_a_row_back_off_exponentially() -> None:
    clock = FakeClock()
    tracker = RestartTracker(RestartPolicy(initial_backoff=1.0, max_backoff=8.0), clock)
    delays = []
    for _ in range(5):
        tracker.started()
        clock.advance(0.1)
        decision = tracker.exited(1)
        assert decision is not None
        delays.append(decision.delay)
        clock.advance(decision.delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert tracker.crashes == 5
    assert tracker.restarts == 5


def test_a_process_that_stayed_up_starts_a_new_streak() -> None:
    clock = FakeClock()
    policy = RestartPolicy(initial_backoff=1.0, max_backoff=8.0, reset_after=30.0)
    tracker = RestartTracker(policy, clock)
    for _ in range(3):
        tracker.started()
        decision = tracker.exited(1)
        assert decision is not None
    assert decision.delay == 4.0
    tracker.started()
    clock.advance(30.0)
    decision = tracker.exited(1)
    assert decision is not None
    assert (decision.delay, decision.crashes, decision.uptime) == (1.0, 1, 30.0)
    assert tracker.restarts == 4  # the total keeps counting


def test_an_exit_during_a_stop_is_not_a_crash() -> None:
    tracker = RestartTracker(RestartPolicy(), FakeClock())
    tracker.started()
    assert tracker.exited(-15, stopping=True) is None
    assert tracker.crashes == 0
    assert tracker.restarts == 0


def test_even_exit_status_zero_is_restarted() -> None:
    tracker = RestartTracker(RestartPolicy(), FakeClock())
    tracker.started()
    decision = tracker.exited(0)
    assert decision is not None
    assert "exited with code 0" in decision.reason


def test_exit_before_start_is_a_bug() -> None:
    with pytest.raises(RuntimeError, match="before started"):
        RestartTracker(RestartPolicy(), FakeClock()).exited(1)


def test_the_reason_says_how_it_exited_and_what_happens_next() -> None:
    clock = FakeClock()
    tracker = RestartTracker(RestartPolicy(initial_backoff=0.5), clock)
    tracker.started()
    clock.advance(2.0)
    decision = tracker.exited(-signal.SIGKILL)
    assert decision is not None
    assert decision.reason == (
        "was killed by SIGKILL after 2.0s; restarting in 0.5s (crash 1 in a row)"
    )


@pytest.mark.parametrize(
    ("returncode", "text"),
    [
        (None, "could not be started"),
        (3, "exited with code 3"),
        (-signal.SIGTERM, "was killed by SIGTERM"),
        (-200, "was killed by signal 200"),
    ],
)
def test_describe_exit(returncode: int | None, text: str) -> None:
    assert describe_exit(returncode) == text


def test_specs_are_validated() -> None:
    with pytest.raises(ValueError, match="name"):
        ProcessSpec("", ["true"])
    with pytest.raises(ValueError, match="argv"):
        ProcessSpec("x", [])
    with pytest.raises(ValueError, match="duplicate"):
        Supervisor([ProcessSpec("x", ["true"]), ProcessSpec("x", ["false"])])


# -- real processes ---------------------------------------------------------------------------

FAST = RestartPolicy(initial_backoff=0.05, max_backoff=0.2)


def py(code: str) -> list[str]:
    """argv running ``code`` in a fresh interpreter, unbuffered."""
    return [sys.executable, "-u", "-c", textwrap.dedent(code)]


def alive(pid: int) -> bool:
    """A process is alive unless it is gone or a zombie waiting to be reaped."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def dev_log() -> Iterator[list[str]]:
    """Messages of the ``garrison.dev`` logger (independent of caplog and propagation)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger("garrison.dev")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.e2e
async def test_output_is_prefixed_with_the_process_name() -> None:
    out = io.StringIO()
    specs = [
        ProcessSpec("a", py("print('from a'); import sys; print('err a', file=sys.stderr)")),
        ProcessSpec("bbb", py("print('from bbb'); import time; time.sleep(60)")),
    ]
    async with Supervisor(specs, output=out, color=False, policy=RestartPolicy(60, 60)):
        await eventually(
            lambda: all(s in out.getvalue() for s in ("from a", "err a", "from bbb")), "output"
        )
    lines = out.getvalue().splitlines()
    assert "a   | from a" in lines
    assert "a   | err a" in lines
    assert "bbb | from bbb" in lines


@pytest.mark.e2e
@pytest.mark.parametrize(("no_color", "coloured"), [("", True), ("1", False)])
async def test_colour_on_a_terminal_unless_no_color(
    monkeypatch: pytest.MonkeyPatch, no_color: str, coloured: bool
) -> None:
    monkeypatch.setenv("NO_COLOR", no_color)
    out = TTY()
    specs = [ProcessSpec("a", py("print('hello'); import time; time.sleep(60)"))]
    async with Supervisor(specs, output=out):
        await eventually(lambda: "hello" in out.getvalue(), "output")
    assert ("\x1b[" in out.getvalue()) is coloured


@pytest.mark.e2e
async def test_a_crashed_process_is_restarted(dev_log: list[str]) -> None:
    out = io.StringIO()
    spec = ProcessSpec("crashy", py("print('started'); raise SystemExit(3)"))
    async with Supervisor([spec], output=out, color=False, policy=FAST) as sup:
        await eventually(lambda: out.getvalue().count("started") >= 3, "two restarts")
        assert sup.restarts("crashy") >= 2
    assert any("crashy exited with code 3" in m and "restarting in" in m for m in dev_log)


@pytest.mark.e2e
async def test_restart_waits_for_the_backoff_on_the_injected_clock() -> None:
    clock = FakeClock()
    out = io.StringIO()
    spec = ProcessSpec("crashy", py("print('started'); raise SystemExit(1)"))
    policy = RestartPolicy(initial_backoff=5.0, max_backoff=5.0)
    async with Supervisor([spec], output=out, color=False, policy=policy, clock=clock) as sup:
        await eventually(lambda: clock.sleepers == 1, "the backoff to begin")
        assert sup.restarts("crashy") == 1
        assert out.getvalue().count("started") == 1  # not restarted before the clock moves
        clock.advance(5.0)
        await eventually(lambda: sup.restarts("crashy") == 2, "the restart")
        assert out.getvalue().count("started") == 2


@pytest.mark.e2e
async def test_a_program_that_cannot_start_is_retried(dev_log: list[str]) -> None:
    spec = ProcessSpec("ghost", ["/nonexistent/program"])
    async with Supervisor([spec], policy=FAST) as sup:
        await eventually(lambda: sup.restarts("ghost") >= 2, "retries")
    assert any("ghost could not be started" in m for m in dev_log)


@pytest.mark.e2e
async def test_stop_leaves_no_process_behind() -> None:
    # The child starts a grandchild in its process group; both must be gone after stop().
    out = io.StringIO()
    code = """
        import subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print("grandchild", grandchild.pid)
        time.sleep(600)
    """
    sup = Supervisor([ProcessSpec("parent", py(code))], output=out, color=False)
    await sup.start()
    await eventually(lambda: "grandchild" in out.getvalue(), "the grandchild")
    child = sup.pid("parent")
    assert child is not None
    match = re.search(r"grandchild (\d+)", out.getvalue())
    assert match is not None
    grandchild = int(match.group(1))
    assert alive(child)
    assert alive(grandchild)
    await sup.stop()
    assert not alive(child)
    assert not alive(grandchild)
    assert sup.pid("parent") is None
    assert psutil.Process().children(recursive=True) == []


@pytest.mark.e2e
async def test_a_crashed_process_leaves_no_orphans() -> None:
    out = io.StringIO()
    code = """
        import subprocess, sys
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print("grandchild", grandchild.pid)
        raise SystemExit(1)
    """
    policy = RestartPolicy(initial_backoff=60.0, max_backoff=60.0)
    async with Supervisor([ProcessSpec("p", py(code))], output=out, policy=policy) as sup:
        await eventually(lambda: sup.restarts("p") == 1, "the crash")
        match = re.search(r"grandchild (\d+)", out.getvalue())
        assert match is not None
        assert not alive(int(match.group(1)))


@pytest.mark.e2e
async def test_a_child_ignoring_sigterm_is_killed_after_stop_timeout(dev_log: list[str]) -> None:
    out = io.StringIO()
    code = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring SIGTERM")
        time.sleep(600)
    """
    spec = ProcessSpec("stubborn", py(code))
    sup = Supervisor([spec], output=out, color=False, stop_timeout=0.5)
    await sup.start()
    await eventually(lambda: "ignoring SIGTERM" in out.getvalue(), "the child to be ready")
    pid = sup.pid("stubborn")
    assert pid is not None
    await sup.stop()
    assert not alive(pid)
    assert any("stubborn did not stop within 0.5s" in m for m in dev_log)


@pytest.mark.e2e
async def test_stop_is_graceful_first(tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    code = f"""
        import signal, sys, time
        def on_term(*_):
            open({str(marker)!r}, "w").write("clean")
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        print("ready")
        time.sleep(600)
    """
    out = io.StringIO()
    async with Supervisor([ProcessSpec("polite", py(code))], output=out, stop_timeout=30):
        await eventually(lambda: "ready" in out.getvalue(), "the child to be ready")
    assert marker.read_text() == "clean"


@pytest.mark.e2e
async def test_run_stops_everything_on_sigterm() -> None:
    before = signal.getsignal(signal.SIGTERM)
    out = io.StringIO()
    sup = Supervisor(
        [ProcessSpec("svc", py("print('up'); import time; time.sleep(600)"))], output=out
    )
    task = asyncio.create_task(sup.run())
    await eventually(lambda: "up" in out.getvalue(), "the child to start")
    pid = sup.pid("svc")
    assert pid is not None
    os.kill(os.getpid(), signal.SIGTERM)  # handled by run(), not by the default handler
    assert await asyncio.wait_for(task, 30) is None
    assert not alive(pid)
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is restored


@pytest.mark.e2e
async def test_run_forwards_sighup_to_every_process(dev_log: list[str]) -> None:
    before = signal.getsignal(signal.SIGHUP)
    out = io.StringIO()
    code = """
        import signal, time
        signal.signal(signal.SIGHUP, lambda *_: print("reload", flush=True))
        print("up", flush=True)
        time.sleep(600)
    """
    sup = Supervisor([ProcessSpec("a", py(code)), ProcessSpec("b", py(code))], output=out)
    task = asyncio.create_task(sup.run())
    await eventually(lambda: out.getvalue().count("up") == 2, "both children to start")
    os.kill(os.getpid(), signal.SIGHUP)  # handled by run(): forwarded, nobody stops
    await eventually(lambda: out.getvalue().count("reload") == 2, "both children to reload")
    assert not task.done()
    assert any("SIGHUP: forwarded to a, b" in m for m in dev_log)
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(task, 30) is None
    assert signal.getsignal(signal.SIGHUP) == before  # the previous handler is restored


@pytest.mark.e2e
async def test_a_second_signal_kills_without_waiting(dev_log: list[str]) -> None:
    out = io.StringIO()
    code = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("up")
        time.sleep(600)
    """
    sup = Supervisor([ProcessSpec("stubborn", py(code))], output=out, stop_timeout=600)
    task = asyncio.create_task(sup.run())
    await eventually(lambda: "up" in out.getvalue(), "the child to start")
    pid = sup.pid("stubborn")
    assert pid is not None
    os.kill(os.getpid(), signal.SIGINT)
    await eventually(lambda: any("SIGINT" in m for m in dev_log), "the first signal")
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.wait_for(task, 60)  # far less than the 600 s of grace
    assert not alive(pid)


@pytest.mark.e2e
async def test_run_until_returns_its_result_and_stops() -> None:
    sup = Supervisor([ProcessSpec("svc", py("import time; time.sleep(600)"))])
    pids: list[int | None] = []

    async def work() -> str:
        await eventually(lambda: sup.pid("svc") is not None, "the child to start")
        pids.append(sup.pid("svc"))
        return "done"

    assert await sup.run(work()) == "done"
    assert pids[0] is not None
    assert not alive(pids[0])


@pytest.mark.e2e
async def test_run_until_that_fails_still_stops() -> None:
    sup = Supervisor([ProcessSpec("svc", py("import time; time.sleep(600)"))])
    pids: list[int | None] = []

    async def work() -> None:
        await eventually(lambda: sup.pid("svc") is not None, "the child to start")
        pids.append(sup.pid("svc"))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await sup.run(work())
    assert pids[0] is not None
    assert not alive(pids[0])


@pytest.mark.e2e
async def test_wait_healthy_names_what_never_answered(tmp_path: Path) -> None:
    (tmp_path / "healthz").write_text("ok")
    port = free_port()
    server = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    base = f"http://127.0.0.1:{port}"
    specs = [
        ProcessSpec("web", [*server, "--directory", str(tmp_path)], health_url=f"{base}/healthz"),
        ProcessSpec("idle", py("import time; time.sleep(600)")),  # no health URL: not waited on
    ]
    async with Supervisor(specs, output=io.StringIO()) as sup:
        assert await sup.wait_healthy(30) == []
        # 404 is not healthy; a closed port is not either.
        unhealthy = await wait_healthy(
            {"missing": f"{base}/nothing", "closed": f"http://127.0.0.1:{free_port()}/"},
            timeout=0.5,
        )
        assert unhealthy == ["missing", "closed"]
        assert await wait_healthy([f"{base}/healthz"], timeout=5) == []
    assert await wait_healthy({}, timeout=0) == []
