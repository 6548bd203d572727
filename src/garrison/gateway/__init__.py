"""The gateway: garrison's edge, where identity is resolved once and requests are proxied.

The public face of the gateway; everything else in this package is private. See
:mod:`garrison.gateway._app` for the theory of operation.
"""

from ._app import INTERNAL_PREFIX, Gateway
from ._config import GatewayConfig, LimitsConfig, RouteConfig
from ._runner import gateway_url, run_gateway
from ._upstream import (
    AiohttpUpstream,
    RecordedRequest,
    RecordingUpstream,
    Upstream,
    UpstreamResponse,
)

__all__ = [
    "INTERNAL_PREFIX",
    "AiohttpUpstream",
    "Gateway",
    "GatewayConfig",
    "LimitsConfig",
    "RecordedRequest",
    "RecordingUpstream",
    "RouteConfig",
    "Upstream",
    "UpstreamResponse",
    "gateway_url",
    "run_gateway",
]
