"""The verified-credential cache: do not re-verify what the edge has just verified.

Theory of operation
-------------------
Verifying a credential costs a signature check, a store read or a remote call; the same
credential arrives again and again. The cache remembers the :class:`Resolution` of a
credential for a bounded time so that the next request costs one hash and one dict lookup.

* **Key.** SHA-256 over the resolver's name, the credential kind, the device id and the raw
  value. The raw credential is never a key or a field, so a heap dump or a debug listing of the
  cache reveals no usable token.
* **Bounded.** An LRU (``OrderedDict``) of at most ``max_entries`` positive entries; rejections
  (negative entries) live in their own smaller LRU with a short TTL, so a flood of garbage
  tokens cannot evict good entries.
* **Expiry-aware.** An entry is fresh until the earliest of the credential's ``expires_at``,
  ``max_ttl`` after it was stored and an optional per-entry TTL. A *stale* entry (fresh time
  passed, credential not yet expired, at most ``stale_ttl`` later) is served only by
  :meth:`~VerifiedCredentialCache.get_stale`, which a resolver calls when a refresh failed, and
  marks its answer ``degraded``.
* **Safe across key rotation.** The caller passes its current *generation* (a key id, a key-ring
  version, a JWKS fetch counter ...) with every read and write; an entry stored under another
  generation is dropped when read, so nothing verified under retired keys is served.
* **Explicit invalidation** by credential, by subject and by device, for revocation.

Time is wall time from the injected clock, because credential expiries are wall times. The
cache is not thread-safe: one instance per event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import time as _time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec

from garrison.core import Clock, ConfigError, SystemClock, Unauthenticated

from ._model import Credential, RequestCredentials, Resolution, Resolver

__all__ = [
    "CacheConfig",
    "CacheStats",
    "CachedRejection",
    "CachedResolver",
    "SingleFlight",
    "VerifiedCredentialCache",
    "credential_digest",
]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class CacheConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of a :class:`VerifiedCredentialCache`."""

    max_entries: int = 10_000
    """Most positive entries kept; the least recently used is evicted first."""
    max_ttl: float = 300.0
    """Longest an entry stays fresh, in seconds, whatever the credential's own expiry."""
    negative_ttl: float = 5.0
    """How long a rejection is remembered, in seconds (short: a fixed token must work soon)."""
    max_negative_entries: int = 1_000
    """Most rejections kept."""
    stale_ttl: float = 0.0
    """How long past its fresh time an entry may still be served *degraded* when a refresh
    fails, in seconds; never past the credential's expiry. 0 disables stale serving."""

    def __post_init__(self) -> None:
        _check_int(self.max_entries, "max_entries", low=1)
        _check_int(self.max_negative_entries, "max_negative_entries", low=0)
        _check_float(self.max_ttl, "max_ttl", low=0.0, low_open=True)
        _check_float(self.negative_ttl, "negative_ttl", low=0.0, high=60.0)
        _check_float(self.stale_ttl, "stale_ttl", low=0.0)


def _check_int(value: object, key: str, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"expected an integer >= {low}, got {value!r}", key=key)


