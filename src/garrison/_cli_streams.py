"""``garrison streams``: look at and operate an app's event log, on any backend.

``topics`` lists topics (or one topic's partitions), ``tail`` prints records, ``lag`` shows how
far consumer groups are behind, ``reset-offsets`` moves a group's committed offsets (a dry run
unless ``--execute``). The log is the one ``[streams] url`` of ``garrison.toml`` names (in
``--app-dir``, default ``.``), or ``--url``.

Exit status: 0 done; 1 the log could not be reached (a remote failure, worth retrying); 2 bad
input — a bad URL, an unknown or malformed topic or group, an offset out of range — with one
line on stderr naming what was wrong.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import typer
from rich.console import Console
from rich.table import Table

from garrison.core import ConfigError, GarrisonError, NotFound, RemoteError, UsageError, json_encode
from garrison.streams._backends import open_log
from garrison.streams._backends.base import LogBackend, StoredRecord, TopicPartition, TopicSpec

__all__ = ["streams_app"]

T = TypeVar("T")
EXIT_REMOTE = 1
EXIT_USAGE = 2

streams_app = typer.Typer(
    name="streams",
    help="Look at and operate the event log: topics, tail, lag, reset-offsets.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
"""The ``garrison streams`` command group."""

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        metavar="URL",
        help="The log (sqlite:///path.db, nats://host:port?...); default: [streams] url of "
        "garrison.toml in --app-dir.",
    ),
]
AppDirOption = Annotated[
    Path,
    typer.Option(
        "--app-dir", metavar="DIR", help="Folder of the application, holding garrison.toml."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    typer.echo(f"garrison streams: error: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)


def _log_url(url: str | None, app_dir: Path) -> str:
    """``--url``, or the app's ``[streams] url``; an SQLite log must exist already."""
    if url is None:
        from garrison.core import load_config
        from garrison.streams import StreamsSettings

        if not (app_dir / "garrison.toml").is_file():
            _fail(f"no --url and no garrison.toml in {str(app_dir)!r}: which log?")
        try:
            config = load_config(app_dir)
            url = StreamsSettings.from_config(config).resolved_url(config)
        except ConfigError as exc:
            _fail(str(exc))
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = Path(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if not path.is_file():
            _fail(f"no SQLite log at {str(path)!r} (from {url!r})")
    if parts.scheme in ("nats", "tls") and "create=" not in parts.query:
        # Looking at a log must not create one: a mistyped prefix is reported instead.
        query = f"{parts.query}&create=false" if parts.query else "create=false"
        url = urlunsplit(parts._replace(query=query))
    return url


def _run(url: str | None, app_dir: Path, work: Callable[[LogBackend], Awaitable[T]]) -> T:
    """Open the log, run ``work``, close it; errors become one line and an exit status."""
    target = _log_url(url, app_dir)

    async def main() -> T:
        log = open_log(target)
        await log.open()
        try:
            return await work(log)
        finally:
            await log.close()

    try:
        return asyncio.run(main())
    except (UsageError, NotFound) as exc:
        _fail(str(exc))
    except RemoteError as exc:
        _fail(f"the log at {target.split('?')[0]!r} failed: {exc}", EXIT_REMOTE)
    except GarrisonError as exc:
        _fail(str(exc), EXIT_REMOTE)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def _print_json(body: Any) -> None:
    sys.stdout.write(json_encode(body).decode() + "\n")


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*("-" if v is None else str(v) for v in r))
    Console().print(table)


def _spec_json(spec: TopicSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "partitions": spec.partitions,
        "retention_ms": spec.retention_ms,
        "retention_bytes": spec.retention_bytes,
    }


# -- topics ----------------------------------------------------------------------------------


@streams_app.command()
def topics(
    topic: Annotated[
        str | None, typer.Argument(metavar="[TOPIC]", help="Show this topic's partitions.")
    ] = None,
    url: UrlOption = None,
    app_dir: AppDirOption = Path("."),
    as_json: JsonOption = False,
) -> None:
    """List the topics with their partitions, retention and records; or one topic's partitions."""

    async def work(log: LogBackend) -> list[Any]:
        names = [topic] if topic is not None else await log.list_topics()
        return [await log.describe_topic(n) for n in names]

    infos = _run(url, app_dir, work)
    if topic is not None:
        (info,) = infos
        if as_json:
            parts = [
                {"partition": o.partition, "begin": o.begin, "end": o.end} for o in info.offsets
            ]
            _print_json({**_spec_json(info.spec), "offsets": parts})
            return
        rows = [[o.partition, o.begin, o.end, o.end - o.begin] for o in info.offsets]
        _table(f"topic {topic}", ["partition", "begin", "end", "records"], rows)
        return
    if as_json:
        _print_json(
            [
                {**_spec_json(i.spec), "records": sum(o.end - o.begin for o in i.offsets)}
                for i in infos
            ]
        )
        return
    rows = [
        [
            i.name,
            i.partitions,
            sum(o.end - o.begin for o in i.offsets),
            i.spec.retention_ms,
            i.spec.retention_bytes,
        ]
        for i in infos
    ]
    _table(
        f"{len(infos)} topic(s)", ["topic", "partitions", "records", "retention ms", "bytes"], rows
    )


