"""The operator API of a service's streams, under ``/_garrison/streams``: lag and throughput.

========================================  ===================================================
``GET /_garrison/streams/lag``            per consumer group of this service's processors
                                          (or ``?group=NAME``, any group of the log, and
                                          ``&topic=NAME``): per partition the committed offset,
                                          the end, the lag and the owning member; the totals
``GET /_garrison/streams/throughput``     per processor: records processed, dead-lettered,
                                          fenced batches (counters) and their rates since the
                                          previous call; per input topic the append rate
========================================  ===================================================

Rates are measured between two calls (the dashboard polls), so the first call reports counters
and ``null`` rates. A service that runs no streams answers 404; an unknown group or topic 404,
a malformed name 422 — JSON bodies naming what was wrong, like the rest of ``/_garrison/``.
:func:`group_lag` is also what ``garrison streams lag`` prints.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from garrison.core import GarrisonError, InvalidInput, NotFound, UsageError, json_encode
from garrison.streams._backends.base import LogBackend, TopicPartition, validate_name
from garrison.streams._errors import TopicNotFound

from ._admin import ADMIN_PREFIX
from ._http_errors import error_response

if TYPE_CHECKING:
    from ._service import Service

__all__ = ["group_lag", "streams_admin_routes"]

PREFIX = f"{ADMIN_PREFIX}streams"


async def group_lag(log: LogBackend, group: str, topic: str | None = None) -> dict[str, Any]:
    """The lag of ``group`` (on ``topic`` only, if given): per partition and in total.

    A partition never committed counts from the first retained record, as does one whose
    committed offset retention has passed. ``GroupNotFound`` / ``TopicNotFound`` /
    ``InvalidInput`` for unknown or malformed names.
    """
    validate_name("group", group)
    if topic is not None:
        validate_name("topic", topic)
    info = await log.describe_group(group)
    committed = await log.committed(group, topic)
    owners = {tp: m.member for m in info.members for tp in m.partitions}
    topics = {t for m in info.members for t in m.topics} | {tp.topic for tp in committed}
    if topic is not None:
        await log.describe_topic(topic)  # TopicNotFound for a topic that does not exist
        topics = {topic}
    rows = []
    for t in sorted(topics):
        try:
            offsets = await log.offsets(t)
        except TopicNotFound:
            continue  # deleted since the group committed on it
        for po in offsets:
            tp = TopicPartition(t, po.partition)
            c = committed.get(tp)
            start = po.begin if c is None else max(c, po.begin)
            rows.append(
                {
                    "topic": t,
                    "partition": po.partition,
                    "begin": po.begin,
                    "end": po.end,
                    "committed": c,
                    "lag": max(po.end - start, 0),
                    "member": owners.get(tp),
                }
            )
    return {
        "group": group,
        "generation": info.generation,
        "members": [m.member for m in info.members],
        "lag": sum(r["lag"] for r in rows),
        "partitions": rows,
    }


def _json(body: Any, status: int = 200) -> Response:
    return Response(json_encode(body), status_code=status, media_type="application/json")


class _Rates:
    """Per-name rates between two calls: ``rate(name, count)`` -> per second, or None first."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}

    def rate(self, name: str, count: int, now: float) -> float | None:
        prev = self._last.get(name)
        self._last[name] = (now, count)
        if prev is None or now <= prev[0]:
            return None
        return round((count - prev[1]) / (now - prev[0]), 3)


def streams_admin_routes(svc: Service) -> list[Route]:
    """The streams operator routes of ``svc``."""
    rates = _Rates()

    def running() -> Any:
        try:
            return svc.streams
        except UsageError as exc:
            raise NotFound(str(exc)) from None

    async def lag(request: Request) -> Response:
        try:
            app = running()
            unknown = set(request.query_params) - {"group", "topic"}
            if unknown:
                raise InvalidInput(
                    f"unknown query parameter(s) {sorted(unknown)}; expected group, topic",
                    [{"loc": ["query", k], "msg": "unknown parameter"} for k in sorted(unknown)],
                )
            group = request.query_params.get("group")
            topic = request.query_params.get("topic")
            groups = [group] if group is not None else sorted({p.group for p in app.processors})
            reports = [await group_lag(app.log, g, topic) for g in groups]
        except GarrisonError as exc:
            return error_response(exc)
        return _json({"service": svc.name, "groups": reports})

    async def throughput(request: Request) -> Response:
        try:
            app = running()
            now = time.monotonic()
            procs = []
            for p in app.processors:
                name = f"{p.group}/{p.consumer.member}"
                procs.append(
                    {
                        "group": p.group,
                        "member": p.consumer.member,
                        "topics": list(p.topics),
                        "generation": p.consumer.generation,
                        "processed": p.processed,
                        "dead_letters": p.dead_letters,
                        "fenced": p.fenced,
                        "processed_per_s": rates.rate(f"p:{name}", p.processed, now),
                    }
                )
            topics = []
            for t in sorted({t for p in app.processors for t in p.topics}):
                try:
                    end = sum(po.end for po in await app.log.offsets(t))
                except TopicNotFound:
                    continue
                topics.append(
                    {"topic": t, "end": end, "appended_per_s": rates.rate(f"t:{t}", end, now)}
                )
        except GarrisonError as exc:
            return error_response(exc)
        return _json({"service": svc.name, "processors": procs, "topics": topics})

    return [
        Route(f"{PREFIX}/lag", lag, methods=["GET"]),
        Route(f"{PREFIX}/throughput", throughput, methods=["GET"]),
    ]
