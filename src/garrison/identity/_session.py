"""Session cookies: a server-side session behind an encrypted, authenticated cookie.

Theory of operation
-------------------
The cookie is ``v1.<kid>.<dev>.<sealed>``:

* ``kid`` names the AES-256-GCM key that sealed it. New cookies use the *active* key; older
  keys keep opening cookies until they are removed from the ring (``unknown_key``) or listed
  as retired (``retired_key``). A cookie sealed with a non-active key is re-sealed with the
  active one on its next use, so a rotation drains without logging anyone out.
* ``dev`` is ``-`` for a session not bound to a device, else a short fingerprint of the device
  id the session was bound to. The fingerprint only gives a precise ``device_mismatch``
  reason before any crypto; the binding itself is the associated data below.
* ``sealed`` is base64url(nonce ‖ AES-GCM(expiry ‖ session id)), the associated data being
  the cookie's header (``v1.<kid>.<dev>``), the cookie name and, for a bound session, the
  device id presented in the device header. A flipped bit anywhere, a truncation, a cookie
  renamed or presented from another device all fail to open (``bad_seal``).
* The sealed expiry is the session's idle deadline when the cookie was sealed (capped by its
  absolute expiry): an expired cookie is rejected without touching the store.

The store is the authority on who the session is and whether it was revoked; it is read on
*every* request. The session resolver deliberately does **not** use the verified-credential
cache: a cached answer would let a revoked session through until the entry expired, and an
in-process invalidation would not reach the other edge processes. One primary-key read per
request is the price of "revocation takes effect at the next request".

Sliding renewal: once half the idle timeout has passed since the last renewal, ``resolve``
moves ``last_seen`` forward in the store and returns a ``set_cookie`` action with a cookie
sealed to the new deadline, so the store is written at most once per half idle timeout. When
that write fails (store unavailable) but the cookie and the session just read are valid, the
resolution is returned ``degraded`` instead of failing. When the store cannot even be read,
:class:`~garrison.identity._sessionstore.StoreUnavailable` (a 503, not a 401) is raised: the
identity cannot be known, but the user must not be logged out by an outage either.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import os
import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from garrison.core import (
    Clock,
    ConfigError,
    GarrisonConfig,
    SystemClock,
    Unauthenticated,
    convert_section,
)

from ._model import (
    Assurance,
    Authentication,
    Credential,
    CredentialKind,
    DeviceIdentity,
    IdentityAction,
    RequestCredentials,
    Resolution,
    UserIdentity,
)
from ._secrets import read_secret
from ._sessionstore import (
    Session,
    SessionStore,
    SessionStoreConfig,
    StoreUnavailable,
    new_session_id,
    open_session_store,
)

__all__ = [
    "NewSession",
    "SessionCookieConfig",
    "SessionCookieResolver",
    "data_dir_of",
    "decode_key",
]

_KID = re.compile(r"^[A-Za-z0-9_-]{1,16}\Z")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}\Z")  # RFC 7230 token (cookie name)
_HEADER = re.compile(r"^[a-z0-9-]{1,64}\Z")
_VERSION = "v1"
_NONCE = 12
_ID_BYTES = 32
_PLAIN = 8 + _ID_BYTES
_SEALED = _NONCE + _PLAIN + 16
_MAX_COOKIE = 256
_MAX_DEVICE_ID = 128
_AAD_PREFIX = b"garrison-session\0"


def decode_key(raw: bytes, *, key: str, size: int = 32) -> bytes:
    """A ``size``-byte key written as base64url / base64 (padding optional) or hex."""
    text = raw.decode("ascii", "replace").strip()
    if len(text) == 2 * size and all(c in "0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text)
    try:
        data = base64.urlsafe_b64decode(
            text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4)
        )
    except (binascii.Error, ValueError):
        data = b""
    if len(data) != size:
        raise ConfigError(
            f"expected a {size}-byte key, base64url or hex encoded "
            f"(e.g. from `python -c 'import secrets; print(secrets.token_urlsafe({size}))'`)",
            key=key,
        )
    return data


def data_dir_of(config: GarrisonConfig | None) -> Path:
    """The application's data dir (``[app] data_dir`` under the root), or ``.garrison``."""
    if config is None:
        return Path(".garrison")
    return Path(config.root) / config.app.data_dir


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    if not text or "=" in text or len(text) % 4 == 1:
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64e(data) != text:  # non-canonical: unused low bits set, or characters skipped
        raise ValueError("not canonical base64url")
    return data


def _fingerprint(device_id: str) -> str:
    return _b64e(hashlib.sha256(b"garrison-device\0" + device_id.encode()).digest()[:6])


# -- configuration ------------------------------------------------------------------------------


class SessionCookieConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[identity.session]``: session cookies."""

    keys: dict[str, str]
    """Cookie sealing keys by key id: secret references (``env:VAR`` / ``file:/path``) to
    32-byte keys, base64url or hex encoded."""
    active_key: str
    """The key id that seals new cookies; must be one of ``keys``."""
    retired_keys: list[str] = []
    """Key ids no longer accepted: their cookies fail with the reason ``retired_key``."""
    name: str = "session"
    """The resolver's name."""
    cookie_name: str = "__Host-garrison-session"
    """The cookie holding the sealed session id."""
    device_header: str = "x-device-id"
    """Request header carrying the device id that device-bound sessions are checked against."""
    idle_timeout: float = 1800.0
    """A session ends after this many seconds without use; renewed after half of it."""
    lifetime: float = 7 * 86400.0
    """Absolute lifetime of a session, in seconds."""
    renew: bool = True
    """Sliding renewal; when false a session ends ``idle_timeout`` after login."""
    issuer: str = "session"
    """The ``issuer`` reported in passports."""
    store: SessionStoreConfig = SessionStoreConfig()
    """Where sessions are kept."""

    def __post_init__(self) -> None:
        if not self.keys:
            raise ConfigError("expected at least one key", key="keys")
        for kid in self.keys:
            if not _KID.match(kid):
                raise ConfigError(
                    f"bad key id {kid!r}; expected 1-16 of A-Z a-z 0-9 _ -", key=f"keys.{kid}"
                )
        if self.active_key not in self.keys:
            raise ConfigError(
                f"{self.active_key!r} is not one of the keys ({', '.join(sorted(self.keys))})",
                key="active_key",
            )
        if self.active_key in self.retired_keys:
            raise ConfigError(f"{self.active_key!r} is retired", key="active_key")
        if not _TOKEN.match(self.cookie_name):
            raise ConfigError(f"not a valid cookie name: {self.cookie_name!r}", key="cookie_name")
        if not _HEADER.match(self.device_header):
            raise ConfigError(
                f"expected a lowercase header name, got {self.device_header!r}",
                key="device_header",
            )
        for field in ("idle_timeout", "lifetime"):
            value = getattr(self, field)
            if not (isinstance(value, int | float) and 0 < value < math.inf):
                raise ConfigError(f"expected a number > 0, got {value!r}", key=field)
        if self.idle_timeout > self.lifetime:
            raise ConfigError(
                f"expected at most lifetime ({self.lifetime:g}), got {self.idle_timeout:g}",
                key="idle_timeout",
            )


class NewSession(msgspec.Struct, frozen=True):
    """What :meth:`SessionCookieResolver.login` returns."""

    session: Session
    """The stored session."""
    cookie: str
    """The sealed cookie value."""
    action: IdentityAction
    """The ``set_cookie`` action for the edge (or a test) to apply."""


class _Opened(msgspec.Struct, frozen=True):
    kid: str
    expiry: float
    session_id: str
    device_id: str | None
    """The device the cookie is bound to (and was presented from), None if unbound."""


# -- the resolver -------------------------------------------------------------------------------