# -- tail --------------------------------------------------------------------------------------


def _text(data: bytes | None) -> str:
    if data is None:
        return "-"
    try:
        return data.decode()
    except UnicodeDecodeError:
        return repr(data)


def _show(r: StoredRecord, as_json: bool) -> None:
    if as_json:
        _print_json(
            {
                "topic": r.topic,
                "partition": r.partition,
                "offset": r.offset,
                "timestamp": r.timestamp,
                "key": _text(r.key) if r.key is not None else None,
                "value": _text(r.value),
                "headers": r.headers,
            }
        )
        return
    ts = datetime.fromtimestamp(r.timestamp / 1000, UTC).isoformat(timespec="milliseconds")
    headers = " ".join(f"{k}={v}" for k, v in sorted(r.headers.items()))
    sys.stdout.write(
        f"{r.topic}[{r.partition}]@{r.offset} {ts} key={_text(r.key)}"
        f"{' ' + headers if headers else ''} {_text(r.value)}\n"
    )
    sys.stdout.flush()


@streams_app.command()
def tail(
    topic: Annotated[str, typer.Argument(metavar="TOPIC", help="The topic to print.")],
    partition: Annotated[
        list[int] | None,
        typer.Option("--partition", "-p", metavar="P", help="Only this partition (repeatable)."),
    ] = None,
    lines: Annotated[
        int,
        typer.Option(
            "--lines", "-n", min=0, metavar="N", help="Records per partition to start with."
        ),
    ] = 10,
    offset: Annotated[
        int | None,
        typer.Option(
            "--offset", min=0, metavar="N", help="Start at this offset in each partition."
        ),
    ] = None,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Start at the first retained record.")
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new records (Ctrl-C stops).")
    ] = False,
    count: Annotated[
        int | None,
        typer.Option(
            "--count", min=1, metavar="N", help="Stop after printing this many records in all."
        ),
    ] = None,
    url: UrlOption = None,
    app_dir: AppDirOption = Path("."),
    as_json: JsonOption = False,
) -> None:
    """Print a topic's records: the last --lines of each partition, then with -f new ones."""
    if offset is not None and from_beginning:
        _fail("--offset and --from-beginning exclude each other")

    async def work(log: LogBackend) -> None:
        info = await log.describe_topic(topic)
        chosen = sorted(set(partition)) if partition else list(range(info.partitions))
        for p in chosen:
            if not 0 <= p < info.partitions:
                raise UsageError(
                    f"--partition {p}: topic {topic!r} has partitions 0..{info.partitions - 1}"
                )
        printed = 0

        def done() -> bool:
            return count is not None and printed >= count

        async def one(p: int) -> None:
            nonlocal printed
            po = info.offsets[p]
            if offset is not None:
                pos = offset
            elif from_beginning:
                pos = po.begin
            else:
                pos = max(po.begin, po.end - lines)
            limit = None if follow or from_beginning or offset is not None else po.end
            while not done():
                if limit is not None and pos >= limit:
                    return
                recs = await log.read(topic, p, pos, max_records=500, timeout=1.0 if follow else 0)
                if not recs and not follow:
                    return
                for r in recs:
                    if done() or (limit is not None and r.offset >= limit):
                        return
                    _show(r, as_json)
                    printed += 1
                    pos = r.offset + 1

        await asyncio.gather(*(one(p) for p in chosen))

    _run(url, app_dir, work)


# -- lag -----------------------------------------------------------------------------------------


