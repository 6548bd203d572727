"""``[identity]``: the passport keys and the credential resolvers of the edge, from garrison.toml.

Each sub-table is validated with the configuration struct its own module defines, one table at
a time, so that every error is a :class:`~garrison.core.ConfigError` naming the full dotted key
(``identity.session.active_key``) and where the value came from (the file or the variable)::

    [identity]
    allow_dev_key = true          # false (or GARRISON_ENV=production): refuse to run without keys

    [identity.passport]           # KeysConfig                 -> the passport codec
    [identity.jwt.issuers.NAME]   # JwtConfig / JwtIssuerConfig -> JwtResolver
    [identity.session]            # SessionCookieConfig         -> SessionCookieResolver
    [identity.api_keys]           # ApiKeyConfig                -> ApiKeyResolver
    [identity.introspection]      # IntrospectionConfig         -> IntrospectionResolver
    [identity.device_tokens]      # DeviceTokenConfig           -> DeviceTokenResolver
    [identity.client_certs]       # ClientCertConfig            -> ClientCertResolver
    [identity.cache]              # CacheConfig: the edge's verified-credential cache

Validation (:meth:`IdentityConfig.from_config`) reads no secret; :func:`build_resolvers` and
:meth:`IdentityConfig.keyring` read them (``env:`` / ``file:`` references) and open stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec

from garrison.core import Clock, ConfigError, GarrisonConfig, convert_section, get_logger

from ._apikeys import ApiKeyConfig, ApiKeyResolver
from ._cache import CacheConfig
from ._device import ClientCertConfig, ClientCertResolver, DeviceTokenConfig, DeviceTokenResolver
from ._introspect import IntrospectionConfig, IntrospectionResolver
from ._jwt import JwtConfig, JwtIssuerConfig, JwtResolver
from ._keys import Keyring, KeysConfig
from ._model import Resolver
from ._passport import PassportCodec
from ._session import SessionCookieConfig, SessionCookieResolver
from ._verify import is_production

__all__ = ["RESOLVER_ORDER", "IdentityConfig", "build_resolvers", "is_production"]

_log = get_logger("identity")
T = TypeVar("T")

RESOLVER_ORDER: Final = (
    "client_certs",
    "device_tokens",
    "api_keys",
    "jwt",
    "introspection",
    "session",
)
"""The order in which configured resolvers look for their credential.

