"""API keys: ``<prefix>_<id>_<secret>``, only a keyed hash of the secret stored.

Theory of operation
-------------------
A key such as ``gk_live_AbC123xyz789_<40 random base62 chars>`` has three parts: the
configured *prefix* (so a key is recognisable to people and secret scanners, and a test key
cannot pass for a live one), a 12-character *id* that is not secret and is the store's lookup
key, and the *secret* (40 base62 characters, about 238 random bits).

Only ``HMAC-SHA256(pepper, prefix ‖ id ‖ secret)`` is stored. Why not a slow password hash:
the secret is machine-generated with more entropy than any brute force can cover, so a slow
hash would only burn CPU on every request. Why an HMAC with a server *pepper* rather than a
bare SHA-256: the pepper lives outside the database (an ``env:`` or ``file:`` secret), so a
leaked database alone does not even let an attacker check a guess offline; binding the prefix
and id into the MAC stops a stolen hash from being moved to another key row. Comparison is
constant-time (:func:`hmac.compare_digest`), and is done *before* the revoked / expired
status is looked at, so a wrong secret learns nothing about the key.

The store is read on every request, so revoking a key (:meth:`ApiKeyResolver.revoke`) takes
effect at the next request; the resolver does not use the verified-credential cache for the
same reason as sessions do. Keys always expire (``default_lifetime``, at most
``max_lifetime``) so that a forgotten key does not live forever.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import msgspec

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
    RequestCredentials,
    Resolution,
    UserIdentity,
)
from ._secrets import read_secret
from ._session import data_dir_of
from ._sessionstore import SqliteDatabase

__all__ = [
    "ApiKeyConfig",
    "ApiKeyRecord",
    "ApiKeyResolver",
    "ApiKeyStore",
    "ApiKeyStoreConfig",
    "IssuedKey",
    "MemoryApiKeyStore",
    "SqliteApiKeyStore",
]

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ID_LEN = 12
_SECRET_LEN = 40
_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,15}(_[a-z0-9]{1,16})?\Z")
_ID = re.compile(r"^[0-9A-Za-z]{12}\Z")
_SECRET = re.compile(r"^[0-9A-Za-z]{32,64}\Z")
_MAX_KEY = 128
_MIN_PEPPER = 32


class ApiKeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A stored API key: never its secret, only the keyed hash of it."""

    id: str
    """The key's public id (the middle part)."""
    prefix: str
    """The prefix it was issued under."""
    digest: bytes
    """HMAC-SHA256 of the key under the server pepper."""
    subject: str
    """Who the key acts for (a user or a service account id)."""
    tenant: str | None = None
    """Tenant or organisation id."""
    roles: tuple[str, ...] = ()
    """Role names."""
    scopes: tuple[str, ...] = ()
    """Scopes granted to the key."""
    label: str = ""
    """What the key is for, e.g. ``ci-deploy`` (no personal data)."""
    created: float
    """When it was issued, seconds since the epoch."""
    expires: float
    """When it stops working."""
    revoked: bool = False
    """True once revoked."""


class IssuedKey(msgspec.Struct, frozen=True):
    """A freshly issued key: the plaintext is here and nowhere else, show it once."""

    key: str
    """The full key, ``<prefix>_<id>_<secret>``."""
    record: ApiKeyRecord
    """What was stored."""