@streams_app.command()
def lag(
    group: Annotated[
        str | None, typer.Argument(metavar="[GROUP]", help="One group (default: every group).")
    ] = None,
    topic: Annotated[
        str | None, typer.Option("--topic", metavar="TOPIC", help="Only this topic.")
    ] = None,
    url: UrlOption = None,
    app_dir: AppDirOption = Path("."),
    as_json: JsonOption = False,
) -> None:
    """How far consumer groups are behind: per partition committed, end, lag and owner."""
    from garrison.service._streams_admin import group_lag

    async def work(log: LogBackend) -> list[dict[str, Any]]:
        groups = [group] if group is not None else await log.list_groups()
        return [await group_lag(log, g, topic) for g in groups]

    reports = _run(url, app_dir, work)
    if as_json:
        _print_json(reports)
        return
    if not reports:
        typer.echo("no consumer groups")
    for rep in reports:
        rows = [
            [r["topic"], r["partition"], r["committed"], r["end"], r["lag"], r["member"]]
            for r in rep["partitions"]
        ]
        title = (
            f"group {rep['group']}: generation {rep['generation']}, "
            f"{len(rep['members'])} member(s), lag {rep['lag']}"
        )
        _table(title, ["topic", "partition", "committed", "end", "lag", "member"], rows)


# -- reset-offsets ---------------------------------------------------------------------------


@streams_app.command("reset-offsets")
def reset_offsets(
    group: Annotated[str, typer.Argument(metavar="GROUP", help="The consumer group.")],
    topic: Annotated[
        str, typer.Option("--topic", metavar="TOPIC", help="The topic whose offsets to move.")
    ],
    to_earliest: Annotated[
        bool, typer.Option("--to-earliest", help="To the first retained record.")
    ] = False,
    to_latest: Annotated[
        bool, typer.Option("--to-latest", help="To the end (skip everything pending).")
    ] = False,
    to_offset: Annotated[
        int | None, typer.Option("--to-offset", metavar="N", help="To offset N.")
    ] = None,
    shift_by: Annotated[
        int | None,
        typer.Option("--shift-by", metavar="N", help="By N from the committed offset (+/-)."),
    ] = None,
    partition: Annotated[
        list[int] | None,
        typer.Option("--partition", "-p", metavar="P", help="Only this partition (repeatable)."),
    ] = None,
    execute: Annotated[
        bool, typer.Option("--execute", help="Apply the change (without it: a dry run).")
    ] = False,
    url: UrlOption = None,
    app_dir: AppDirOption = Path("."),
    as_json: JsonOption = False,
) -> None:
    """Move a group's committed offsets on a topic (a dry run unless --execute).

    Applying it starts a new generation of the group: every live member is fenced and resumes
    from the new offsets.
    """
    modes = [to_earliest, to_latest, to_offset is not None, shift_by is not None]
    if sum(modes) != 1:
        _fail("give exactly one of --to-earliest, --to-latest, --to-offset N, --shift-by N")

    async def work(log: LogBackend) -> dict[str, Any]:
        info = await log.describe_topic(topic)
        chosen = sorted(set(partition)) if partition else list(range(info.partitions))
        committed = await log.committed(group, topic)
        plan: list[dict[str, Any]] = []
        for p in chosen:
            if not 0 <= p < info.partitions:
                raise UsageError(
                    f"--partition {p}: topic {topic!r} has partitions 0..{info.partitions - 1}"
                )
            po = info.offsets[p]
            current = committed.get(TopicPartition(topic, p))
            if to_earliest:
                new = po.begin
            elif to_latest:
                new = po.end
            elif to_offset is not None:
                if not po.begin <= to_offset <= po.end:
                    raise UsageError(
                        f"--to-offset {to_offset}: out of range for {topic}[{p}], which holds "
                        f"offsets {po.begin}..{po.end} (end = after the last record)"
                    )
                new = to_offset
            else:
                assert shift_by is not None
                base = po.begin if current is None else current
                new = min(max(base + shift_by, po.begin), po.end)
            plan.append({"partition": p, "current": current, "new": new})
        generation = None
        if execute:
            offsets = {TopicPartition(topic, r["partition"]): r["new"] for r in plan}
            generation = await log.reset_offsets(group, offsets)
        return {
            "group": group,
            "topic": topic,
            "executed": execute,
            "generation": generation,
            "partitions": plan,
        }

    result = _run(url, app_dir, work)
    if as_json:
        _print_json(result)
        return
    rows = [[r["partition"], r["current"], r["new"]] for r in result["partitions"]]
    _table(f"group {group} on {topic}", ["partition", "committed", "new"], rows)
    if execute:
        typer.echo(
            f"reset: group {group} is at generation {result['generation']}; its live members "
            "were fenced and resume from these offsets"
        )
    else:
        typer.echo("dry run: nothing changed; add --execute to apply")
