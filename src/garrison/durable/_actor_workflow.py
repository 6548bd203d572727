"""Actors from workflows: ``ctx.actor(Type, key).call(...)`` / ``.signal(...)`` as journaled
steps. Each is an activity whose idempotency key is the message id, so the actor handles it
exactly once however often the workflow replays or the step re-runs after a crash."""

from __future__ import annotations

import typing
from typing import Any

from garrison.core import UsageError

from ._actor import ActorType, actor_name, check_key
from ._actor_ref import ActorRef
from ._actor_runtime import system_for

__all__ = ["WorkflowActorRef"]


def _step(t: ActorType | None, method: str) -> Any:
    """The activity a workflow's actor call or signal runs (its result journaled), returning
    the handler's annotated type on replay too."""

    async def actor_message(actor: str, key: str, mode: str, args: list[Any]) -> Any:
        from ._activity import activity_info

        info = activity_info()
        ref: ActorRef[Any] = system_for(actor, info.workflow_id).ref(actor, key)
        if mode == "call":
            return await ref.call(method, *args, id=info.idempotency_key)
        await ref.signal(method, *args, id=info.idempotency_key)
        return None

    if t is not None and mode_returns(t, method) is not None:
        actor_message.__annotations__ = {"return": mode_returns(t, method)}
    return actor_message


def mode_returns(t: ActorType, method: str) -> Any:
    """The return annotation of ``t``'s handler ``method`` (None if it has none)."""
    try:
        return typing.get_type_hints(t.handler(method).fn).get("return")
    except Exception:
        return None


class WorkflowActorRef:
    """``ctx.actor(Battery, "b-17")`` inside a workflow: calls and signals as journaled steps.

    Each is an activity whose idempotency key is the message id, so however often the step is
    re-run after a crash the actor handles the message once and the recorded reply is returned.
    """

    __slots__ = ("_ctx", "_name", "_type", "key")

    def __init__(self, ctx: Any, actor: type | str, key: str) -> None:
        self._ctx = ctx
        self._name = actor_name(actor)
        self._type = None if isinstance(actor, str) else ActorType.of(actor)
        self.key = check_key(key)

    def _issue(self, mode: str, method: str, args: tuple[Any, ...]) -> Any:
        if self._type is not None:
            self._type.encode_call(method, args, 2**62)  # bad method or arguments: fail now
        elif not isinstance(method, str) or not method:
            raise UsageError(f"an actor method must be a non-empty string: {method!r}")
        return self._ctx.activity(
            _step(self._type if mode == "call" else None, method),
            self._name,
            self.key,
            mode,
            list(args),
            retry=None,
            name=f"actor:{self._name}.{method}:{mode}",
        )

    def call(self, method: str, *args: Any) -> Any:
        """Call ``method(*args)`` on the actor and wait for its result: a journaled step.
        :class:`ActivityError` (cause: the :class:`ActorError`) if the handler raised."""
        return self._issue("call", method, args)

    def signal(self, method: str, *args: Any) -> Any:
        """Send ``method(*args)`` to the actor: a journaled step, posted exactly once."""
        return self._issue("signal", method, args)
