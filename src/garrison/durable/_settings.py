"""``[durable]`` in garrison.toml: where a service's workflows are stored and how it runs them.

::

    [durable]
    store = "sqlite:///{data_dir}/{service}.durable.db"   # the default
    lease_seconds = 30.0                                  # EngineConfig fields ...
    limits = { max_payload_bytes = 1048576 }

    [durable.services.dispatch]                           # one service: any key above
    store = "sqlite:////var/lib/fleet/dispatch.db"
    max_active = 50000

Every key is optional. ``store`` and ``worker_id`` are templates: ``{service}``, ``{replica}``,
``{data_dir}`` (``[app] data_dir``) and ``{host}`` (this machine's name) are substituted, and a
relative ``sqlite:///`` path is resolved against the application root, not the current folder,
so every process of an app finds the same file wherever it was started. The default worker id
``{service}-{replica}@{host}`` is stable across restarts, so a restarted replica takes its
previous incarnation's leases back at once, and distinct across machines sharing one store.

Errors name the dotted key and the file or the ``GARRISON_DURABLE__...`` variable that set it.
"""

from __future__ import annotations

import re
import socket
import string
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec

from garrison.core import ConfigError, GarrisonConfig, convert_section

from ._config import EngineConfig, Limits

__all__ = ["DurableSettings", "ServiceDurableSettings"]

_Seconds = Annotated[float, msgspec.Meta(gt=0, description="seconds > 0")]
_Count = Annotated[int, msgspec.Meta(ge=1, description="an integer >= 1")]
_SCHEMES = ("sqlite", "memory", "postgres", "postgresql")
_PLACEHOLDERS = frozenset({"service", "replica", "data_dir", "host"})
_NAME = r"^[a-z][a-z0-9-]{0,62}$"
DEFAULT_STORE = "sqlite:///{data_dir}/{service}.durable.db"
DEFAULT_WORKER_ID = "{service}-{replica}@{host}"
_C = TypeVar("_C", bound=msgspec.Struct)


class _LimitsSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_payload_bytes: _Count = Limits().max_payload_bytes
    max_steps: _Count = Limits().max_steps


