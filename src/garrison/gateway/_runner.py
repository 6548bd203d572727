"""Serving the gateway: build it from the application's configuration and run it under uvicorn."""

from __future__ import annotations

from pathlib import Path

from starlette.types import ASGIApp

from garrison.core import GarrisonConfig, configure_logging, get_logger
from garrison.identity._passport import PassportCodec
from garrison.identity._reload import reload_on_sighup

from ._app import Gateway
from ._config import GatewayConfig

__all__ = ["gateway_url", "run_gateway"]

_log = get_logger("gateway")


def gateway_url(config: GarrisonConfig) -> str:
    """Where the gateway of ``config`` can be reached from this machine."""
    gw = GatewayConfig.from_config(config)[0]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(gw.host, gw.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{gw.port}"


def run_gateway(config: GarrisonConfig) -> None:
    """Serve the gateway of ``config`` until SIGINT/SIGTERM; blocks. SIGHUP re-reads the
    passport keys (:mod:`garrison.identity._reload`).

    The configuration is validated (and secrets read) before the port is bound, so a bad
    ``[gateway]`` or ``[identity]`` fails at once with a ConfigError naming the key.
    """
    import uvicorn

    configure_logging(config.log.level, config.log.format)
    app = Gateway.from_config(config)
    gw = app.config
    routes = len(app.table.routes)
    _log.info("gateway listening on http://%s:%d (%d routes)", gw.host, gw.port, routes)
    served: ASGIApp = app
    if Path(config.source).is_file():  # SIGHUP re-reads the passport keys (key rotation)

        def use(codec: PassportCodec) -> None:
            app.edge.codec = codec

        served = reload_on_sighup(app, config.source, use, signing=True, what="gateway")
    uvicorn.run(
        served,
        host=gw.host,
        port=gw.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        server_header=False,
        # The gateway decides itself what to make of x-forwarded-* ([gateway]
        # trust_forwarded); uvicorn's rewriting of the client address would pre-empt it.
        proxy_headers=False,
    )
