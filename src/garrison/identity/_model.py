"""The identity model: what a passport says, and the contract every credential resolver meets.

A passport carries *ids only*: no names, e-mail addresses or other PII, and never the raw
credential. Everything here is plain frozen data; signing and the wire format live in
``_passport.py``, the resolvers in their own modules, the edge in ``garrison.gateway``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Protocol

import msgspec

__all__ = [
    "Assurance",
    "Authentication",
    "Credential",
    "CredentialKind",
    "DeviceIdentity",
    "IdentityAction",
    "Passport",
    "RequestCredentials",
    "Resolution",
    "Resolver",
    "TrustLevel",
    "UserIdentity",
]


class CredentialKind(enum.StrEnum):
    """Which kind of credential the client presented at the edge."""

    ANONYMOUS = "anonymous"
    JWT = "jwt"
    SESSION = "session"
    API_KEY = "api_key"
    OPAQUE = "opaque"
    DEVICE_TOKEN = "device_token"
    CLIENT_CERT = "client_cert"


class Assurance(enum.IntEnum):
    """Authentication assurance level, after NIST SP 800-63B AAL."""

    NONE = 0
    """Anonymous."""
    AAL1 = 1
    """Single factor (password, API key, bearer token)."""
    AAL2 = 2
    """Two factors (MFA)."""
    AAL3 = 3
    """Hardware-bound key (device certificate, FIDO2 authenticator)."""


class TrustLevel(enum.IntEnum):
    """How far the device itself is trusted."""

    UNKNOWN = 0
    """No device credential."""
    REGISTERED = 1
    """A device token issued to a registered device."""
    ATTESTED = 2
    """A client certificate or attested key bound to the device."""


class UserIdentity(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Who the request acts for."""

    subject: str
    """The user's stable id at the issuer (``sub``)."""
    account: str | None = None
    """Account / profile id, when the user has several."""
    tenant: str | None = None
    """Tenant or organisation id."""
    roles: tuple[str, ...] = ()
    """Role names."""
    scopes: tuple[str, ...] = ()
    """OAuth scopes granted to this request."""


class DeviceIdentity(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """On what the request acts (or from which device it came)."""

    id: str
    """The device id."""
    type: str = "unknown"
    """Device type, e.g. ``battery``, ``charger``, ``browser``."""
    trust: TrustLevel = TrustLevel.UNKNOWN
    """How the device was authenticated."""


class Authentication(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the identity was established at the edge."""

    credential: CredentialKind
    """The kind of credential presented."""
    issuer: str = ""
    """Who vouched for it (JWT ``iss``, ``session``, ``api-keys``, the introspection URL ...)."""
    method: str = ""
    """Authentication method, e.g. ``pwd``, ``mfa``, ``cert`` (JWT ``amr``)."""
    assurance: Assurance = Assurance.NONE
    """Assurance level."""
    at: float = 0.0
    """When the user authenticated (JWT ``auth_time``), seconds since the epoch; 0 if unknown."""


class Passport(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The signed statement of identity that every service behind the edge trusts.

    Minted by the edge per request, short-lived (60 s by default, never beyond the original
    credential's expiry), verified by each service before its body is decoded.
    """

    auth: Authentication
    """How the identity was established."""
    issued_at: float
    """Mint time, seconds since the epoch."""
    expires_at: float
    """Expiry, seconds since the epoch."""
    txn: str
    """Transaction id: joins traces and audit logs across every hop of this request."""
    user: UserIdentity | None = None
    """The user, when one is authenticated."""
    device: DeviceIdentity | None = None
    """The device, when one is identified."""
    degraded: bool = False
    """True when the credential was valid but could not be refreshed (e.g. the identity
    provider was down): the request proceeds, and services may restrict sensitive actions."""
    ext: dict[str, str] = {}
    """A small extension map (bounded in size by the wire format)."""

    @property
    def anonymous(self) -> bool:
        """True when neither a user nor a device is identified."""
        return self.user is None and self.device is None

    def has_scopes(self, *scopes: str) -> bool:
        """Whether the user holds every one of ``scopes``."""
        return self.user is not None and all(s in self.user.scopes for s in scopes)

    def has_roles(self, *roles: str) -> bool:
        """Whether the user holds every one of ``roles``."""
        return self.user is not None and all(r in self.user.roles for r in roles)


class IdentityAction(msgspec.Struct, frozen=True):
    """Something the edge must do on the response, e.g. set a refreshed session cookie."""

    kind: str
    """``set_cookie`` or ``clear_cookie``."""
    name: str
    """Cookie name."""
    value: str = ""
    """Cookie value for ``set_cookie``."""
    max_age: int | None = None
    """Cookie lifetime in seconds."""


class RequestCredentials(msgspec.Struct, frozen=True):
    """What the edge hands resolvers: the request's headers and cookies, nothing else."""

    headers: Mapping[str, str]
    """Request headers, lowercase names."""
    cookies: Mapping[str, str] = {}
    """Parsed cookies."""


class Credential(msgspec.Struct, frozen=True):
    """A credential found in a request, not yet verified."""

    kind: CredentialKind
    """What it is."""
    value: str
    """The raw credential (a token, a key, a session id, a certificate). Never logged."""
    resolver: str
    """The name of the resolver that found it."""
    device_id: str | None = None
    """The device the request claims to come from, when the credential is device-bound."""


class Resolution(msgspec.Struct, frozen=True):
    """A verified credential: who and what it names, and until when it holds."""

    auth: Authentication
    """How it was established."""
    expires_at: float
    """When the credential itself expires (the passport never outlives it)."""
    user: UserIdentity | None = None
    """The user, if any."""
    device: DeviceIdentity | None = None
    """The device, if any."""
    degraded: bool = False
    """Valid, but a refresh failed."""
    actions: tuple[IdentityAction, ...] = ()
    """What the edge must do on the response (e.g. renew a cookie)."""


class Resolver(Protocol):
    """Turns one kind of credential into a :class:`Resolution`.

    ``find`` is cheap and does no I/O: it only looks for its credential in the request.
    ``resolve`` verifies it (signature, expiry, revocation, a remote introspection ...) and
    raises :class:`~garrison.core.Unauthenticated` naming the reason when it fails.
    """

    name: str

    def find(self, request: RequestCredentials) -> Credential | None:
        """The credential this resolver handles, if the request carries one."""
        ...

    async def resolve(self, credential: Credential) -> Resolution:
        """Verify ``credential``; raise Unauthenticated on any failure."""
        ...
