"""Token-bucket rate limiting: exact in-process, or shared by a fleet through Redis.

Theory of operation
-------------------
A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; a call takes
``n`` tokens or is refused. Refill is lazy: the bucket stores ``tokens`` and the time ``ts`` it
was last brought up to date, and every decision first adds ``(now - ts) x rate`` (capped at
``burst``). Nothing runs between calls, and over any interval of ``elapsed`` seconds the grants
add up to at most ``burst + rate x elapsed``.

:class:`TokenBucket` keeps that state in the process, time from an injected clock.
:class:`RedisTokenBucket` keeps it in a Redis hash and runs the very same arithmetic as one Lua
script, so the read-refill-take-write is atomic across every replica sharing the key. The script
reads the time with Redis ``TIME``: replicas' clocks never enter the decision. An idle key
expires when the bucket would be full again, since a missing key means a full bucket.

:class:`SharedRateLimit` is what a pipeline runs when ``rate_limit.shared`` names a Redis: one
:class:`RedisTokenBucket` on the process's client for that URL (:func:`shared_redis_client`:
one client, hence one connection pool, per URL and event loop), each trip bounded by
``redis_timeout`` and by the caller's deadline, and a decision for when Redis cannot answer:
``on_redis_error = "allow"`` (fail open, the default) or ``"deny"`` (fail closed). A failed trip
is counted and announced as a ``redis_error`` event; for ``redis_backoff`` seconds after it,
calls are decided by ``on_redis_error`` without asking Redis, so an outage (a host that drops
packets, not only a closed port) costs the calls no waiting. The first trip that works again
announces ``redis_recovered``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import time
import weakref
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from garrison.core import Clock, ConfigError, SystemClock, default_wheel

from ._base import Listener, PolicyEvent, Rejected, emit

if TYPE_CHECKING:
    import redis.asyncio

__all__ = [
    "RateLimitConfig",
    "RedisTokenBucket",
    "SharedRateLimit",
    "TokenBucket",
    "close_shared_redis_clients",
    "shared_redis_client",
]

_SCHEMES = ("redis://", "rediss://", "unix://")
_REDIS_TIMEOUT = 0.1
_REDIS_BACKOFF = 0.5
KEY_PREFIX = "garrison:ratelimit:"
"""Prefix of the default key of a shared bucket (followed by the edge name)."""


class RateLimitConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A token bucket's shape."""

    rate: float = 100.0
    """Tokens added per second: the sustained rate."""
    burst: float = 100.0
    """Capacity of the bucket: the most that can be taken at once after a quiet spell."""
    shared: str | None = None
    """A Redis URL (``redis://``, ``rediss://``, ``unix://``): one bucket shared by every replica
    using the same ``key``, instead of one per process. Needs the ``redis`` extra."""
    key: str | None = None
    """The Redis key of a shared bucket; by default ``garrison:ratelimit:`` followed by the edge
    name (``caller->callee``, or the decorated function's qualified name), so every replica of
    the caller shares one limit per edge. Replicas sharing a key must agree on rate and burst."""
    on_redis_error: Literal["allow", "deny"] = "allow"
    """When Redis cannot answer in time: ``allow`` the call (fail open) or ``deny`` it (fail
    closed, ``Rejected``). Either way counted, and each failed trip is a ``redis_error`` event."""
    redis_timeout: float = _REDIS_TIMEOUT
    """Seconds a call waits for Redis (connecting included) before ``on_redis_error`` decides;
    never longer than the caller's remaining deadline."""
    redis_backoff: float = _REDIS_BACKOFF
    """After a failed trip, seconds during which calls are decided by ``on_redis_error``
    without asking Redis (an outage then costs no waiting); 0 asks every time."""

    def __post_init__(self) -> None:
        if not (_finite(self.rate) and self.rate > 0):
            raise ConfigError(f"expected tokens per second > 0, got {self.rate!r}", key="rate")
        if not (_finite(self.burst) and self.burst >= 1):
            raise ConfigError(f"expected a number >= 1, got {self.burst!r}", key="burst")
        if self.on_redis_error not in ("allow", "deny"):
            raise ConfigError(
                f"expected 'allow' or 'deny', got {self.on_redis_error!r}", key="on_redis_error"
            )
        if not (_finite(self.redis_timeout) and self.redis_timeout > 0):
            raise ConfigError(
                f"expected seconds > 0, got {self.redis_timeout!r}", key="redis_timeout"
            )
        if not (_finite(self.redis_backoff) and self.redis_backoff >= 0):
            raise ConfigError(
                f"expected seconds >= 0, got {self.redis_backoff!r}", key="redis_backoff"
            )
        if self.key is not None and (not isinstance(self.key, str) or not self.key):
            raise ConfigError(f"expected a non-empty string, got {self.key!r}", key="key")
        if self.shared is None:
            # What only a shared bucket reads must not be set on a local one: it would be
            # silently ignored, and whoever wrote it believes the limit is shared.
            for name, default in (
                ("key", None),
                ("on_redis_error", "allow"),
                ("redis_timeout", _REDIS_TIMEOUT),
                ("redis_backoff", _REDIS_BACKOFF),
            ):
                if getattr(self, name) != default:
                    raise ConfigError(
                        f"only applies to a shared bucket; set shared = a Redis URL too "
                        f"(or remove {name})",
                        key=name,
                    )
            return
        _check_redis_url(self.shared)


