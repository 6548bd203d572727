"""``[resilience]`` in garrison.toml: policies per edge, per route, and at each service's door.

::

    [resilience.defaults]                      # every edge unless overridden
    timeout = 2.0
    retry = { max_attempts = 3 }
    breaker = { failure_rate_threshold = 0.5 }

    [resilience.edges."dispatch->devices"]     # one edge; "*->devices": every caller of devices
    bulkhead = { max_concurrent_calls = 32, max_queue = 64 }
    outlier = { consecutive_5xx = 3 }

    [resilience.edges."dispatch->devices".routes."/devices/{id}/commands"]
    timeout = 0.5                              # one route of that edge
    breaker = false                            # switch off what the edge inherited

    [resilience.inbound.devices]               # the door of service devices: shed at the door
    limiter = { limit = { algorithm = "gradient2" } }

Layers merge policy by policy, most specific last: ``defaults`` < ``"*->callee"`` <
``"caller->*"`` < ``"caller->callee"`` < a route of it. A policy table replaces the inherited
table of that policy whole (fields are not mixed across layers, so what runs is what one table
says); ``false`` removes an inherited policy.

Every layer is validated on its own when loaded, so an error names the layer where the bad
value was written, the policy and the field: ``[resilience.edges.a->b.breaker.
failure_rate_threshold]: expected a number in (0, 1]``, and the environment variable when one set
it. Edge sides and inbound services are service names (or ``*``); ``routes`` exist only under an
edge. Impossible combinations are caught at load for every pair of declared caller and callee,
wildcard layers included.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from garrison.core import (
    ConfigError,
    DeadlineExceeded,
    GarrisonConfig,
    RemoteProtocolError,
    RemoteStatusError,
    ServiceUnavailable,
    TransportError,
    convert_section,
)

from ._breaker import BreakerConfig
from ._budget import RetryBudgetConfig
from ._bulkhead import BulkheadConfig
from ._hedge import HedgeConfig
from ._limiter import LimiterConfig
from ._outlier import OutlierConfig
from ._pipeline import _SHADOWABLE, PolicyConfig
from ._ratelimit import RateLimitConfig
from ._retry import RetryPolicy
from ._throttle import ThrottleConfig

__all__ = ["ResilienceSettings", "edge_key", "parse_policy"]

_POLICY_TYPES: dict[str, Any] = {
    "timeout": float,
    "retry": RetryPolicy,
    "retry_budget": RetryBudgetConfig,
    "hedge": HedgeConfig,
    "rate_limit": RateLimitConfig,
    "throttle": ThrottleConfig,
    "breaker": BreakerConfig,
    "bulkhead": BulkheadConfig,
    "limiter": LimiterConfig,
    "outlier": OutlierConfig,
    "shadow": list[str],
}
_TOP = frozenset({"defaults", "edges", "inbound"})
_INBOUND = frozenset({"limiter", "bulkhead", "rate_limit", "shadow"})
# Service names, as garrison.core validates them in [services].
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_NAME_HELP = "lowercase letters, digits and '-', starting with a letter"


def _error(message: str, key: str, config: GarrisonConfig | None) -> ConfigError:
    """A ConfigError for dotted ``key``, blaming the environment variable that set it if any."""
    source = ""
    if config is not None:
        source = config.source
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            hit = config.env_origins.get(".".join(parts[:n]))
            if hit is not None:
                source = f"environment {hit}"
                break
    return ConfigError(message, source=source, key=key)


RETRY_ON_NAMES: dict[str, type[Exception]] = {
    "transport": TransportError,
    "unavailable": ServiceUnavailable,
    "timeout": TimeoutError,
    "deadline": DeadlineExceeded,
    "protocol": RemoteProtocolError,
    "remote_status": RemoteStatusError,
}
"""What ``retry.retry_on`` may name in garrison.toml or the operator API. A closed list on
purpose: configuration must never make the process import arbitrary code."""
_RETRY_ON_BY_TYPE = {v: k for k, v in RETRY_ON_NAMES.items()}


def _mask_password(url: str) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host``."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


def _plain(value: Any) -> Any:
    """``to_builtins`` hook: exception types (``retry.retry_on``) by their name."""
    if isinstance(value, type):
        name = _RETRY_ON_BY_TYPE.get(value)
        return name if name is not None else f"{value.__module__}.{value.__qualname__}"
    raise NotImplementedError


def _retry_on_types(value: Any, key: str, config: GarrisonConfig | None) -> Any:
    """Map ``retry_on`` names to exception types; anything else is an error naming the key."""
    if not isinstance(value, Mapping) or "retry_on" not in value:
        return value
    names = value["retry_on"]
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise _error(
            f"expected a list of names out of {sorted(RETRY_ON_NAMES)}; got {names!r}",
            f"{key}.retry_on",
            config,
        )
    unknown = [n for n in names if n not in RETRY_ON_NAMES]
    if unknown:
        raise _error(
            f"unknown exception name(s) {unknown}; expected names out of {sorted(RETRY_ON_NAMES)}",
            f"{key}.retry_on",
            config,
        )
    return {**value, "retry_on": tuple(RETRY_ON_NAMES[n] for n in names)}


def _locate(raw: Any, tp: Any) -> str | None:
    """The dotted key, relative to ``raw``, of the nested table whose own checks fail."""
    if not (isinstance(raw, Mapping) and isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
        return None
    fields = {f.encode_name: f.type for f in msgspec.structs.fields(tp)}
    for name, value in raw.items():
        ftype = fields.get(name)
        if ftype is None or not isinstance(value, Mapping):
            continue
        try:
            msgspec.convert(value, ftype, strict=True)
        except ConfigError as exc:
            return f"{name}.{_locate(value, ftype) or exc.key}"
        except msgspec.ValidationError:
            continue
    return None


def edge_key(caller: str, callee: str) -> str:
    """The name of an edge: ``caller->callee``."""
    return f"{caller}->{callee}"


def _validate_layer(
    raw: Any, key: str, config: GarrisonConfig | None, *, routes: bool = False
) -> dict[str, Any]:
    """Check one layer (a table of policies) on its own; returns it with ``false`` kept.

    ``routes``: whether the layer may hold a ``routes`` table (an edge's; checked by the caller).
    """
    if not isinstance(raw, Mapping):
        raise _error(f"expected a table of policies, got {raw!r}", key, config)
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "routes" and routes:
            continue
        tp = _POLICY_TYPES.get(name)
        if tp is None:
            expected = sorted(_POLICY_TYPES) + (["routes"] if routes else [])
            raise _error(
                f"unknown policy {name!r}; expected one of {expected}", f"{key}.{name}", config
            )
        if value is False:  # switch off what an outer layer set (any policy, timeout included)
            out[name] = False
            continue
        if name == "timeout" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if name == "retry":
            value = _retry_on_types(value, f"{key}.retry", config)
        try:
            converted = convert_section(value, tp, key=f"{key}.{name}", config=config)
        except ConfigError as exc:
            # A nested table's own checks (limiter.limit, hedge.budget) raise with the bare
            # field name, which convert_section can only prefix with the policy's key.
            inner = _locate(value, tp)
            if inner is None:
                raise
            message = str(exc).split(": ", 1)[-1]
            raise _error(message, f"{key}.{name}.{inner}", config) from None
        if name == "shadow":
            for policy in converted:
                if policy not in _SHADOWABLE:
                    raise _error(
                        f"cannot shadow {policy!r}; expected some of {sorted(_SHADOWABLE)}",
                        f"{key}.shadow",
                        config,
                    )
        if name == "timeout" and not (math.isfinite(converted) and converted > 0):
            raise _error(f"expected seconds > 0; got {value!r}", f"{key}.timeout", config)
        out[name] = converted
    return out


def parse_policy(
    layers: list[tuple[str, dict[str, Any]]], config: GarrisonConfig | None = None
) -> PolicyConfig:
    """Merge validated layers (least specific first) into one :class:`PolicyConfig`."""
    merged: dict[str, Any] = {}
    for _, layer in layers:
        for name, value in layer.items():
            if value is False:
                merged.pop(name, None)
            else:
                merged[name] = value
    if "shadow" in merged:
        merged["shadow"] = tuple(merged["shadow"])
    key = layers[-1][0] if layers else "resilience"
    try:
        return PolicyConfig(**merged)
    except ConfigError as exc:
        message = str(exc).split(": ", 1)[-1]
        raise _error(message, f"{key}.{exc.key}" if exc.key else key, config) from None


class ResilienceSettings:
    """The parsed ``[resilience]`` section: which policies apply to each edge and door."""

    def __init__(
        self,
        defaults: dict[str, Any] | None = None,
        edges: dict[str, dict[str, Any]] | None = None,
        routes: dict[str, dict[str, dict[str, Any]]] | None = None,
        inbound: dict[str, dict[str, Any]] | None = None,
        *,
        config: GarrisonConfig | None = None,
    ) -> None:
        self.defaults = defaults or {}
        """Validated policies of ``[resilience.defaults]``."""
        self.edges = edges or {}
        """Validated policies per edge key (``caller->callee``, ``*->callee``, ``caller->*``)."""
        self.routes = routes or {}
        """Validated policies per edge key and route."""
        self.inbound = inbound or {}
        """Validated policies per service, for its inbound side."""
        self._config = config

    @classmethod
    def from_config(cls, config: GarrisonConfig) -> ResilienceSettings:
        """Parse and validate ``config.resilience``; raises ConfigError naming the key."""
        return cls.from_raw(config.resilience, config=config)

    @classmethod
    def from_raw(
        cls, raw: Mapping[str, Any], *, config: GarrisonConfig | None = None
    ) -> ResilienceSettings:
        """Parse a ``[resilience]`` table given as plain data."""
        if not isinstance(raw, Mapping):
            raise _error(f"expected a table, got {raw!r}", "resilience", config)
        for top in raw:
            if top not in _TOP:
                raise _error(
                    f"unknown key; expected one of {sorted(_TOP)}", f"resilience.{top}", config
                )
        defaults = _validate_layer(raw.get("defaults", {}), "resilience.defaults", config)
        edges: dict[str, dict[str, Any]] = {}
        routes: dict[str, dict[str, dict[str, Any]]] = {}
        raw_edges = raw.get("edges", {})
        if not isinstance(raw_edges, Mapping):
            raise _error("expected a table of edges", "resilience.edges", config)
        for key, body in raw_edges.items():
            where = f"resilience.edges.{key}"
            caller, sep, callee = key.partition("->")
            if (
                not sep
                or not all(side == "*" or _NAME.match(side) for side in (caller, callee))
                or (caller == "*" and callee == "*")
            ):
                raise _error(
                    "edge names are 'caller->callee' of service names "
                    f"({_NAME_HELP}); '*' for any caller or any callee, not both",
                    where,
                    config,
                )
            edges[key] = _validate_layer(body, where, config, routes=True)
            raw_routes = body.get("routes", {})
            if not isinstance(raw_routes, Mapping):
                raise _error("expected a table of routes", f"{where}.routes", config)
            for route, rbody in raw_routes.items():
                if not route.startswith("/"):
                    raise _error("a route starts with '/'", f"{where}.routes.{route}", config)
                routes.setdefault(key, {})[route] = _validate_layer(
                    rbody, f"{where}.routes.{route}", config
                )
        inbound: dict[str, dict[str, Any]] = {}
        raw_inbound = raw.get("inbound", {})
        if not isinstance(raw_inbound, Mapping):
            raise _error("expected a table of services", "resilience.inbound", config)
        for service, body in raw_inbound.items():
            where = f"resilience.inbound.{service}"
            if not _NAME.match(service):
                raise _error(f"not a service name; expected {_NAME_HELP}", where, config)
            layer = _validate_layer(body, where, config)
            extra = set(layer) - _INBOUND
            if extra:
                raise _error(
                    f"the inbound side takes limiter, bulkhead, rate_limit and shadow; "
                    f"not {sorted(extra)}",
                    f"{where}.{sorted(extra)[0]}",
                    config,
                )
            rate = layer.get("rate_limit")
            if isinstance(rate, RateLimitConfig) and rate.shared is not None:
                # The door admits synchronously, before the handler runs; a Redis trip there
                # is not supported. Share the limit on the callers' edges instead.
                raise _error(
                    "a rate limit shared through Redis applies on edges (caller->callee), not "
                    "at a service's door; set it on the callers' edge, or leave shared out",
                    f"{where}.rate_limit.shared",
                    config,
                )
            inbound[service] = layer
        settings = cls(defaults, edges, routes, inbound, config=config)
        settings._check()
        return settings

    def _check(self) -> None:
        """Build every combination the settings can produce, so that impossible ones (hedge
        with retry, shadowing an absent policy ...) fail at load, naming the layer.

        Each declared edge is built (``~`` standing for "any other service" on a ``*`` side),
        and so is each pair where a ``caller->*`` layer meets a ``*->callee`` layer: those two
        combine on a->b though no layer names a->b. Each with every route that applies to it.
        """
        pairs = {(c, d) for c, _, d in (edge.partition("->") for edge in self.edges)}
        todo = {(c.replace("*", "~"), d.replace("*", "~")) for c, d in pairs} | {("~", "~")}
        todo |= {(c, d) for c, w in pairs if w == "*" for v, d in pairs if v == "*"}
        for caller, callee in sorted(todo):
            self.policy(caller, callee)
            for route in sorted(self.route_names(caller, callee)):
                self.policy(caller, callee, route)
        for service in self.inbound:
            self.inbound_policy(service)

    def layers(
        self, caller: str, callee: str, route: str | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """The layers that apply to a call, least specific first, each with its key."""
        out: list[tuple[str, dict[str, Any]]] = [("resilience.defaults", self.defaults)]
        keys = _edge_keys(caller, callee)
        for key in keys:
            layer = self.edges.get(key)
            if layer is not None:
                out.append((f"resilience.edges.{key}", layer))
        if route is not None:
            for key in keys:
                layer = self.routes.get(key, {}).get(route)
                if layer is not None:
                    out.append((f"resilience.edges.{key}.routes.{route}", layer))
        return out

    def policy(self, caller: str, callee: str, route: str | None = None) -> PolicyConfig:
        """The merged policies of a call from ``caller`` to ``callee`` (on ``route``)."""
        return parse_policy(self.layers(caller, callee, route), self._config)

    def has_route_policies(self, caller: str, callee: str, route: str) -> bool:
        """Whether ``route`` of this edge has policies of its own."""
        return any(route in self.routes.get(k, {}) for k in _edge_keys(caller, callee))

    def route_names(self, caller: str, callee: str) -> set[str]:
        """The routes with policies of their own on this edge (from any layer applying to it)."""
        return {r for k in _edge_keys(caller, callee) for r in self.routes.get(k, {})}

    def inbound_policy(self, service: str) -> PolicyConfig:
        """The policies at the door of ``service``."""
        layer = self.inbound.get(service, {})
        return parse_policy([(f"resilience.inbound.{service}", layer)], self._config)

    @staticmethod
    def layer_to_builtins(layer: Mapping[str, Any]) -> dict[str, Any]:
        """One validated layer (or an operator override) as plain data, ready for JSON.

        A password in a shared rate limit's Redis URL is masked: this data is shown to
        operators and the control plane.
        """
        out = {
            k: (v if v is False else msgspec.to_builtins(v, enc_hook=_plain))
            for k, v in layer.items()
        }
        rate = out.get("rate_limit")
        if isinstance(rate, dict) and isinstance(rate.get("shared"), str):
            rate["shared"] = _mask_password(rate["shared"])
        return out

    def to_builtins(self) -> dict[str, Any]:
        """The settings as plain data (for the control plane and ``garrison config check``)."""
        plain = self.layer_to_builtins
        return {
            "defaults": plain(self.defaults),
            "edges": {
                k: {**plain(v), "routes": {r: plain(b) for r, b in self.routes.get(k, {}).items()}}
                for k, v in self.edges.items()
            },
            "inbound": {k: plain(v) for k, v in self.inbound.items()},
        }


def _edge_keys(caller: str, callee: str) -> tuple[str, ...]:
    """The edge keys whose layers apply to caller -> callee, least specific first."""
    keys = (f"*->{callee}", f"{caller}->*", f"{caller}->{callee}")
    return tuple(k for i, k in enumerate(keys) if k not in keys[:i])  # "*" names: no repeats