def _check_float(
    value: object, key: str, *, low: float, high: float = float("inf"), low_open: bool = False
) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = v == v and (v > low if low_open else v >= low) and v <= high
    if not ok:
        lo = f"> {low:g}" if low_open else f">= {low:g}"
        hi = f" and <= {high:g}" if high != float("inf") else ""
        raise ConfigError(f"expected a number {lo}{hi}, got {value!r}", key=key)


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters of a :class:`VerifiedCredentialCache` since it was created."""

    hits: int
    """Fresh positive entries served."""
    misses: int
    """Lookups that found nothing usable."""
    negative_hits: int
    """Remembered rejections served."""
    stale_hits: int
    """Stale entries served degraded after a failed refresh."""
    evictions: int
    """Entries dropped to stay within the size bound."""
    invalidations: int
    """Entries dropped by explicit invalidation or a generation change."""
    size: int
    """Positive entries currently held."""
    negative_size: int
    """Rejections currently held."""


class CachedRejection(msgspec.Struct, frozen=True):
    """A remembered rejection: the credential failed verification a moment ago."""

    reason: str
    """The :class:`~garrison.core.Unauthenticated` reason."""
    message: str
    """The message for the logs."""

    def error(self) -> Unauthenticated:
        """The error to raise again."""
        return Unauthenticated(self.message, reason=self.reason)


def credential_digest(credential: Credential) -> bytes:
    """The cache key of ``credential``: SHA-256 of who found it, what it is and its value."""
    device = credential.device_id or ""
    material = f"{credential.resolver}\0{credential.kind}\0{device}\0{credential.value}"
    # surrogatepass: a header value that is not valid Unicode still hashes (and then fails
    # verification) instead of raising here
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).digest()


class _Entry:
    __slots__ = ("device", "fresh_until", "generation", "hard_until", "resolution", "subject")

    def __init__(
        self,
        resolution: Resolution,
        generation: Hashable,
        fresh_until: float,
        hard_until: float,
    ) -> None:
        self.resolution = resolution
        self.generation = generation
        self.fresh_until = fresh_until
        self.hard_until = hard_until
        self.subject = resolution.user.subject if resolution.user is not None else None
        self.device = resolution.device.id if resolution.device is not None else None


class VerifiedCredentialCache:
    """A bounded, expiry-aware, rotation-safe cache of verified credentials.

    See the module docstring for the rules. ``generation`` is any hashable value naming the
    verification keys in force; pass the same value to reads and writes.
    """

    def __init__(self, config: CacheConfig | None = None, *, clock: Clock | None = None) -> None:
        self.config = config or CacheConfig()
        self._clock = clock or SystemClock()
        # bound once (SystemClock.time is time.time, one frame less)
        self._time = _time.time if type(self._clock) is SystemClock else self._clock.time
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._negative: OrderedDict[bytes, tuple[float, Hashable, CachedRejection]] = OrderedDict()
        self._by_owner: dict[str, set[bytes]] = {}
        self._hits = self._misses = self._negative_hits = self._stale_hits = 0
        self._evictions = self._invalidations = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def stats(self) -> CacheStats:
        """The hit / miss / eviction counters and the current sizes."""
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            negative_hits=self._negative_hits,
            stale_hits=self._stale_hits,
            evictions=self._evictions,
            invalidations=self._invalidations,
            size=len(self._entries),
            negative_size=len(self._negative),
        )

    # -- reads --------------------------------------------------------------------------------

    def get(
        self, credential: Credential, *, generation: Hashable = None, digest: bytes | None = None
    ) -> Resolution | None:
        """The fresh resolution of ``credential``, or None (counted as a miss).

        ``digest``, on this method and the others, is ``credential_digest(credential)`` when the
        caller has it already: a miss looks up, verifies and stores, with one hash, not two.
        """
        key = credential_digest(credential) if digest is None else digest
        entry = self._entries.get(key)
        if entry is not None:
            if entry.generation != generation:
                self._drop(key)
                self._invalidations += 1
            elif self._time() < entry.fresh_until:
                self._entries.move_to_end(key)
                self._hits += 1
                return entry.resolution
        self._misses += 1
        return None

    def lookup(
        self, credential: Credential, *, generation: Hashable = None, digest: bytes | None = None
    ) -> Resolution | CachedRejection | None:
        """A fresh resolution, a remembered rejection, or None."""
        key = credential_digest(credential) if digest is None else digest
        entry = self._entries.get(key)
        now = self._time()
        if entry is not None:
            if entry.generation != generation:
                self._drop(key)
                self._invalidations += 1
            elif now < entry.fresh_until:
                self._entries.move_to_end(key)
                self._hits += 1
                return entry.resolution
        neg = self._negative.get(key)
        if neg is not None:
            until, gen, rejection = neg
            if gen == generation and now < until:
                self._negative_hits += 1
                return rejection
            del self._negative[key]
        self._misses += 1
        return None

    def get_stale(
        self, credential: Credential, *, generation: Hashable = None, digest: bytes | None = None
    ) -> Resolution | None:
        """The last resolution of ``credential`` if it may still be served *degraded*.

        Only within ``stale_ttl`` after its fresh time, never past the credential's expiry and
        never across a generation change. The answer carries ``degraded=True``.
        """
        key = credential_digest(credential) if digest is None else digest
        entry = self._entries.get(key)
        if entry is None or entry.generation != generation:
            return None
        now = self._time()
        if now >= entry.hard_until or now >= entry.fresh_until + self.config.stale_ttl:
            return None
        self._stale_hits += 1
        return msgspec.structs.replace(entry.resolution, degraded=True)

    # -- writes -------------------------------------------------------------------------------

    def put(
        self,
        credential: Credential,
        resolution: Resolution,
        *,
        generation: Hashable = None,
        ttl: float | None = None,
        digest: bytes | None = None,
    ) -> None:
        """Remember ``resolution`` for at most ``ttl`` (and ``max_ttl``, and its expiry).

        Degraded resolutions and resolutions that carry actions (a cookie to set) are not
        cached: the next request must try the refresh again.
        """
        if resolution.degraded or resolution.actions:
            return
        now = self._time()
        hard = resolution.expires_at
        fresh = min(hard, now + self.config.max_ttl, now + ttl if ttl is not None else hard)
        if fresh <= now:
            return
        key = credential_digest(credential) if digest is None else digest
        self._drop(key)
        self._negative.pop(key, None)
        entry = _Entry(resolution, generation, fresh, hard)
        self._entries[key] = entry
        for owner in _owners(entry):
            self._by_owner.setdefault(owner, set()).add(key)
        while len(self._entries) > self.config.max_entries:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self._evictions += 1

    def put_rejection(
        self,
        credential: Credential,
        error: Unauthenticated,
        *,
        generation: Hashable = None,
        ttl: float | None = None,
        digest: bytes | None = None,
    ) -> None:
        """Remember that ``credential`` was rejected, for ``negative_ttl`` (or less)."""
        limit = self.config.max_negative_entries
        span = self.config.negative_ttl if ttl is None else min(ttl, self.config.negative_ttl)
        if limit == 0 or span <= 0:
            return
        key = credential_digest(credential) if digest is None else digest
        self._negative[key] = (
            self._time() + span,
            generation,
            CachedRejection(reason=error.reason, message=str(error)),
        )
        self._negative.move_to_end(key)
        while len(self._negative) > limit:
            self._negative.popitem(last=False)
            self._evictions += 1

    # -- invalidation -------------------------------------------------------------------------

    def invalidate(self, credential: Credential, *, digest: bytes | None = None) -> bool:
        """Forget ``credential`` (positive and negative); True if anything was held."""
        key = credential_digest(credential) if digest is None else digest
        found = self._drop(key) | (self._negative.pop(key, None) is not None)
        self._invalidations += found
        return found

    def invalidate_subject(self, subject: str) -> int:
        """Forget every entry naming user ``subject``; returns how many."""
        return self._invalidate_owner(f"u\0{subject}")

    def invalidate_device(self, device_id: str) -> int:
        """Forget every entry naming device ``device_id``; returns how many."""
        return self._invalidate_owner(f"d\0{device_id}")

    def clear(self) -> None:
        """Forget everything (counters are kept)."""
        self._invalidations += len(self._entries) + len(self._negative)
        self._entries.clear()
        self._negative.clear()
        self._by_owner.clear()

    def _invalidate_owner(self, owner: str) -> int:
        keys = self._by_owner.pop(owner, set())
        n = sum(self._drop(k) for k in list(keys))
        self._invalidations += n
        return n

    def _drop(self, key: bytes) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        for owner in _owners(entry):
            keys = self._by_owner.get(owner)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_owner[owner]
        return True


def _owners(entry: _Entry) -> tuple[str, ...]:
    owners: tuple[str, ...] = ()
    if entry.subject is not None:
        owners += (f"u\0{entry.subject}",)
    if entry.device is not None:
        owners += (f"d\0{entry.device}",)
    return owners


class SingleFlight(Generic[K, V]):
    """Collapse concurrent calls for the same key into one.

    The first caller starts the work as a task; callers arriving while it runs await the same
    task. A caller that is cancelled does not cancel the work for the others (the task is
    shielded). :meth:`aclose` cancels whatever is still running.
    """

    def __init__(self) -> None:
        self._calls: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    async def do(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        """Run ``work()`` unless a call for ``key`` is already running; return its result."""
        task = self._calls.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._calls[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        return await asyncio.shield(task)

    def _done(self, key: K, task: asyncio.Task[V]) -> None:
        if self._calls.get(key) is task:
            del self._calls[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so an error nobody awaited is not reported as lost

    async def aclose(self) -> None:
        """Cancel and await the calls still running."""
        tasks = list(self._calls.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._calls.clear()


class CachedResolver:
    """A :class:`~garrison.identity.Resolver` in front of a :class:`VerifiedCredentialCache`.

    Fresh hits skip ``inner.resolve``; rejections are remembered for the cache's short
    ``negative_ttl``. ``generation`` (when given) is called on every request and names the
    inner resolver's keys in force, so that a key rotation drops what was verified before it.

    Do not wrap resolvers whose credentials can be revoked server-side (sessions, API keys):
    revocation must take effect at the next request, so those consult their store every time.
    """

    def __init__(
        self,
        inner: Resolver,
        cache: VerifiedCredentialCache,
        *,
        generation: Callable[[], Hashable] | None = None,
    ) -> None:
        self.inner = inner
        self.cache = cache
        self.name = inner.name
        self._generation = generation

    def find(self, request: RequestCredentials) -> Credential | None:
        """Delegate to the inner resolver."""
        return self.inner.find(request)

    async def resolve(self, credential: Credential) -> Resolution:
        """A cached resolution, or the inner resolver's (then cached)."""
        gen = self._generation() if self._generation is not None else None
        digest = credential_digest(credential)  # once: the miss path stores under it too
        hit = self.cache.lookup(credential, generation=gen, digest=digest)
        if isinstance(hit, Resolution):
            return hit
        if hit is not None:
            raise hit.error()
        try:
            resolution = await self.inner.resolve(credential)
        except Unauthenticated as exc:
            self.cache.put_rejection(credential, exc, generation=gen, digest=digest)
            raise
        self.cache.put(credential, resolution, generation=gen, digest=digest)
        return resolution
