"""The operator API of every service, under ``/_garrison/``: read and change it while it runs.

``GET  /_garrison/resilience``                  every pipeline's state, the settings, overrides
``PUT  /_garrison/resilience/edges/{callee}``   replace the policies of this service's edge to
                                                ``callee`` (a JSON table as in garrison.toml)
``DELETE /_garrison/resilience/edges/{callee}`` drop the operator override of that edge

These paths bypass the inbound middleware's door guard and deadline: an operator must be able
to reach an overloaded service precisely to fix it. The control plane drives them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from garrison.core import ConfigError, InvalidInput, NotFound, json_decode, json_encode
from garrison.resilience import ResilienceSettings

from ._http_errors import error_body, error_response

if TYPE_CHECKING:
    from ._service import Service

__all__ = ["ADMIN_PREFIX", "admin_routes"]

ADMIN_PREFIX = "/_garrison/"
# Service names, as garrison.core validates them in [services].
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def _json(body: Any, status: int = 200) -> Response:
    return Response(json_encode(body), status_code=status, media_type="application/json")


def admin_routes(svc: Service) -> list[Route]:
    """The operator routes of ``svc``."""

    def edge_callee(request: Request) -> str:
        """The ``{callee}`` of the path, if this service can have an edge to it.

        Without this check any path segment ("a->b", "NOT A NAME") would be accepted and kept
        as the override of an edge that can never carry a call.
        """
        callee: str = request.path_params["callee"]
        if not _NAME.match(callee):
            message = (
                f"not a service name: {callee[:80]!r}; expected lowercase letters, digits "
                "and '-', starting with a letter"
            )
            raise InvalidInput(message, [{"loc": ["path", "callee"], "msg": message}])
        known = set(svc.callees)
        if svc.config is not None:
            known.update(svc.config.services)
        if callee not in known:
            raise NotFound(
                f"{svc.name} has no edge to {callee!r}: no such service "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )
        return callee

    async def resilience_state(request: Request) -> Response:
        registry = svc.resilience
        # Every edge with a client, and every declared callee with an override (one can be
        # set before the first call creates the client).
        overrides = {callee: registry.override(svc.name, callee) for callee in svc.callees}
        if svc.config is not None:
            for callee in svc.config.services:
                override = registry.override(svc.name, callee)
                if override:
                    overrides[callee] = override
        # Plain data: validated policies hold exception types (retry.retry_on), which JSON
        # cannot carry as such.
        plain = ResilienceSettings.layer_to_builtins
        return _json(
            {
                "service": svc.name,
                "pipelines": registry.snapshot(),
                "settings": registry.settings.to_builtins(),
                "overrides": {k: plain(v) for k, v in sorted(overrides.items())},
            }
        )

    async def replace_edge(request: Request) -> Response:
        try:
            callee = edge_callee(request)
            body = json_decode(await request.body())
            if not isinstance(body, dict):
                raise InvalidInput("expected a JSON object of policies")
            version = svc.resilience.replace(svc.name, callee, body)
        except ConfigError as exc:
            return Response(
                error_body(
                    "invalid_policy", str(exc), [{"loc": exc.key.split("."), "msg": str(exc)}]
                ),
                status_code=422,
                media_type="application/json",
            )
        except (InvalidInput, NotFound) as exc:
            return error_response(exc)
        return _json({"edge": f"{svc.name}->{callee}", "version": version})

    async def clear_edge(request: Request) -> Response:
        try:
            callee = edge_callee(request)
        except (InvalidInput, NotFound) as exc:
            return error_response(exc)
        version = svc.resilience.replace(svc.name, callee, {})
        return _json({"edge": f"{svc.name}->{callee}", "version": version})

    return [
        Route(f"{ADMIN_PREFIX}resilience", resilience_state, methods=["GET"]),
        Route(f"{ADMIN_PREFIX}resilience/edges/{{callee}}", replace_edge, methods=["PUT"]),
        Route(f"{ADMIN_PREFIX}resilience/edges/{{callee}}", clear_edge, methods=["DELETE"]),
    ]