class TokenBucket:
    """An in-process token bucket with lazy refill (see the module docstring).

    Starts full. ``n`` may be fractional; a request for more than ``burst`` is never granted.
    """

    __slots__ = ("_burst", "_now", "_rate", "_tokens", "_ts", "config")

    def __init__(self, config: RateLimitConfig | None = None, *, clock: Clock | None = None):
        self.config = config = config or RateLimitConfig()
        clock = clock or SystemClock()
        self._now = time.monotonic if type(clock) is SystemClock else clock.monotonic
        self._rate = config.rate
        self._burst = float(config.burst)
        self._tokens = self._burst
        self._ts = self._now()

    def try_acquire(self, n: float = 1) -> bool:
        """Take ``n`` tokens if the bucket holds them; ``False`` (nothing taken) otherwise."""
        now = self._now()
        tokens = self._tokens
        if now > self._ts:
            tokens += (now - self._ts) * self._rate
            if tokens > self._burst:
                tokens = self._burst
            self._ts = now
        if tokens >= n:
            self._tokens = tokens - n
            return True
        self._tokens = tokens
        return False

    def wait_time(self, n: float = 1) -> float:
        """Seconds until ``n`` tokens will be there (0 if they are now, ``inf`` if ``n > burst``).

        Takes nothing: a caller that waits must still :meth:`try_acquire` afterwards, and may lose
        the tokens to another caller and have to wait again.
        """
        if n > self._burst:
            return math.inf
        now = self._now()
        tokens = self._tokens
        if now > self._ts:
            tokens = min(self._burst, tokens + (now - self._ts) * self._rate)
        return 0.0 if tokens >= n else (n - tokens) / self._rate

    @property
    def tokens(self) -> float:
        """Tokens in the bucket right now."""
        now = self._now()
        if now > self._ts:
            return min(self._burst, self._tokens + (now - self._ts) * self._rate)
        return self._tokens


# KEYS[1]: the bucket (a hash: t = tokens, ts = Redis time in microseconds)
# ARGV: rate (tokens/s), burst, n, consume (1 take / 0 only look)
# Returns {granted (1/0), seconds to wait for n tokens as a string ("inf" if n > burst)}.
# Numbers are written with %.17g: Lua's tostring keeps 14 digits, too few for microseconds.
_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) / 1000000 * rate)
  ts = now
end
if tokens >= n then
  if ARGV[4] == '1' then
    tokens = tokens - n
    redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens),
               'ts', string.format('%.17g', ts))
    redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1)
  end
  return {1, '0'}
end
if n > burst then
  return {0, 'inf'}
