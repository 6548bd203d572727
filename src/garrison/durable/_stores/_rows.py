"""What the SQL stores (SQLite, PostgreSQL) share: the instance columns they read, in one
order, and how a row of them becomes a :class:`WorkflowInfo` (a schedule row a
:class:`Schedule`); failures stored as msgpack."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from garrison.durable._errors import FailureInfo

from .base import Schedule, Status, WorkflowInfo

__all__ = ["INFO_COLS", "fdec", "fenc", "info_from_row", "schedule_from_row"]

fenc = msgspec.msgpack.Encoder()
"""Encodes a :class:`FailureInfo` for the ``failure`` column."""
fdec = msgspec.msgpack.Decoder(FailureInfo)
"""Decodes the ``failure`` column."""
INFO_COLS = (
    "id, workflow, status, run_id, runs, args, created_at, updated_at, closed_at, ready_at, "
    "owner, epoch, steps, parent_id, result, failure, blocked"
)
"""The instance columns :func:`info_from_row` reads, in its order."""


def info_from_row(row: Sequence[Any]) -> WorkflowInfo:
    """The :class:`WorkflowInfo` of a row selected with :data:`INFO_COLS`."""
    return WorkflowInfo(
        id=row[0],
        workflow=row[1],
        status=Status(row[2]),
        run_id=row[3],
        runs=row[4],
        args=row[5],
        created_at=row[6],
        updated_at=row[7],
        closed_at=row[8],
        ready_at=row[9],
        owner=row[10],
        epoch=row[11],
        steps=row[12],
        parent_id=row[13],
        result=row[14],
        failure=None if row[15] is None else fdec.decode(row[15]),
        blocked=row[16],
    )


def schedule_from_row(row: Sequence[Any]) -> Schedule:
    """The :class:`Schedule` of a row (name, cron, tz, workflow, args, next_at, last_at)."""
    return Schedule(
        name=row[0],
        cron=row[1],
        tz=row[2],
        workflow=row[3],
        args=row[4],
        next_at=row[5],
        last_at=row[6],
    )