class _Common(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The keys valid both at the top of ``[durable]`` and in ``[durable.services.NAME]``."""

    enabled: bool | None = None
    """Run a workflow engine in the service: ``None`` (default) when the service declares
    workflows, ``true`` always (to start, signal and query from routes), ``false`` never."""
    worker: bool = True
    """Run workflows in this process; ``false``: only start, signal and query them (workers
    elsewhere, on a shared store, run them)."""
    store: str = DEFAULT_STORE
    """The store URL template: ``sqlite:///relative.db`` (against the app root),
    ``sqlite:////absolute.db``, ``postgresql://...``, ``memory://`` (tests)."""
    worker_id: str = DEFAULT_WORKER_ID
    """This worker's name in leases (a template, see the module docstring). Give one id to
    one process at a time."""
    lease_seconds: _Seconds = EngineConfig().lease_seconds
    poll_interval: _Seconds = EngineConfig().poll_interval
    hot_horizon: _Seconds = EngineConfig().hot_horizon
    idle_unload: _Seconds = EngineConfig().idle_unload
    max_active: _Count = EngineConfig().max_active
    blocked_retry: _Seconds = EngineConfig().blocked_retry
    limits: _LimitsSettings = _LimitsSettings()


class ServiceDurableSettings(_Common, frozen=True):
    """The ``[durable]`` settings that apply to one service (overrides merged), resolved:
    :attr:`store` is a URL and :attr:`worker_id` a name, with every template filled in."""

    service: str = ""
    """The service these settings are for."""

    def engine_config(self) -> EngineConfig:
        """The :class:`EngineConfig` these settings describe."""
        return EngineConfig(
            worker_id=self.worker_id,
            lease_seconds=self.lease_seconds,
            poll_interval=self.poll_interval,
            hot_horizon=self.hot_horizon,
            idle_unload=self.idle_unload,
            max_active=self.max_active,
            blocked_retry=self.blocked_retry,
            limits=Limits(
                max_payload_bytes=self.limits.max_payload_bytes, max_steps=self.limits.max_steps
            ),
        )

    def wants_engine(self, has_workflows: bool) -> bool:
        """Whether the service runs an engine, given whether it declares workflows."""
        return has_workflows if self.enabled is None else self.enabled


class DurableSettings(_Common, frozen=True):
    """The whole ``[durable]`` section: defaults for every service and per-service overrides.

    Build it with :meth:`from_config` (validates, naming key and source), then take one
    service's resolved settings with :meth:`for_service`.
    """

    services: dict[str, dict[str, Any]] = {}
    """``[durable.services.NAME]``: keys that differ for service ``NAME``."""

    @classmethod
    def from_config(cls, config: GarrisonConfig) -> DurableSettings:
        """Parse and validate ``config.durable``; :class:`ConfigError` naming the key."""
        settings = _convert(config.durable, cls, "durable", config)
        settings._check_templates(settings, "durable", config)
        for name, body in settings.services.items():
            where = f"durable.services.{name}"
            if not _match(name):
                raise _error(f"not a service name: {name!r}", where, config)
            if config.services and name not in config.services:
                known = ", ".join(sorted(config.services))
                raise _error(f"no service {name!r} is declared (declared: {known})", where, config)
            # Validated on its own, so an error names the key it was written under
            # (durable.services.NAME.KEY); the defaults it is merged with are valid already.
            override = _convert(body, _Common, where, config)
            settings._check_templates(override, where, config, only=set(body))
        return settings

    @staticmethod
    def _check_templates(
        s: _Common, where: str, config: GarrisonConfig | None, only: set[str] | None = None
    ) -> None:
        for key in ("store", "worker_id"):
            if only is not None and key not in only:
                continue
            value: str = getattr(s, key)
            if not value:
                raise _error("expected a non-empty string", f"{where}.{key}", config)
            try:
                names = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
            except ValueError as exc:
                raise _error(f"bad template {value!r}: {exc}", f"{where}.{key}", config) from None
            unknown = names - _PLACEHOLDERS
            if unknown:
                raise _error(
                    f"unknown placeholder(s) {sorted(unknown)} in {value!r}; "
                    f"expected some of {sorted(_PLACEHOLDERS)}",
                    f"{where}.{key}",
                    config,
                )
        if only is None or "store" in only:
            scheme = s.store.partition("://")[0].lower() if "://" in s.store else ""
            if scheme not in _SCHEMES:
                raise _error(
                    f"expected a store URL (sqlite:///path.db, postgresql://..., memory://), "
                    f"got {s.store!r}",
                    f"{where}.store",
                    config,
                )

    def for_service(
        self, service: str, *, replica: int = 0, config: GarrisonConfig | None = None
    ) -> ServiceDurableSettings:
        """The settings of ``service`` (replica ``replica``): defaults, then the service's
        overrides, templates filled in, a relative SQLite path made absolute against the
        application root (``config.root``)."""
        base = {f: getattr(self, f) for f in _Common.__struct_fields__}
        base["limits"] = msgspec.structs.asdict(self.limits)
        override = dict(self.services.get(service, {}))
        if "limits" in override:
            base["limits"] = {**base["limits"], **override.pop("limits")}
        merged = msgspec.convert({**base, **override}, _Common, strict=True)
        root = Path(config.root if config is not None else ".").resolve()
        data_dir = config.app.data_dir if config is not None else ".garrison"
        values = {
            "service": service,
            "replica": str(replica),
            "data_dir": data_dir,
            "host": socket.gethostname(),
        }
        store = _resolve_store(merged.store.format(**values), root)
        fields = {f: getattr(merged, f) for f in _Common.__struct_fields__}
        fields.update(store=store, worker_id=merged.worker_id.format(**values))
        return ServiceDurableSettings(**fields, service=service)


def _convert(raw: Any, tp: type[_C], key: str, config: GarrisonConfig) -> _C:
    try:
        return convert_section(raw, tp, key=key, config=config)
    except ConfigError as exc:
        if not str(exc).endswith(": unknown key"):
            raise
        known = sorted(tp.__struct_fields__)
        message = f"unknown key; expected one of: {', '.join(known)}"
        raise ConfigError(message, source=exc.source, key=exc.key) from None


def _match(name: str) -> bool:
    return re.match(_NAME, name) is not None


def _resolve_store(url: str, root: Path) -> str:
    """``sqlite:///relative.db`` as an absolute URL against ``root``; other URLs unchanged."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not rest.startswith("/"):
        return url
    path, sep, query = rest[1:].partition("?")
    if not path or path.startswith("/"):
        return url  # absolute already (sqlite:////abs), or empty: open_store names the error
    return f"sqlite:///{(root / path).resolve()}{sep}{query}"


def _error(message: str, key: str, config: GarrisonConfig | None) -> ConfigError:
    source = config.source if config is not None else ""
    if config is not None:
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            hit = config.env_origins.get(".".join(parts[:n]))
            if hit is not None:
                source = f"environment {hit}"
                break
    return ConfigError(message, source=source, key=key)