end
return {0, string.format('%.17g', (n - tokens) / rate)}
"""


class RedisTokenBucket:
    """A token bucket shared by every process using the same Redis ``key``.

    Same decisions as :class:`TokenBucket`, executed atomically in Redis with Redis's clock.
    ``client`` is a ``redis.asyncio.Redis``; the bucket does not close it. Every replica must use
    the same ``config`` for the key (the script takes the shape from the caller).
    """

    __slots__ = ("_args", "_client", "_script", "config", "key")

    def __init__(
        self, client: redis.asyncio.Redis, key: str, config: RateLimitConfig | None = None
    ) -> None:
        self.config = config = config or RateLimitConfig()
        self.key = key
        self._client = client
        self._script = client.register_script(_SCRIPT)
        self._args = (repr(float(config.rate)), repr(float(config.burst)))

    @property
    def client(self) -> redis.asyncio.Redis:
        """The Redis client the bucket talks through."""
        return self._client

    async def try_acquire(self, n: float = 1) -> bool:
        """Take ``n`` tokens if the shared bucket holds them; ``False`` (none taken) otherwise."""
        granted, _ = await self._run(n, consume=True)
        return granted

    async def wait_time(self, n: float = 1) -> float:
        """Seconds until ``n`` tokens will be there (0: now, ``inf``: ``n > burst``); takes none."""
        _, wait = await self._run(n, consume=False)
        return wait

    async def acquire_or_wait_time(self, n: float = 1) -> float:
        """Take ``n`` tokens and return 0, or take none and return the seconds to wait: one trip."""
        granted, wait = await self._run(n, consume=True)
        return 0.0 if granted else wait

    async def reset(self) -> None:
        """Forget the bucket's state (it becomes full)."""
        await self._client.delete(self.key)

    async def _run(self, n: float, *, consume: bool) -> tuple[bool, float]:
        result: Any = await self._script(
            keys=[self.key], args=[*self._args, repr(float(n)), "1" if consume else "0"]
        )
        granted, wait = result
        if isinstance(wait, bytes):
            wait = wait.decode()
        return int(granted) == 1, float(wait)


# -- the pipeline's shared rate limit --------------------------------------------------------------

_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, redis.asyncio.Redis]] = (
    weakref.WeakKeyDictionary()
)
_MAX_CONNECTIONS = 64


def shared_redis_client(url: str) -> redis.asyncio.Redis:
    """The process's Redis client for ``url`` on the running event loop, made on first use.

    One client (one connection pool, at most 64 connections; a call waits for a free one within
    its time limit) per URL: every shared bucket on that Redis uses it. Per event loop too,
    because an asyncio connection belongs to the loop that opened it; a process normally has
    one. The client never retries by itself: the caller decides what a failure means.
    Close them with :func:`close_shared_redis_clients` when the service stops.
    """
    loop = asyncio.get_running_loop()
    clients = _CLIENTS.get(loop)
    if clients is None:
        clients = _CLIENTS[loop] = {}
    client = clients.get(url)
    if client is None:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=_MAX_CONNECTIONS, timeout=None, retry=Retry(NoBackoff(), 0)
        )
        client = clients[url] = redis.asyncio.Redis(connection_pool=pool)
    return client


async def close_shared_redis_clients() -> None:
    """Close the clients :func:`shared_redis_client` made on the running loop (at shutdown).

    A pipeline used afterwards makes a fresh one.
    """
    clients = _CLIENTS.pop(asyncio.get_running_loop(), {})
    for client in clients.values():
        await client.aclose(close_connection_pool=True)


