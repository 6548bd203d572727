"""Actors as user code sees them: the ``@actor`` decorator, an actor type's handlers, the
``ActorContext`` a handler uses (``self.ctx``), settings and errors.

An actor is a class with a typed ``state`` attribute (a msgspec Struct, a dataclass or any type
msgspec encodes, default-constructed on first activation) and ``async`` methods as handlers.
What a handler does through ``self.ctx`` (messages it sends, reminders it sets or cancels) is
collected as the turn's *effects* and committed with the new state in one transaction; nothing
leaves the actor before that commit.
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

import msgspec

from garrison.core import ConfigError, UsageError, new_id

from ._codec import Decode, arg_decoders, encode, encode_args, return_decoder
from ._errors import FailureInfo, PayloadTooLarge, WorkflowError
from ._stores.actors_base import NewMessage, Reminder, WorkflowEvent, WorkflowStart

if TYPE_CHECKING:
    from ._actor_runtime import ActorSystem

__all__ = [
    "ActorConfig",
    "ActorContext",
    "ActorError",
    "ActorType",
    "StateTooLarge",
    "actor",
    "actor_name",
]

C = TypeVar("C", bound=type)
_ATTR = "__garrison_actor__"
REMINDER_HANDLER = "on_reminder"
_MAX_KEY = 256


class ActorError(WorkflowError):
    """An actor's handler raised while handling a call: the turn was rolled back (state
    unchanged, nothing sent), the message consumed and this outcome recorded. ``failure`` is the
    handler's exception; ``actor``, ``key`` and ``method`` say where."""

    def __init__(
        self,
        message: str,
        failure: FailureInfo | None = None,
        *,
        actor: str = "",
        key: str = "",
        method: str = "",
    ) -> None:
        self.actor = actor
        self.key = key
        self.method = method
        super().__init__(message, failure)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.failure))


class StateTooLarge(PayloadTooLarge):
    """An actor's encoded state exceeds ``ActorConfig.max_state_bytes``: the turn that grew it
    fails (and is rolled back)."""


class ActorConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How an :class:`ActorSystem` runs actors in this process."""

    worker_id: str | None = None
    """This worker's name in leases (None: a fresh id per process; hosted by an Engine: the
    engine's). Give a stable one only to a single process at a time."""
    lease_seconds: float = 30.0
    """How long a claim on an actor key lasts without renewal (renewed every third of it)."""
    poll_interval: float = 1.0
    """Longest pause between looks at the store for work from elsewhere and due reminders."""
    idle_timeout: float = 60.0
    """An actor with nothing to do this long is deactivated: dropped from memory, lease released."""
    max_batch: int = 256
    """Most messages of one key handled in one turn (one commit) while more are queued."""
    max_state_bytes: int = 1024 * 1024
    """Largest encoded state of one actor."""
    max_payload_bytes: int = 2 * 1024 * 1024
    """Largest encoded argument list, result or reminder payload."""
    max_reminders: int = 100
    """Most reminders one actor key may hold."""
    reply_retention: float = 86_400.0
    """How long a recorded reply (calls, signals sent with an id, failures) is kept, so that a
    caller retrying with the same id gets it instead of a second execution."""
    handler_timeout: float | None = None
    """Seconds a handler may run; over it the handler fails (None: no limit)."""

    def __post_init__(self) -> None:
        seconds = ("lease_seconds", "poll_interval", "idle_timeout", "reply_retention")
        for key in seconds:
            _positive(getattr(self, key), key)
        if self.handler_timeout is not None:
            _positive(self.handler_timeout, "handler_timeout")
        for key in ("max_batch", "max_state_bytes", "max_payload_bytes", "max_reminders"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"expected an integer >= 1, got {value!r}", key=key)


def _positive(value: Any, key: str) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ConfigError(f"expected seconds > 0, got {value!r}", key=key)


# -- the decorator and actor types -----------------------------------------------------------


