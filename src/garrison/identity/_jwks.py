"""JSON Web Key sets: parse JWKs into verification keys, and keep each issuer's set fresh.

Theory of operation
-------------------
Keys come only from the issuer's configured JWKS URL or file -- never from a token. A fetched
document is parsed key by key: a key that is not for signatures (``use`` other than ``sig``,
``key_ops`` without ``verify``), of an unsupported type or curve, weak (RSA under 2048 bits, a
ROCA-vulnerable modulus, a bad exponent), carrying private material, or with an ``alg`` that
does not fit it is *skipped* and reported; two keys sharing a ``kid`` are both dropped, since
which one a token meant is ambiguous. The usable keys form an immutable :class:`KeySet`.

:class:`JwksCache` holds an issuer's current set and decides when to fetch:

* the first lookup fetches; concurrent lookups share that one fetch (single-flight);
* a ``kid`` missing from the set triggers a refetch -- the issuer may have rotated -- but at
  most one fetch *attempt* per ``min_refresh_interval``, whatever the number of unknown kids
  arriving, so a flood of made-up kids costs the issuer one request per interval;
* a set older than ``refresh_interval`` is refreshed in the background on the next lookup,
  while lookups keep being served from it (stale-while-revalidate);
* a failed fetch (network, status, size, JSON, no usable key) keeps the last good set; while
  there has never been one, lookups raise :class:`~garrison.core.ServiceUnavailable` (503:
  the issuer is down, the token is not known to be bad).

Time comes from the injected :class:`~garrison.core.Clock`; the fetch itself is a small
:class:`KeySource` (HTTP with a total timeout and a size limit, or a file), so the decision
logic is tested with a fake source and a fake clock, and the HTTP source against a real server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from garrison.core import (
    Clock,
    GarrisonError,
    ServiceUnavailable,
    SystemClock,
    Unauthenticated,
    get_logger,
)

from ._jws import (
    ALGORITHMS,
    REASON_UNKNOWN_KEY,
    VerificationKey,
    b64url_decode,
    is_valid_kid,
)

__all__ = [
    "FileKeySource",
    "HttpKeySource",
    "JwkError",
    "JwksCache",
    "KeyProvider",
    "KeySet",
    "KeySource",
    "StaticKeys",
    "check_jwks_url",
    "parse_jwk",
    "parse_jwks",
]

_log = get_logger("identity")
_MAX_KEYS = 100
_DEFAULT_MAX_BYTES = 256 * 1024
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")
_EC_CURVES: Final[dict[str, tuple[ec.EllipticCurve, int]]] = {
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
    "P-521": (ec.SECP521R1(), 66),
}
# ROCA (CVE-2017-15361): Infineon primes are k*M + (65537**a mod M), M a primorial, so the
# modulus is a power of 65537 modulo every small prime. A random modulus passes this test for
# all primes up to 167 with probability about 4e-9.
_ROCA: Final = tuple(
    (p, frozenset(pow(65537, k, p) for k in range(p)))
    for p in range(3, 168)
    if all(p % q for q in range(2, p))
)


class JwkError(GarrisonError, ValueError):
    """A JWK or a JWK set cannot be used; the message says why."""


def _roca_vulnerable(n: int) -> bool:
    return all(n % p in powers for p, powers in _ROCA)


def _b64(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise JwkError(f"member {name!r} is missing or not a string")
    try:
        return b64url_decode(value, name)
    except Unauthenticated as exc:
        raise JwkError(str(exc)) from None


def _uint(jwk: Mapping[str, Any], name: str) -> int:
    return int.from_bytes(_b64(jwk, name), "big")


def parse_jwk(jwk: Any, *, symmetric: bool = False) -> VerificationKey:
    """Turn one JWK (RFC 7517) into a :class:`VerificationKey`; raise :class:`JwkError`.

    ``symmetric`` admits ``oct`` keys (shared secrets), which a published key set never holds.
    """
    if not isinstance(jwk, Mapping):
        raise JwkError("a JWK must be a JSON object")
    kid = jwk.get("kid")
    if kid is not None and not is_valid_kid(kid):
        raise JwkError("kid: expected 1-128 characters of [A-Za-z0-9._~+/=:@-]")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise JwkError(f"use {use!r}: not a signature key")
    ops = jwk.get("key_ops")
    if ops is not None:
        if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
            raise JwkError("key_ops must be a list of strings")
        if "verify" not in ops:
            raise JwkError(f"key_ops {ops!r} does not allow 'verify'")
    alg = jwk.get("alg")
    if alg is not None and (not isinstance(alg, str) or alg not in ALGORITHMS):
        raise JwkError(f"alg {alg!r} is not a supported signature algorithm")
    kty = jwk.get("kty")
    if kty != "oct" and any(m in jwk for m in _PRIVATE_MEMBERS):
        raise JwkError("the key carries private key material; a key set publishes public keys")
    material: rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | bytes
    try:
        if kty == "RSA":
            n = _uint(jwk, "n")
            material = rsa.RSAPublicNumbers(_uint(jwk, "e"), n).public_key()
            if _roca_vulnerable(n):
                raise JwkError("RSA modulus has the ROCA fingerprint (CVE-2017-15361)")
        elif kty == "EC":
            crv = jwk.get("crv")
            if not isinstance(crv, str) or crv not in _EC_CURVES:
                raise JwkError(f"EC curve {crv!r} is not supported")
            curve, size = _EC_CURVES[crv]
            x, y = _b64(jwk, "x"), _b64(jwk, "y")
            if len(x) != size or len(y) != size:
                raise JwkError(f"{crv} coordinates must be {size} bytes")
            # cryptography checks that the point is on the curve
            nums = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
            )
            material = nums.public_key()
        elif kty == "OKP":
            if jwk.get("crv") != "Ed25519":
                raise JwkError(f"OKP curve {jwk.get('crv')!r} is not supported")
            x = _b64(jwk, "x")
            if len(x) != 32:
                raise JwkError("Ed25519 public keys are 32 bytes")
            material = ed25519.Ed25519PublicKey.from_public_bytes(x)
        elif kty == "oct":
            if not symmetric:
                raise JwkError("a shared secret ('oct') has no place in a public key set")
            material = _b64(jwk, "k")
        else:
            raise JwkError(f"kty {kty!r} is not supported")
        return VerificationKey(material, kid=kid, alg=alg)
    except JwkError:
        raise
    except (ValueError, TypeError) as exc:  # cryptography's checks and VerificationKey's
        raise JwkError(str(exc)) from None


class KeySet:
    """An immutable set of verification keys, looked up by ``kid``."""

    __slots__ = ("_by_kid", "_keys", "skipped")

    def __init__(self, keys: Iterable[VerificationKey], skipped: Sequence[str] = ()) -> None:
        self._keys = tuple(keys)
        self._by_kid = {k.kid: k for k in self._keys if k.kid is not None}
        self.skipped: tuple[str, ...] = tuple(skipped)
        """Why each key of the source document that is not in the set was left out."""

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[VerificationKey]:
        return iter(self._keys)

    def get(self, kid: str | None) -> VerificationKey | None:
        """The key for a token's ``kid``.

        A token without ``kid`` matches only a set of exactly one key, and a set of one key
        without ``kid`` matches any token: the issuer has a single key. The kid is only ever a
        dictionary key.
        """
        if len(self._keys) == 1 and (kid is None or self._keys[0].kid is None):
            return self._keys[0]
        if kid is None:
            return None
        return self._by_kid.get(kid)


def parse_jwks(document: bytes | Mapping[str, Any], *, symmetric: bool = False) -> KeySet:
    """Parse a JWK set (``{"keys": [...]}``), skipping the keys that cannot be used.

    Raises :class:`JwkError` when the document as a whole is unusable: not a JSON object with a
    ``keys`` list, more than 100 keys, or shared secrets mixed with public keys.
    """
    if isinstance(document, bytes):
        try:
            doc: Any = json.loads(document.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise JwkError(f"the key set is not JSON ({type(exc).__name__})") from None
    else:
        doc = document
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise JwkError("a key set must be a JSON object with a 'keys' list")
    raw: list[Any] = doc["keys"]
    if len(raw) > _MAX_KEYS:
        raise JwkError(f"the key set has {len(raw)} keys; at most {_MAX_KEYS}")
    keys: list[VerificationKey] = []
    skipped: list[str] = []
    for i, jwk in enumerate(raw):
        try:
            keys.append(parse_jwk(jwk, symmetric=symmetric))
        except JwkError as exc:
            kid = jwk.get("kid") if isinstance(jwk, Mapping) else None
            skipped.append(f"keys[{i}] (kid {kid!r}): {exc}")
    if len({k.kty == "oct" for k in keys}) > 1:
        raise JwkError("the key set mixes shared secrets and public keys")
    # Counted over every entry, usable or not: a kid named twice is ambiguous whatever else
    # is wrong with one of its keys.
    counts: dict[str, int] = {}
    for jwk in raw:
        kid = jwk.get("kid") if isinstance(jwk, Mapping) else None
        if isinstance(kid, str):
            counts[kid] = counts.get(kid, 0) + 1
    dups = {kid for kid, n in counts.items() if n > 1}
    if dups:
        skipped.extend(f"kid {kid!r}: named by several keys, all dropped" for kid in sorted(dups))
        keys = [k for k in keys if k.kid not in dups]
    return KeySet(keys, skipped)


def check_jwks_url(url: str) -> str | None:
    """Why ``url`` may not serve keys, or None: https, or http to a loopback host only."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "not a valid URL"
    if not host:
        return "the URL has no host"
    if parts.scheme == "https":
        return None
    if parts.scheme != "http":
        return f"scheme {parts.scheme!r}; expected https"
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return "plain http is only allowed to a loopback host; use https"


