"""Identity: token-agnostic user and device identity, resolved once at the edge into a passport.

The public face of the identity pillar; everything else in this package is private.

* the passport: :class:`Passport` and its parts, minted and verified by :class:`PassportCodec`
  with the keys of a :class:`Keyring` (HMAC-SHA256, or Ed25519 where services must verify but
  not mint);
* credential resolvers, one per kind of credential, all meeting the :class:`Resolver`
  contract: JWT/OIDC access tokens (:class:`JwtResolver`), server-side sessions behind a sealed
  cookie (:class:`SessionCookieResolver`), API keys (:class:`ApiKeyResolver`), opaque OAuth2
  tokens by introspection (:class:`IntrospectionResolver`), device tokens and client
  certificates (:class:`DeviceTokenResolver`, :class:`ClientCertResolver`), and a
  :class:`VerifiedCredentialCache` in front of any of them;
* the service side: :class:`Requires` (what a route needs) and :class:`PassportVerifier`.
"""

from ._apikeys import (
    ApiKeyConfig,
    ApiKeyResolver,
    ApiKeyStore,
    IssuedKey,
    MemoryApiKeyStore,
    SqliteApiKeyStore,
)
from ._cache import CacheConfig, CachedResolver, VerifiedCredentialCache
from ._config import IdentityConfig, build_resolvers
from ._device import ClientCertConfig, ClientCertResolver, DeviceTokenConfig, DeviceTokenResolver
from ._edge import IDENTITY_ACTION_HEADER, AccessRule, AuthMode, EdgeResult, IdentityEdge
from ._introspect import IntrospectionConfig, IntrospectionResolver
from ._jwks import JwksCache
from ._jwt import ClaimMapping, JwtConfig, JwtIssuerConfig, JwtResolver
from ._keys import Keyring, KeysConfig, PassportKey
from ._model import (
    Assurance,
    Authentication,
    Credential,
    CredentialKind,
    DeviceIdentity,
    IdentityAction,
    Passport,
    RequestCredentials,
    Resolution,
    Resolver,
    TrustLevel,
    UserIdentity,
)
from ._passport import PASSPORT_HEADER, PassportCodec, TokenInfo, inspect_token
from ._session import NewSession, SessionCookieConfig, SessionCookieResolver
from ._sessionstore import (
    MemorySessionStore,
    RedisSessionStore,
    Session,
    SessionStore,
    SqliteSessionStore,
    StoreUnavailable,
)
from ._verify import PassportVerifier, Requires, load_passport_codec

__all__ = [
    "build_resolvers",
    "IdentityEdge",
    "IdentityConfig",
    "IDENTITY_ACTION_HEADER",
    "EdgeResult",
    "AuthMode",
    "AccessRule",
    "ApiKeyConfig",
    "ApiKeyResolver",
    "ApiKeyStore",
    "Assurance",
    "Authentication",
    "CacheConfig",
    "CachedResolver",
    "ClaimMapping",
    "ClientCertConfig",
    "ClientCertResolver",
    "Credential",
    "CredentialKind",
    "DeviceIdentity",
    "DeviceTokenConfig",
    "DeviceTokenResolver",
    "IdentityAction",
    "IntrospectionConfig",
    "IntrospectionResolver",
    "IssuedKey",
    "JwksCache",
    "JwtConfig",
    "JwtIssuerConfig",
    "JwtResolver",
    "Keyring",
    "KeysConfig",
    "MemoryApiKeyStore",
    "MemorySessionStore",
    "NewSession",
    "PASSPORT_HEADER",
    "Passport",
    "PassportCodec",
    "PassportKey",
    "PassportVerifier",
    "RedisSessionStore",
    "RequestCredentials",
    "Requires",
    "Resolution",
    "Resolver",
    "Session",
    "SessionCookieConfig",
    "SessionCookieResolver",
    "SessionStore",
    "SqliteApiKeyStore",
    "SqliteSessionStore",
    "StoreUnavailable",
    "TokenInfo",
    "TrustLevel",
    "UserIdentity",
    "VerifiedCredentialCache",
    "inspect_token",
    "load_passport_codec",
]