class SessionCookieResolver:
    """Resolves a sealed session cookie against a :class:`SessionStore`.

    ``keys`` maps key ids to 32-byte AES keys. Failures raise
    :class:`~garrison.core.Unauthenticated` with one of the reasons ``malformed_cookie``,
    ``unsupported_version``, ``unknown_key``, ``retired_key``, ``device_missing``,
    ``device_mismatch``, ``bad_seal``, ``cookie_expired``, ``session_unknown``,
    ``session_revoked``, ``session_expired``, ``session_idle_expired``; a store outage raises
    :class:`StoreUnavailable`.
    """

    def __init__(
        self,
        config: SessionCookieConfig,
        *,
        keys: Mapping[str, bytes],
        store: SessionStore,
        clock: Clock | None = None,
        owns_store: bool = False,
    ) -> None:
        for kid, secret in keys.items():
            if len(secret) != 32:
                raise ConfigError(f"expected a 32-byte key, got {len(secret)} bytes", key=kid)
        if config.active_key not in keys:
            raise ConfigError(f"no key {config.active_key!r}", key="active_key")
        self.config = config
        self.name = config.name
        self.store = store
        self._clock = clock or SystemClock()
        self._owns_store = owns_store
        self._retired = frozenset(config.retired_keys)
        self._aead = {kid: AESGCM(k) for kid, k in keys.items() if kid not in self._retired}

    @classmethod
    def from_config(
        cls,
        config: SessionCookieConfig | Mapping[str, Any],
        *,
        app: GarrisonConfig | None = None,
        key: str = "identity.session",
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
    ) -> SessionCookieResolver:
        """Validate ``config``, read its keys and open its store (under the app's data dir)."""
        if not isinstance(config, SessionCookieConfig):
            config = convert_section(config, SessionCookieConfig, key=key, config=app)
        keys = {
            kid: decode_key(
                read_secret(ref, key=f"{key}.keys.{kid}", env=env, app=app), key=f"{key}.keys.{kid}"
            )
            for kid, ref in config.keys.items()
            if kid not in config.retired_keys
        }
        store = open_session_store(config.store, data_dir=data_dir_of(app), clock=clock)
        return cls(config, keys=keys, store=store, clock=clock, owns_store=True)

    # -- Resolver protocol ----------------------------------------------------------------------

    def find(self, request: RequestCredentials) -> Credential | None:
        """The session cookie, with the device id header when present."""
        value = request.cookies.get(self.config.cookie_name)
        if value is None:
            return None
        return Credential(
            kind=CredentialKind.SESSION,
            value=value,
            resolver=self.name,
            device_id=request.headers.get(self.config.device_header),
        )

    async def resolve(self, credential: Credential) -> Resolution:
        """Open the cookie, read the session, renew it when due."""
        opened = self._open(credential.value, credential.device_id)
        now = self._clock.time()
        if now >= opened.expiry:
            raise Unauthenticated("the session cookie has expired", reason="cookie_expired")
        session = await self.store.get(opened.session_id)
        if session is None:
            raise Unauthenticated("no such session", reason="session_unknown")
        self._check(session, opened.device_id, now)

        actions: tuple[IdentityAction, ...] = ()
        degraded = False
        if self.config.renew and now - session.last_seen >= session.idle_timeout / 2:
            try:
                renewed = await self.store.touch(session, now)
            except StoreUnavailable:
                degraded = True  # the session is valid; only its renewal failed
            else:
                if not renewed:
                    raise Unauthenticated("the session was revoked", reason="session_revoked")
                session = msgspec.structs.replace(session, last_seen=now)
                actions = (self._cookie_action(session, now),)
        elif opened.kid != self.config.active_key:
            actions = (self._cookie_action(session, now),)  # move the cookie to the active key
        return self._resolution(session, opened.device_id, degraded, actions)

    # -- login / logout -------------------------------------------------------------------------

    async def login(
        self,
        subject: str,
        *,
        tenant: str | None = None,
        roles: Iterable[str] = (),
        scopes: Iterable[str] = (),
        device_id: str | None = None,
        method: str = "pwd",
        assurance: Assurance = Assurance.AAL1,
        auth_time: float | None = None,
        idle_timeout: float | None = None,
        lifetime: float | None = None,
    ) -> NewSession:
        """Create a session (bound to ``device_id`` when given) and its cookie.

        Call it after the application has authenticated the user; apply the returned action
        to the response (the gateway does so for identity actions sent back by a service).
        """
        if device_id is not None:
            _check_device_id(device_id)
        now = self._clock.time()
        session = Session(
            id=new_session_id(),
            subject=subject,
            tenant=tenant,
            roles=tuple(roles),
            scopes=tuple(scopes),
            device_id=device_id,
            method=method,
            assurance=assurance,
            auth_time=now if auth_time is None else auth_time,
            created=now,
            expires=now + (self.config.lifetime if lifetime is None else lifetime),
            idle_timeout=self.config.idle_timeout if idle_timeout is None else idle_timeout,
            last_seen=now,
        )
        await self.store.create(session)
        action = self._cookie_action(session, now)
        return NewSession(session=session, cookie=action.value, action=action)

    async def logout(self, cookie: str, *, device_id: str | None = None) -> IdentityAction:
        """Revoke the session behind ``cookie`` (if it opens) and say to clear the cookie."""
        try:
            opened = self._open(cookie, device_id)
        except Unauthenticated:
            pass
        else:
            await self.store.revoke(opened.session_id)
        return IdentityAction(kind="clear_cookie", name=self.config.cookie_name, max_age=0)

    async def revoke_subject(self, subject: str) -> int:
        """Revoke every session of ``subject`` (e.g. after a password change)."""
        return await self.store.revoke_all_for_subject(subject)

    def seal(self, session: Session, expiry: float, *, kid: str | None = None) -> str:
        """The cookie value for ``session``, valid until ``expiry`` (wall seconds)."""
        kid = kid or self.config.active_key
        raw_id = _b64d(session.id)
        if len(raw_id) != _ID_BYTES:
            raise ValueError("session ids are 32 random bytes, base64url encoded")
        dev = "-" if session.device_id is None else _fingerprint(session.device_id)
        header = f"{_VERSION}.{kid}.{dev}"
        nonce = os.urandom(_NONCE)
        plain = struct.pack(">Q", max(0, math.floor(expiry))) + raw_id
        sealed = self._aead[kid].encrypt(nonce, plain, self._aad(header, session.device_id))
        return f"{header}.{_b64e(nonce + sealed)}"

    async def aclose(self) -> None:
        """Close the store if this resolver opened it."""
        if self._owns_store:
            await self.store.aclose()

    # -- internals ------------------------------------------------------------------------------

    def _aad(self, header: str, device_id: str | None) -> bytes:
        device = (device_id or "").encode()
        return b"\0".join((_AAD_PREFIX + header.encode(), self.config.cookie_name.encode(), device))

    def _open(self, cookie: str, device_id: str | None) -> _Opened:
        if len(cookie) > _MAX_COOKIE:
            raise Unauthenticated("the session cookie is too long", reason="malformed_cookie")
        parts = cookie.split(".")
        if len(parts) != 4:
            raise Unauthenticated(
                "the session cookie is not v1.<kid>.<dev>.<sealed>", reason="malformed_cookie"
            )
        version, kid, dev, body = parts
        if version != _VERSION:
            raise Unauthenticated(
                f"unsupported session cookie version {version[:8]!r}",
                reason="unsupported_version",
            )
        if kid in self._retired:
            raise Unauthenticated(f"the cookie key {kid!r} is retired", reason="retired_key")
        aead = self._aead.get(kid)
        if aead is None:
            raise Unauthenticated(f"unknown cookie key id {kid[:16]!r}", reason="unknown_key")
        if dev == "-":
            device_id = None  # an unbound cookie ignores any device header
        elif len(dev) != 8:
            raise Unauthenticated("bad device fingerprint", reason="malformed_cookie")
        elif device_id is None:
            raise Unauthenticated(
                f"the session is bound to a device; no {self.config.device_header} header",
                reason="device_missing",
            )
        elif (
            len(device_id) > _MAX_DEVICE_ID
            or not device_id.isprintable()
            or _fingerprint(device_id) != dev
        ):
            raise Unauthenticated(
                "the session is bound to another device", reason="device_mismatch"
            )
        try:
            data = _b64d(body)
        except (binascii.Error, ValueError):
            raise Unauthenticated(
                "the sealed part is not base64url", reason="malformed_cookie"
            ) from None
        if len(data) != _SEALED:
            raise Unauthenticated(
                f"the sealed part is {len(data)} bytes, expected {_SEALED}",
                reason="malformed_cookie",
            )
        try:
            header = f"{version}.{kid}.{dev}"
            plain = aead.decrypt(data[:_NONCE], data[_NONCE:], self._aad(header, device_id))
        except InvalidTag:
            raise Unauthenticated(
                "the session cookie does not authenticate (tampered, or from another device)",
                reason="bad_seal",
            ) from None
        (expiry,) = struct.unpack(">Q", plain[:8])
        return _Opened(
            kid=kid, expiry=float(expiry), session_id=_b64e(plain[8:]), device_id=device_id
        )

    def _check(self, session: Session, bound_to: str | None, now: float) -> None:
        if session.revoked:
            raise Unauthenticated("the session was revoked", reason="session_revoked")
        if session.device_id != bound_to:  # the cookie's binding must be the session's
            raise Unauthenticated(
                "the session is bound to another device", reason="device_mismatch"
            )
        if now >= session.expires:
            raise Unauthenticated("the session has expired", reason="session_expired")
        if now >= session.idle_deadline:
            raise Unauthenticated(
                "the session expired after inactivity", reason="session_idle_expired"
            )

    def _cookie_action(self, session: Session, now: float) -> IdentityAction:
        until = session.valid_until
        return IdentityAction(
            kind="set_cookie",
            name=self.config.cookie_name,
            value=self.seal(session, until),
            max_age=max(1, math.floor(until - now)),
        )

    def _resolution(
        self,
        session: Session,
        device_id: str | None,
        degraded: bool,
        actions: tuple[IdentityAction, ...],
    ) -> Resolution:
        device = None if device_id is None else DeviceIdentity(id=device_id)
        return Resolution(
            auth=Authentication(
                credential=CredentialKind.SESSION,
                issuer=self.config.issuer,
                method=session.method,
                assurance=session.assurance,
                at=session.auth_time,
            ),
            expires_at=session.valid_until,
            user=UserIdentity(
                subject=session.subject,
                tenant=session.tenant,
                roles=session.roles,
                scopes=session.scopes,
            ),
            device=device,
            degraded=degraded,
            actions=actions,
        )


def _check_device_id(device_id: str) -> None:
    if not device_id or len(device_id) > _MAX_DEVICE_ID or not device_id.isprintable():
        raise ValueError(f"bad device id {device_id[:32]!r}: 1-{_MAX_DEVICE_ID} printable chars")
