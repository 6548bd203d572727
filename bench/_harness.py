"""The benchmark harness: find benchmarks, run them, print a table each and write their JSON.

A benchmark is a public module of this package (a name not starting with ``_``) with::

    PILLAR = "service"                      # groups modules: `python -m bench service`
    def run(quick: bool) -> list[Row]: ...  # or `async def`; quick = a short smoke run

An async ``run`` gets one event loop (uvloop when installed, as under uvicorn;
``BENCH_LOOP=asyncio`` forces the stdlib loop). During ``run`` a module may call :func:`note` to
attach facts (versions, set-up, a conclusion) and :func:`progress` to show how far a long run is.
The harness prints one table per module and writes ``bench/results/MODULE.json``: the rows, the
notes and the machine.

Pillars are read from the source (``ast``), so listing and selecting never imports a benchmark
that is not run.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

__all__ = [
    "BENCH_DIR",
    "Better",
    "RESULTS_DIR",
    "ROOT",
    "Row",
    "UnknownBenchmark",
    "child_argv",
    "discover",
    "main",
    "median",
    "note",
    "percentile",
    "progress",
    "select",
    "serve_child",
]

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
ROOT = BENCH_DIR.parent
"""The repository root: the working directory of benchmark child processes."""
Better = Literal["higher", "lower"]


# -- rows ------------------------------------------------------------------------------------


@dataclass
class Row:
    """One measured quantity: garrison's value beside each peer's, and how they compare."""

    metric: str
    """What is measured, e.g. ``"req/s c=1 · aiohttp transport"``."""
    unit: str
    """Unit of every value in the row, e.g. ``"req/s"``, ``"µs"``, ``"%"``."""
    garrison: float | None
    """garrison's value (None when it could not be measured)."""
    peers: dict[str, float] = field(default_factory=dict)
    """Each peer's value under the same conditions, by peer name."""
    better: Better | None = "higher"
    """Which direction is better; None for a row that is not a contest."""
    vs: str | None = None
    """The peer the ratio compares with; None means the best peer."""
    limit: float | None = None
    """The physical (or practical) limit where one applies; the notes say which."""
    notes: str = ""
    ratio: float | None = None
    """``garrison / reference``; computed from the peers when not given."""
    ratio_vs: str | None = None
    """The peer the ratio was computed against (filled in by the harness)."""

    def __post_init__(self) -> None:
        if self.vs is not None and self.vs not in self.peers:
            raise ValueError(f"row {self.metric!r}: vs={self.vs!r} is not one of its peers")
        ref = self._reference()
        if ref is not None:
            self.ratio_vs = ref[0]
            if self.ratio is None and self.garrison is not None and ref[1]:
                self.ratio = self.garrison / ref[1]

    def _reference(self) -> tuple[str, float] | None:
        if self.vs is not None:
            return self.vs, self.peers[self.vs]
        if not self.peers or self.better is None:
            return None
        pick = max if self.better == "higher" else min
        return pick(self.peers.items(), key=lambda kv: kv[1])

    def verdict(self) -> Literal["win", "near", "loss"] | None:
        """Whether garrison beats the reference, is within 10% of it, or is worse."""
        if self.ratio is None or self.better is None:
            return None
        good = self.ratio if self.better == "higher" else 1 / self.ratio if self.ratio else 0.0
        if good >= 1.0:
            return "win"
        return "near" if good >= 0.9 else "loss"


# -- statistics ------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (NaN for none)."""
    return percentile(values, 0.5)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linearly interpolated (NaN for none)."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# -- discovery -------------------------------------------------------------------------------


class UnknownBenchmark(LookupError):
    """A requested name is neither a benchmark module nor a pillar."""