class KeySource(Protocol):
    """Where an issuer's JWK set document comes from."""

    description: str
    """What to name in logs (the URL or the file path)."""

    async def fetch(self) -> bytes:
        """The current document; raises on any failure."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class HttpKeySource:
    """Fetches a JWK set over HTTP(S): no redirects, no proxies from the environment, no
    compression, a total timeout and a size limit."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        max_bytes: int = _DEFAULT_MAX_BYTES,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        problem = check_jwks_url(url)
        if problem:
            raise ValueError(f"JWKS URL {url!r}: {problem}")
        self.url = url
        self.description = url
        self._timeout = timeout
        self._max = max_bytes
        self._client = client
        self._own = client is None

    async def fetch(self) -> bytes:
        """GET the document; raise :class:`JwkError` or an ``httpx`` error on failure."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout, follow_redirects=False, trust_env=False
            )
        headers = {
            "accept": "application/jwk-set+json, application/json",
            "accept-encoding": "identity",  # the size limit bounds what we hold, unexpanded
        }
        body = bytearray()
        async with (
            asyncio.timeout(self._timeout),  # a total budget: httpx's is per read
            self._client.stream("GET", self.url, headers=headers) as resp,
        ):
            if resp.status_code != 200:
                raise JwkError(f"{self.url} answered {resp.status_code}")
            length = resp.headers.get("content-length", "")
            if length.isdigit() and int(length) > self._max:
                raise JwkError(f"{self.url} sent {length} bytes; at most {self._max}")
            async for chunk in resp.aiter_raw():
                body += chunk
                if len(body) > self._max:
                    raise JwkError(f"{self.url} sent more than {self._max} bytes")
        return bytes(body)

    async def aclose(self) -> None:
        """Close the HTTP client if this source created it."""
        if self._own and self._client is not None:
            await self._client.aclose()
            self._client = None


class FileKeySource:
    """Reads a JWK set from a file (off the event loop), with a size limit."""

    def __init__(self, path: str | Path, *, max_bytes: int = _DEFAULT_MAX_BYTES) -> None:
        self.path = Path(path)
        self.description = str(path)
        self._max = max_bytes

    def _read(self) -> bytes:
        with self.path.open("rb") as f:
            data = f.read(self._max + 1)
        if len(data) > self._max:
            raise JwkError(f"{self.path} is larger than {self._max} bytes")
        return data

    async def fetch(self) -> bytes:
        """The file's content."""
        return await asyncio.to_thread(self._read)

    async def aclose(self) -> None:
        """Nothing to release."""