class ApiKeyStore(Protocol):
    """Where API key records live; every method may raise ``StoreUnavailable``."""

    async def add(self, record: ApiKeyRecord) -> None:
        """Store a new key."""
        ...

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """The record of ``key_id``, revoked ones included; None if unknown."""
        ...

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key; False if unknown."""
        ...

    async def revoke_all_for_subject(self, subject: str) -> int:
        """Revoke every live key of ``subject``; returns how many."""
        ...

    async def list_for_subject(self, subject: str) -> list[ApiKeyRecord]:
        """The keys of ``subject``, oldest first."""
        ...

    async def aclose(self) -> None:
        """Release resources."""
        ...


class MemoryApiKeyStore:
    """API keys in a dict, for tests."""

    def __init__(self) -> None:
        self._rows: dict[str, ApiKeyRecord] = {}

    async def add(self, record: ApiKeyRecord) -> None:
        """Store a new key."""
        if record.id in self._rows:
            raise ValueError(f"duplicate key id {record.id}")
        self._rows[record.id] = record

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """The record, or None."""
        return self._rows.get(key_id)

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key."""
        rec = self._rows.get(key_id)
        if rec is None:
            return False
        self._rows[key_id] = msgspec.structs.replace(rec, revoked=True)
        return True

    async def revoke_all_for_subject(self, subject: str) -> int:
        """Revoke every live key of ``subject``."""
        ids = [k for k, r in self._rows.items() if r.subject == subject and not r.revoked]
        for k in ids:
            await self.revoke(k)
        return len(ids)

    async def list_for_subject(self, subject: str) -> list[ApiKeyRecord]:
        """The keys of ``subject``."""
        return sorted(
            (r for r in self._rows.values() if r.subject == subject), key=lambda r: r.created
        )

    async def aclose(self) -> None:
        """Nothing to release."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    created REAL NOT NULL,
    body BLOB NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS api_keys_subject ON api_keys (subject);
"""
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(ApiKeyRecord)


