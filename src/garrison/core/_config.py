"""Configuration: ``garrison.toml`` at the application root, overridden by ``GARRISON_*`` variables.

Theory of operation
-------------------
1. The file is parsed with :mod:`tomllib` into plain dicts.
2. Environment variables named ``GARRISON_<SECTION>__<KEY>[__<KEY>...]`` override single keys
   (``GARRISON_LOG__LEVEL=DEBUG``, ``GARRISON_SERVICES__API__PORT=9001``). A value is read as a
   TOML literal when it parses as one (``9001``, ``true``, ``["a", "b"]``) and as a string
   otherwise, or when the setting is text (``GARRISON_SERVICES__API__ENV__WORKERS=4``). Key
   segments match keys case-insensitively with ``-`` and ``_`` interchangeable, so ``SITE_AGG``
   reaches a service called ``site-agg``; a new key of a plain table (a service's ``env``)
   keeps the case it was written in.
3. The merged dict is converted into typed, frozen structs by msgspec, which rejects unknown
   keys and wrong types. Every failure becomes a :class:`ConfigError` naming the source (the file
   or the environment variable), the dotted key and what was expected. msgspec's messages are
   completed from the struct types: the allowed values of an enum, the known keys next to an
   unknown one, the dict key it leaves out of its paths (``$.env[...]``) and the offending value.

Pillars add their own sections here as they arrive; an unknown section is an error, so a typo
never silently disables a setting.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import msgspec

from ._errors import ConfigError

__all__ = [
    "AppConfig",
    "ClientConfig",
    "DevConfig",
    "GarrisonConfig",
    "LogConfig",
    "ServiceConfig",
    "convert_section",
    "load_config",
    "parse_config",
]

T = TypeVar("T")
_LOADER_KEYS = ("root", "source", "env_origins")
ENV_PREFIX = "GARRISON_"
CONFIG_FILE = "garrison.toml"

_NAME = r"^[a-z][a-z0-9-]{0,62}$"
_NAME_HELP = "lowercase letters, digits and '-', starting with a letter, at most 63 characters"
Name = Annotated[str, msgspec.Meta(pattern=_NAME, description=_NAME_HELP)]
ImportPath = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="an import path 'module.path:attribute'",
    ),
]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
_MAX_PORT = 65535


# ``frozen=True`` is repeated on every subclass: msgspec inherits it, but type checkers treat a
# subclass without it as a non-frozen dataclass inheriting from a frozen one.
class _Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class AppConfig(_Base, frozen=True):
    """``[app]``: the application as a whole."""

    name: Name = "app"
    """Name of the application, shown in logs and the dashboard."""
    data_dir: str = ".garrison"
    """Where embedded stores keep their files, relative to the application root."""


class ServiceConfig(_Base, frozen=True):
    """``[services.NAME]``: one service of the application."""

    app: ImportPath
    """Import path of the :class:`~garrison.Service` object, ``module.path:attribute``; the
    module is imported with the application root on ``sys.path``."""
    port: Port
    """Port of the first replica; replica ``i`` listens on ``port + i``."""
    host: str = "127.0.0.1"
    """Interface the service listens on."""
    replicas: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    """How many processes ``garrison dev`` starts for this service."""
    instances: list[str] = []
    """Explicit base URLs of the instances; by default one per replica on ``host``."""
    env: dict[str, str] = {}
    """Extra environment variables for the service's processes."""

    def __post_init__(self) -> None:
        # msgspec reports this ValueError as a validation error of the service.
        last = self.port + self.replicas - 1
        if not self.instances and last > _MAX_PORT:
            raise ValueError(
                f"{self.replicas} replicas from port {self.port} need ports up to {last}; "
                f"expected port + replicas - 1 <= {_MAX_PORT}"
            )

    def urls(self) -> list[str]:
        """The base URLs other services use to reach this one."""
        if self.instances:
            return list(self.instances)
        return [f"http://{self.host}:{self.port + i}" for i in range(self.replicas)]


class ClientConfig(_Base, frozen=True):
    """``[client]``: defaults of the inter-service client."""

    timeout: PositiveFloat = 10.0
    """Default budget of one call, in seconds, when the caller has no deadline of its own."""
    connect_timeout: PositiveFloat = 2.0
    """Budget to open a connection, in seconds."""
    load_balancer: Literal["p2c", "least_outstanding", "round_robin"] = "p2c"
    """How an instance is chosen: power of two choices by outstanding requests, the least
    outstanding of all, or round robin."""
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 256
    """Connection pool size per client."""