class KeyProvider(Protocol):
    """What the JWT resolver asks for an issuer's keys."""

    @property
    def version(self) -> int:
        """Changes whenever the key set changes (for caches of verified tokens)."""
        ...

    async def get(self, kid: str | None) -> VerificationKey:
        """The key for ``kid``; raise :class:`Unauthenticated` when there is none."""
        ...

    async def aclose(self) -> None:
        """Stop background work and release connections."""
        ...


def _unknown(kid: str | None, ks: KeySet | None) -> Unauthenticated:
    if kid is None:
        n = len(ks) if ks is not None else 0
        return Unauthenticated(
            f"token has no kid and the issuer has {n} keys", reason=REASON_UNKNOWN_KEY
        )
    return Unauthenticated(f"no key with kid {kid!r}", reason=REASON_UNKNOWN_KEY)


class StaticKeys:
    """A fixed key set, e.g. an issuer's configured shared secret."""

    def __init__(self, keys: Iterable[VerificationKey]) -> None:
        self._keys = KeySet(keys)

    @property
    def version(self) -> int:
        """Always 1: the set never changes."""
        return 1

    async def get(self, kid: str | None) -> VerificationKey:
        """The key for ``kid``."""
        key = self._keys.get(kid)
        if key is None:
            raise _unknown(kid, self._keys)
        return key

    async def aclose(self) -> None:
        """Nothing to release."""