def discover() -> dict[str, str]:
    """Every benchmark module of the package and its pillar, read without importing it."""
    found: dict[str, str] = {}
    for path in sorted(BENCH_DIR.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        pillar = _pillar_of(path)
        if pillar is not None:
            found[path.stem] = pillar
    return found


def _pillar_of(path: Path) -> str | None:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    value: ast.expr | None
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id == "PILLAR":
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                return value.value
            raise TypeError(f"{path.name}: PILLAR must be a string literal")
    return None


def select(names: Sequence[str], found: dict[str, str]) -> list[str]:
    """The modules that ``names`` (modules or pillars; none = all) stand for, in order."""
    if not names:
        return sorted(found)
    chosen: list[str] = []
    for name in names:
        matches = [name] if name in found else sorted(m for m, p in found.items() if p == name)
        if not matches:
            pillars = ", ".join(sorted(set(found.values()))) or "none"
            modules = ", ".join(sorted(found)) or "none"
            raise UnknownBenchmark(
                f"no benchmark or pillar named {name!r}.\n"
                f"  pillars: {pillars}\n  benchmarks: {modules}"
            )
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


# -- progress and notes ----------------------------------------------------------------------

_err = Console(stderr=True, highlight=False)
_notes: dict[str, Any] = {}


def note(key: str, value: Any) -> None:
    """Attach a fact to the running benchmark's report: printed under its table, kept in JSON."""
    _notes[key] = value


def log(message: str, *, markup: bool = False) -> None:
    """One line of progress on stderr (``message`` is plain text unless ``markup``)."""
    _err.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message if markup else escape(message)}")


@contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[str], None]]:
    """Yield ``advance(step_note)``; a live bar on a terminal, else one line per step."""
    if _err.is_terminal:
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("[dim]{task.fields[step]}"),
        )
        with Progress(*columns, console=_err, transient=True) as bar:
            task = bar.add_task(description, total=total, step="")
            yield lambda step: bar.update(task, advance=1, step=escape(step))
        return
    start = time.perf_counter()
    done = 0

    def advance(step: str) -> None:
        nonlocal done
        done += 1
        log(f"{description} {done}/{total} {step} ({time.perf_counter() - start:.1f}s)")

    yield advance


# -- machine ---------------------------------------------------------------------------------


def event_loop_name() -> str:
    """The loop an async benchmark runs on: uvloop when installed unless BENCH_LOOP=asyncio."""
    if os.environ.get("BENCH_LOOP", "").lower() != "asyncio":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pass
        else:
            return "uvloop"
    return "asyncio"


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: CPUs, Python, date, git commit, load."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "event_loop": event_loop_name(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=BENCH_DIR.parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# -- running ---------------------------------------------------------------------------------


def _invoke(run: Callable[[bool], Any], quick: bool) -> list[Row]:
    if not inspect.iscoroutinefunction(run):
        result: list[Row] = run(quick)
        return result
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if event_loop_name() == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        rows: list[Row] = runner.run(run(quick))
        return rows


def run_one(name: str, pillar: str, quick: bool, console: Console) -> Path:
    """Import and run benchmark ``name``, print its table, write its JSON; return the path."""
    module = importlib.import_module(f"bench.{name}")
    run = getattr(module, "run", None)
    if not callable(run):
        raise TypeError(f"bench/{name}.py has no run(quick) function")
    _notes.clear()
    machine = machine_info()
    log(f"[bold]{name}[/] ({pillar}){' quick' if quick else ''}: running", markup=True)
    start = time.perf_counter()
    rows = _invoke(run, quick)
    duration = time.perf_counter() - start
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    notes = dict(_notes)
    console.print(render(name, pillar, rows, notes, machine, quick, duration))
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    report = {
        "benchmark": name,
        "pillar": pillar,
        "quick": quick,
        "duration_s": round(duration, 2),
        "machine": machine,
        "notes": notes,
        "rows": [_row_json(r) for r in rows],
    }
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    return path


def _row_json(row: Row) -> dict[str, Any]:
    data = asdict(row)
    for key, value in list(data.items()):
        if isinstance(value, float) and not math.isfinite(value):
            data[key] = None
    return data


