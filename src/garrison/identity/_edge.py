"""The identity edge: turn whatever credentials a request carries into one signed passport.

Theory of operation
-------------------
:meth:`IdentityEdge.authenticate` runs once per request at the edge (the gateway, or the auth
endpoint a proxy calls):

1. **Find.** Every allowed resolver's ``find`` looks at the headers and cookies (cheap, no I/O),
   in the resolvers' order. The first *device* credential (device token, client certificate)
   and the first *user* credential (API key, JWT, opaque token, session cookie) are kept: a
   request may say both who acts and on what device. Routes may restrict the resolvers.
2. **Resolve.** Each kept credential is verified by its resolver, through the verified-credential
   cache for the kinds whose verification is pure (JWTs, device tokens: signature and expiry,
   keyed by the resolver's key generation). Sessions and API keys always read their store, so
   revocation takes effect at the next request; introspection and client certificates cache
   inside their resolvers. A credential that fails is an :class:`Unauthenticated` with the
   resolver's reason: a bad credential is never silently downgraded to anonymous (unless the
   caller asks, ``ignore_invalid``). An outage (:class:`ServiceUnavailable`) propagates: 503,
   never a 401 that would log users out.
3. **Merge.** The user comes from the user credential, the device from the device credential
   (else from the user credential, e.g. a device-bound session); two credentials naming
   different devices are refused (``device_conflict``). The passport expires with the earlier
   credential, is ``degraded`` if either is, and the identity actions of both are kept.
4. **Mint** with :meth:`PassportCodec.mint_for`. With no credential at all the passport is
   anonymous, if the route allows it (else ``credential_missing``).

:class:`AccessRule` is the sans-I/O check of a route's requirements against the passport:
a missing identity is a 401 (:class:`Unauthenticated`), a known identity with too weak an
authentication or lacking a device trust, role or scope is a 403 (:class:`PermissionDenied`),
with the reasons the service side's ``Requires`` gives.

Services can ask the edge to act on the identity by answering with the header
``garrison-identity-action`` (:data:`IDENTITY_ACTION_HEADER`): ``renew-session`` (re-seal the
session cookie now) or ``end-session`` (revoke it and clear the cookie);
:meth:`IdentityEdge.execute` turns the request into :class:`IdentityAction`\\ s.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from garrison.core import (
    Clock,
    GarrisonConfig,
    PermissionDenied,
    Unauthenticated,
    get_logger,
)

from ._cache import VerifiedCredentialCache
from ._model import (
    Assurance,
    Authentication,
    Credential,
    CredentialKind,
    IdentityAction,
    Passport,
    RequestCredentials,
    Resolution,
    Resolver,
    TrustLevel,
)
from ._passport import PassportCodec
from ._session import SessionCookieResolver

__all__ = [
    "AUTH_MODES",
    "CACHED_KINDS",
    "DEVICE_KINDS",
    "IDENTITY_ACTION_HEADER",
    "SERVICE_ACTIONS",
    "AccessRule",
    "AuthMode",
    "EdgeResult",
    "IdentityEdge",
]

_log = get_logger("identity")

AuthMode = Literal["anonymous", "user", "device", "user_or_device"]
"""What a route requires: nothing, a user, a trusted device, or either."""
AUTH_MODES: Final = ("anonymous", "user", "device", "user_or_device")

IDENTITY_ACTION_HEADER: Final = "garrison-identity-action"
"""Response header by which a service asks the edge to act on the identity; the edge executes
it and strips it. Values: see :data:`SERVICE_ACTIONS` (several may be comma-separated)."""

SERVICE_ACTIONS: Final = frozenset({"renew-session", "end-session"})
"""What a service may ask for with :data:`IDENTITY_ACTION_HEADER`."""

DEVICE_KINDS: Final = frozenset({CredentialKind.DEVICE_TOKEN, CredentialKind.CLIENT_CERT})
"""Credential kinds that identify a device rather than a user."""

CACHED_KINDS: Final = frozenset({CredentialKind.JWT, CredentialKind.DEVICE_TOKEN})
"""Kinds the edge puts through the verified-credential cache: their verification is a pure
function of the credential, the clock and the resolver's keys (its ``generation``). Sessions
and API keys are revocable server-side and read their store every time; introspection and
client certificates cache inside their resolvers."""

_NEVER: Final = math.inf


class AccessRule(msgspec.Struct, frozen=True, kw_only=True):
    """A route's identity requirements, checked against the minted passport (no I/O)."""

    auth: AuthMode = "anonymous"
    """``anonymous`` (identity optional), ``user``, ``device`` or ``user_or_device``."""
    scopes: tuple[str, ...] = ()
    """Scopes the user must hold, all of them."""
    roles: tuple[str, ...] = ()
    """Roles the user must hold, all of them."""
    min_assurance: Assurance = Assurance.NONE
    """Lowest authentication assurance accepted (NIST AAL 0-3)."""
    device_trust: TrustLevel = TrustLevel.REGISTERED
    """Lowest device trust that counts as a device for ``device`` / ``user_or_device``."""

    @property
    def allows_anonymous(self) -> bool:
        """Whether a request without any credential may pass."""
        return self.auth == "anonymous"

    def check(self, passport: Passport) -> None:
        """Raise :class:`Unauthenticated` (401) or :class:`PermissionDenied` (403), or pass.

        Scopes and roles are the user's: under ``user_or_device`` a device-only passport is
        not asked for them.
        """
        user, device = passport.user, passport.device
        needs_user = bool(self.scopes or self.roles) and self.auth != "user_or_device"
        # 401: the identity the route needs is not there (the reasons and their order are
        # those of the service side's Requires, so the edge and the services agree).
        if (self.auth == "user" or needs_user) and user is None:
            raise Unauthenticated("this route requires a signed-in user", reason="user_required")
        if self.auth == "device" and device is None:
            raise Unauthenticated(
                "this route requires a device credential", reason="device_required"
            )
        if (
            user is None
            and device is None
            and (self.auth == "user_or_device" or self.min_assurance > Assurance.NONE)
        ):
            raise Unauthenticated(
                "this route requires a user or a device credential", reason="credential_required"
            )
        # 403: it is there, but not enough.
        if passport.auth.assurance < self.min_assurance:
            raise PermissionDenied(
                f"this route requires assurance {self.min_assurance.name} or higher; the "
                f"passport has {Assurance(passport.auth.assurance).name}",
                reason="insufficient_assurance",
            )
        if (
            device is not None
            and device.trust < self.device_trust
            and (self.auth == "device" or (self.auth == "user_or_device" and user is None))
        ):
            raise PermissionDenied(
                f"this route requires device trust {self.device_trust.name} or higher; the "
                f"device has {TrustLevel(device.trust).name}",
                reason="insufficient_device_trust",
            )
        if user is not None:
            lacking = [r for r in self.roles if r not in user.roles]
            if lacking:
                raise PermissionDenied(
                    f"this route requires role(s): {', '.join(lacking)}", reason="missing_roles"
                )
            missing = [s for s in self.scopes if s not in user.scopes]
            if missing:
                raise PermissionDenied(
                    f"this route requires scope(s): {', '.join(missing)}",
                    reason="missing_scopes",
                )


