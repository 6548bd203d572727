"""``garrison workflows ...``: operate a running service's durable workflows.

Every command talks to the service's ``/_garrison/workflows`` endpoints over HTTP: the service
is named with ``--service NAME`` (its URL is read from garrison.toml in ``--app-dir``) or given
with ``--url``. ``replay-check --offline`` instead opens the service's store itself (as
``[durable]`` names it) and replays against the app's code on disk: the check to run before
deploying that code.

Output is a table for people, or JSON with ``--json`` for scripts. Exit status: 0 ok; 1 not
found, unreachable, refused because the instance has ended, or a failed replay check; 2 bad
input (options, arguments, a request the service refused as invalid).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.table import Table

from garrison.core import ConfigError, GarrisonConfig, UsageError, load_config

__all__ = ["workflows_app"]

EXIT_FAILED = 1
EXIT_USAGE = 2
_STATUSES = ("running", "completed", "failed", "cancelled", "terminated")

workflows_app = typer.Typer(
    name="workflows",
    help="List, inspect, start, signal, cancel and replay-check a service's durable workflows "
    "(through its /_garrison/workflows endpoints). Exit status: 0 ok, 1 not found or failed, "
    "2 bad input.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ServiceOpt = Annotated[
    str | None,
    typer.Option(
        "--service",
        "-s",
        metavar="NAME",
        help="The service, a key of [services] in garrison.toml (its URL is read from there).",
    ),
]
AppDirOpt = Annotated[
    Path,
    typer.Option("--app-dir", "--app", help="Folder of the application, holding garrison.toml."),
]
UrlOpt = Annotated[
    str | None,
    typer.Option("--url", metavar="URL", help="The service's base URL, instead of --service."),
]
ReplicaOpt = Annotated[
    int, typer.Option("--replica", min=0, help="Which replica of --service to ask.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", min=0.1, metavar="SECONDS", help="HTTP timeout.")
]
IdArg = Annotated[str, typer.Argument(metavar="ID", help="The workflow instance id.")]


# -- plumbing ----------------------------------------------------------------------------------


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    typer.echo(" ".join(f"garrison workflows: error: {message}".split("\n")), err=True)
    raise typer.Exit(code)


def _config(app_dir: Path) -> GarrisonConfig:
    if not app_dir.exists():
        _fail(f"app folder {str(app_dir)!r} does not exist")
    try:
        return load_config(app_dir)
    except ConfigError as exc:
        _fail(str(exc))


def _base_url(service: str | None, url: str | None, app_dir: Path, replica: int) -> str:
    if service and url:
        _fail("give --service or --url, not both")
    if url:
        if not url.startswith(("http://", "https://")):
            _fail(f"--url must be an http:// or https:// URL, got {url!r}")
        return url.rstrip("/")
    if not service:
        _fail("which service? give --service NAME (from garrison.toml) or --url URL")
    config = _config(app_dir)
    try:
        svc = config.service(service)
    except ConfigError as exc:
        _fail(str(exc))
    if replica >= svc.replicas and not svc.instances:
        _fail(f"--replica {replica}: service {service!r} has {svc.replicas} replica(s)")
    urls = svc.urls()
    if replica >= len(urls):
        _fail(f"--replica {replica}: service {service!r} has {len(urls)} instance(s)")
    base = urls[replica]
    # a service listening on every interface is reached on loopback from here
    for wildcard, loopback in (("//0.0.0.0:", "//127.0.0.1:"), ("//[::]:", "//[::1]:")):
        base = base.replace(wildcard, loopback)
    return base.rstrip("/")


def _call(method: str, base: str, path: str, timeout: float, **kw: Any) -> dict[str, Any]:
    url = f"{base}/_garrison/workflows{path}"
    try:
        r = httpx.request(method, url, timeout=timeout, **kw)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach {base}: {type(exc).__name__}: {exc}", EXIT_FAILED)
    try:
        body = r.json()
    except ValueError:
        body = None
    if r.status_code >= 400:
        message = body.get("message") if isinstance(body, dict) else None
        if not message:
            message = f"{r.status_code} {r.reason_phrase} from {url}"
            if r.status_code == 404:
                message += " (is this a garrison service with workflows?)"
        code = EXIT_USAGE if r.status_code in (400, 413, 422) else EXIT_FAILED
        _fail(str(message), code)
    if not isinstance(body, dict):
        _fail(f"{url} answered {r.status_code} without a JSON object", EXIT_FAILED)
    return body


def _seg(text: str) -> str:
    """``text`` as one path segment (an id may hold ``/``, ``?`` or ``#``)."""
    return quote(text, safe="")


def _print_json(body: Any) -> None:
    typer.echo(json.dumps(body, indent=2, sort_keys=True, default=str))


def _value(text: str) -> Any:
    """A command-line value: JSON when it parses as JSON, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _console() -> Console:
    return Console(soft_wrap=False, highlight=False)


# -- commands ----------------------------------------------------------------------------------


@workflows_app.command("list")
def list_(
    service: ServiceOpt = None,
    url: UrlOpt = None,
    app_dir: AppDirOpt = Path("."),
    replica: ReplicaOpt = 0,
    status: Annotated[
        str | None,
        typer.Option("--status", help=f"Only instances with this status: {', '.join(_STATUSES)}."),
    ] = None,
    workflow: Annotated[
        str | None, typer.Option("--workflow", "-w", help="Only instances of this workflow.")
    ] = None,
    id_prefix: Annotated[
        str | None, typer.Option("--id-prefix", help="Only ids starting with this.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """List workflow instances, newest first."""
    if status is not None and status not in _STATUSES:
        _fail(f"--status must be one of {', '.join(_STATUSES)}, got {status!r}")
    base = _base_url(service, url, app_dir, replica)
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    for key, value in (("status", status), ("workflow", workflow), ("id_prefix", id_prefix)):
        if value is not None:
            params[key] = value
    body = _call("GET", base, "", timeout, params=params)
    if as_json:
        _print_json(body)
        return
    table = Table(title=f"workflows of {body.get('service', base)}")
    for col in ("id", "workflow", "status", "runs", "steps", "created", "updated", "note"):
        table.add_column(col, overflow="fold")
    for w in body["workflows"]:
        note = w.get("blocked") or w.get("failure") or ""
        table.add_row(
            w["id"],
            w["workflow"],
            w["status"],
            str(w["runs"]),
            str(w["steps"]),
            _when(w["created_at"]),
            _when(w["updated_at"]),
            _short(note),
        )
    console = _console()
    console.print(table)
    console.print(f"{len(body['workflows'])} shown (offset {body['offset']})")


@workflows_app.command()
def show(
    workflow_id: IdArg,
    service: ServiceOpt = None,
    url: UrlOpt = None,
    app_dir: AppDirOpt = Path("."),
    replica: ReplicaOpt = 0,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Show one instance: status, arguments, result or failure (exit 1 if unknown)."""
    base = _base_url(service, url, app_dir, replica)
    w = _call("GET", base, f"/{_seg(workflow_id)}", timeout)
    if as_json:
        _print_json(w)
        return
    table = Table(show_header=False, title=f"workflow {w['id']}")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key in ("workflow", "status", "runs", "steps", "owner", "epoch", "parent_id", "blocked"):
        table.add_row(key, "-" if w.get(key) is None else str(w[key]))
    for key in ("created_at", "updated_at", "closed_at", "ready_at"):
        table.add_row(key, _when(w.get(key)))
    table.add_row("args", json.dumps(w.get("args"), default=str))
    if w.get("status") == "completed":
        table.add_row("result", json.dumps(w.get("result"), default=str))
    failure = w.get("failure")
    if failure:
        table.add_row("failure", f"{failure['type']}: {failure['message']}")
    console = _console()
    console.print(table)
    if failure and failure.get("traceback"):
        console.print(failure["traceback"], markup=False)


@workflows_app.command()
def history(
    workflow_id: IdArg,
    service: ServiceOpt = None,
    url: UrlOpt = None,
    app_dir: AppDirOpt = Path("."),
    replica: ReplicaOpt = 0,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Show the journal of an instance's current run, batch by batch."""
    base = _base_url(service, url, app_dir, replica)
    h = _call("GET", base, f"/{_seg(workflow_id)}/history", timeout)
    if as_json:
        _print_json(h)
        return
    table = Table(title=f"history of {h['workflow_id']} ({h['workflow']}, run {h['run_id']})")
    for col in ("batch", "at", "input", "step", "name", "value"):
        table.add_column(col, overflow="fold")
    for n, batch in enumerate(h["batches"]):
        rows = batch["inputs"] or [{"kind": "(start)"}]
        for item in rows:
            value = next(
                (item[k] for k in ("result", "payload", "failure", "reason") if k in item), ""
            )
            table.add_row(
                str(n),
                _when(batch["at"]),
                item["kind"],
                str(item.get("step", "")),
                str(item.get("name", "")),
                _short(value),
            )
    _console().print(table)


@workflows_app.command()
def start(
    workflow: Annotated[str, typer.Argument(metavar="WORKFLOW", help="The workflow's name.")],
    args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="ARG",
            help="Its arguments after the context, each JSON ('50.0', '{\"a\": 1}') or else "
            "taken as text ('north').",
        ),
    ] = None,
    workflow_id: Annotated[
        str | None,
        typer.Option("--id", help="The instance id (idempotent: an existing id starts nothing)."),
    ] = None,
    service: ServiceOpt = None,
    url: UrlOpt = None,
    app_dir: AppDirOpt = Path("."),
    replica: ReplicaOpt = 0,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Start an instance of WORKFLOW (exit 1 if the service has no such workflow)."""
    base = _base_url(service, url, app_dir, replica)
    body: dict[str, Any] = {"workflow": workflow, "args": [_value(a) for a in args or ()]}
    if workflow_id is not None:
        body["id"] = workflow_id
    r = _call("POST", base, "", timeout, json=body)
    if as_json:
        _print_json(r)
        return
    what = "started" if r["created"] else "already exists:"
    _console().print(f"{what} {r['id']} ({r['workflow']}, {r['status']})")


@workflows_app.command()
def signal(
    workflow_id: IdArg,
    name: Annotated[str, typer.Argument(metavar="EVENT", help="The event's name.")],
    payload: Annotated[
        str | None,
        typer.Argument(metavar="PAYLOAD", help="JSON, or else taken as text; none: null."),
    ] = None,
    service: ServiceOpt = None,
    url: UrlOpt = None,
    app_dir: AppDirOpt = Path("."),
    replica: ReplicaOpt = 0,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Send event EVENT to an instance (its ctx.wait_event(EVENT)); exit 1 if it has ended."""
    base = _base_url(service, url, app_dir, replica)
    data = json.dumps(None if payload is None else _value(payload))
    r = _call(
        "POST",
        base,
        f"/{_seg(workflow_id)}/signal/{_seg(name)}",
        timeout,
        content=data,
        headers={"content-type": "application/json"},
    )
    if as_json:
        _print_json(r)
        return
    _console().print(f"sent event {name!r} to {workflow_id}")


def _stop(kind: str, workflow_id: str, reason: str, base: str, timeout: float, js: bool) -> None:
    r = _call("POST", base, f"/{_seg(workflow_id)}/{kind}", timeout, json={"reason": reason})
    if js:
        _print_json(r)
        return
    _console().print(f"{kind} requested for {workflow_id} (status now {r['status']})")


ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (kept with the instance).")]


@workflows_app.command()
def cancel(
    workflow_id: IdArg,
    reason: ReasonOpt = "",
    service: ServiceOpt = None,
    url: UrlOpt = None,
    app_dir: AppDirOpt = Path("."),
    replica: ReplicaOpt = 0,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Ask an instance to cancel: it may compensate, then ends cancelled (exit 1 if ended)."""
    _stop(
        "cancel", workflow_id, reason, _base_url(service, url, app_dir, replica), timeout, as_json
    )


@workflows_app.command()
def terminate(
    workflow_id: IdArg,
    reason: ReasonOpt = "",
    service: ServiceOpt = None,
    url: UrlOpt = None,
    app_dir: AppDirOpt = Path("."),
    replica: ReplicaOpt = 0,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """End an instance now, running no more of its code (exit 1 if it has ended)."""
    base = _base_url(service, url, app_dir, replica)
    _stop("terminate", workflow_id, reason, base, timeout, as_json)


@workflows_app.command("replay-check")
def replay_check(
    service: ServiceOpt = None,
    url: UrlOpt = None,
    app_dir: AppDirOpt = Path("."),
    replica: ReplicaOpt = 0,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline",
            help="Do not ask the running service: open its store ([durable] in garrison.toml) "
            "and replay against the app's code in --app-dir (run this before deploying it). "
            "Needs --service.",
        ),
    ] = False,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 60.0,
) -> None:
    """Replay every running instance against the code; exit 1 if any would break.

    Online (default): the running service replays against the code it runs. Offline
    (--offline): this command replays against the code on disk, reading the store directly.
    """
    if offline:
        if url is not None:
            _fail("--offline reads the store named in garrison.toml: give --service, not --url")
        if not service:
            _fail("--offline needs --service NAME")
        body = _offline_check(service, app_dir, replica)
    else:
        body = _call("POST", _base_url(service, url, app_dir, replica), "/replay-check", timeout)
    if as_json:
        _print_json(body)
    else:
        table = Table(title=f"replay check of {body['service']}")
        for col in ("id", "workflow", "ok", "batches", "steps", "problem"):
            table.add_column(col, overflow="fold")
        for r in body["reports"]:
            table.add_row(
                r["workflow_id"],
                r["workflow"],
                "yes" if r["ok"] else "NO",
                str(r["batches"]),
                str(r["steps"]),
                r.get("error") or "",
            )
        console = _console()
        console.print(table)
        verdict = "ok" if body["ok"] else "FAILED"
        console.print(
            f"{verdict}: {body['checked']} running instance(s) checked, {body['failed']} would "
            "not replay"
        )
    if not body["ok"]:
        raise typer.Exit(EXIT_FAILED)


def _offline_check(service: str, app_dir: Path, replica: int) -> dict[str, Any]:
    import msgspec

    from garrison.durable import DurableSettings, Engine
    from garrison.service import load_service

    config = _config(app_dir)
    try:
        settings = DurableSettings.from_config(config).for_service(
            service, replica=replica, config=config
        )
        svc = load_service(config, service)
    except ConfigError as exc:
        _fail(str(exc))
    declared = svc._durable.declared
    if not declared:
        _fail(f"service {service!r} declares no workflows (@svc.workflow)", EXIT_FAILED)
    store = settings.store
    if store.startswith("sqlite:///"):
        path = Path(store.removeprefix("sqlite:///").split("?", 1)[0])
        if not path.exists():
            _fail(f"no store at {path}: the service has not run here yet", EXIT_FAILED)

    async def check() -> list[Any]:
        engine = Engine(store, config=settings.engine_config(), worker=False)
        for fn, name in declared:
            engine.register(fn, name=name)
        async with engine:
            return await engine.replay_check()

    try:
        reports = asyncio.run(check())
    except UsageError as exc:
        _fail(str(exc))
    except Exception as exc:  # the store could not be read
        _fail(f"cannot read the store {store}: {type(exc).__name__}: {exc}", EXIT_FAILED)
    failed = [r for r in reports if not r.ok]
    return {
        "service": service,
        "ok": not failed,
        "checked": len(reports),
        "failed": len(failed),
        "reports": [msgspec.to_builtins(r) for r in reports],
    }