class LogConfig(_Base, frozen=True):
    """``[log]``: logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    """Threshold for garrison's loggers."""
    format: Literal["text", "json"] = "text"
    """``text`` for people, ``json`` (one object per line) for log collectors."""


class DevConfig(_Base, frozen=True):
    """``[dev]``: how ``garrison dev`` supervises the processes."""

    restart_initial_backoff: PositiveFloat = 0.5
    """First wait before restarting a crashed service, in seconds; doubled per crash."""
    restart_max_backoff: PositiveFloat = 10.0
    """Cap of the restart wait, in seconds."""
    stop_timeout: PositiveFloat = 5.0
    """How long a service may take to stop after SIGTERM before it is killed."""


class GarrisonConfig(_Base, frozen=True):
    """The whole configuration of an application."""

    app: AppConfig = AppConfig()
    services: dict[Name, ServiceConfig] = {}
    """The services of the application, by name."""
    client: ClientConfig = ClientConfig()
    log: LogConfig = LogConfig()
    dev: DevConfig = DevConfig()
    identity: dict[str, Any] = {}
    """``[identity]``: passport keys and credential resolvers; validated by
    :mod:`garrison.identity` (see :func:`convert_section`)."""
    gateway: dict[str, Any] = {}
    """``[gateway]``: the edge's listener, routes and identity rules; validated by
    :mod:`garrison.gateway`."""
    resilience: dict[str, Any] = {}
    """``[resilience]``: policies per edge; validated by :mod:`garrison.resilience`."""
    durable: dict[str, Any] = {}
    """``[durable]``: the workflow/actor store and worker settings; validated by
    :mod:`garrison.durable`."""
    streams: dict[str, Any] = {}
    """``[streams]``: the event log backend and its topics; validated by
    :mod:`garrison.streams`."""
    root: str = "."
    """The application root (the folder holding ``garrison.toml``); set by the loader."""
    source: str = "<config>"
    """Where the configuration came from (the file path); set by the loader."""
    env_origins: dict[str, str] = {}
    """Dotted keys set by environment variables, and the variable that set each; set by the
    loader so that pillars validating their own sections can name the variable."""

    def service(self, name: str) -> ServiceConfig:
        """The configuration of service ``name``; :class:`ConfigError` if it is not declared."""
        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(sorted(self.services)) or "none"
            raise ConfigError(
                f"no service named {name!r} (declared: {known})", key=f"services.{name}"
            ) from None


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> GarrisonConfig:
    """Load ``garrison.toml`` (``path`` may be the file or its folder) and apply ``env`` overrides.

    With ``path=None`` the file is looked up in ``GARRISON_ROOT`` or the current folder; a
    missing file is an error only when ``path`` was given (no file means all defaults).
    """
    env = os.environ if env is None else env
    explicit = path is not None
    p = Path(path if path is not None else env.get("GARRISON_ROOT", "."))
    file = p / CONFIG_FILE if p.is_dir() else p
    data: dict[str, Any] = {}
    if file.is_dir():
        raise ConfigError("is a folder; expected a TOML file", source=str(file))
    if file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", source=str(file)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read: {exc}", source=str(file)) from None
    elif explicit:
        raise ConfigError("configuration file not found", source=str(file))
    return parse_config(data, source=str(file), env=env, root=str(file.parent.resolve()))