@dataclass(frozen=True, slots=True)
class EdgeResult:
    """What :meth:`IdentityEdge.authenticate` decided for one request."""

    passport: Passport
    """The minted passport."""
    token: str
    """Its wire form, for the ``garrison-passport`` header."""
    actions: tuple[IdentityAction, ...] = ()
    """What the edge must do on the response (e.g. set a renewed session cookie)."""
    credentials: tuple[Credential, ...] = ()
    """Every credential found in the request, in resolver order, used or not (never logged):
    for service-sent actions, and to keep them all away from upstreams."""


class IdentityEdge:
    """Resolves credentials and mints passports; see the module docstring.

    ``resolvers`` are consulted in order; ``cache`` (optional) fronts the kinds in
    :data:`CACHED_KINDS`. Call :meth:`aclose` to close the resolvers.
    """

    def __init__(
        self,
        resolvers: Iterable[Resolver],
        codec: PassportCodec,
        cache: VerifiedCredentialCache | None = None,
    ) -> None:
        self._resolvers = tuple(resolvers)
        names = [r.name for r in self._resolvers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"resolver names must be unique; repeated: {', '.join(dup)}")
        self._by_name: dict[str, Resolver] = {r.name: r for r in self._resolvers}
        self.codec = codec
        self.cache = cache

    @classmethod
    def from_config(
        cls,
        config: GarrisonConfig,
        *,
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
    ) -> IdentityEdge:
        """The edge ``[identity]`` describes: its resolvers, passport codec and cache."""
        from ._config import IdentityConfig, build_resolvers

        identity = IdentityConfig.from_config(config)
        codec = identity.codec(config, clock=clock, env=env)
        resolvers = build_resolvers(identity, config, clock=clock, env=env)
        return cls(resolvers, codec, VerifiedCredentialCache(identity.cache, clock=clock))

    @property
    def resolvers(self) -> tuple[Resolver, ...]:
        """The resolvers, in the order they are consulted."""
        return self._resolvers

    @property
    def resolver_names(self) -> frozenset[str]:
        """The names routes may list in ``resolvers``."""
        return frozenset(self._by_name)

    async def authenticate(
        self,
        request: RequestCredentials,
        *,
        allowed: Collection[str] | None = None,
        anonymous: bool = True,
        ignore_invalid: bool = False,
        txn: str | None = None,
    ) -> EdgeResult:
        """Resolve the request's credentials and mint its passport.

        ``allowed`` names the resolvers that may apply (None: all); ``anonymous`` whether a
        request without credentials gets an anonymous passport (else ``credential_missing``);
        ``ignore_invalid`` turns a failing credential into an anonymous passport instead of an
        error (for public pages; only with ``anonymous``); ``txn`` the transaction id.
        """
        user: tuple[Resolver, Credential] | None = None
        device: tuple[Resolver, Credential] | None = None
        found: list[Credential] = []
        for r in self._resolvers:
            cred = r.find(request)
            if cred is None:
                continue
            found.append(cred)  # allowed here or not: every credential stays at the edge
            if allowed is not None and r.name not in allowed:
                continue
            if cred.kind in DEVICE_KINDS:
                device = device or (r, cred)
            else:
                user = user or (r, cred)
        creds = tuple(found)
        if user is None and device is None:
            if not anonymous:
                raise Unauthenticated(
                    "no credential found in the request", reason="credential_missing"
                )
            return self._anonymous(txn, creds)
        try:
            if user is not None and device is not None:
                ures, dres = await asyncio.gather(self._resolve(*user), self._resolve(*device))
                resolution = _merge(ures, dres)
            elif user is not None:
                resolution = await self._resolve(*user)
            else:
                assert device is not None
                resolution = await self._resolve(*device)
            passport, token = self.codec.mint_for(resolution, txn=txn)
        except Unauthenticated:
            if ignore_invalid and anonymous:
                return self._anonymous(txn, creds)
            raise
        return EdgeResult(passport, token, resolution.actions, creds)

    async def execute(self, action: str, result: EdgeResult) -> tuple[IdentityAction, ...]:
        """The identity actions for a service's ``garrison-identity-action`` value.

        ``renew-session`` re-seals the request's session cookie with a new idle deadline;
        ``end-session`` revokes the session and clears the cookie. An unknown action, or one
        that does not apply to this request (no session), yields nothing and is logged.
        """
        name = action.strip().lower()
        if name not in SERVICE_ACTIONS:
            _log.warning("ignored unknown identity action %r from a service", name[:40])
            return ()
        out: list[IdentityAction] = []
        for cred in result.credentials:
            if cred.kind is not CredentialKind.SESSION:
                continue
            resolver = self._by_name.get(cred.resolver)
            if resolver is None:
                continue
            if name == "end-session":
                out.extend(await _end_session(resolver, cred))
            else:
                out.extend(await _renew_session(resolver, cred))
        if not out:
            _log.info("identity action %s does not apply to this request (no session)", name)
        return tuple(out)

    async def aclose(self) -> None:
        """Close every resolver that holds connections or stores."""
        for r in self._resolvers:
            close: Callable[[], Awaitable[None]] | None = getattr(r, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:
                    _log.exception("closing resolver %s failed", r.name)

    # -- internals ------------------------------------------------------------------------

    def _anonymous(self, txn: str | None, found: tuple[Credential, ...]) -> EdgeResult:
        resolution = Resolution(
            auth=Authentication(credential=CredentialKind.ANONYMOUS), expires_at=_NEVER
        )
        passport, token = self.codec.mint_for(resolution, txn=txn)
        return EdgeResult(passport, token, (), found)

    async def _resolve(self, resolver: Resolver, cred: Credential) -> Resolution:
        cache = self.cache
        if cache is None or cred.kind not in CACHED_KINDS:
            return await resolver.resolve(cred)
        gen: Hashable = getattr(resolver, "generation", None)
        hit = cache.lookup(cred, generation=gen)
        if isinstance(hit, Resolution):
            return hit
        if hit is not None:
            raise hit.error()
        try:
            resolution = await resolver.resolve(cred)
        except Unauthenticated as exc:
            cache.put_rejection(cred, exc, generation=gen)
            raise
        cache.put(cred, resolution, generation=gen)
        return resolution


def _merge(user: Resolution, device: Resolution) -> Resolution:
    """One resolution from a user credential and a device credential."""
    dev = device.device
    if user.device is not None and dev is not None and user.device.id != dev.id:
        raise Unauthenticated(
            "the user credential and the device credential name different devices",
            reason="device_conflict",
        )
    auth: Authentication = user.auth if user.user is not None else device.auth
    return Resolution(
        auth=auth,
        expires_at=min(user.expires_at, device.expires_at),
        user=user.user if user.user is not None else device.user,
        device=dev if dev is not None else user.device,
        degraded=user.degraded or device.degraded,
        actions=user.actions + device.actions,
    )


async def _renew_session(resolver: Resolver, cred: Credential) -> tuple[IdentityAction, ...]:
    renew: Callable[[Credential], Awaitable[Any]] | None = getattr(resolver, "renew", None)
    if renew is not None:  # a resolver that offers renewal itself
        got = await renew(cred)
        return (got,) if isinstance(got, IdentityAction) else tuple(got or ())
    if not isinstance(resolver, SessionCookieResolver):
        return ()
    # SessionCookieResolver renews on its own schedule inside resolve(); a service asking for
    # it now (after a sensitive action, say) gets the same steps, forced.
    try:
        opened = resolver._open(cred.value, cred.device_id)
    except Unauthenticated:
        return ()
    session = await resolver.store.get(opened.session_id)
    if session is None or session.revoked:
        return ()
    now = resolver._clock.time()
    if now >= session.valid_until or not await resolver.store.touch(session, now):
        return ()
    return (resolver._cookie_action(msgspec.structs.replace(session, last_seen=now), now),)


async def _end_session(resolver: Resolver, cred: Credential) -> tuple[IdentityAction, ...]:
    logout: Callable[..., Awaitable[IdentityAction]] | None = getattr(resolver, "logout", None)
    if logout is None:
        return ()
    return (await logout(cred.value, device_id=cred.device_id),)
