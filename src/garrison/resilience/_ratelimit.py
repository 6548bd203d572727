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
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import msgspec

from garrison.core import Clock, ConfigError, SystemClock

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["RateLimitConfig", "RedisTokenBucket", "TokenBucket"]


class RateLimitConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A token bucket's shape."""

    rate: float = 100.0
    """Tokens added per second: the sustained rate."""
    burst: float = 100.0
    """Capacity of the bucket: the most that can be taken at once after a quiet spell."""

    def __post_init__(self) -> None:
        if not (_finite(self.rate) and self.rate > 0):
            raise ConfigError(f"expected tokens per second > 0, got {self.rate!r}", key="rate")
        if not (_finite(self.burst) and self.burst >= 1):
            raise ConfigError(f"expected a number >= 1, got {self.burst!r}", key="burst")


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


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
