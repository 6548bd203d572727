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
failure_rate_threshold]: expected a number in (0, 1]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from garrison.core import ConfigError, GarrisonConfig, convert_section

from ._breaker import BreakerConfig
from ._budget import RetryBudgetConfig
from ._bulkhead import BulkheadConfig
from ._hedge import HedgeConfig
from ._limiter import LimiterConfig
from ._outlier import OutlierConfig
from ._pipeline import PolicyConfig
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


def edge_key(caller: str, callee: str) -> str:
    """The name of an edge: ``caller->callee``."""
    return f"{caller}->{callee}"


def _validate_layer(raw: Any, key: str, config: GarrisonConfig | None) -> dict[str, Any]:
    """Check one layer (a table of policies) on its own; returns it with ``false`` kept."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected a table of policies, got {raw!r}", key=key)
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "routes":
            continue
        tp = _POLICY_TYPES.get(name)
        if tp is None:
            raise ConfigError(
                f"unknown policy {name!r}; expected one of {sorted(_POLICY_TYPES)}",
                source=config.source if config is not None else "",
                key=f"{key}.{name}",
            )
        if value is False and name not in ("timeout", "shadow"):
            out[name] = False
            continue
        if name == "timeout" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        converted = convert_section(value, tp, key=f"{key}.{name}", config=config)
        if name == "timeout" and not converted > 0:
            raise ConfigError(f"expected seconds > 0; got {value!r}", key=f"{key}.timeout")
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
        raise ConfigError(message, key=f"{key}.{exc.key}" if exc.key else key) from None


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
        for top in raw:
            if top not in _TOP:
                raise ConfigError(
                    f"unknown key; expected one of {sorted(_TOP)}", key=f"resilience.{top}"
                )
        defaults = _validate_layer(raw.get("defaults", {}), "resilience.defaults", config)
        edges: dict[str, dict[str, Any]] = {}
        routes: dict[str, dict[str, dict[str, Any]]] = {}
        raw_edges = raw.get("edges", {})
        if not isinstance(raw_edges, Mapping):
            raise ConfigError("expected a table of edges", key="resilience.edges")
        for key, body in raw_edges.items():
            where = f"resilience.edges.{key}"
            caller, sep, callee = key.partition("->")
            if not sep or not caller or not callee or (caller == "*" and callee == "*"):
                raise ConfigError(
                    "edge names are 'caller->callee' ('*' for any caller or any callee, not both)",
                    key=where,
                )
            edges[key] = _validate_layer(body, where, config)
            raw_routes = body.get("routes", {}) if isinstance(body, Mapping) else {}
            if not isinstance(raw_routes, Mapping):
                raise ConfigError("expected a table of routes", key=f"{where}.routes")
            for route, rbody in raw_routes.items():
                if not route.startswith("/"):
                    raise ConfigError("a route starts with '/'", key=f"{where}.routes.{route}")
                routes.setdefault(key, {})[route] = _validate_layer(
                    rbody, f"{where}.routes.{route}", config
                )
        inbound: dict[str, dict[str, Any]] = {}
        raw_inbound = raw.get("inbound", {})
        if not isinstance(raw_inbound, Mapping):
            raise ConfigError("expected a table of services", key="resilience.inbound")
        for service, body in raw_inbound.items():
            layer = _validate_layer(body, f"resilience.inbound.{service}", config)
            extra = set(layer) - {"limiter", "bulkhead", "rate_limit", "shadow"}
            if extra:
                raise ConfigError(
                    f"the inbound side takes limiter, bulkhead, rate_limit and shadow; "
                    f"not {sorted(extra)}",
                    key=f"resilience.inbound.{service}",
                )
            inbound[service] = layer
        settings = cls(defaults, edges, routes, inbound, config=config)
        # Build every declared combination once now, so impossible combinations (hedge with
        # retry, shadowing an absent policy ...) fail at load, naming the edge.
        for key in edges:
            caller, _, callee = key.partition("->")
            settings.policy(caller, callee)
            for route in routes.get(key, {}):
                settings.policy(caller, callee, route)
        for service in inbound:
            settings.inbound_policy(service)
        return settings

    def layers(
        self, caller: str, callee: str, route: str | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """The layers that apply to a call, least specific first, each with its key."""
        out: list[tuple[str, dict[str, Any]]] = [("resilience.defaults", self.defaults)]
        for key in (f"*->{callee}", f"{caller}->*", f"{caller}->{callee}"):
            layer = self.edges.get(key)
            if layer is not None:
                out.append((f"resilience.edges.{key}", layer))
        if route is not None:
            for key in (f"*->{callee}", f"{caller}->*", f"{caller}->{callee}"):
                layer = self.routes.get(key, {}).get(route)
                if layer is not None:
                    out.append((f"resilience.edges.{key}.routes.{route}", layer))
        return out

    def policy(self, caller: str, callee: str, route: str | None = None) -> PolicyConfig:
        """The merged policies of a call from ``caller`` to ``callee`` (on ``route``)."""
        return parse_policy(self.layers(caller, callee, route), self._config)

    def has_route_policies(self, caller: str, callee: str, route: str) -> bool:
        """Whether ``route`` of this edge has policies of its own."""
        return any(
            route in self.routes.get(k, {})
            for k in (f"*->{callee}", f"{caller}->*", f"{caller}->{callee}")
        )

    def inbound_policy(self, service: str) -> PolicyConfig:
        """The policies at the door of ``service``."""
        layer = self.inbound.get(service, {})
        return parse_policy([(f"resilience.inbound.{service}", layer)], self._config)

    def to_builtins(self) -> dict[str, Any]:
        """The settings as plain data (for the control plane and ``garrison config check``)."""

        def plain(layer: dict[str, Any]) -> dict[str, Any]:
            return {k: (v if v is False else msgspec.to_builtins(v)) for k, v in layer.items()}

        return {
            "defaults": plain(self.defaults),
            "edges": {
                k: {**plain(v), "routes": {r: plain(b) for r, b in self.routes.get(k, {}).items()}}
                for k, v in self.edges.items()
            },
            "inbound": {k: plain(v) for k, v in self.inbound.items()},
        }