Device credentials come first (a request may carry a device credential *and* a user
credential; the edge resolves one of each). Among user credentials an explicit header (API
key, then JWT, then an opaque token) wins over an ambient cookie, so a script holding a token
never acts with a browser session it happens to carry.
"""

_SECTIONS: Final = frozenset({"allow_dev_key", "passport", "cache", *RESOLVER_ORDER})


class IdentityConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The validated ``[identity]`` section.

    A resolver table left out means that resolver is not used; ``passport`` and ``cache``
    always have their defaults.
    """

    allow_dev_key: bool = True
    """With no ``[identity.passport]`` keys, use the development key of
    :meth:`Keyring.dev_default` (``<app>/.garrison/passport.key``). Set it to false in
    production; ``GARRISON_ENV=production`` has the same effect."""
    passport: KeysConfig = KeysConfig()
    """``[identity.passport]``: the passport's keys, lifetime and size limit."""
    cache: CacheConfig = CacheConfig()
    """``[identity.cache]``: the edge's verified-credential cache (JWTs and device tokens)."""
    jwt: JwtConfig | None = None
    """``[identity.jwt]``: JWT / OIDC issuers."""
    session: SessionCookieConfig | None = None
    """``[identity.session]``: session cookies."""
    api_keys: ApiKeyConfig | None = None
    """``[identity.api_keys]``: API keys."""
    introspection: IntrospectionConfig | None = None
    """``[identity.introspection]``: opaque OAuth2 tokens (RFC 7662)."""
    device_tokens: DeviceTokenConfig | None = None
    """``[identity.device_tokens]``: HMAC device tokens."""
    client_certs: ClientCertConfig | None = None
    """``[identity.client_certs]``: client certificates forwarded by the TLS terminator."""

    @classmethod
    def from_config(cls, config: GarrisonConfig) -> IdentityConfig:
        """Validate ``config.identity`` table by table; ConfigError names the key."""
        raw = config.identity
        unknown = sorted(set(raw) - _SECTIONS)
        if unknown:
            raise ConfigError(
                f"unknown key; expected one of: {', '.join(sorted(_SECTIONS))}",
                source=config.source,
                key=f"identity.{unknown[0]}",
            )
        allow = raw.get("allow_dev_key", True)
        if not isinstance(allow, bool):
            raise ConfigError(
                f"expected true or false, got {allow!r}",
                source=config.source,
                key="identity.allow_dev_key",
            )
        fields: dict[str, Any] = {"allow_dev_key": allow}
        types: dict[str, type[Any]] = {
            "passport": KeysConfig,
            "cache": CacheConfig,
            "jwt": JwtConfig,
            "session": SessionCookieConfig,
            "api_keys": ApiKeyConfig,
            "introspection": IntrospectionConfig,
            "device_tokens": DeviceTokenConfig,
            "client_certs": ClientCertConfig,
        }
        for name, type_ in types.items():
            if name in raw:
                fields[name] = convert_section(
                    raw[name], type_, key=f"identity.{name}", config=config
                )
        jwt = fields.get("jwt")
        if jwt is not None:
            if not jwt.issuers:
                raise ConfigError(
                    "no issuer configured", source=config.source, key="identity.jwt.issuers"
                )
            for name, issuer in jwt.issuers.items():  # validated now, built later
                convert_section(
                    issuer, JwtIssuerConfig, key=f"identity.jwt.issuers.{name}", config=config
                )
        return cls(**fields)

    @property
    def resolver_sections(self) -> tuple[str, ...]:
        """The configured resolver tables, in :data:`RESOLVER_ORDER`."""
        return tuple(n for n in RESOLVER_ORDER if getattr(self, n) is not None)

    def resolver_names(self) -> tuple[str, ...]:
        """The ``name`` of each configured resolver (what routes list in ``resolvers``)."""
        return tuple(getattr(self, s).name for s in self.resolver_sections)

    def production(self, env: Mapping[str, str] | None = None) -> bool:
        """Whether the development key is refused (``allow_dev_key = false`` or production)."""
        return not self.allow_dev_key or is_production(env)

    def keyring(self, config: GarrisonConfig, *, env: Mapping[str, str] | None = None) -> Keyring:
        """The passport keyring: the configured keys, else (outside production) the
        development key under the app's data dir. ConfigError names the key."""
        cfg = self.passport
        if cfg.keys or cfg.public_keys:
            return Keyring.from_config(
                cfg, env, root=config.root, key="identity.passport", source=config.source
            )
        if self.production(env):
            raise ConfigError(
                "no passport keys configured, and this is production (GARRISON_ENV=production "
                "or allow_dev_key = false): configure [identity.passport] keys and active",
                source=config.source,
                key="identity.passport.keys",
            )
        _log.warning(
            "no [identity.passport] keys: using the development key in %s (never in production)",
            Path(config.root) / config.app.data_dir,
        )
        return Keyring.dev_default(config.root, data_dir=config.app.data_dir)

    def codec(
        self,
        config: GarrisonConfig,
        *,
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
    ) -> PassportCodec:
        """The passport codec of ``[identity.passport]`` over :meth:`keyring`."""
        return PassportCodec.from_config(self.passport, self.keyring(config, env=env), clock=clock)


def build_resolvers(
    identity: IdentityConfig,
    config: GarrisonConfig,
    *,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> list[Resolver]:
    """Build every configured resolver, in :data:`RESOLVER_ORDER`.

    Reads secrets and opens stores; on an error the resolvers already built are not closed
    (nothing has used them yet: stores open lazily). Resolver names must be unique.
    """
    resolvers: list[Resolver] = []
    for section in identity.resolver_sections:
        key = f"identity.{section}"
        r: Resolver
        if section == "jwt":
            r = JwtResolver.from_config(
                _given(identity.jwt), app=config, key=key, clock=clock, env=env
            )
        elif section == "session":
            r = SessionCookieResolver.from_config(
                _given(identity.session), app=config, key=key, clock=clock, env=env
            )
        elif section == "api_keys":
            r = ApiKeyResolver.from_config(
                _given(identity.api_keys), app=config, key=key, clock=clock, env=env
            )
        elif section == "introspection":
            r = IntrospectionResolver.from_config(
                _given(identity.introspection), app=config, key=key, clock=clock, env=env
            )
        elif section == "device_tokens":
            r = DeviceTokenResolver.from_config(
                _given(identity.device_tokens), app=config, key=key, clock=clock, env=env
            )
        else:
            r = ClientCertResolver.from_config(
                _given(identity.client_certs), app=config, key=key, clock=clock, env=env
            )
        if any(other.name == r.name for other in resolvers):
            raise ConfigError(
                f"resolver name {r.name!r} is already used by another resolver",
                source=config.source,
                key=f"{key}.name",
            )
        resolvers.append(r)
    return resolvers


def _given(value: T | None) -> T:
    assert value is not None
    return value
