"""Server-side session stores: SQLite (default), Redis, and memory for tests.

Theory of operation
-------------------
A :class:`Session` is created at login and read on every request that presents its cookie.
Its immutable part (who, what, how, until when) is written once; only two fields ever change:
``last_seen`` (moved forward by a sliding renewal, at most once per half idle timeout) and
``revoked``. Stores update those two fields in place, never by read-modify-write, so a renewal
racing a revocation can never un-revoke a session.

Stores never hold a usable session id: records are keyed by the SHA-256 of the id, so a leaked
database (or a ``KEYS *``) yields nothing a client could present. (The cookie is sealed with
AES-GCM on top of that; see ``_session.py``.)

Stores do not judge expiry: they return the record and the resolver decides, naming the precise
reason. They drop records some time after they can no longer be used (Redis by a TTL per
session, SQLite by :meth:`SqliteSessionStore.purge_expired`, run every so many creates), keeping
them ``grace`` seconds longer so that a late request still gets "expired" or "revoked" rather
than "unknown".

Backend failures surface as :class:`StoreUnavailable`, which the resolver tells apart from an
invalid credential: an outage must not log users out.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, TypeVar

import msgspec

from garrison.core import Clock, ConfigError, ServiceUnavailable, SystemClock

from ._model import Assurance

if TYPE_CHECKING:
    import redis.asyncio

__all__ = [
    "MemorySessionStore",
    "RedisSessionStore",
    "Session",
    "SessionStore",
    "SessionStoreConfig",
    "SqliteDatabase",
    "SqliteSessionStore",
    "StoreUnavailable",
    "new_session_id",
    "open_session_store",
]

T = TypeVar("T")
_GRACE = 300.0


class StoreUnavailable(ServiceUnavailable):
    """A credential store (sessions, API keys) could not be read or written.

    Not an authentication failure: the edge answers 503 and keeps the client's credential.
    """


def new_session_id() -> str:
    """A fresh session id: 256 random bits, base64url without padding (43 characters)."""
    return secrets.token_urlsafe(32)


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Session(msgspec.Struct, frozen=True, kw_only=True):
    """A server-side login session."""

    id: str
    """The session id (256 random bits); only ever sent to the client inside a sealed cookie."""
    subject: str
    """The user's id."""
    tenant: str | None = None
    """Tenant or organisation id."""
    roles: tuple[str, ...] = ()
    """Role names."""
    scopes: tuple[str, ...] = ()
    """Scopes granted to the session."""
    device_id: str | None = None
    """The device the session is bound to: its cookie is only accepted with this device id."""
    method: str = "pwd"
    """How the user authenticated (``pwd``, ``mfa``, ``sso`` ...)."""
    assurance: Assurance = Assurance.AAL1
    """The assurance level of that authentication."""
    auth_time: float = 0.0
    """When the user authenticated, seconds since the epoch."""
    created: float
    """When the session was created."""
    expires: float
    """Absolute expiry: the session ends then, however active it is."""
    idle_timeout: float
    """The session ends after this many seconds without a renewal."""
    last_seen: float
    """When the session was created or last renewed."""
    revoked: bool = False
    """True once revoked (logout, admin action)."""

    @property
    def idle_deadline(self) -> float:
        """When the session ends for inactivity, unless renewed before."""
        return self.last_seen + self.idle_timeout

    @property
    def valid_until(self) -> float:
        """The earlier of the absolute and the idle expiry."""
        return min(self.expires, self.idle_deadline)


class _Body(msgspec.Struct, frozen=True, array_like=True):
    """The immutable part of a session as stored (no id: records are keyed by its hash)."""

    subject: str
    tenant: str | None
    roles: tuple[str, ...]
    scopes: tuple[str, ...]
    device_id: str | None
    method: str
    assurance: int
    auth_time: float
    created: float
    expires: float
    idle_timeout: float


_body_enc = msgspec.msgpack.Encoder()
_body_dec = msgspec.msgpack.Decoder(_Body)


def _pack(s: Session) -> bytes:
    return _body_enc.encode(
        _Body(
            s.subject,
            s.tenant,
            s.roles,
            s.scopes,
            s.device_id,
            s.method,
            int(s.assurance),
            s.auth_time,
            s.created,
            s.expires,
            s.idle_timeout,
        )
    )