def main(names: Sequence[str], quick: bool) -> int:
    """Run the benchmarks that ``names`` stand for; 0 when all ran, 1 when one failed."""
    found = discover()
    try:
        chosen = select(names, found)
    except UnknownBenchmark as exc:
        _err.print(f"[red]error:[/] {escape(str(exc))}")
        return 2
    console = Console() if sys.stdout.isatty() or "COLUMNS" in os.environ else Console(width=200)
    failed: list[str] = []
    for name in chosen:
        try:
            path = run_one(name, found[name], quick, console)
        except Exception:
            failed.append(name)
            _err.print(f"[red]benchmark {name} failed:[/]")
            _err.print(traceback.format_exc(), markup=False, highlight=False)
            continue
        log(f"wrote {path.relative_to(BENCH_DIR.parent)}")
    if failed:
        _err.print(f"[red]failed:[/] {', '.join(failed)}")
        return 1
    return 0


# -- rendering -------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    """A value with about three significant digits, thousands separated."""
    if value is None or not math.isfinite(value):
        return "—"
    a = abs(value)
    if a >= 100:
        return f"{value:,.0f}"
    if a >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


_VERDICT_STYLE = {"win": "green", "near": "yellow", "loss": "red", None: ""}


def render(
    name: str,
    pillar: str,
    rows: Sequence[Row],
    notes: dict[str, Any],
    machine: dict[str, Any],
    quick: bool,
    duration: float,
) -> Table:
    """The table of one benchmark, with its notes and the machine in the caption."""
    peers: list[str] = []
    for row in rows:
        peers.extend(p for p in row.peers if p not in peers)
    commit = (machine["git_commit"] or "no commit")[:10] + (
        "+dirty" if machine["git_dirty"] else ""
    )
    title = f"{name} ({pillar}){' — QUICK' if quick else ''}"
    caption_lines = [f"{k}: {v}" for k, v in notes.items()]
    caption_lines.append(
        f"{machine['cpu_count']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
        f"{machine['event_loop']}, load {machine['loadavg_start']}→{machine['loadavg_end']}, "
        f"{machine['date']}, {commit}, {duration:.0f}s. "
        "Ratio = garrison ÷ the named peer (or the best); ↑/↓ = which direction is better."
    )
    table = Table(
        title=title,
        caption="\n".join(caption_lines),
        caption_justify="left",
        show_lines=False,
        header_style="bold",
    )
    table.add_column("metric", overflow="fold")
    table.add_column("unit")
    table.add_column("garrison", justify="right", style="bold")
    for peer in peers:
        table.add_column(peer, justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("", justify="center")
    table.add_column("limit", justify="right", style="dim")
    table.add_column("notes", overflow="fold", max_width=60)
    for row in rows:
        ratio = Text("—")
        if row.ratio is not None:
            ratio = Text(f"{row.ratio:.2f}x {row.ratio_vs}", style=_VERDICT_STYLE[row.verdict()])
        arrow = {"higher": "↑", "lower": "↓", None: ""}[row.better]
        table.add_row(
            row.metric,
            row.unit,
            fmt(row.garrison),
            *(fmt(row.peers.get(p)) if p in row.peers else "" for p in peers),
            ratio,
            arrow,
            fmt(row.limit) if row.limit is not None else "",
            row.notes,
        )
    return table


# -- child processes -------------------------------------------------------------------------


def child_argv(module: str, role: str, spec: dict[str, Any]) -> list[str]:
    """argv running ``python -m module role '<spec as JSON>'`` (a benchmark's own child roles:
    a service to measure, a load generator), so the measured side has a process of its own."""
    return [sys.executable, "-m", module, role, json.dumps(spec)]


@contextmanager
def serve_child(
    module: str, spec: dict[str, Any], *, name: str = "service", timeout: float = 20.0
) -> Iterator[str]:
    """Run ``module``'s ``serve`` role in a child process, wait until it is ready, yield its URL,
    and stop it afterwards (SIGTERM, then SIGKILL after 10 s).

    The child prints its port on the first line of stdout; ready means ``GET /readyz`` answered
    200 within ``timeout`` seconds.
    """
    proc = subprocess.Popen(
        child_argv(module, "serve", spec), stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"{name} did not start (exit status {proc.poll()})")
        url = f"http://127.0.0.1:{int(line)}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