def parse_config(
    data: Mapping[str, Any],
    *,
    source: str = "<config>",
    env: Mapping[str, str] | None = None,
    root: str = ".",
) -> GarrisonConfig:
    """Validate a configuration given as plain data, with environment overrides applied."""
    merged: dict[str, Any] = _deepcopy(data)
    origins: dict[tuple[str, ...], str] = {}
    for name, raw in sorted((env or {}).items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = name[len(ENV_PREFIX) :].split("__")
        if not all(parts):
            raise ConfigError("empty key segment", source=f"environment {name}")
        keypath = _apply_env(merged, parts, raw)
        origins[keypath] = f"environment {name}"

    def where(keypath: tuple[str, ...]) -> str:
        return _origin(keypath, data, origins, source)

    def fail(
        exc: msgspec.ValidationError, tp: Any, node: Any, prefix: tuple[str, ...]
    ) -> ConfigError:
        msg, key = _describe(str(exc), tp, node)
        keypath = prefix + key
        return ConfigError(msg, source=where(keypath), key=".".join(keypath))

    for reserved in _LOADER_KEYS:
        if reserved in merged:
            raise ConfigError(
                f"unknown key ({reserved} is set by the loader)",
                source=where((reserved,)),
                key=reserved,
            )
    merged["root"] = root
    merged["source"] = source
    merged["env_origins"] = {
        ".".join(k): v.removeprefix("environment ") for k, v in origins.items()
    }

    # msgspec does not name dict keys in its error paths ("$[...]"), so each service is
    # converted on its own and its errors are given the service's dotted key.
    raw_services = merged.pop("services", {})
    if not isinstance(raw_services, Mapping):
        raise ConfigError(
            f"expected a table of services, got {raw_services!r}",
            source=where(("services",)),
            key="services",
        )
    services: dict[str, ServiceConfig] = {}
    for name, body in raw_services.items():
        if not re.match(_NAME, name):
            raise ConfigError(
                f"bad service name {name!r}; expected {_NAME_HELP}",
                source=where(("services", name)),
                key=f"services.{name}",
            )
        try:
            services[name] = msgspec.convert(body, ServiceConfig, strict=True)
        except msgspec.ValidationError as exc:
            raise fail(exc, ServiceConfig, body, ("services", name)) from None
    try:
        cfg = msgspec.convert(merged, GarrisonConfig, strict=True)
    except msgspec.ValidationError as exc:
        raise fail(exc, GarrisonConfig, merged, ()) from None
    return msgspec.structs.replace(cfg, services=services)


def convert_section(
    raw: Any, type_: type[T], *, key: str, config: GarrisonConfig | None = None
) -> T:
    """Validate a pillar's part of the configuration (``raw``, found at dotted ``key``).

    Errors become :class:`ConfigError` naming the full dotted key and the source: the
    environment variable that set it when one did, else the file. A ``ConfigError`` raised by
    the struct's own checks (``__post_init__``) with a bare field name gets ``key`` prefixed.
    """
    source = config.source if config is not None else ""
    origins = config.env_origins if config is not None else {}

    def origin(dotted: str) -> str:
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            hit = origins.get(".".join(parts[:n]))
            if hit is not None:
                return f"environment {hit}"
        return source

    try:
        return msgspec.convert(raw, type_, strict=True)
    except msgspec.ValidationError as exc:
        msg, sub = _describe(str(exc), type_, raw)
        dotted = ".".join((key, *sub)) if sub else key
        raise ConfigError(msg, source=origin(dotted), key=dotted) from None
    except ConfigError as exc:
        dotted = f"{key}.{exc.key}" if exc.key else key
        message = str(exc).split(": ", 1)[1] if ": " in str(exc) else str(exc)
        raise ConfigError(message, source=origin(dotted), key=dotted) from None


def _deepcopy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepcopy(v) for v in value]
    return value


def _env_value(raw: str) -> Any:
    try:
        doc = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    # "1\nother = 2" parses too, but is not one literal: such a value stays text as a whole
    # rather than being cut at the newline.
    return doc["v"] if doc.keys() == {"v"} else raw


def _norm(segment: str) -> str:
    return segment.lower().replace("-", "_")


def _apply_env(tree: dict[str, Any], parts: list[str], raw: str) -> tuple[str, ...]:
    node = tree
    tp: Any = GarrisonConfig
    path: list[str] = []
    for i, part in enumerate(parts):
        key, tp = _env_key(node, tp, part)
        path.append(key)
        if i == len(parts) - 1:
            value = _env_value(raw)
            # a text setting takes the text as written: HOST=1 or an env entry WORKERS=4
            node[key] = raw if _unwrap(tp)[0] is str and not isinstance(value, str) else value
        else:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"cannot set a key inside a {type(child).__name__}",
                    source="environment " + ENV_PREFIX + "__".join(parts),
                    key=".".join(path),
                )
            node = child
    return tuple(path)


def _env_key(node: Mapping[str, Any], tp: Any, part: str) -> tuple[str, Any]:
    """The key an environment segment names in ``node`` (of type ``tp``), and the key's type.

    An existing key matches case-insensitively with ``-`` and ``_`` alike. A new key is spelt
    as its type wants: a struct field in lowercase, a service name with ``-``, and a key of a
    plain table (``env``) exactly as written, because environment variable names are
    case-sensitive.
    """
    existing = next((k for k in node if _norm(k) == _norm(part)), None)
    base, _ = _unwrap(tp)
    if isinstance(base, type) and issubclass(base, msgspec.Struct):
        fields = {f.name: f.type for f in msgspec.structs.fields(base)}
        key = existing or next((f for f in fields if _norm(f) == _norm(part)), part.lower())
        return key, fields.get(key, Any)
    if get_origin(base) is dict:
        key_tp, value_tp = get_args(base)
        if key_tp == Name:
            new = part.lower().replace("_", "-")
        elif value_tp is Any:
            new = part.lower()  # a pillar's own section: its keys are lowercase TOML keys
        else:
            new = part  # a table of strings such as a service's env: names are case-sensitive
        return existing or new, value_tp
    return existing or part.lower(), Any


