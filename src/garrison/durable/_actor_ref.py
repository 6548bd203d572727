"""``ActorRef``: the address of one actor, and how a message to it is sent.

A signal is posted (durable) and handed to the local activation if this process hosts the key.
A call is posted with a recorded reply and waits for it: from the local turn when the actor is
hosted here, else by reading the store every ``poll_interval``. A call without an id to an
actor that is live here is handed straight to the activation (one commit instead of two; see
``ActorRef.call``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from garrison.core import UsageError

from ._actor import ActorError, ActorType, actor_name
from ._errors import FailureInfo
from ._stores.actors_base import ActorMessage, NewMessage, Reply

if TYPE_CHECKING:
    from ._actor_runtime import ActorSystem

__all__ = ["ActorRef", "is_actor"]

A = TypeVar("A")
_fdec = msgspec.msgpack.Decoder(FailureInfo)


def is_actor(cls: Any) -> bool:
    """Whether ``cls`` is an ``@actor`` class."""
    try:
        actor_name(cls)
    except UsageError:
        return False
    return True


class ActorRef(Generic[A]):
    """The address of one actor: ``system.ref(Battery, "b-17")``."""

    __slots__ = ("_system", "key", "type")

    def __init__(self, system: ActorSystem, t: ActorType, key: str) -> None:
        self._system = system
        self.type = t
        """The actor type."""
        self.key = key
        """The actor key."""

    def __repr__(self) -> str:
        return f"ActorRef({self.type.name!r}, {self.key!r})"

    def _message(
        self, method: str, args: tuple[Any, ...], msg_id: str | None, record: bool
    ) -> NewMessage:
        if msg_id is not None and (not isinstance(msg_id, str) or not msg_id or len(msg_id) > 256):
            raise UsageError(
                f"a message id must be a non-empty string of at most 256 chars: {msg_id!r}"
            )
        s = self._system
        data = self.type.encode_call(method, args, s.config.max_payload_bytes)
        return NewMessage(
            actor=self.type.name,
            key=self.key,
            msg_id=msg_id or s.new_message_id(),
            method=method,
            args=data,
            record=record,
            at=s.clock.time(),
        )

    async def signal(self, method: str, *args: Any, id: str | None = None) -> None:
        """Send ``method(*args)`` without waiting for it to be handled (fire-and-forget); durable
        before this returns. With ``id``, sending the same id again is a no-op (its outcome is
        kept for ``reply_retention``)."""
        s = self._system
        s._check_open()
        await s.post([self._message(method, args, id, id is not None)])

    async def call(
        self, method: str, *args: Any, id: str | None = None, timeout: float | None = None
    ) -> Any:
        """Send ``method(*args)`` and return its result (decoded with the handler's return
        annotation); :class:`ActorError` if the handler raised; ``TimeoutError`` if no reply
        came within ``timeout`` seconds (the message is still handled). A returned result means
        the state change is committed. With ``id`` the call is durable before it is handled and
        a retry with the same id (after a crash of the caller or the worker) returns the
        recorded outcome instead of running again."""
        s = self._system
        s._check_open()
        msg = self._message(method, args, id, True)
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        here = s.local(self.type.name, self.key) if id is None else None
        if here is not None:
            # The actor is live here: hand the call over without an inbox row, so it costs one
            # commit (the turn) instead of two. The caller waits for the reply anyway, so the
            # message need not be durable first; if this process dies before the turn commits,
            # neither the change nor a reply happened. Calls with an id take the durable path.
            s._calls[msg.msg_id] = fut
            direct = ActorMessage(seq=0, msg_id=msg.msg_id, method=method, args=msg.args)
            here.direct.append((here.known_seq, direct))
            s._wake(here)
            return self._outcome(method, await s.wait_reply(msg.msg_id, fut, timeout))
        s._calls[msg.msg_id] = fut  # before the post: a fast local turn resolves it
        try:
            (res,) = await s.post([msg])
        except BaseException:
            s._calls.pop(msg.msg_id, None)
            raise
        reply = res.reply if res.reply is not None else await s.wait_reply(msg.msg_id, fut, timeout)
        s._calls.pop(msg.msg_id, None)
        return self._outcome(method, reply)

    def _outcome(self, method: str, reply: Reply) -> Any:
        if reply.ok:
            return self.type.handler(method).decode_result(reply.data)
        failure = _fdec.decode(reply.data)
        raise ActorError(
            f"actor {self.type.name}/{self.key} {method} failed: {failure.describe()}",
            failure,
            actor=self.type.name,
            key=self.key,
            method=method,
        )

    async def state(self) -> Any:
        """The committed state of this actor."""
        return await self._system.state(self.type.cls, self.key)
