"""``[gateway]``: the edge's listener, limits and routes, validated with errors naming the key.

.. code-block:: toml

    [gateway]
    port = 8080
    timeout = 30.0

    [gateway.limits]
    max_body_bytes = 10485760

    [[gateway.routes]]
    prefix = "/api/sites"
    service = "sites"
    auth = "user"
    scopes = ["sites:read"]

Routes are converted one at a time (``gateway.routes.2.auth``) and checked against the rest of
the configuration: the service must be declared in ``[services]``, the resolvers in
``[identity]``.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Annotated, Any, Literal

import msgspec

from garrison.core import ConfigError, GarrisonConfig, convert_section
from garrison.identity import Assurance, TrustLevel
from garrison.identity._edge import AccessRule, AuthMode

__all__ = ["GatewayConfig", "LimitsConfig", "RouteConfig"]

_PositiveFloat = Annotated[float, msgspec.Meta(gt=0, le=86_400)]
_PREFIX = re.compile(r"^/([A-Za-z0-9._~!$&'()*+,;=:@%-]+(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*)?\Z")
_HEADER = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]{1,64}\Z")
_ASSURANCE = {"none": 0, "aal1": 1, "aal2": 2, "aal3": 3}
_TRUST = {"unknown": 0, "registered": 1, "attested": 2}
# Headers that can never be let through from outside: the identity the edge itself asserts.
_NEVER_PASSED = ("garrison-passport", "garrison-identity-")


class LimitsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[gateway.limits]``: what a request may be, checked before any work."""

    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 20)] = 16_384
    """Sum of the request's header names and values, in bytes (431 above it)."""
    max_headers: Annotated[int, msgspec.Meta(ge=8, le=1000)] = 100
    """Most request headers (431 above it)."""
    max_body_bytes: Annotated[int, msgspec.Meta(ge=0)] = 10 * 1024 * 1024
    """Largest request body forwarded, in bytes (413 above it, whether declared by
    Content-Length or counted while streaming)."""


class RouteConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[[gateway.routes]]``: a path prefix, the service behind it and its identity rules."""

    prefix: str
    """Path prefix matched on segment boundaries (``/api`` matches ``/api`` and ``/api/x``,
    not ``/apix``); the longest matching prefix wins."""
    service: str | None = None
    """The upstream, a key of ``[services]``. Without it the route only serves the auth
    endpoint (a proxy in front does the forwarding)."""
    strip_prefix: bool = False
    """Remove the prefix from the path sent upstream (``/api/sites/1`` -> ``/sites/1``)."""
    auth: AuthMode = "user"
    """``anonymous`` (identity optional), ``user``, ``device`` or ``user_or_device``."""
    scopes: list[str] = []
    """Scopes the user must hold (403 ``missing_scopes`` otherwise)."""
    roles: list[str] = []
    """Roles the user must hold (403 ``missing_roles`` otherwise)."""
    min_assurance: int | str = 0
    """Lowest assurance: 0-3 or ``none``/``aal1``/``aal2``/``aal3`` (403
    ``insufficient_assurance`` otherwise)."""
    device_trust: str = "registered"
    """Lowest device trust that counts as a device: ``registered`` or ``attested``."""
    resolvers: list[str] | None = None
    """Names of the resolvers that may authenticate on this route (default: all)."""
    ignore_invalid: bool = False
    """For ``anonymous`` routes only: a credential that fails verification yields an anonymous
    passport instead of a 401 (public pages reached with a stale cookie)."""
    methods: list[str] = []
    """Allowed methods (405 otherwise); empty: any."""
    timeout: _PositiveFloat | None = None
    """This route's budget in seconds; default the gateway's ``timeout``."""

    def __post_init__(self) -> None:
        if (
            not _PREFIX.match(self.prefix)
            or "/./" in f"{self.prefix}/"
            or "/../" in (f"{self.prefix}/")
        ):
            raise ConfigError(
                f"expected a path starting with '/', without '//', '.' or '..' segments, "
                f"query or trailing '/', got {self.prefix!r}",
                key="prefix",
            )
        if self.prefix == "/_garrison" or self.prefix.startswith("/_garrison/"):
            raise ConfigError("/_garrison is the gateway's own", key="prefix")
        if self.auth == "anonymous" and (self.scopes or self.roles):
            raise ConfigError(
                "scopes and roles need an identity; use auth = 'user' (or user_or_device)",
                key="auth",
            )
        if self.ignore_invalid and self.auth != "anonymous":
            raise ConfigError("only auth = 'anonymous' routes can ignore", key="ignore_invalid")
        if _level(self.min_assurance, _ASSURANCE, "min_assurance") and self.auth == "anonymous":
            raise ConfigError("an anonymous route cannot require assurance", key="min_assurance")
        if self.device_trust not in ("registered", "attested"):
            raise ConfigError(
                f"expected 'registered' or 'attested', got {self.device_trust!r}",
                key="device_trust",
            )
        for i, m in enumerate(self.methods):
            if not re.fullmatch(r"[A-Z]{1,16}", m):
                raise ConfigError(f"expected an upper-case method, got {m!r}", key=f"methods.{i}")
        for field in ("scopes", "roles"):
            for i, v in enumerate(getattr(self, field)):
                if not v or not v.isprintable() or " " in v:
                    raise ConfigError(
                        f"expected a name without spaces, got {v!r}", key=f"{field}.{i}"
                    )

    def rule(self) -> AccessRule:
        """The identity requirements of this route."""
        return AccessRule(
            auth=self.auth,
            scopes=tuple(self.scopes),
            roles=tuple(self.roles),
            min_assurance=Assurance(_level(self.min_assurance, _ASSURANCE, "min_assurance")),
            device_trust=TrustLevel(_TRUST[self.device_trust]),
        )


class GatewayConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[gateway]``: the edge."""

    host: str = "127.0.0.1"
    """Interface the gateway listens on."""
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8080
    """Port the gateway listens on."""
    timeout: _PositiveFloat = 30.0
    """Budget of a proxied request, in seconds: until the whole upstream response has been
    relayed (a client's smaller ``garrison-timeout-ms`` wins). 504 when no answer came."""
    connect_timeout: _PositiveFloat = 2.0
    """Budget to connect to an upstream instance, in seconds."""
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=65_536)] = 512
    """Size of the upstream connection pool."""
    trust_forwarded: bool = False
    """Keep inbound ``x-forwarded-*`` and append to them (the gateway sits behind a proxy you
    run); by default they are replaced with what the gateway sees."""
    forward_credentials: bool = False
    """Forward the credential the passport was made from (the Authorization header, the
    session cookie ...) to the upstream; by default services see the passport only."""
    pass_headers: list[str] = []
    """Inbound ``garrison-*`` headers let through (all others are stripped); never the
    passport or ``garrison-identity-*``."""
    strip_headers: list[str] = []
    """More inbound headers stripped unconditionally (lowercase names)."""
    cookie_secure: bool = True
    """Set cookies from identity actions with ``Secure``."""
    cookie_samesite: Literal["lax", "strict", "none"] = "lax"
    """``SameSite`` of those cookies."""
    auth_endpoint: bool = True
    """Serve ``/_garrison/auth`` (nginx ``auth_request``) and ``/_garrison/authz`` (Envoy
    ``ext_authz``)."""
    auth_clients: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1", "::1"])
    """Peer addresses allowed to call the auth endpoint (the proxy); empty: anyone. A client
    reaching it directly could otherwise exchange its credential for a passport."""
    limits: LimitsConfig = LimitsConfig()
    """Request size limits."""
    routes: list[dict[str, Any]] = []
    """The routes, each a :class:`RouteConfig` (validated by :meth:`from_config`)."""

    def __post_init__(self) -> None:
        for field in ("pass_headers", "strip_headers"):
            for i, name in enumerate(getattr(self, field)):
                if not _HEADER.match(name):
                    raise ConfigError(
                        f"expected a lowercase header name, got {name!r}", key=f"{field}.{i}"
                    )
        for i, name in enumerate(self.pass_headers):
            if name.startswith(_NEVER_PASSED):
                raise ConfigError(
                    f"{name} is asserted by the edge itself and is always stripped",
                    key=f"pass_headers.{i}",
                )

    @classmethod
    def from_config(
        cls, config: GarrisonConfig, *, resolvers: Collection[str] | None = None
    ) -> tuple[GatewayConfig, list[RouteConfig]]:
        """Validate ``[gateway]`` and its routes; ``resolvers`` are the names routes may list
        (None: not checked). ConfigError names the key."""
        gw = convert_section(config.gateway, cls, key="gateway", config=config)
        routes: list[RouteConfig] = []
        seen: dict[str, int] = {}

        def fail(message: str, key: str) -> ConfigError:
            return ConfigError(message, source=config.source, key=key)

        for i, raw in enumerate(gw.routes):
            key = f"gateway.routes.{i}"
            route = convert_section(raw, RouteConfig, key=key, config=config)
            if route.prefix in seen:
                raise fail(f"prefix {route.prefix!r} is already route {seen[route.prefix]}", key)
            seen[route.prefix] = i
            if route.service is not None and route.service not in config.services:
                known = ", ".join(sorted(config.services)) or "none"
                raise fail(
                    f"no service named {route.service!r} (declared: {known})", f"{key}.service"
                )
            if resolvers is not None and route.resolvers is not None:
                for j, name in enumerate(route.resolvers):
                    if name not in resolvers:
                        known = ", ".join(sorted(resolvers)) or "none configured"
                        raise fail(
                            f"no resolver named {name!r} (known: {known})",
                            f"{key}.resolvers.{j}",
                        )
            routes.append(route)
        for name, svc in config.services.items():
            if svc.port <= gw.port < svc.port + svc.replicas and svc.host == gw.host:
                raise fail(f"port {gw.port} is also used by service {name!r}", "gateway.port")
        return gw, routes


def _level(value: int | str, names: dict[str, int], key: str) -> int:
    if isinstance(value, str):
        level = names.get(value.lower())
    else:
        level = value if value in names.values() else None
    if level is None:
        raise ConfigError(f"expected 0-3 or one of {', '.join(names)}, got {value!r}", key=key)
    return level
