"""Reading a JetStream stream from a sequence: pull requests on an ephemeral consumer.

Theory of operation. A :class:`Cursor` owns one ephemeral pull consumer (no acks, in memory,
removed by the server after ``inactive_threshold`` if this process dies) and one inbox
subscription. Each pull request gets its own reply subject (``<inbox>.<n>``), so the status
that ends a request (404 no messages, 408 expired) is told apart from a late status of an
earlier one; data messages arrive in stream order whatever request they answer. At most one
request is outstanding at a time, which keeps the accounting exact:

1. ``no_wait`` request for up to ``max_records``: the server sends what it has, then a status
   (or nothing more when the batch is full);
2. only when that returned nothing and the caller may wait: a request for ONE message with
   ``expires = timeout``. It ends with the first new message (then step 1 runs again for the
   rest) or with a 408 when the time is up. Waiting is the server's, not a poll loop of ours,
   and no request outlives the read that made it.

A cursor knows the next sequence it will deliver, so consecutive reads reuse it; a read from
elsewhere gets a new cursor (see :class:`CursorPool`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js import JetStreamContext

__all__ = ["Cursor", "CursorPool", "Delivered", "parse_ack_reply", "scan"]

_MARGIN = 2.0
"""Seconds past a request's expiry to wait for the server's 408 before giving the cursor up."""

Delivered = tuple[int, int, str, bytes, "dict[str, str] | None"]
"""(stream sequence, server timestamp in ns, subject, data, headers) of a delivered message."""


def parse_ack_reply(reply: str) -> tuple[int, int]:
    """The stream sequence and timestamp (ns) from a JetStream delivery's reply subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` (9 tokens), or
    the 12+ token form with domain and account hash.
    """
    tokens = reply.split(".")
    base = 2 if len(tokens) == 9 else 4
    return int(tokens[base + 3]), int(tokens[base + 5])


class Cursor:
    """One ephemeral pull consumer read in order (see the module docstring)."""

    def __init__(self, nc: Client, js: JetStreamContext, stream: str, next_seq: int) -> None:
        self._nc = nc
        self._js = js
        self.stream = stream
        self.next_seq = next_seq
        """The sequence the next delivered message will have at least."""
        self.lock = asyncio.Lock()
        self.broken = False
        """Set when the server stopped answering it: it is closed, never reused."""
        self.inactive = 60.0
        self.last_used = time.monotonic()
        self._consumer = ""
        self._inbox = ""
        self._sub: Subscription | None = None
        self._n = 0

    async def start(self, config: ConsumerConfig) -> int:
        """Create the consumer and subscribe; the number of messages it has pending."""
        self.inactive = float(config.inactive_threshold or self.inactive)
        info = await self._js.add_consumer(self.stream, config)
        self._consumer = info.name
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(f"{self._inbox}.*")
        return int(info.num_pending or 0)

    @classmethod
    def config_from(cls, seq: int, inactive: float) -> ConsumerConfig:
        """A consumer that starts at ``seq`` (1-based stream sequence)."""
        return ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(seq, 1),
            inactive_threshold=inactive,
            mem_storage=True,
            num_replicas=1,
        )

    async def close(self) -> None:
        """Unsubscribe and delete the consumer (best effort: the server expires it anyway)."""
        self.broken = True
        sub, self._sub = self._sub, None
        try:
            if sub is not None:
                await sub.unsubscribe()
            if self._consumer and not self._nc.is_closed:
                await self._js.delete_consumer(self.stream, self._consumer)
        except Exception:
            pass

    async def _request(self, body: dict[str, Any]) -> str:
        self._n += 1
        reply = f"{self._inbox}.{self._n}"
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self._consumer}"
        await self._nc.publish(subject, json.dumps(body).encode(), reply=reply)
        return reply

    async def _collect(self, reply: str, batch: int, out: list[Delivered], wait: float) -> bool:
        """Receive the answer to request ``reply`` into ``out``; False if it never ended."""
        assert self._sub is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        got = 0
        while got < batch:
            try:
                msg: Msg = await self._sub.next_msg(timeout=max(deadline - loop.time(), 0.001))
            except TimeoutError:
                self.broken = True
                return False
            headers = msg.headers
            if not msg.data and headers and "Status" in headers:
                status = headers["Status"]
                if msg.subject == reply and status != "100":
                    if status not in ("404", "408"):
                        self.broken = True  # 409 consumer deleted, leadership change ...
                    return True  # this request is over
                continue  # a heartbeat, or the status of an earlier request
            seq, ts = parse_ack_reply(msg.reply)
            out.append((seq, ts, msg.subject, msg.data, headers))
            self.next_seq = seq + 1
            got += 1
        return True

    async def fetch(self, max_records: int, timeout: float) -> list[Delivered]:
        """Up to ``max_records`` messages; waits up to ``timeout`` s when there are none."""
        out: list[Delivered] = []
        self.last_used = time.monotonic()
        reply = await self._request({"batch": max_records, "no_wait": True})
        if not await self._collect(reply, max_records, out, _MARGIN + 3.0):
            return out
        if out or timeout <= 0:
            return out
        reply = await self._request({"batch": 1, "expires": int(timeout * 1e9)})
        if not await self._collect(reply, 1, out, timeout + _MARGIN):
            return out
        if out and max_records > 1:
            reply = await self._request({"batch": max_records - 1, "no_wait": True})
            await self._collect(reply, max_records - 1, out, _MARGIN + 3.0)
        return out

    def stale(self) -> bool:
        """Idle long enough that the server may have removed the consumer: it would ignore
        our requests silently, so the cursor is replaced instead."""
        return time.monotonic() - self.last_used > self.inactive / 2

    async def drain(self, expected: int) -> list[Delivered]:
        """Everything the consumer has (``expected`` from :meth:`start`), for scans."""
        out: list[Delivered] = []
        while len(out) < expected:
            before = len(out)
            want = min(expected - len(out), 10_000)
            reply = await self._request({"batch": want, "no_wait": True})
            if not await self._collect(reply, want, out, _MARGIN + 3.0) or len(out) == before:
                break
        return out


class CursorPool:
    """Cursors per stream, reused by the read that continues where the last one stopped.

    A few cursors per stream cover several readers of one partition in one process (two group
    members in a test, a tail beside a processor); the least recently used goes beyond that.
    """

    def __init__(self, make: Callable[[str, int], Cursor], per_stream: int = 4) -> None:
        self._make = make
        self._per_stream = per_stream
        self._cursors: dict[str, list[Cursor]] = {}

    def take(self, stream: str, seq: int) -> tuple[Cursor, bool]:
        """A cursor at ``seq`` (its lock not yet held) and whether it is new (to start)."""
        cursors = self._cursors.setdefault(stream, [])
        for c in cursors:
            if not c.lock.locked() and c.stale():
                c.broken = True
            if c.next_seq == seq and not c.broken and not c.lock.locked():
                cursors.remove(c)
                cursors.append(c)  # most recently used last
                return c, False
        c = self._make(stream, seq)
        cursors.append(c)
        return c, True

    def evict(self, stream: str) -> list[Cursor]:
        """The cursors to close: broken ones, and the oldest beyond the limit."""
        cursors = self._cursors.get(stream, [])
        idle = [c for c in cursors if not c.lock.locked()]
        doomed = [c for c in idle if c.broken]
        extra = len(cursors) - len(doomed) - self._per_stream
        for c in idle:
            if extra <= 0:
                break
            if c not in doomed:
                doomed.append(c)
                extra -= 1
        for c in doomed:
            cursors.remove(c)
        return doomed

    def drop_stream(self, stream: str) -> list[Cursor]:
        """Every cursor of ``stream`` (a deleted topic)."""
        return self._cursors.pop(stream, [])

    def all(self) -> list[Cursor]:
        """Every cursor (to close)."""
        out = [c for cs in self._cursors.values() for c in cs]
        self._cursors.clear()
        return out


async def scan(nc: Client, js: JetStreamContext, stream: str, subjects: str) -> dict[str, Any]:
    """The last message per subject matching ``subjects`` that is not a KV delete or purge
    marker: subject -> (sequence, data). One consumer, read to its end, removed."""
    cursor = Cursor(nc, js, stream, 1)
    config = Cursor.config_from(1, 30.0)
    config.deliver_policy = DeliverPolicy.LAST_PER_SUBJECT
    config.opt_start_seq = None
    config.filter_subject = subjects
    try:
        got = await cursor.drain(await cursor.start(config))
    finally:
        await cursor.close()
    out: dict[str, Any] = {}
    for seq, _ts, subject, data, headers in got:
        if headers and headers.get("KV-Operation") in ("DEL", "PURGE"):
            continue
        out[subject] = (seq, data)
    return out