def _unpack(session_id: str, body: bytes, last_seen: float, revoked: bool) -> Session:
    try:
        b = _body_dec.decode(body)
        assurance = Assurance(b.assurance)
    except (msgspec.DecodeError, ValueError) as exc:
        raise StoreUnavailable(f"session store holds a corrupt record: {exc}") from None
    return Session(
        id=session_id,
        subject=b.subject,
        tenant=b.tenant,
        roles=b.roles,
        scopes=b.scopes,
        device_id=b.device_id,
        method=b.method,
        assurance=assurance,
        auth_time=b.auth_time,
        created=b.created,
        expires=b.expires,
        idle_timeout=b.idle_timeout,
        last_seen=last_seen,
        revoked=revoked,
    )


class SessionStore(Protocol):
    """Where sessions live. Every method may raise :class:`StoreUnavailable`."""

    async def create(self, session: Session) -> None:
        """Store a new session."""
        ...

    async def get(self, session_id: str) -> Session | None:
        """The session, revoked or expired ones included; None if unknown (or purged)."""
        ...

    async def touch(self, session: Session, at: float) -> bool:
        """Renew: set ``last_seen`` to ``at``. False if the session is gone or revoked."""
        ...

    async def revoke(self, session_id: str) -> bool:
        """Revoke one session; False if unknown. Effective for the next request."""
        ...

    async def revoke_all_for_subject(self, subject: str) -> int:
        """Revoke every live session of ``subject``; returns how many were revoked."""
        ...

    async def aclose(self) -> None:
        """Release connections and threads."""
        ...


# -- memory -------------------------------------------------------------------------------------


class MemorySessionStore:
    """Sessions in a dict: for tests and single-process development."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[bytes, str, float, bool]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    async def create(self, session: Session) -> None:
        """Store a new session."""
        self._rows[_digest(session.id)] = (
            _pack(session),
            session.subject,
            session.last_seen,
            False,
        )

    async def get(self, session_id: str) -> Session | None:
        """The session, or None."""
        row = self._rows.get(_digest(session_id))
        return None if row is None else _unpack(session_id, row[0], row[2], row[3])

    async def touch(self, session: Session, at: float) -> bool:
        """Renew the session."""
        key = _digest(session.id)
        row = self._rows.get(key)
        if row is None or row[3]:
            return False
        self._rows[key] = (row[0], row[1], at, False)
        return True

    async def revoke(self, session_id: str) -> bool:
        """Revoke one session."""
        key = _digest(session_id)
        row = self._rows.get(key)
        if row is None:
            return False
        self._rows[key] = (row[0], row[1], row[2], True)
        return True

    async def revoke_all_for_subject(self, subject: str) -> int:
        """Revoke every live session of ``subject``."""
        n = 0
        for key, row in self._rows.items():
            if row[1] == subject and not row[3]:
                self._rows[key] = (row[0], row[1], row[2], True)
                n += 1
        return n

    async def aclose(self) -> None:
        """Nothing to release."""


# -- SQLite -------------------------------------------------------------------------------------


class SqliteDatabase:
    """One SQLite connection in WAL mode, owned by one worker thread.

    Every call hops to that thread (``run_in_executor``), so the event loop never blocks on
    disk and the connection is only ever used by the thread that opened it. One writer is all
    SQLite allows anyway; WAL lets other processes read while it writes.
    """

    def __init__(self, path: str | Path, schema: str) -> None:
        self.path = Path(path)
        self._schema = schema
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="garrison-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the database thread; errors become StoreUnavailable."""
        if self._closed:
            raise StoreUnavailable(f"{self.path}: the store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._call, fn)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"{self.path}: {exc}") from exc

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(self._schema)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return fn(self._conn)

    async def aclose(self) -> None:
        """Close the connection and stop the thread."""
        if self._closed:
            return
        self._closed = True

        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=False)


_SESSION_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    body BLOB NOT NULL,
    last_seen REAL NOT NULL,
    purge_after REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sessions_subject ON sessions (subject);