class SqliteApiKeyStore:
    """API keys in a SQLite file (WAL mode), accessed off the event loop."""

    def __init__(self, path: str | Path) -> None:
        self.db = SqliteDatabase(path, _SCHEMA)

    async def add(self, record: ApiKeyRecord) -> None:
        """Store a new key."""
        row = (record.id, record.subject, record.created, _enc.encode(record), int(record.revoked))
        await self.db.run(
            lambda c: c.execute(
                "INSERT INTO api_keys (id, subject, created, body, revoked) VALUES (?,?,?,?,?)",
                row,
            )
        )

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """The record, or None."""
        row: tuple[bytes, int] | None = await self.db.run(
            lambda c: c.execute(
                "SELECT body, revoked FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
        )
        return None if row is None else _load(row)

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key."""
        cur = await self.db.run(
            lambda c: c.execute("UPDATE api_keys SET revoked = 1 WHERE id = ?", (key_id,))
        )
        return cur.rowcount == 1

    async def revoke_all_for_subject(self, subject: str) -> int:
        """Revoke every live key of ``subject``."""
        cur = await self.db.run(
            lambda c: c.execute(
                "UPDATE api_keys SET revoked = 1 WHERE subject = ? AND revoked = 0", (subject,)
            )
        )
        return cur.rowcount

    async def list_for_subject(self, subject: str) -> list[ApiKeyRecord]:
        """The keys of ``subject``, oldest first."""
        rows: list[tuple[bytes, int]] = await self.db.run(
            lambda c: c.execute(
                "SELECT body, revoked FROM api_keys WHERE subject = ? ORDER BY created",
                (subject,),
            ).fetchall()
        )
        return [_load(r) for r in rows]

    async def aclose(self) -> None:
        """Close the database."""
        await self.db.aclose()


def _load(row: tuple[bytes, int]) -> ApiKeyRecord:
    return msgspec.structs.replace(_dec.decode(row[0]), revoked=bool(row[1]))


class ApiKeyStoreConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where API keys are kept."""

    backend: Literal["sqlite", "memory"] = "sqlite"
    """``sqlite`` (default) or ``memory`` (tests)."""
    path: Annotated[str, msgspec.Meta(min_length=1)] = "api_keys.db"
    """The SQLite file, relative to the application's data dir."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("expected a file name, got ''", key="path")


class ApiKeyConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[identity.api_keys]``: API keys."""

    pepper: str
    """Secret reference (``env:VAR`` / ``file:/path``) to the HMAC pepper, at least 32 bytes.
    Changing it invalidates every key."""
    name: str = "api_key"
    """The resolver's name."""
    prefix: str = "gk_live"
    """The prefix of keys issued and accepted here, e.g. ``gk_live`` or ``gk_test``."""
    header: str = "x-api-key"
    """Header carrying a bare key (``Authorization: Bearer <key>`` is always accepted too)."""
    default_lifetime: float = 90 * 86400.0
    """Lifetime of a key issued without one, in seconds."""
    max_lifetime: float = 366 * 86400.0
    """Longest lifetime a key may be issued with, in seconds."""
    issuer: str = "api-keys"
    """The ``issuer`` reported in passports."""
    store: ApiKeyStoreConfig = ApiKeyStoreConfig()
    """Where keys are kept."""

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ConfigError(
                f"expected lowercase letters and digits with at most one '_' "
                f"(e.g. 'gk_live'), got {self.prefix!r}",
                key="prefix",
            )
        if not re.fullmatch(r"[a-z0-9-]{1,64}", self.header):
            raise ConfigError(
                f"expected a lowercase header name, got {self.header!r}", key="header"
            )
        for field in ("default_lifetime", "max_lifetime"):
            value = getattr(self, field)
            if not (isinstance(value, int | float) and 0 < value < math.inf):
                raise ConfigError(f"expected a number > 0, got {value!r}", key=field)
        if self.default_lifetime > self.max_lifetime:
            raise ConfigError(
                f"expected at most max_lifetime ({self.max_lifetime:g}), "
                f"got {self.default_lifetime:g}",
                key="default_lifetime",
            )


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


class ApiKeyResolver:
    """Resolves API keys against an :class:`ApiKeyStore` and issues new ones.

    Failures raise :class:`~garrison.core.Unauthenticated` with the reason
    ``malformed_api_key``, ``api_key_unknown``, ``api_key_invalid`` (wrong secret),
    ``api_key_revoked`` or ``api_key_expired``.
    """

    def __init__(
        self,
        config: ApiKeyConfig,
        *,
        pepper: bytes,
        store: ApiKeyStore,
        clock: Clock | None = None,
        owns_store: bool = False,
    ) -> None:
        if len(pepper) < _MIN_PEPPER:
            raise ConfigError(
                f"expected a pepper of at least {_MIN_PEPPER} bytes, got {len(pepper)}",
                key="pepper",
            )
        self.config = config
        self.name = config.name
        self.store = store
        self._pepper = pepper
        self._clock = clock or SystemClock()
        self._owns_store = owns_store
        self._lead = config.prefix + "_"

    @classmethod
    def from_config(
        cls,
        config: ApiKeyConfig | Mapping[str, Any],
        *,
        app: GarrisonConfig | None = None,
        key: str = "identity.api_keys",
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ApiKeyResolver:
        """Validate ``config``, read the pepper and open the store (under the data dir)."""
        if not isinstance(config, ApiKeyConfig):
            config = convert_section(config, ApiKeyConfig, key=key, config=app)
        pepper = read_secret(config.pepper, key=f"{key}.pepper", env=env, app=app)
        if len(pepper) < _MIN_PEPPER:
            raise ConfigError(
                f"expected a pepper of at least {_MIN_PEPPER} bytes, got {len(pepper)}",
                key=f"{key}.pepper",
            )
        store: ApiKeyStore
        if config.store.backend == "memory":
            store = MemoryApiKeyStore()
        else:
            store = SqliteApiKeyStore(data_dir_of(app) / config.store.path)
        return cls(config, pepper=pepper, store=store, clock=clock, owns_store=True)

    def digest(self, prefix: str, key_id: str, secret: str) -> bytes:
        """The stored form of a key: HMAC-SHA256 under the pepper."""
        msg = f"garrison-api-key\0{prefix}\0{key_id}\0{secret}".encode()
        return hmac.new(self._pepper, msg, hashlib.sha256).digest()

    # -- Resolver protocol ----------------------------------------------------------------------

    def find(self, request: RequestCredentials) -> Credential | None:
        """A key in the configured header, or a Bearer token carrying this prefix."""
        value = request.headers.get(self.config.header)
        if value is None:
            auth = request.headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token.startswith(self._lead):
                return None  # not ours: leave it to the JWT or introspection resolver
            value = token
        return Credential(kind=CredentialKind.API_KEY, value=value.strip(), resolver=self.name)

    async def resolve(self, credential: Credential) -> Resolution:
        """Check the key against its stored hash, then its status."""
        key_id, secret = self._parse(credential.value)
        record = await self.store.get(key_id)
        if record is None:
            raise Unauthenticated(f"no API key with id {key_id}", reason="api_key_unknown")
        presented = self.digest(self.config.prefix, key_id, secret)
        # Compare first (constant time), then look at the status: a wrong secret learns nothing.
        if not hmac.compare_digest(presented, record.digest) or record.prefix != self.config.prefix:
            raise Unauthenticated(f"wrong secret for API key {key_id}", reason="api_key_invalid")
        if record.revoked:
            raise Unauthenticated(f"API key {key_id} was revoked", reason="api_key_revoked")
        if self._clock.time() >= record.expires:
            raise Unauthenticated(f"API key {key_id} has expired", reason="api_key_expired")
        return Resolution(
            auth=Authentication(
                credential=CredentialKind.API_KEY,
                issuer=self.config.issuer,
                method="api_key",
                assurance=Assurance.AAL1,
                at=record.created,
            ),
            expires_at=record.expires,
            user=UserIdentity(
                subject=record.subject,
                tenant=record.tenant,
                roles=record.roles,
                scopes=record.scopes,
            ),
        )

    # -- management -----------------------------------------------------------------------------

    async def issue(
        self,
        subject: str,
        *,
        tenant: str | None = None,
        roles: Iterable[str] = (),
        scopes: Iterable[str] = (),
        label: str = "",
        lifetime: float | None = None,
    ) -> IssuedKey:
        """Create a key for ``subject``; the plaintext is returned here, once, and never stored."""
        life = self.config.default_lifetime if lifetime is None else lifetime
        if not 0 < life <= self.config.max_lifetime:
            raise ValueError(
                f"lifetime must be > 0 and <= {self.config.max_lifetime:g} s, got {life:g}"
            )
        key_id, secret = _random(_ID_LEN), _random(_SECRET_LEN)
        now = self._clock.time()
        record = ApiKeyRecord(
            id=key_id,
            prefix=self.config.prefix,
            digest=self.digest(self.config.prefix, key_id, secret),
            subject=subject,
            tenant=tenant,
            roles=tuple(roles),
            scopes=tuple(scopes),
            label=label,
            created=now,
            expires=now + life,
        )
        await self.store.add(record)
        return IssuedKey(key=f"{self._lead}{key_id}_{secret}", record=record)

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key by id; effective at the next request."""
        return await self.store.revoke(key_id)

    async def revoke_subject(self, subject: str) -> int:
        """Revoke every key of ``subject``."""
        return await self.store.revoke_all_for_subject(subject)

    async def aclose(self) -> None:
        """Close the store if this resolver opened it."""
        if self._owns_store:
            await self.store.aclose()

    def _parse(self, value: str) -> tuple[str, str]:
        if len(value) > _MAX_KEY:
            raise Unauthenticated("the API key is too long", reason="malformed_api_key")
        if not value.startswith(self._lead):
            raise Unauthenticated(
                f"the API key does not start with {self._lead!r}", reason="malformed_api_key"
            )
        key_id, sep, secret = value[len(self._lead) :].partition("_")
        if not sep or not _ID.match(key_id):
            raise Unauthenticated(
                "the API key id is not 12 letters or digits", reason="malformed_api_key"
            )
        if not _SECRET.match(secret):
            raise Unauthenticated(
                "the API key secret is not 32-64 letters or digits", reason="malformed_api_key"
            )
        return key_id, secret
