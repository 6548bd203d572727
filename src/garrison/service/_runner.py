"""Serving one service process: import the app's Service object and run it under uvicorn."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from garrison.core import ConfigError, GarrisonConfig, configure_logging, get_logger
from garrison.identity import PassportCodec, PassportVerifier
from garrison.identity._reload import reload_on_sighup

from ._service import Service

__all__ = ["load_service", "run_service"]

_log = get_logger("service")


def load_service(config: GarrisonConfig, name: str) -> Service:
    """Import the :class:`Service` that ``[services.NAME] app`` points at, bound to ``config``."""
    spec = config.service(name)
    module_name, _, attr = spec.app.partition(":")
    if config.root not in sys.path:
        sys.path.insert(0, config.root)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import module {module_name!r}: {exc}", key=f"services.{name}.app"
        ) from None
    svc = getattr(module, attr, None)
    if not isinstance(svc, Service):
        raise ConfigError(
            f"{spec.app} is {type(svc).__name__}, expected a garrison Service",
            key=f"services.{name}.app",
        )
    if svc.name != name:
        raise ConfigError(
            f"{spec.app} is Service({svc.name!r}), but is configured as {name!r}",
            key=f"services.{name}.app",
        )
    return svc


def run_service(config: GarrisonConfig, name: str, replica: int = 0) -> None:
    """Serve service ``name`` (replica ``replica``) until SIGINT/SIGTERM; blocks. SIGHUP
    re-reads the passport keys (:mod:`garrison.identity._reload`)."""
    import uvicorn

    spec = config.service(name)
    if not 0 <= replica < spec.replicas:
        raise ConfigError(
            f"replica {replica} out of range: the service has {spec.replicas} replica(s)",
            key=f"services.{name}.replicas",
        )
    configure_logging(config.log.level, config.log.format)
    svc = load_service(config, name)
    svc.configure(config, replica)
    port = spec.port + replica
    _log.info("service %s replica %d listening on http://%s:%d", name, replica, spec.host, port)
    app = svc.asgi()
    if Path(config.source).is_file():  # SIGHUP re-reads the passport keys (key rotation)

        def use(codec: PassportCodec) -> None:
            svc.identity.use(PassportVerifier(codec))

        what = f"service {name} replica {replica}"
        app = reload_on_sighup(app, config.source, use, signing=False, what=what)
    uvicorn.run(
        app,
        host=spec.host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