CREATE INDEX IF NOT EXISTS sessions_purge ON sessions (purge_after);
"""


class SqliteSessionStore:
    """Sessions in a SQLite file (WAL mode), read and written off the event loop.

    Records are purged ``grace`` seconds after they stopped being usable, every
    ``purge_every`` creates or when :meth:`purge_expired` is called.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock | None = None,
        grace: float = _GRACE,
        purge_every: int = 1000,
    ) -> None:
        self.db = SqliteDatabase(path, _SESSION_SCHEMA)
        self._clock = clock or SystemClock()
        self._grace = grace
        self._purge_every = purge_every
        self._creates = 0

    async def create(self, session: Session) -> None:
        """Store a new session."""
        row = (
            _digest(session.id),
            session.subject,
            _pack(session),
            session.last_seen,
            session.valid_until + self._grace,
        )
        await self.db.run(
            lambda c: c.execute(
                "INSERT INTO sessions (key, subject, body, last_seen, purge_after)"
                " VALUES (?, ?, ?, ?, ?)",
                row,
            )
        )
        self._creates += 1
        if self._creates % self._purge_every == 0:
            await self.purge_expired()

    async def get(self, session_id: str) -> Session | None:
        """The session, or None."""
        key = _digest(session_id)
        row: tuple[bytes, float, int] | None = await self.db.run(
            lambda c: c.execute(
                "SELECT body, last_seen, revoked FROM sessions WHERE key = ?", (key,)
            ).fetchone()
        )
        return None if row is None else _unpack(session_id, row[0], row[1], bool(row[2]))

    async def touch(self, session: Session, at: float) -> bool:
        """Renew the session (never a revoked one)."""
        key = _digest(session.id)
        purge = min(session.expires, at + session.idle_timeout) + self._grace
        cur = await self.db.run(
            lambda c: c.execute(
                "UPDATE sessions SET last_seen = ?, purge_after = ? WHERE key = ? AND revoked = 0",
                (at, purge, key),
            )
        )
        return cur.rowcount == 1

    async def revoke(self, session_id: str) -> bool:
        """Revoke one session."""
        key = _digest(session_id)
        cur = await self.db.run(
            lambda c: c.execute("UPDATE sessions SET revoked = 1 WHERE key = ?", (key,))
        )
        return cur.rowcount == 1

    async def revoke_all_for_subject(self, subject: str) -> int:
        """Revoke every live session of ``subject``."""
        cur = await self.db.run(
            lambda c: c.execute(
                "UPDATE sessions SET revoked = 1 WHERE subject = ? AND revoked = 0", (subject,)
            )
        )
        return cur.rowcount

    async def purge_expired(self) -> int:
        """Delete the records past their expiry and grace; returns how many."""
        now = self._clock.time()
        cur = await self.db.run(
            lambda c: c.execute("DELETE FROM sessions WHERE purge_after < ?", (now,))
        )
        return cur.rowcount

    async def aclose(self) -> None:
        """Close the database."""
        await self.db.aclose()


# -- Redis --------------------------------------------------------------------------------------

# Each session is a hash {b: immutable body, seen: last_seen, rev: 0|1} with a TTL; each subject
# a set of its sessions' key digests, so that revoke_all_for_subject needs no scan.
_CREATE = """
redis.call('HSET', KEYS[1], 'b', ARGV[1], 'seen', ARGV[2], 'rev', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[5]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
return 1
"""
_TOUCH = """
if redis.call('HGET', KEYS[1], 'rev') ~= '0' then return 0 end
redis.call('HSET', KEYS[1], 'seen', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
_REVOKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'rev', '1')
return 1
"""
_REVOKE_ALL = """
local n = 0
for _, d in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local k = ARGV[1] .. d
  local rev = redis.call('HGET', k, 'rev')
  if rev == '0' then
    redis.call('HSET', k, 'rev', '1')
    n = n + 1
  elseif not rev then
    redis.call('SREM', KEYS[1], d)
  end
end
return n
"""


