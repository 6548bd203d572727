"""The group consumer: membership, heartbeats, prefetch per partition, at-least-once commits.

Theory of operation
-------------------
``start`` joins the group; a heartbeat task renews the lease every ``lease / 3`` seconds and
learns the current assignment. Whenever the generation changes (a member joined, left or died,
or an operator reset offsets), the consumer *re-syncs*: it drops what it prefetched and
re-reads every assigned partition from its committed offset (``start_from`` where none is
committed). Records it had returned but not yet committed come again: at-least-once. Kept
partitions are not fenced by the backend (see the contract), so a commit made with the old
generation for them still succeeds; moved ones are fenced and their commit is dropped.

``poll`` returns records from any assigned partitions (each partition's in order), fetching
one batch per partition ahead. ``commit`` stores, for each partition, the offset after the last
record ``poll`` returned (or explicit offsets), fenced by the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from typing import Literal

from garrison.core import InvalidInput

from ._backends.base import (
    Assignment,
    LogBackend,
    StoredRecord,
    TopicPartition,
    validate_member,
    validate_name,
)
from ._errors import Fenced, NotAMember

__all__ = ["Consumer", "default_member_id"]

log = logging.getLogger("garrison.streams")


def default_member_id() -> str:
    """``<host>-<pid>-<random>``: unique per consumer instance."""
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())
    return f"{host or 'host'}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Consumer:
    """A member of a consumer group reading its assigned partitions (at-least-once)."""

    def __init__(
        self,
        log: LogBackend,
        group: str,
        topics: Sequence[str],
        *,
        member: str | None = None,
        lease: float = 10.0,
        max_records: int = 500,
        start_from: Literal["earliest", "latest"] = "earliest",
    ) -> None:
        validate_name("group", group)
        if isinstance(topics, str) or not topics:
            raise InvalidInput(f"topics must be a non-empty list of names, got {topics!r}")
        for t in topics:
            validate_name("topic", t)
        if not isinstance(lease, int | float) or not 0 < lease <= 3600:
            raise InvalidInput(f"lease must be seconds in (0, 3600], got {lease!r}")
        if not isinstance(max_records, int) or max_records < 1:
            raise InvalidInput(f"max_records must be an int >= 1, got {max_records!r}")
        if start_from not in ("earliest", "latest"):
            raise InvalidInput(f"start_from must be 'earliest' or 'latest', got {start_from!r}")
        self.log = log
        self.group = group
        self.topics = tuple(topics)
        self.member = validate_member(member) if member is not None else default_member_id()
        self.lease = float(lease)
        self.max_records = max_records
        self.start_from = start_from
        self.generation = 0
        self.assignment: tuple[TopicPartition, ...] = ()
        self._fetch_pos: dict[TopicPartition, int] = {}
        self._consumed: dict[TopicPartition, int] = {}
        self._fetches: dict[TopicPartition, asyncio.Task[list[StoredRecord]]] = {}
        self._hb_task: asyncio.Task[None] | None = None
        self._resync = asyncio.Event()
        self._wake = asyncio.Event()
        self._sync_lock = asyncio.Lock()
        self.rebalances = 0
        """How many times the generation changed under this member."""

    @property
    def sync_lock(self) -> asyncio.Lock:
        """Held by a re-sync; hold it while processing a batch so that no re-sync (which
        re-reads committed offsets) interleaves with the batch's commit."""
        return self._sync_lock

    # -- membership ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the group and start heartbeating."""
        a = await self.log.join(self.group, self.member, self.topics, lease=self.lease)
        await self._apply(a)
        self._hb_task = asyncio.get_running_loop().create_task(self._heartbeats())

    async def stop(self) -> None:
        """Stop fetching and heartbeating, and leave the group (its partitions move at once)."""
        if self._hb_task is not None:
            self._hb_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._hb_task
            self._hb_task = None
        self._cancel_fetches(list(self._fetches))
        with contextlib.suppress(Exception):  # a dead log: our lease will expire instead
            await self.log.leave(self.group, self.member)

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await self.heartbeat()
            except Exception as exc:  # transient: the next beat retries
                log.warning("streams consumer %s heartbeat failed: %r", self.member, exc)

    async def heartbeat(self) -> Assignment:
        """Renew the lease now (rejoining if it expired) and re-sync if the generation moved."""
        try:
            a = await self.log.heartbeat(self.group, self.member, lease=self.lease)
        except NotAMember:
            a = await self.log.join(self.group, self.member, self.topics, lease=self.lease)
        await self._apply(a)
        return a

    async def _apply(self, a: Assignment) -> None:
        async with self._sync_lock:
            if a.generation == self.generation and a.partitions == self.assignment:
                return
            positions = await self._committed_positions(a.partitions)
            if self.generation:
                self.rebalances += 1
            self.generation = a.generation
            self.assignment = a.partitions
            self._cancel_fetches(list(self._fetches))
            self._fetch_pos = dict(positions)
            self._consumed = dict(positions)
            self._resync.set()
            self._wake.set()

    async def _committed_positions(
        self, tps: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int]:
        committed = await self.log.committed(self.group)
        out: dict[TopicPartition, int] = {}
        for tp in tps:
            pos = committed.get(tp)
            if pos is None:
                po = (await self.log.offsets(tp.topic))[tp.partition]
                pos = po.begin if self.start_from == "earliest" else po.end
            out[tp] = pos
        return out

    async def rewind(self, tps: Sequence[TopicPartition] | None = None) -> None:
        """Read ``tps`` (default: every assigned partition) again from their committed offsets:
        after a failed commit, so that nothing ``poll`` returned since is skipped."""
        async with self._sync_lock:
            todo = [tp for tp in (self.assignment if tps is None else tps) if tp in self._fetch_pos]
            positions = await self._committed_positions(todo)
            self._cancel_fetches(todo)
            self._fetch_pos.update(positions)
            self._consumed.update(positions)

    def _cancel_fetches(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            task = self._fetches.pop(tp, None)
            if task is not None:
                task.cancel()

    # -- reading ---------------------------------------------------------------------------------

    def _ensure_fetches(self) -> None:
        for tp in self.assignment:
            if tp not in self._fetches:
                self._fetches[tp] = asyncio.get_running_loop().create_task(
                    self.log.read(
                        tp.topic,
                        tp.partition,
                        self._fetch_pos[tp],
                        max_records=self.max_records,
                        timeout=max(0.05, self.lease / 3),
                    )
                )

    async def poll(self, timeout: float = 1.0) -> dict[TopicPartition, list[StoredRecord]]:
        """Records from the assigned partitions (each in order), waiting up to ``timeout``
        seconds for some; ``{}`` if none came."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._resync.clear()
            self._ensure_fetches()
            tasks = list(self._fetches.values())
            left = deadline - loop.time()
            wake = loop.create_task(self._wake.wait())
            try:
                if tasks:
                    await asyncio.wait(
                        [*tasks, wake], timeout=max(0.0, left), return_when=asyncio.FIRST_COMPLETED
                    )
                else:
                    await asyncio.wait([wake], timeout=max(0.0, left))
            finally:
                wake.cancel()
                self._wake.clear()
            out: dict[TopicPartition, list[StoredRecord]] = {}
            if not self._resync.is_set():
                for tp, task in list(self._fetches.items()):
                    if not task.done():
                        continue
                    del self._fetches[tp]
                    if task.cancelled():
                        continue
                    exc = task.exception()
                    if exc is not None:
                        log.warning("streams read of %s failed: %r", tp, exc)
                        continue
                    recs = task.result()
                    if recs:
                        self._fetch_pos[tp] = recs[-1].offset + 1
                        self._consumed[tp] = recs[-1].offset + 1
                        out[tp] = recs
            if out or loop.time() >= deadline:
                return out

    def position(self, tp: TopicPartition) -> int | None:
        """The offset after the last record ``poll`` returned from ``tp`` (None: not assigned)."""
        return self._consumed.get(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` on (e.g. to re-process after a failure)."""
        if tp not in self._fetch_pos:
            raise InvalidInput(f"{tp.topic}[{tp.partition}] is not assigned to this member")
        self._cancel_fetches([tp])
        self._fetch_pos[tp] = offset
        self._consumed[tp] = offset

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> bool:
        """Commit ``offsets`` (default: the positions of everything ``poll`` returned). False
        if the commit was fenced by a rebalance (the consumer then re-syncs; the records come
        again)."""
        todo = dict(self._consumed if offsets is None else offsets)
        if not todo:
            return True
        try:
            await self.log.commit(self.group, self.member, self.generation, todo)
        except Fenced:
            await self.heartbeat()
            return False
        return True
