"""The operator API of every service, under ``/_garrison/``: read and change it while it runs.

``GET  /_garrison/resilience``                  every pipeline's state, the settings, overrides
``PUT  /_garrison/resilience/edges/{callee}``   replace the policies of this service's edge to
                                                ``callee`` (a JSON table as in garrison.toml)
``DELETE /_garrison/resilience/edges/{callee}`` drop the operator override of that edge

These paths bypass the inbound middleware's door guard and deadline: an operator must be able
to reach an overloaded service precisely to fix it. The control plane drives them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from garrison.core import ConfigError, InvalidInput, json_decode, json_encode

from ._http_errors import error_body, error_response

if TYPE_CHECKING:
    from ._service import Service

__all__ = ["ADMIN_PREFIX", "admin_routes"]

ADMIN_PREFIX = "/_garrison/"


def _json(body: Any, status: int = 200) -> Response:
    return Response(json_encode(body), status_code=status, media_type="application/json")


def admin_routes(svc: Service) -> list[Route]:
    """The operator routes of ``svc``."""

    async def resilience_state(request: Request) -> Response:
        registry = svc.resilience
        return _json(
            {
                "service": svc.name,
                "pipelines": registry.snapshot(),
                "settings": registry.settings.to_builtins(),
                "overrides": {
                    callee: registry.override(svc.name, callee) for callee in svc.callees
                },
            }
        )

    async def replace_edge(request: Request) -> Response:
        callee = request.path_params["callee"]
        try:
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
        except InvalidInput as exc:
            return error_response(exc)
        return _json({"edge": f"{svc.name}->{callee}", "version": version})

    async def clear_edge(request: Request) -> Response:
        callee = request.path_params["callee"]
        version = svc.resilience.replace(svc.name, callee, {})
        return _json({"edge": f"{svc.name}->{callee}", "version": version})

    return [
        Route(f"{ADMIN_PREFIX}resilience", resilience_state, methods=["GET"]),
        Route(f"{ADMIN_PREFIX}resilience/edges/{{callee}}", replace_edge, methods=["PUT"]),
        Route(f"{ADMIN_PREFIX}resilience/edges/{{callee}}", clear_edge, methods=["DELETE"]),
    ]