class RedisSessionStore:
    """Sessions in Redis: one hash per session with its own TTL.

    TTLs are computed from the injected clock and sent as relative durations, so the edge's
    clock, not Redis's, decides. The Lua scripts touch keys they build from the prefix, so the
    store expects a single Redis (or a cluster with every key of one prefix in one slot).
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "garrison:session:",
        clock: Clock | None = None,
        grace: float = _GRACE,
        owns_client: bool = False,
    ) -> None:
        self._r = client
        self._prefix = prefix
        self._clock = clock or SystemClock()
        self._grace = grace
        self._owns = owns_client
        self._create = client.register_script(_CREATE)
        self._touch = client.register_script(_TOUCH)
        self._revoke = client.register_script(_REVOKE)
        self._revoke_all = client.register_script(_REVOKE_ALL)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "garrison:session:",
        clock: Clock | None = None,
        timeout: float = 2.0,
    ) -> RedisSessionStore:
        """A store with its own connection pool to ``url`` (closed by :meth:`aclose`)."""
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        return cls(client, prefix=prefix, clock=clock, owns_client=True)

    def _key(self, session_id: str) -> str:
        return f"{self._prefix}s:{_digest(session_id)}"

    def _ttl_ms(self, until: float) -> int:
        return max(1, math.ceil((until + self._grace - self._clock.time()) * 1000))

    async def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        import redis.exceptions

        try:
            return await fn()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis session store: {what} failed: {exc}") from exc

    async def create(self, session: Session) -> None:
        """Store a new session."""
        digest = _digest(session.id)
        await self._call(
            "create",
            lambda: self._create(
                keys=[f"{self._prefix}s:{digest}", f"{self._prefix}u:{session.subject}"],
                args=[
                    _pack(session),
                    repr(session.last_seen),
                    self._ttl_ms(session.valid_until),
                    digest,
                    self._ttl_ms(session.expires),
                ],
            ),
        )

    async def get(self, session_id: str) -> Session | None:
        """The session, or None."""
        key = self._key(session_id)
        body, seen, rev = await self._call("get", lambda: self._r.hmget(key, ["b", "seen", "rev"]))
        if body is None or seen is None:
            return None
        try:
            last_seen = float(seen)
        except ValueError:
            raise StoreUnavailable("redis session store holds a corrupt record") from None
        return _unpack(session_id, body, last_seen, rev != b"0")

    async def touch(self, session: Session, at: float) -> bool:
        """Renew the session (never a revoked one) and push its TTL out."""
        until = min(session.expires, at + session.idle_timeout)
        done = await self._call(
            "touch",
            lambda: self._touch(keys=[self._key(session.id)], args=[repr(at), self._ttl_ms(until)]),
        )
        return bool(done)

    async def revoke(self, session_id: str) -> bool:
        """Revoke one session."""
        done = await self._call("revoke", lambda: self._revoke(keys=[self._key(session_id)]))
        return bool(done)

    async def revoke_all_for_subject(self, subject: str) -> int:
        """Revoke every live session of ``subject``."""
        n = await self._call(
            "revoke_all",
            lambda: self._revoke_all(
                keys=[f"{self._prefix}u:{subject}"], args=[f"{self._prefix}s:"]
            ),
        )
        return int(n)

    async def aclose(self) -> None:
        """Close the connection pool if this store created it."""
        if self._owns:
            await self._r.aclose()


# -- configuration ------------------------------------------------------------------------------


_URL_HELP = "a redis://, rediss:// or unix:// URL"


class SessionStoreConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where sessions are kept."""

    backend: Literal["sqlite", "redis", "memory"] = "sqlite"
    """``sqlite`` (one machine, the default), ``redis`` (several edge processes), ``memory``
    (tests)."""
    path: Annotated[str, msgspec.Meta(min_length=1)] = "sessions.db"
    """The SQLite file, relative to the application's data dir."""
    redis_url: Annotated[
        str, msgspec.Meta(pattern="^(redis|rediss|unix)://", description=_URL_HELP)
    ] = "redis://127.0.0.1:6379/0"
    """The Redis server for ``backend = "redis"``."""
    redis_prefix: str = "garrison:session:"
    """Prefix of every Redis key of the store."""
    timeout: Annotated[float, msgspec.Meta(gt=0, le=60)] = 2.0
    """Redis socket timeout, seconds."""

    # The constraints above name the full dotted key when the section is converted from
    # configuration; __post_init__ repeats them for direct construction in code.

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("expected a file name, got ''", key="path")
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                f"expected {_URL_HELP}, got {self.redis_url!r}",
                key="redis_url",
            )
        if not (isinstance(self.timeout, int | float) and 0 < self.timeout <= 60):
            raise ConfigError(
                f"expected a number > 0 and <= 60, got {self.timeout!r}", key="timeout"
            )


def open_session_store(
    config: SessionStoreConfig, *, data_dir: str | Path = ".", clock: Clock | None = None
) -> SessionStore:
    """The store ``config`` names; a relative SQLite path is under ``data_dir``."""
    if config.backend == "memory":
        return MemorySessionStore()
    if config.backend == "redis":
        return RedisSessionStore.from_url(
            config.redis_url, prefix=config.redis_prefix, clock=clock, timeout=config.timeout
        )
    return SqliteSessionStore(Path(data_dir) / config.path, clock=clock)
