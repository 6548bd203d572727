"""The process supervisor behind ``garrison dev`` and ``garrison demo``.

Theory of operation
-------------------
Each supervised process is described by a :class:`ProcessSpec` (a name and an argv, so anything
can be supervised, not only garrison services). The :class:`Supervisor` runs one task per spec:

1. **Start.** The child is spawned as :func:`asyncio.create_subprocess_exec` does it (with a
   protocol that reports the exit itself, not once the pipes close) in a new session
   (``start_new_session=True``), so its pid is also the id of a process group holding it and every
   process it forks. Signals are sent to that group, never to the pid alone, so nothing it
   started can outlive it. A terminal's Ctrl-C reaches only the supervisor, which then stops the
   children in order.
2. **Output.** stdout and stderr are read line by line and printed prefixed with the process
   name, padded to a common width and coloured with a colour of its own (plain when the output
   is not a terminal or ``NO_COLOR`` is set).
3. **Crash.** When a child exits without being asked to, the sans-I/O :class:`RestartTracker`
   decides when to start it again: after ``initial_backoff`` seconds, doubling with each crash in
   a row up to ``max_backoff``; a process that stayed up ``reset_after`` seconds starts a new
   streak. The tracker reads time from an injected :class:`~garrison.core.Clock`, so the policy
   is tested with a :class:`~garrison.core.FakeClock`. Leftovers of the crashed child's group
   are killed before the restart.
4. **Stop.** :meth:`Supervisor.stop` sends SIGTERM to every group, waits up to ``stop_timeout``
   for the groups to empty, then sends SIGKILL to what is left. A second SIGINT/SIGTERM during
   :meth:`Supervisor.run` skips the wait.

:func:`wait_healthy` polls HTTP health URLs until every one answers 200, so a caller knows when
the whole application is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import sys
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import httpx

from garrison.core import Clock, DevConfig, SystemClock, get_logger

__all__ = [
    "ProcessSpec",
    "Restart",
    "RestartPolicy",
    "RestartTracker",
    "Supervisor",
    "describe_exit",
    "wait_healthy",
]

log = get_logger("dev")
T = TypeVar("T")

# Foreground ANSI colours that read well on dark and light backgrounds, in assignment order.
_PALETTE = ("36", "33", "35", "32", "34", "91", "96", "93", "95", "92", "94", "31")
_LINE_LIMIT = 1 << 20  # longest line read at once; longer ones are split, not fatal
_DRAIN_GRACE = 2.0  # how long to read a dead child's pipes, held open by an escaped grandchild


# --------------------------------------------------------------------------------------------
# sans-I/O: the restart policy and its decisions


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When to restart a process that exited on its own."""

    initial_backoff: float = 0.5
    """Wait before the first restart of a crash streak, in seconds."""
    max_backoff: float = 10.0
    """Cap of the wait, in seconds; the wait doubles with each crash in a row up to it."""
    reset_after: float = 10.0
    """A process that stayed up this long, in seconds, starts a new crash streak when it exits."""

    def __post_init__(self) -> None:
        if self.initial_backoff <= 0 or self.max_backoff <= 0 or self.reset_after < 0:
            raise ValueError(f"RestartPolicy: backoffs must be > 0 and reset_after >= 0: {self}")
        if self.max_backoff < self.initial_backoff:
            raise ValueError(f"RestartPolicy: max_backoff < initial_backoff: {self}")

    @classmethod
    def from_config(cls, dev: DevConfig) -> RestartPolicy:
        """The policy of a ``[dev]`` section; a streak resets after ``max(10s, max_backoff)``."""
        return cls(
            initial_backoff=dev.restart_initial_backoff,
            max_backoff=max(dev.restart_max_backoff, dev.restart_initial_backoff),
            reset_after=max(10.0, dev.restart_max_backoff),
        )

    def backoff(self, crashes: int) -> float:
        """The wait before restarting after the ``crashes``-th crash in a row (1 for the first)."""
        if crashes < 1:
            raise ValueError(f"crashes must be >= 1, got {crashes}")
        # Cap the exponent so huge streaks cannot overflow the float.
        return min(self.initial_backoff * 2.0 ** min(crashes - 1, 64), self.max_backoff)


@dataclass(frozen=True, slots=True)
class Restart:
    """The decision to start a process again after ``delay`` seconds."""

    delay: float
    """Seconds to wait before starting it."""
    crashes: int
    """Crashes in a row, this one included."""
    uptime: float
    """How long the process had been up, in seconds."""
    reason: str
    """Why it is restarted, for people: how it exited and what happens next."""