@overload
def actor(cls: C, /) -> C: ...
@overload
def actor(*, name: str | None = None) -> Callable[[C], C]: ...
def actor(cls: C | None = None, /, *, name: str | None = None) -> C | Callable[[C], C]:
    """Make a class an actor type, stored under ``name`` (default: its ``__qualname__``)::

        @actor
        class Battery:
            state: BatteryState                      # default-constructed on first activation

            async def report(self, reading: Reading) -> None:
                self.state.soc = reading.soc
                if reading.soc < 0.1:
                    self.ctx.send(Dispatcher, self.ctx.key[:4], "low", self.ctx.key)

    The class is checked at once (a typed ``state``, async public methods); a problem raises
    :class:`UsageError` naming it.
    """
    if name is not None and (not isinstance(name, str) or not name):
        raise UsageError(f"@actor: name must be a non-empty string, got {name!r}")

    def mark(c: C) -> C:
        if not inspect.isclass(c):
            raise UsageError(f"@actor decorates a class, got {c!r}")
        setattr(c, _ATTR, name or c.__qualname__)
        ActorType.of(c)  # validate now, at import, not at the first message
        return c

    return mark if cls is None else mark(cls)


def actor_name(cls: type | str) -> str:
    """The name an actor type is stored under."""
    if isinstance(cls, str):
        return cls
    value = getattr(cls, _ATTR, None)
    if not isinstance(value, str):
        raise UsageError(f"{getattr(cls, '__qualname__', cls)!r} is not an @actor class")
    return value


@dataclass(frozen=True)
class Handler:
    """One async method of an actor type and how its arguments and result are coded."""

    name: str
    fn: Callable[..., Any]
    signature: inspect.Signature
    decode_fixed: list[Decode]
    decode_star: Decode | None
    decode_result: Decode
    arity: tuple[int, int | None] = (0, None)
    """(required, most) positional arguments after ``self``; most is None with ``*args``."""

    def decode_args(self, parts: list[bytes]) -> list[Any]:
        """The arguments of a stored message."""
        out = []
        for i, part in enumerate(parts):
            if i < len(self.decode_fixed):
                out.append(self.decode_fixed[i](part))
            elif self.decode_star is not None:
                out.append(self.decode_star(part))
            else:
                raise UsageError(f"handler {self.name!r} takes {len(self.decode_fixed)} arguments")
        return out


@dataclass(frozen=True)
class ActorType:
    """A validated actor class: its name, state type and handlers."""

    name: str
    cls: type
    state_type: Any
    handlers: dict[str, Handler] = field(default_factory=dict)
    encode_state: Callable[[Any], bytes] = msgspec.msgpack.encode
    decode_state: Callable[[bytes], Any] = msgspec.msgpack.decode

    @classmethod
    def of(cls, actor_cls: type) -> ActorType:
        """Validate an ``@actor`` class (cached on the class)."""
        cached = actor_cls.__dict__.get("__garrison_actor_type__")
        if isinstance(cached, ActorType):
            return cached
        name = actor_name(actor_cls)
        try:
            hints = typing.get_type_hints(actor_cls)
        except Exception as exc:
            raise UsageError(f"actor {name!r}: cannot resolve its annotations: {exc}") from None
        if "state" not in hints:
            raise UsageError(
                f"actor {name!r} needs a typed state attribute (``state: MyState``, a msgspec "
                "Struct or dataclass with defaults)"
            )
        tp = hints["state"]
        try:
            dec = msgspec.msgpack.Decoder(tp)
            tp()
        except Exception as exc:
            raise UsageError(
                f"actor {name!r}: its state type {tp!r} must be msgspec-encodable and "
                f"constructible without arguments ({exc})"
            ) from None
        handlers = {}
        for attr, fn in inspect.getmembers(actor_cls, inspect.isfunction):
            if attr.startswith("_"):
                continue
            if not inspect.iscoroutinefunction(fn):
                raise UsageError(
                    f"actor {name!r}: handler {attr!r} must be an async method (or start with _)"
                )
            fixed, star = arg_decoders(fn, skip=1)
            sig = inspect.signature(fn)
            handlers[attr] = Handler(attr, fn, sig, fixed, star, return_decoder(fn), _arity(sig))
        if not handlers:
            raise UsageError(f"actor {name!r} has no async handler methods")
        enc = msgspec.msgpack.Encoder()
        t = ActorType(name, actor_cls, tp, handlers, enc.encode, dec.decode)
        actor_cls.__garrison_actor_type__ = t  # type: ignore[attr-defined]
        return t

    def handler(self, method: str) -> Handler:
        """A handler messages may name (``on_reminder`` is for reminders only)."""
        h = self.handlers.get(method) if isinstance(method, str) else None
        if h is None or method == REMINDER_HANDLER:
            callable_ = sorted(m for m in self.handlers if m != REMINDER_HANDLER)
            raise UsageError(
                f"actor {self.name!r} has no handler {method!r}; handlers: {', '.join(callable_)}"
            )
        return h

    def encode_call(self, method: str, args: tuple[Any, ...], limit: int) -> bytes:
        """Check ``args`` against the handler's signature and encode them."""
        h = self.handler(method)
        least, most = h.arity
        if not least <= len(args) <= (len(args) if most is None else most):
            try:  # the fast check failed: let the signature say what is wrong
                h.signature.bind(None, *args)
            except TypeError as exc:
                raise UsageError(f"actor {self.name!r} handler {method!r}: {exc}") from None
        return encode_args(args, f"actor {self.name!r} message {method!r}", limit)