class SharedRateLimit:
    """A pipeline's rate limit shared through Redis (``rate_limit.shared``); see the module doc.

    :meth:`acquire` takes a token from the shared bucket ``key``, or says why not. Counters:
    ``redis_errors`` (failed trips), ``allowed_on_error`` / ``denied_on_error`` (calls decided
    by ``on_redis_error``, trips and backoff together).
    """

    __slots__ = (
        "_bucket",
        "_clock",
        "_deny",
        "_down_until",
        "_listeners",
        "_up",
        "allowed_on_error",
        "config",
        "denied_on_error",
        "key",
        "name",
        "redis_errors",
    )

    def __init__(
        self, config: RateLimitConfig, *, key: str, name: str = "", clock: Clock | None = None
    ) -> None:
        if config.shared is None:
            raise ValueError("SharedRateLimit needs rate_limit.shared (a Redis URL)")
        self.config = config
        self.key = key
        """The Redis key of the bucket."""
        self.name = name
        """The edge, for events."""
        self._clock = clock or SystemClock()
        self._deny = config.on_redis_error == "deny"
        self._bucket: RedisTokenBucket | None = None
        self._down_until = -math.inf
        self._up = True
        self._listeners: list[Listener] = []
        self.redis_errors = 0
        """Trips to Redis that failed (unreachable, too slow, an error)."""
        self.allowed_on_error = 0
        """Calls let through because Redis could not decide (``on_redis_error = "allow"``)."""
        self.denied_on_error = 0
        """Calls refused because Redis could not decide (``on_redis_error = "deny"``)."""

    @classmethod
    def default_key(cls, name: str) -> str:
        """The key of a shared bucket whose config names none: derived from the edge name."""
        return KEY_PREFIX + name

    def add_listener(self, listener: Listener) -> None:
        """Receive the ``redis_error`` / ``redis_recovered`` events."""
        self._listeners.append(listener)

    @property
    def redis_up(self) -> bool:
        """Whether the last trip to Redis worked."""
        return self._up

    async def acquire(self, remaining: float | None = None) -> Rejected | None:
        """Take one token: ``None`` when the call may go, else the :class:`Rejected` to raise.

        ``remaining`` is the caller's time left (seconds); the trip never waits longer.
        """
        if self._clock.monotonic() < self._down_until:
            return self._undecided()
        client = shared_redis_client(self.config.shared)  # type: ignore[arg-type]
        bucket = self._bucket
        if bucket is None or bucket.client is not client:  # first use, or a new event loop
            bucket = self._bucket = RedisTokenBucket(client, self.key, self.config)
        limit = self.config.redis_timeout
        if remaining is not None and remaining < limit:
            limit = remaining
        try:
            async with default_wheel().timeout(limit):
                wait = await bucket.acquire_or_wait_time()
        except Exception as exc:
            if not _is_redis_failure(exc):
                raise
            self._failed(exc)
            return self._undecided()
        if not self._up:
            self._up = True
            self._event("redis_recovered", {"key": self.key})
        if wait == 0.0:
            return None
        return Rejected("rate_limit", "rate exceeded", retry_after=wait)

    def _failed(self, exc: BaseException) -> None:
        self.redis_errors += 1
        self._up = False
        self._down_until = self._clock.monotonic() + self.config.redis_backoff
        detail = str(exc) or "timed out"
        self._event(
            "redis_error",
            {
                "key": self.key,
                "error": f"{type(exc).__name__}: {detail}",
                "on_redis_error": self.config.on_redis_error,
            },
        )

    def _undecided(self) -> Rejected | None:
        if self._deny:
            self.denied_on_error += 1
            left = max(self._down_until - self._clock.monotonic(), 0.0)
            return Rejected("rate_limit", "redis unreachable", retry_after=left or None)
        self.allowed_on_error += 1
        return None

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        if self._listeners:
            event = PolicyEvent("rate_limit", self.name, kind, self._clock.monotonic(), data)
            emit(self._listeners, event)

    def snapshot(self) -> dict[str, Any]:
        """Counters and health, for the pipeline's snapshot."""
        return {
            "shared": self.key,
            "redis_up": self._up,
            "redis_errors": self.redis_errors,
            "allowed_on_error": self.allowed_on_error,
            "denied_on_error": self.denied_on_error,
        }

    def __repr__(self) -> str:
        return f"<SharedRateLimit {self.key!r} {'up' if self._up else 'down'}>"


def _is_redis_failure(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis could not decide (anything else is a bug: re-raised)."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    import redis.exceptions

    return isinstance(exc, redis.exceptions.RedisError)


def _check_redis_url(url: object) -> None:
    # The URL itself is never echoed: it may hold a password.
    if not isinstance(url, str) or not url.startswith(_SCHEMES):
        raise ConfigError(
            "expected a redis://, rediss:// or unix:// URL (or leave shared out for a local "
            "bucket)",
            key="shared",
        )
    if importlib.util.find_spec("redis") is None:
        raise ConfigError(
            "a shared rate limit needs the redis package: pip install 'garrison[redis]'",
            key="shared",
        )
    from redis.asyncio.connection import parse_url

    try:
        parse_url(url)
    except ValueError as exc:
        raise ConfigError(f"not a usable Redis URL: {exc}", key="shared") from None


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