_MISSING: Any = object()


def _child(node: Any, part: str) -> Any:
    if isinstance(node, Mapping):
        return node.get(part, _MISSING)
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    return _MISSING


def _origin(
    keypath: tuple[str, ...],
    data: Mapping[str, Any],
    origins: Mapping[tuple[str, ...], str],
    default: str,
) -> str:
    """The source to blame for ``keypath``.

    The variable that set the key or a table above it; else, where the file stops holding the
    path, a variable that created what lies below; else the file.
    """
    for n in range(len(keypath), 0, -1):
        if keypath[:n] in origins:
            return origins[keypath[:n]]
    node: Any = data
    for n in range(1, len(keypath) + 1):
        node = _child(node, keypath[n - 1])
        if node is _MISSING:
            head = keypath[:n]
            return next((origins[p] for p in sorted(origins) if p[:n] == head), default)
    return default


_AT = re.compile(r" - at `\$(.*)`$")
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")


def _describe(message: str, tp: Any, node: Any) -> tuple[str, tuple[str, ...]]:
    """Turn a msgspec message about ``node`` (of type ``tp``) into (what was expected, key path)."""
    m = _AT.search(message)
    msg = message[: m.start()] if m else message
    parts = [a or b for a, b in _SEGMENT.findall(m.group(1))] if m else []
    for prefix, text in (
        ("Object contains unknown field", "unknown key"),
        ("Object missing required field", "missing required key"),
    ):
        if msg.startswith(prefix):
            keys, _, parent = _resolve(tp, node, parts)
            field = msg.split("`")[1]
            if text == "unknown key" and isinstance(parent, type) and issubclass(parent, _Base):
                known = [
                    f
                    for f in parent.__struct_fields__
                    if parent is not GarrisonConfig or f not in _LOADER_KEYS
                ]
                text = f"unknown key; expected one of: {', '.join(sorted(known))}"
            return text, (*keys, field)
    keys, value, ftp = _resolve(tp, node, parts)
    base, metas = _unwrap(ftp)
    if msg.startswith("Invalid enum value") and get_origin(base) is Literal:
        allowed = ", ".join(repr(v) for v in get_args(base))
        return f"expected one of {allowed}; got {value!r}", keys
    help_ = next(
        (x.description for x in metas if isinstance(x, msgspec.Meta) and x.description), None
    )
    if help_ and "matching regex" in msg:
        return f"expected {help_}; got {value!r}", keys
    if msg.startswith("Expected") and ", got" not in msg and value is not _MISSING:
        return f"{msg}; got {value!r}", keys  # msgspec leaves the value out of range errors
    return msg, keys


def _resolve(tp: Any, node: Any, parts: list[str]) -> tuple[tuple[str, ...], Any, Any]:
    """Follow ``parts`` through the data and its type; name the dict keys msgspec leaves out."""
    keys: list[str] = []
    for part in parts:
        base, _ = _unwrap(tp)
        if part == "...":
            value_tp = get_args(base)[1] if get_origin(base) is dict else Any
            items = node.items() if isinstance(node, Mapping) else []
            part = next((str(k) for k, v in items if not _valid(v, value_tp)), part)
            tp = value_tp
        elif isinstance(base, type) and issubclass(base, msgspec.Struct):
            fields = {f.name: f.type for f in msgspec.structs.fields(base)}
            tp = fields.get(part, Any)
        elif get_origin(base) is list:
            tp = get_args(base)[0]
        else:
            tp = Any
        keys.append(part)
        node = _child(node, part)
    return tuple(keys), node, tp


def _unwrap(tp: Any) -> tuple[Any, list[Any]]:
    metas: list[Any] = []
    while get_origin(tp) is Annotated:
        tp, *extra = get_args(tp)
        metas.extend(extra)
    return tp, metas


def _valid(value: Any, tp: Any) -> bool:
    try:
        msgspec.convert(value, tp, strict=True)
    except msgspec.ValidationError:
        return False
    return True