class JwksCache:
    """An issuer's key set, fetched from its :class:`KeySource` and kept fresh (see the module
    docstring for when it fetches). One instance per event loop."""

    def __init__(
        self,
        source: KeySource,
        *,
        clock: Clock | None = None,
        min_refresh_interval: float = 30.0,
        refresh_interval: float = 3600.0,
    ) -> None:
        if not 0 < min_refresh_interval <= refresh_interval:
            raise ValueError("expected 0 < min_refresh_interval <= refresh_interval")
        self.source = source
        self._clock: Clock = clock or SystemClock()
        self._min_interval = min_refresh_interval
        self._interval = refresh_interval
        self._keys: KeySet | None = None
        self._loaded_at = 0.0
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._version = 0
        self.fetches = 0
        """Fetch attempts so far."""
        self.failures = 0
        """Failed fetch attempts so far."""
        self.last_error: str | None = None
        """Why the last failed fetch failed."""

    @property
    def keys(self) -> KeySet | None:
        """The current key set (None until a fetch succeeded)."""
        return self._keys

    @property
    def version(self) -> int:
        """Incremented each time a new key set is installed."""
        return self._version

    async def get(self, kid: str | None) -> VerificationKey:
        """The key for ``kid``, fetching when the rules allow.

        Raises :class:`Unauthenticated` (reason ``unknown_key``) when the set has no such key,
        and :class:`~garrison.core.ServiceUnavailable` while no key set could be loaded yet: an
        identity provider outage must not look like a bad token (and log users out).
        """
        now = self._clock.monotonic()
        ks = self._keys
        if ks is not None:
            key = ks.get(kid)
            if key is not None:
                if now - self._loaded_at >= self._interval and self._may_fetch(now):
                    self._start_fetch(now)  # in the background; keep serving this set
                return key
            if kid is None:  # a refetch would not tell which key a kid-less token meant
                raise _unknown(kid, ks)
        if self._may_fetch(now):
            await self._join_fetch(now)
            ks = self._keys
            key = ks.get(kid) if ks is not None else None
            if key is not None:
                return key
        if ks is None:  # the issuer is down, not the token bad: 503, never 401
            raise ServiceUnavailable(
                f"keys of {self.source.description} are unavailable: {self.last_error}"
            )
        raise _unknown(kid, ks)

    async def refresh(self) -> bool:
        """Fetch now (joining a fetch in flight), whatever the rate limit; True when a new key
        set was installed."""
        before = self._version
        await self._join_fetch(self._clock.monotonic())
        return self._version != before

    def _may_fetch(self, now: float) -> bool:
        return (
            self._inflight is not None
            or self._last_attempt is None
            or now - self._last_attempt >= self._min_interval
        )

    def _start_fetch(self, now: float) -> asyncio.Task[None]:
        if self._inflight is None:
            self._last_attempt = now
            self.fetches += 1
            task = asyncio.get_running_loop().create_task(self._fetch())
            self._inflight = task
            task.add_done_callback(self._fetch_done)
        return self._inflight

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _join_fetch(self, now: float) -> None:
        # shield: a waiter that is cancelled must not cancel the fetch the others share
        task = self._start_fetch(now)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if task.cancelled() and (me is None or not me.cancelling()):
                return  # the fetch was cancelled (aclose), not this waiter: no new keys
            raise

    async def _fetch(self) -> None:
        try:
            ks = parse_jwks(await self.source.fetch())
            if not len(ks):
                raise JwkError("no usable key: " + "; ".join(ks.skipped))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure keeps the last good set
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            _log.warning("JWKS fetch from %s failed: %s", self.source.description, self.last_error)
            return
        for why in ks.skipped:
            _log.warning("JWKS %s: skipped %s", self.source.description, why)
        self._keys = ks
        self._loaded_at = self._clock.monotonic()
        self._version += 1
        self.last_error = None

    async def aclose(self) -> None:
        """Cancel a fetch in flight and close the source."""
        task = self._inflight
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.source.aclose()