def _arity(sig: inspect.Signature) -> tuple[int, int | None]:
    params = list(sig.parameters.values())[1:]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    required_kw = [p for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if required_kw:  # messages carry positional arguments only: never satisfiable
        return (len(positional) + 1, len(positional))
    star = any(p.kind is p.VAR_POSITIONAL for p in params)
    return len(required), None if star else len(positional)


def check_key(key: Any) -> str:
    """An actor key: a non-empty string of at most 256 characters."""
    if not isinstance(key, str) or not key or len(key) > _MAX_KEY:
        raise UsageError(f"an actor key must be a non-empty string of at most 256 chars: {key!r}")
    return key


def _seconds(value: float | timedelta, what: str) -> float:
    s = value.total_seconds() if isinstance(value, timedelta) else value
    if not isinstance(s, int | float) or isinstance(s, bool) or not math.isfinite(s) or s < 0:
        raise UsageError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return float(s)


# -- the context a handler sees --------------------------------------------------------------


@dataclass
class Effects:
    """What one handler invocation asked for; kept only if it succeeds."""

    outbox: list[NewMessage] = field(default_factory=list)
    sets: dict[str, Reminder] = field(default_factory=dict)
    cancels: set[str] = field(default_factory=set)
    events: list[WorkflowEvent] = field(default_factory=list)
    starts: list[WorkflowStart] = field(default_factory=list)


class ActorContext:
    """``self.ctx`` inside an actor: who it is, and the effects committed with its state.

    ``send`` and reminders take effect only if the handler returns normally, in the same
    transaction as the new state: exactly once together with the state change.
    """

    def __init__(self, system: ActorSystem, actor_type: ActorType, key: str) -> None:
        self._system = system
        self._type = actor_type
        self.actor = actor_type.name
        """This actor's type name."""
        self.key = key
        """This actor's key."""
        self._fx = Effects()
        self._msg_id = ""
        self._reminders: dict[str, Reminder] = {}

    def _begin(self, msg_id: str, reminders: dict[str, Reminder]) -> Effects:
        self._fx = Effects()
        self._msg_id = msg_id
        self._reminders = reminders
        return self._fx

    @property
    def message_id(self) -> str:
        """The id of the message being handled (the same if it is handled again after a crash):
        an idempotency key for side effects outside the actor."""
        return self._msg_id

    def time(self) -> float:
        """The clock's time (seconds since the epoch)."""
        return self._system.clock.time()

    def now(self) -> datetime:
        """The clock's time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.time(), UTC)

    def send(self, actor: type | str, key: str, method: str, *args: Any) -> None:
        """Signal ``actor``/``key``'s ``method(*args)`` through the outbox: posted in the same
        transaction as this turn's state, so exactly once with it (never if the turn fails)."""
        t = self._system.actor_type(actor)
        data = t.encode_call(method, args, self._system.config.max_payload_bytes)
        n = len(self._fx.outbox)
        self._fx.outbox.append(
            NewMessage(
                actor=t.name,
                key=check_key(key),
                # derived from the message being handled: a re-run after a crash sends the same
                msg_id=f"{self._msg_id}>{n}",
                method=method,
                args=data,
                at=self.time(),
                fresh=True,
            )
        )

    def signal_workflow(self, workflow_id: str, name: str, payload: Any = None) -> None:
        """Send event ``name`` to workflow ``workflow_id`` (its ``ctx.wait_event(name)``), in
        the same transaction as this turn: exactly once with the state change. An event to an
        unknown or ended workflow is dropped (and logged) when the turn commits."""
        if not isinstance(workflow_id, str) or not workflow_id:
            raise UsageError(
                f"signal_workflow: a workflow id must be a non-empty string: {workflow_id!r}"
            )
        if not isinstance(name, str) or not name:
            raise UsageError(f"signal_workflow: an event name must be a non-empty string: {name!r}")
        data = encode(payload, f"event {name!r}", self._system.config.max_payload_bytes)
        self._fx.events.append(WorkflowEvent(workflow_id=workflow_id, name=name, payload=data))

    def start_workflow(self, workflow: Any, *args: Any, id: str | None = None) -> str:
        """Start ``workflow(*args)`` (a workflow function or its registered name) in the same
        transaction as this turn, as instance ``id`` (default: derived from the message being
        handled, so a re-run after a crash starts the same one); nothing if the id is taken.
        A worker that registers the workflow runs it. Returns the instance id."""
        from ._registry import workflow_name

        wf = workflow_name(workflow)
        n = len(self._fx.starts)
        wid = id if id is not None else f"{self._msg_id}>wf{n}"
        if not isinstance(wid, str) or not wid or len(wid) > _MAX_KEY:
            raise UsageError(
                f"a workflow id must be a non-empty string of at most 256 chars: {wid!r}"
            )
        data = encode_args(args, f"workflow {wf!r}", self._system.config.max_payload_bytes)
        self._fx.starts.append(
            WorkflowStart(workflow_id=wid, workflow=wf, args=data, run_id=new_id())
        )
        return wid

    def set_reminder(
        self,
        name: str,
        *,
        at: datetime | float | None = None,
        after: float | timedelta | None = None,
        every: float | timedelta | None = None,
        payload: Any = None,
    ) -> None:
        """Set (or replace) the durable reminder ``name``: it calls ``on_reminder(name,
        payload)`` at ``at`` (a datetime or epoch seconds) or ``after`` seconds, then every
        ``every`` seconds if given (missed periods after downtime fire once). Survives restarts
        and deactivation: the actor is activated to receive it."""
        if REMINDER_HANDLER not in self._type.handlers:
            raise UsageError(
                f"actor {self.actor!r} sets a reminder but defines no "
                f"`async def {REMINDER_HANDLER}(self, name, payload)`"
            )
        if not isinstance(name, str) or not name or len(name) > _MAX_KEY:
            raise UsageError(f"a reminder name must be a non-empty string: {name!r}")
        if (at is None) == (after is None):
            raise UsageError(f"set_reminder({name!r}): give exactly one of at= or after=")
        if at is not None:
            due = at.timestamp() if isinstance(at, datetime) else _seconds(at, "at")
        else:
            assert after is not None
            due = self.time() + _seconds(after, "after")
        period = None if every is None else _seconds(every, "every")
        if period is not None and period <= 0:
            raise UsageError(f"set_reminder({name!r}): every must be > 0 seconds")
        current = (set(self._reminders) | set(self._fx.sets)) - self._fx.cancels
        if name not in current and len(current) >= self._system.config.max_reminders:
            raise UsageError(
                f"actor {self.actor}/{self.key} holds {len(current)} reminders, the limit "
                "(ActorConfig.max_reminders)"
            )
        data = encode(payload, f"reminder {name!r} payload", self._system.config.max_payload_bytes)
        self._fx.cancels.discard(name)
        self._fx.sets[name] = Reminder(name=name, due_at=due, every=period, payload=data)

    def cancel_reminder(self, name: str) -> bool:
        """Cancel reminder ``name``; whether it existed."""
        existed = name in self._fx.sets or (
            name in self._reminders and name not in self._fx.cancels
        )
        self._fx.sets.pop(name, None)
        self._fx.cancels.add(name)
        return existed

    def reminders(self) -> dict[str, datetime]:
        """This actor's reminders (including this turn's changes): name -> next due time."""
        merged = {n: r for n, r in self._reminders.items() if n not in self._fx.cancels}
        merged.update(self._fx.sets)
        return {n: datetime.fromtimestamp(r.due_at, UTC) for n, r in sorted(merged.items())}