class RestartTracker:
    """The restart state of one process: feed it starts and exits, it answers with decisions.

    Sans-I/O: it never sleeps nor spawns; it reads time from ``clock`` only.
    """

    def __init__(self, policy: RestartPolicy, clock: Clock) -> None:
        self.policy = policy
        self._clock = clock
        self._started_at: float | None = None
        self.crashes = 0
        """Crashes in the current streak."""
        self.restarts = 0
        """Restarts decided so far, over the whole life of the tracker."""

    def started(self) -> None:
        """The process was started (or an attempt to start it was made) now."""
        self._started_at = self._clock.monotonic()

    def exited(self, returncode: int | None, *, stopping: bool = False) -> Restart | None:
        """The process exited (``None``: it could not be started). ``None`` means do not restart.

        An exit during a requested stop is not a crash. Any other exit is, even with status 0:
        a service is expected to run until it is told to stop.
        """
        if self._started_at is None:
            raise RuntimeError("RestartTracker.exited() before started()")
        uptime = max(0.0, self._clock.monotonic() - self._started_at)
        self._started_at = None
        if stopping:
            return None
        if uptime >= self.policy.reset_after:
            self.crashes = 0
        self.crashes += 1
        self.restarts += 1
        delay = self.policy.backoff(self.crashes)
        reason = (
            f"{describe_exit(returncode)} after {uptime:.1f}s; restarting in {delay:.1f}s"
            f" (crash {self.crashes} in a row)"
        )
        return Restart(delay=delay, crashes=self.crashes, uptime=uptime, reason=reason)


def describe_exit(returncode: int | None) -> str:
    """``exited with code 1``, ``was killed by SIGKILL`` or ``could not be started``."""
    if returncode is None:
        return "could not be started"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


