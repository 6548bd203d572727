"""The operator API of a service's durable workflows, under ``/_garrison/workflows``.

==========================================================  ==================================
``GET  /_garrison/workflows``                               list; filters ``status``,
                                                            ``workflow``, ``id_prefix``,
                                                            ``limit`` (1-1000), ``offset``
``GET  /_garrison/workflows/{id}``                          one instance: status, info,
                                                            arguments, result or failure
``GET  /_garrison/workflows/{id}/history``                  the current run's journal
``POST /_garrison/workflows``                               start ``{"workflow", "args", "id"}``
``POST /_garrison/workflows/{id}/signal/{name}``            send event ``name``; the body is
                                                            its JSON payload
``POST /_garrison/workflows/{id}/cancel``                   ``{"reason"}`` optional
``POST /_garrison/workflows/{id}/terminate``                ``{"reason"}`` optional
``POST /_garrison/workflows/replay-check``                  replay running instances against
                                                            this process's code
==========================================================  ==================================

JSON in and out; bad input gets a 4xx JSON body naming what was wrong (422 with ``detail``
locations, 404 for an unknown workflow or id, 409 for an instance that has ended). Like the
rest of ``/_garrison/`` these paths bypass the door guard and deadline, so an operator reaches
an overloaded service; they carry no authentication of their own and are meant for the
operator's network (the gateway never routes ``/_garrison/``).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from garrison.core import InvalidInput, NotFound, UsageError, json_decode, json_encode
from garrison.durable import Engine, FailureInfo, Status, WorkflowInfo
from garrison.durable._codec import decode_any, encode_args, split_args
from garrison.durable._journal import Batch

from ._admin import ADMIN_PREFIX
from ._http_errors import error_body, error_response

if TYPE_CHECKING:
    from ._service import Service

__all__ = ["workflow_admin_routes"]

PREFIX = f"{ADMIN_PREFIX}workflows"
MAX_LIST = 1000
_LIST_KEYS = ("status", "workflow", "id_prefix", "limit", "offset")


def _json(body: Any, status: int = 200) -> Response:
    return Response(json_encode(body), status_code=status, media_type="application/json")


def _conflict(message: str) -> Response:
    return Response(error_body("conflict", message), 409, media_type="application/json")


def _invalid(loc: list[str], message: str) -> InvalidInput:
    return InvalidInput(message, [{"loc": loc, "msg": message}])


def failure_json(f: FailureInfo | None) -> dict[str, Any] | None:
    """A stored failure as plain data."""
    if f is None:
        return None
    return {
        "type": f.type,
        "message": f.message,
        "traceback": f.traceback,
        "cause": failure_json(f.cause),
    }


def _decode(data: bytes | None) -> Any:
    return None if data is None else decode_any(data)


def info_json(info: WorkflowInfo, *, full: bool = True) -> dict[str, Any]:
    """An instance as plain data (``full``: with arguments, result and failure traceback)."""
    out: dict[str, Any] = {
        "id": info.id,
        "workflow": info.workflow,
        "status": str(info.status),
        "run_id": info.run_id,
        "runs": info.runs,
        "steps": info.steps,
        "created_at": info.created_at,
        "updated_at": info.updated_at,
        "closed_at": info.closed_at,
        "ready_at": info.ready_at,
        "owner": info.owner,
        "epoch": info.epoch,
        "parent_id": info.parent_id,
        "blocked": info.blocked,
    }
    failure = failure_json(info.failure)
    if full:
        out["args"] = [decode_any(a) for a in split_args(info.args)]
        out["result"] = _decode(info.result)
        out["failure"] = failure
    else:
        out["failure"] = None if info.failure is None else info.failure.describe()
    return out


def batch_json(batch: Batch) -> dict[str, Any]:
    """One journal batch as plain data; recorded payloads decoded."""
    inputs = []
    for item in batch.inputs:
        fields = msgspec.structs.asdict(item)
        entry: dict[str, Any] = {"kind": type(item).__name__}
        for key, value in fields.items():
            if isinstance(value, bytes):
                value = decode_any(value)
            elif isinstance(value, FailureInfo):
                value = failure_json(value)
            entry[key] = value
        inputs.append(entry)
    return {"at": batch.at, "inputs": inputs, "markers": dict(batch.markers)}


def _list_filters(request: Request) -> dict[str, Any]:
    q = request.query_params
    unknown = sorted(set(q) - set(_LIST_KEYS))
    if unknown:
        raise _invalid(
            ["query", unknown[0]],
            f"unknown filter(s) {unknown}; expected some of {list(_LIST_KEYS)}",
        )
    out: dict[str, Any] = {}
    if "status" in q:
        allowed = [s.value for s in Status]
        if q["status"] not in allowed:
            raise _invalid(
                ["query", "status"], f"status must be one of {allowed}, got {q['status']!r}"
            )
        out["status"] = Status(q["status"])
    for key in ("workflow", "id_prefix"):
        if key in q:
            if not q[key]:
                raise _invalid(["query", key], f"{key} must not be empty")
            out[key] = q[key]
    for key, lo, hi, default in (("limit", 1, MAX_LIST, 100), ("offset", 0, None, 0)):
        raw = q.get(key)
        if raw is None:
            out[key] = default
            continue
        try:
            value = int(raw)
        except ValueError:
            raise _invalid(["query", key], f"{key} must be an integer, got {raw!r}") from None
        if value < lo or (hi is not None and value > hi):
            bounds = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise _invalid(["query", key], f"{key} must be {bounds}, got {value}")
        out[key] = value
    return out


async def _body(request: Request, *, allow_empty: bool = True) -> Any:
    raw = await request.body()
    if not raw.strip():
        if allow_empty:
            return None
        raise _invalid(["body"], "expected a JSON body")
    try:
        return json_decode(raw)
    except Exception:
        raise _invalid(["body"], "the body is not valid JSON") from None


async def _object(request: Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    body = await _body(request)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise _invalid(["body"], f"expected a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise _invalid(
            ["body", unknown[0]], f"unknown key(s) {unknown}; expected some of {list(allowed)}"
        )
    return body


def _reason(body: dict[str, Any]) -> str:
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise _invalid(["body", "reason"], f"reason must be a string, got {reason!r}")
    return reason


def check_args(engine: Engine, workflow: str, args: list[Any]) -> None:
    """Refuse arguments the workflow cannot take (count or types), before anything starts."""
    wt = engine.registry.get(workflow)
    try:
        inspect.signature(wt.fn).bind(None, *args)  # None: the WorkflowContext
    except TypeError as exc:
        raise _invalid(["body", "args"], f"workflow {wt.name!r}: {exc}") from None
    data = encode_args(args, f"workflow {wt.name!r}", engine.config.limits.max_payload_bytes)
    try:
        wt.decode_args(data)
    except msgspec.ValidationError as exc:
        raise _invalid(["body", "args"], f"workflow {wt.name!r}: bad argument: {exc}") from None


def workflow_admin_routes(svc: Service) -> list[Route]:
    """The workflow operator routes of ``svc`` (answering 404 while it runs no engine)."""

    def engine() -> Engine:
        try:
            return svc.workflows
        except UsageError as exc:
            raise NotFound(str(exc)) from None

    async def list_(request: Request) -> Response:
        try:
            filters = _list_filters(request)
            infos = await engine().list(**filters)
        except (InvalidInput, NotFound) as exc:
            return error_response(exc)
        return _json(
            {
                "service": svc.name,
                "workflows": [info_json(i, full=False) for i in infos],
                "limit": filters["limit"],
                "offset": filters["offset"],
            }
        )

    async def show(request: Request) -> Response:
        try:
            info = await engine().get(request.path_params["id"])
        except NotFound as exc:
            return error_response(exc)
        return _json(info_json(info))

    async def history(request: Request) -> Response:
        try:
            h = await engine().history(request.path_params["id"])
        except NotFound as exc:
            return error_response(exc)
        return _json(
            {
                "workflow_id": h.workflow_id,
                "workflow": h.workflow,
                "run_id": h.run_id,
                "args": [decode_any(a) for a in split_args(h.args)],
                "batches": [batch_json(b) for b in h.batches],
            }
        )

    async def start(request: Request) -> Response:
        try:
            eng = engine()
            body = await _object(request, ("workflow", "args", "id"))
            name = body.get("workflow")
            if not isinstance(name, str) or not name:
                raise _invalid(["body", "workflow"], "expected the workflow's name (a string)")
            args = body.get("args", [])
            if not isinstance(args, list):
                raise _invalid(["body", "args"], f"args must be a JSON array, got {args!r}")
            wid = body.get("id")
            if wid is not None and (not isinstance(wid, str) or not wid or len(wid) > 256):
                raise _invalid(["body", "id"], f"id must be a string of 1-256 chars: {wid!r}")
            check_args(eng, name, args)
            handle = await eng.start(name, *args, id=wid)
            info = await eng.get(handle.id)
        except (InvalidInput, NotFound) as exc:
            return error_response(exc)
        except UsageError as exc:  # the id is taken by an instance of another workflow
            return _conflict(str(exc))
        return _json(
            {
                "id": handle.id,
                "workflow": info.workflow,
                "created": handle.created,
                **_status(info),
            },
            201 if handle.created else 200,
        )

    async def signal(request: Request) -> Response:
        wid, name = request.path_params["id"], request.path_params["name"]
        try:
            payload = await _body(request)
            await engine().signal(wid, name, payload)
        except (InvalidInput, NotFound) as exc:
            return error_response(exc)
        except UsageError as exc:  # the instance has ended
            return _conflict(str(exc))
        return _json({"id": wid, "event": name, "delivered": True}, 202)

    def stopper(kind: str) -> Any:
        async def stop(request: Request) -> Response:
            wid = request.path_params["id"]
            try:
                eng = engine()
                reason = _reason(await _object(request, ("reason",)))
                info = await eng.get(wid)
                if info.status != Status.RUNNING:
                    return _conflict(f"workflow {wid} has ended ({info.status})")
                done = await (eng.cancel if kind == "cancel" else eng.terminate)(wid, reason)
                if not done:
                    return _conflict(f"workflow {wid} has ended")
                info = await eng.get(wid)
            except (InvalidInput, NotFound) as exc:
                return error_response(exc)
            return _json({"id": wid, "requested": kind, **_status(info)}, 202)

        stop.__name__ = kind
        return stop

    async def replay(request: Request) -> Response:
        try:
            eng = engine()
            body = await _object(request, ("limit",))
            limit = body.get("limit", 10_000)
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise _invalid(["body", "limit"], f"limit must be an integer >= 1, got {limit!r}")
            reports = await eng.replay_check(limit=limit)
        except (InvalidInput, NotFound) as exc:
            return error_response(exc)
        failed = [r for r in reports if not r.ok]
        return _json(
            {
                "service": svc.name,
                "ok": not failed,
                "checked": len(reports),
                "failed": len(failed),
                "reports": [msgspec.to_builtins(r) for r in reports],
            }
        )

    # Ids may hold "/" (sent percent-encoded): ``{id:path}``, the bare instance route last so
    # that ``.../history`` and the actions are matched first.
    wid = f"{PREFIX}/{{id:path}}"
    return [
        Route(PREFIX, list_, methods=["GET"]),
        Route(PREFIX, start, methods=["POST"]),
        Route(f"{PREFIX}/replay-check", replay, methods=["POST"]),
        Route(f"{wid}/history", history, methods=["GET"]),
        Route(f"{wid}/signal/{{name}}", signal, methods=["POST"]),
        Route(f"{wid}/cancel", stopper("cancel"), methods=["POST"]),
        Route(f"{wid}/terminate", stopper("terminate"), methods=["POST"]),
        Route(wid, show, methods=["GET"]),
    ]


def _status(info: WorkflowInfo) -> dict[str, Any]:
    return {"status": str(info.status)}