# --------------------------------------------------------------------------------------------
# I/O: processes, their output, signals


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One process to supervise."""

    name: str
    """Shown as the prefix of each output line and in logs; unique within a supervisor."""
    argv: Sequence[str]
    """The program and its arguments (no shell)."""
    env: Mapping[str, str] | None = None
    """The complete environment of the process; ``None`` inherits the supervisor's."""
    cwd: str | None = None
    """Working directory; ``None`` is the supervisor's."""
    health_url: str | None = None
    """A URL that answers 200 once the process is ready, for :meth:`Supervisor.wait_healthy`."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ProcessSpec.name must not be empty")
        if not self.argv:
            raise ValueError(f"ProcessSpec {self.name!r}: argv must not be empty")


@dataclass(slots=True)
class _Proc:
    spec: ProcessSpec
    tracker: RestartTracker
    pid: int | None = None
    task: asyncio.Task[None] | None = None


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """The protocol of :func:`asyncio.create_subprocess_exec`, telling when the child exits.

    ``Process.wait()`` returns only once the pipes are closed too (Python 3.11), and a
    grandchild holding them open would hide the exit; ``exited`` does not wait for the pipes.
    """

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


def _want_color(stream: IO[str]) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Supervisor:
    """Runs processes, prints their output with prefixes, restarts crashes, stops them cleanly.

    Use :meth:`run` from a command (it handles SIGINT/SIGTERM), or ``async with`` /
    :meth:`start` and :meth:`stop` from code and tests::

        async with Supervisor([ProcessSpec("api", [sys.executable, "-m", "api"])]) as sup:
            await sup.wait_healthy(30)
    """

    def __init__(
        self,
        specs: Iterable[ProcessSpec],
        *,
        policy: RestartPolicy | None = None,
        stop_timeout: float = 5.0,
        clock: Clock | None = None,
        output: IO[str] | None = None,
        color: bool | None = None,
    ) -> None:
        """``output`` defaults to stdout; ``color=None`` colours only a terminal without NO_COLOR.

        ``clock`` drives the restart decisions and the backoff waits.
        """
        self._clock: Clock = clock or SystemClock()
        self._policy = policy or RestartPolicy()
        self._stop_timeout = stop_timeout
        self._procs: dict[str, _Proc] = {}
        for spec in specs:
            if spec.name in self._procs:
                raise ValueError(f"duplicate process name {spec.name!r}")
            self._procs[spec.name] = _Proc(spec, RestartTracker(self._policy, self._clock))
        self._out = output if output is not None else sys.stdout
        use_color = _want_color(self._out) if color is None else color
        width = max((len(n) for n in self._procs), default=0)
        self._prefix: dict[str, str] = {}
        for i, name in enumerate(self._procs):
            label = name.ljust(width)
            if use_color:
                label = f"\x1b[{_PALETTE[i % len(_PALETTE)]}m{label}\x1b[0m"
            self._prefix[name] = f"{label} | "
        self._stopping = asyncio.Event()
        self._force = asyncio.Event()
        self._started = False

    # -- public face -------------------------------------------------------------------------

    @property
    def specs(self) -> list[ProcessSpec]:
        """The supervised processes, in start order."""
        return [p.spec for p in self._procs.values()]

    def pid(self, name: str) -> int | None:
        """The pid of the running process ``name``, ``None`` between runs."""
        return self._procs[name].pid

    def restarts(self, name: str) -> int:
        """How many times ``name`` crashed and was (or is about to be) restarted."""
        return self._procs[name].tracker.restarts

    async def start(self) -> None:
        """Start every process and return; each one is then watched by a task of its own."""
        if self._started:
            raise RuntimeError("Supervisor.start() called twice")
        self._started = True
        for proc in self._procs.values():
            proc.task = asyncio.create_task(
                self._supervise(proc), name=f"supervise {proc.spec.name}"
            )

    async def stop(self, *, force: bool = False) -> None:
        """Stop every process: SIGTERM, up to ``stop_timeout`` of grace, then SIGKILL.

        ``force`` skips the grace. Safe to call more than once; returns when all are gone.
        """
        self._stopping.set()
        if force:
            self._force.set()
        tasks = [p.task for p in self._procs.values() if p.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def signal(self, signum: int) -> list[str]:
        """Send ``signum`` to every running process (not to its group: a service decides what
        its own children get); the names it reached. ``garrison dev`` forwards SIGHUP this way,
        so one ``kill -HUP`` reloads the keys of the whole app."""
        reached = []
        for name, proc in self._procs.items():
            if proc.pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):  # exited just now: nothing to tell
                os.kill(proc.pid, signum)
                reached.append(name)
        return reached

    async def wait_healthy(self, timeout: float) -> list[str]:
        """Wait until every process with a ``health_url`` answers it; the names that did not."""
        urls = {p.spec.name: p.spec.health_url for p in self._procs.values() if p.spec.health_url}
        return await wait_healthy(urls, timeout)

    async def run(self, until: Awaitable[T] | None = None) -> T | None:
        """Start, run until SIGINT/SIGTERM (or until ``until`` completes), then stop all;
        SIGHUP meanwhile is forwarded to every process (see :meth:`signal`).

        Returns what ``until`` returned, or ``None`` when a signal came first (``until`` is
        then cancelled). A second signal kills the processes without waiting. If ``until``
        raises, the processes are stopped and the error propagates.
        """
        loop = asyncio.get_running_loop()
        signalled = asyncio.Event()

        def on_signal(signum: int) -> None:
            if signalled.is_set():
                log.warning("second %s: killing all processes", signal.Signals(signum).name)
                self._force.set()
            else:
                log.info("%s: stopping all processes", signal.Signals(signum).name)
            signalled.set()
            self._stopping.set()

        def on_hangup() -> None:
            reached = self.signal(signal.SIGHUP)
            log.info("SIGHUP: forwarded to %s", ", ".join(reached) or "no running process")

        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        for s in previous:
            if s == signal.SIGHUP:
                loop.add_signal_handler(s, on_hangup)
            else:
                loop.add_signal_handler(s, on_signal, s)
        work: asyncio.Future[T] | None = None
        try:
            await self.start()
            waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(signalled.wait())}
            if until is not None:
                work = asyncio.ensure_future(until)
                waiters.add(work)
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                if w is not work:
                    w.cancel()
            if work is not None and not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
            if work is not None and work.done() and not work.cancelled():
                return work.result()
            return None
        finally:
            await self.stop()
            for s, handler in previous.items():
                loop.remove_signal_handler(s)
                if handler is not None:  # None: installed outside Python, nothing to restore
                    signal.signal(s, handler)

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- one process -------------------------------------------------------------------------

    async def _supervise(self, proc: _Proc) -> None:
        spec = proc.spec
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            proc.tracker.started()
            try:
                # What asyncio.create_subprocess_exec does, with a protocol that reports the exit.
                transport, protocol = await loop.subprocess_exec(
                    lambda: _Protocol(_LINE_LIMIT, loop),
                    *spec.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=dict(spec.env) if spec.env is not None else None,
                    cwd=spec.cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                log.error("%s: cannot start %s: %s", spec.name, spec.argv[0], exc)
                returncode: int | None = None
            else:
                try:
                    proc.pid = transport.get_pid()
                    log.debug("%s: started, pid %d", spec.name, proc.pid)
                    returncode = await self._watch(spec.name, proc.pid, transport, protocol)
                finally:
                    proc.pid = None
                    transport.close()
            if self._stopping.is_set():
                proc.tracker.exited(returncode, stopping=True)
                break
            decision = proc.tracker.exited(returncode)
            assert decision is not None  # only a requested stop says "do not restart"
            log.warning("%s %s", spec.name, decision.reason)
            await self._sleep_unless_stopping(decision.delay)

    async def _watch(
        self,
        name: str,
        pid: int,
        transport: asyncio.SubprocessTransport,
        protocol: _Protocol,
    ) -> int | None:
        """Print the output of process ``pid`` until it exits, or stop it; its exit status."""
        assert protocol.stdout is not None
        assert protocol.stderr is not None
        pumps = [
            asyncio.create_task(self._pump(name, protocol.stdout)),
            asyncio.create_task(self._pump(name, protocol.stderr)),
        ]
        stopping = asyncio.ensure_future(self._stopping.wait())
        waiters: set[asyncio.Future[Any]] = {protocol.exited, stopping}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if not protocol.exited.done():
                await self._terminate(name, pid, protocol.exited)
            await protocol.exited
            # The leader is gone; members of its group that outlived it must not be orphans.
            await self._empty_group(name, pid)
            # Print what is still buffered; an escaped grandchild may hold the pipes open.
            await asyncio.wait(pumps, timeout=_DRAIN_GRACE)
        except asyncio.CancelledError:
            # Cancelled from outside instead of stopped: no time for grace, but no orphans.
            _killpg(pid, signal.SIGKILL)
            raise
        finally:
            stopping.cancel()
            for task in pumps:
                task.cancel()
        return transport.get_returncode()

    async def _terminate(self, name: str, pgid: int, exited: asyncio.Future[None]) -> None:
        _killpg(pgid, signal.SIGTERM)
        force = asyncio.ensure_future(self._force.wait())
        waiters: set[asyncio.Future[Any]] = {exited, force}
        try:
            await asyncio.wait(
                waiters, timeout=self._stop_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            force.cancel()
        if not exited.done():
            log.warning(
                "%s did not stop within %.1fs of SIGTERM; killing it", name, self._stop_timeout
            )
            _killpg(pgid, signal.SIGKILL)

    async def _empty_group(self, name: str, pgid: int) -> None:
        # SIGTERM again (the leader may have died on its own, its children never told), the
        # same grace as the leader had, then SIGKILL. Bounded by stop_timeout.
        if not _killpg(pgid, signal.SIGTERM):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._stop_timeout
        # No event tells when a group empties, so poll (0 is the "does it exist" signal).
        while _killpg(pgid, 0) and loop.time() < deadline and not self._force.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if _killpg(pgid, signal.SIGKILL):
            log.warning("%s: killed processes left in its group after it exited", name)

    async def _pump(self, name: str, stream: asyncio.StreamReader) -> None:
        prefix = self._prefix[name]
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the limit: print what is buffered
                raw = await stream.read(_LINE_LIMIT)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            try:
                self._out.write(f"{prefix}{line}\n")
                self._out.flush()
            except (OSError, ValueError):  # closed or broken output: keep draining the pipe
                pass

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        sleep = asyncio.ensure_future(self._clock.sleep(seconds))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({sleep, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleep.cancel()
            stopping.cancel()


def _killpg(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it has no member left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        # macOS answers EPERM for a group whose members are all zombies.
        return False
    except OSError as exc:  # pragma: no cover - not expected on POSIX
        if exc.errno == errno.ESRCH:
            return False
        raise
    return True


# --------------------------------------------------------------------------------------------
# readiness


# The timeout is a parameter, not the caller's asyncio.timeout(), because the answer names the
# URLs that were still unhealthy when it ran out.
async def wait_healthy(
    urls: Mapping[str, str] | Iterable[str],
    timeout: float,
    *,
    interval: float = 0.2,
) -> list[str]:
    """Poll each URL with GET until it answers 200 or ``timeout`` seconds have passed.

    ``urls`` maps names to URLs (or is a plain list of URLs, each its own name). Returns the
    names whose URL never answered 200, in the given order; empty when all are healthy.
    """
    named = dict(urls) if isinstance(urls, Mapping) else {u: u for u in urls}
    if not named:
        return []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    async def poll(client: httpx.AsyncClient, url: str) -> bool:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(interval, left))

    # trust_env=False: an HTTP(S)_PROXY in the environment must not capture loopback checks.
    async with httpx.AsyncClient(timeout=max(0.5, min(2.0, timeout)), trust_env=False) as client:
        results = await asyncio.gather(*(poll(client, url) for url in named.values()))
    return [name for name, ok in zip(named, results, strict=True) if not ok]
