"""A strict verifier of JWS compact serialization (RFC 7515), the hot path of JWT resolution.

Theory of operation
-------------------
A token is verified in three steps, each refusing as early and as cheaply as it can, so that
garbage costs almost nothing and nothing an attacker wrote ever chooses how it is checked:

1. :func:`parse_compact` -- *no crypto, no key lookup.* Size limits first (the whole token,
   then each segment), then exactly three segments, strict base64url (the URL-safe alphabet,
   no padding, canonical trailing bits), then the protected header: UTF-8 JSON, an object,
   no duplicate member at any depth. Header policy follows: ``alg`` must be one this module
   implements, compared case-sensitively (``none`` in any spelling is refused); ``crit``
   naming anything at all is refused (no extension is understood); ``jwk``, ``jku``, ``x5u``
   and ``x5c`` are refused outright -- a verifier never takes keys from the token it checks,
   and a token carrying them is at best a misconfigured issuer and at worst an attack, so
   saying so loudly beats ignoring them; ``kid`` must be a short string of a plain charset,
   and is only ever used as a dictionary key. JSON serialization is refused.
2. :func:`check_algorithm` -- the issuer's allow-list, case-sensitive.
3. :func:`verify_signature` -- the key was chosen by the *verifier* (the issuer's key set
   looked up by ``kid``); its type must match the family of ``alg`` (RSA for RS*/PS*, the
   matching curve for ES*, Ed25519 for EdDSA, a shared secret for HS*), and a key that names
   an ``alg`` of its own is used for that algorithm only. Algorithm confusion (an HS256 token
   "signed" with an RSA public key) is impossible by construction: an RSA key object is not a
   secret, so the HS* path never sees it. Signature lengths are exact (an RSA signature is as
   long as the modulus, an ECDSA signature is the raw ``r || s`` of RFC 7518 §3.4 -- DER is
   refused); ``r`` or ``s`` of zero is refused before OpenSSL checks the rest of the range.

Every refusal is :class:`~garrison.core.Unauthenticated` with a short machine-readable
``reason`` (the ``REASON_*`` constants) and a message for the logs.

Why not PyJWT or joserfc? Both are sound, but this is the edge: we need total control of what
is refused and in which order (limits before base64, base64 before JSON, header policy before
any key lookup, no silently ignored ``crit`` or embedded keys, duplicate JSON members refused,
exact signature lengths), one precise reason per refusal, and no per-call key parsing or
algorithm registry lookups on the hot path. Calling ``cryptography`` directly gives that in a
few hundred auditable lines, and is faster than either (numbers in ``docs/identity.md``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from garrison.core import Unauthenticated

__all__ = [
    "ALGORITHMS",
    "CompactJws",
    "DEFAULT_LIMITS",
    "JwsLimits",
    "PrivateKey",
    "PublicKey",
    "REASON_ALG_NOT_ALLOWED",
    "REASON_BAD_ENCODING",
    "REASON_BAD_HEADER",
    "REASON_BAD_KID",
    "REASON_BAD_PAYLOAD",
    "REASON_BAD_SIGNATURE",
    "REASON_DUPLICATE_KEY",
    "REASON_EMBEDDED_KEY",
    "REASON_KEY_MISMATCH",
    "REASON_MALFORMED",
    "REASON_TOO_LARGE",
    "REASON_UNKNOWN_KEY",
    "REASON_UNSUPPORTED_CRIT",
    "VerificationKey",
    "b64url_decode",
    "b64url_encode",
    "check_algorithm",
    "decode_json_object",
    "is_valid_kid",
    "parse_compact",
    "sign_compact",
    "verify_compact",
    "verify_signature",
]

REASON_TOO_LARGE: Final = "token_too_large"
"""The token or one of its segments exceeds a size limit."""
REASON_MALFORMED: Final = "malformed_token"
"""Not a JWS in compact serialization (segment count, JSON serialization, empty header)."""
REASON_BAD_ENCODING: Final = "bad_encoding"
"""A segment is not strict base64url."""
REASON_BAD_HEADER: Final = "bad_header"
"""The protected header is not a JSON object, or a member has the wrong type."""
REASON_DUPLICATE_KEY: Final = "duplicate_key"
"""A JSON object (header or claims) names the same member twice."""
REASON_ALG_NOT_ALLOWED: Final = "alg_not_allowed"
"""``alg`` is ``none``, unknown, or not in the issuer's allow-list."""
REASON_UNSUPPORTED_CRIT: Final = "unsupported_crit"
"""``crit`` names an extension this verifier does not understand."""
REASON_EMBEDDED_KEY: Final = "embedded_key"
"""The header carries ``jwk``, ``jku``, ``x5u`` or ``x5c``."""
REASON_BAD_KID: Final = "bad_kid"
"""``kid`` is not a string, too long, empty, or outside the allowed charset."""
REASON_UNKNOWN_KEY: Final = "unknown_key"
"""No key of the issuer has this ``kid``."""
REASON_KEY_MISMATCH: Final = "key_mismatch"
"""The key found cannot be used with ``alg`` (wrong type, curve, restriction or strength)."""
REASON_BAD_SIGNATURE: Final = "bad_signature"
"""The signature is missing, has the wrong length or does not verify."""
REASON_BAD_PAYLOAD: Final = "bad_payload"
"""The payload is not a JSON object (for JWTs)."""

PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
"""Asymmetric key types a :class:`VerificationKey` can hold (besides a shared secret)."""
PrivateKey: TypeAlias = (
    rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | bytes
)
"""Key types :func:`sign_compact` accepts."""

_Kty = Literal["RSA", "EC", "OKP", "oct"]


@dataclass(frozen=True, slots=True)
class _AlgSpec:
    kty: _Kty
    crv: str | None  # the curve an EC/OKP key must be on
    hash: hashes.HashAlgorithm | None
    hash_name: str  # for hmac.digest
    pad: padding.AsymmetricPadding | None
    min_secret: int = 0  # HS*: RFC 7518 §3.2, a key at least as long as the hash output


def _pss(h: hashes.HashAlgorithm) -> padding.PSS:
    # RFC 7518 §3.5: MGF1 with the same hash, salt as long as the hash output. An explicit
    # salt length makes OpenSSL refuse any other, as the Wycheproof "SaltLenChanged" cases need.
    return padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)


_SHA256, _SHA384, _SHA512 = hashes.SHA256(), hashes.SHA384(), hashes.SHA512()
_PKCS1 = padding.PKCS1v15()
_SPECS: Final[dict[str, _AlgSpec]] = {
    "RS256": _AlgSpec("RSA", None, _SHA256, "sha256", _PKCS1),
    "RS384": _AlgSpec("RSA", None, _SHA384, "sha384", _PKCS1),
    "RS512": _AlgSpec("RSA", None, _SHA512, "sha512", _PKCS1),
    "PS256": _AlgSpec("RSA", None, _SHA256, "sha256", _pss(_SHA256)),
    "PS384": _AlgSpec("RSA", None, _SHA384, "sha384", _pss(_SHA384)),
    "PS512": _AlgSpec("RSA", None, _SHA512, "sha512", _pss(_SHA512)),
    "ES256": _AlgSpec("EC", "P-256", _SHA256, "sha256", None),
    "ES384": _AlgSpec("EC", "P-384", _SHA384, "sha384", None),
    "ES512": _AlgSpec("EC", "P-521", _SHA512, "sha512", None),
    "EdDSA": _AlgSpec("OKP", "Ed25519", None, "", None),
    "HS256": _AlgSpec("oct", None, None, "sha256", None, min_secret=32),
    "HS384": _AlgSpec("oct", None, None, "sha384", None, min_secret=48),
    "HS512": _AlgSpec("oct", None, None, "sha512", None, min_secret=64),
}
ALGORITHMS: Final[frozenset[str]] = frozenset(_SPECS)
"""Every ``alg`` this module implements (case-sensitive)."""

_CURVES: Final[dict[str, tuple[str, int]]] = {  # cryptography's name -> (JWK crv, bytes)
    "secp256r1": ("P-256", 32),
    "secp384r1": ("P-384", 48),
    "secp521r1": ("P-521", 66),
}
_RSA_MIN_BITS, _RSA_MAX_BITS = 2048, 8192  # below: forgeable in time; above: a CPU DoS
_RSA_MAX_E = 2**32  # a huge public exponent makes each verification expensive
_MIN_SECRET = 32

# kid: used only as a dict key, but kept to a plain charset so that it cannot carry control
# characters, quotes, spaces or backslashes into logs or anything else; '/', '+', '=' are allowed
# because real issuers (AWS Cognito) use standard-base64 key ids.
_KID = re.compile(r"[A-Za-z0-9._~+/=:@-]{1,128}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_COMPACT_CHARS = re.compile(r"[A-Za-z0-9_.-]*")
_URL_TO_STD = bytes.maketrans(b"-_", b"+/")
# A base64url text whose length is 2 or 3 mod 4 leaves 4 or 2 unused bits in its last
# character; canonical encodings leave them zero (Wycheproof "ModifiedUnusedBits").
_CANONICAL_LAST = {
    2: frozenset("AQgw"),
    3: frozenset("AEIMQUYcgkosw048"),
}
_EMBEDDED_KEYS = ("jwk", "jku", "x5u", "x5c")
_UNDERSTOOD_CRIT: Final[frozenset[str]] = frozenset()  # no JWS extension is supported


@dataclass(frozen=True, slots=True)
class JwsLimits:
    """Size limits checked before anything is decoded (characters of the compact form)."""

    max_token: int = 8192
    """The whole token."""
    max_header: int = 1024
    """The encoded protected header (about 760 bytes of JSON)."""
    max_signature: int = 1366
    """The encoded signature: enough for an RSA-8192 signature (1024 bytes)."""


DEFAULT_LIMITS: Final = JwsLimits()
"""The limits :func:`parse_compact` applies by default."""


def _fail(reason: str, message: str) -> Unauthenticated:
    return Unauthenticated(message, reason=reason)


class CompactJws(NamedTuple):
    """A JWS in compact serialization whose structure and header passed the checks of
    :func:`parse_compact`. Its signature is *not* verified yet."""

    header: Mapping[str, Any]
    """The protected header (read-only)."""
    alg: str
    """``alg`` (one of :data:`ALGORITHMS`)."""
    kid: str | None
    """``kid``, when present (charset and length checked)."""
    payload: bytes
    """The decoded payload."""
    signing_input: bytes
    """``BASE64URL(header) '.' BASE64URL(payload)``, the bytes that were signed."""
    signature: bytes
    """The decoded signature (never empty)."""


@dataclass(frozen=True, slots=True, eq=False)
class VerificationKey:
    """A key an issuer verifies with: a public key, or a shared secret for HS*.

    Construction checks its strength (RSA 2048-8192 bits with a small odd exponent, the curves
    P-256/384/521, Ed25519, a secret of at least 32 bytes) and, when ``alg`` restricts it, that
    the algorithm fits the key. Raises :class:`ValueError` (or :class:`TypeError`) otherwise.
    """

    material: PublicKey | bytes = field(repr=False)
    """The key object, or the secret bytes of an HMAC key."""
    kid: str | None = None
    """Its key id, when it has one."""
    alg: str | None = None
    """The one algorithm it may be used with (JWK ``alg``); ``None``: any of its family."""
    kty: _Kty = field(init=False)
    """``RSA``, ``EC``, ``OKP`` or ``oct``."""
    crv: str | None = field(init=False)
    """``P-256``, ``P-384``, ``P-521``, ``Ed25519``, or ``None``."""
    size: int = field(init=False, repr=False)
    """Signature length in bytes (RSA), coordinate length (EC, OKP), secret length (oct)."""

    def __post_init__(self) -> None:
        m = self.material
        kty: _Kty
        crv: str | None = None
        if isinstance(m, rsa.RSAPublicKey):
            bits, e = m.key_size, m.public_numbers().e
            if not _RSA_MIN_BITS <= bits <= _RSA_MAX_BITS:
                raise ValueError(
                    f"RSA key of {bits} bits; expected {_RSA_MIN_BITS}-{_RSA_MAX_BITS}"
                )
            if e < 3 or e % 2 == 0 or e > _RSA_MAX_E:
                raise ValueError(f"RSA public exponent {e} refused; expected odd, 3..2**32")
            kty, size = "RSA", (bits + 7) // 8
        elif isinstance(m, ec.EllipticCurvePublicKey):
            if m.curve.name not in _CURVES:
                raise ValueError(f"EC curve {m.curve.name} is not supported")
            kty, (crv, size) = "EC", _CURVES[m.curve.name]
        elif isinstance(m, ed25519.Ed25519PublicKey):
            kty, crv, size = "OKP", "Ed25519", 32
        elif isinstance(m, bytes):
            if len(m) < _MIN_SECRET:
                raise ValueError(f"shared secret of {len(m)} bytes; at least {_MIN_SECRET}")
            kty, size = "oct", len(m)
        else:
            raise TypeError(f"unsupported key type {type(m).__name__}")
        object.__setattr__(self, "kty", kty)
        object.__setattr__(self, "crv", crv)
        object.__setattr__(self, "size", size)
        if self.kid is not None and not is_valid_kid(self.kid):
            raise ValueError("kid: expected 1-128 characters of [A-Za-z0-9._~+/=:@-]")
        if self.alg is not None:
            problem = self._unfit(self.alg)
            if problem:
                raise ValueError(problem)

    def _unfit(self, alg: str) -> str | None:
        """Why this key cannot verify ``alg``, or None when it can."""
        spec = _SPECS.get(alg)
        if spec is None:
            return f"algorithm {alg!r} is not supported"
        if spec.kty != self.kty:
            return f"{alg} needs a {spec.kty} key, this is a {self.kty} key"
        if spec.crv is not None and spec.crv != self.crv:
            return f"{alg} needs curve {spec.crv}, this key is on {self.crv}"
        if self.alg is not None and self.alg != alg:
            return f"the key is restricted to {self.alg}"
        if self.size < spec.min_secret:
            return f"{alg} needs a secret of at least {spec.min_secret} bytes"
        return None

    def fits(self, alg: str) -> bool:
        """Whether this key may verify tokens of ``alg``."""
        return self._unfit(alg) is None


def is_valid_kid(kid: object) -> bool:
    """Whether ``kid`` is a string of 1-128 characters of ``[A-Za-z0-9._~+/=:@-]``."""
    return isinstance(kid, str) and _KID.fullmatch(kid) is not None


def _b64decode(segment: str, what: str) -> bytes:
    # The caller has checked the charset: only the length and the unused bits remain.
    n = len(segment) % 4
    if n == 0:
        return binascii.a2b_base64(segment.encode("ascii").translate(_URL_TO_STD))
    if n == 1:
        raise _fail(REASON_BAD_ENCODING, f"{what} is not base64url (impossible length)")
    if segment[-1] not in _CANONICAL_LAST[n]:
        raise _fail(REASON_BAD_ENCODING, f"{what} is not canonical base64url (unused bits set)")
    padded = segment.encode("ascii").translate(_URL_TO_STD) + b"=" * (4 - n)
    return binascii.a2b_base64(padded)


def b64url_decode(segment: str, what: str = "segment") -> bytes:
    """Strict base64url (RFC 7515 §2): the URL-safe alphabet only, no padding, canonical."""
    if _B64URL.fullmatch(segment) is None:
        raise _fail(REASON_BAD_ENCODING, f"{what} is not base64url")
    return _b64decode(segment, what)


def b64url_encode(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _DuplicateKey(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _DuplicateKey(name[:32])
            seen.add(name)
    return d


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf: "never expires"
        raise ValueError(f"number out of range: {text}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_decoder = json.JSONDecoder(
    object_pairs_hook=_pairs, parse_float=_finite, parse_constant=_no_constant
)


def decode_json_object(data: bytes, what: str, reason: str) -> dict[str, Any]:
    """Decode UTF-8 JSON that must be an object with no duplicate member at any depth.

    Numbers must be finite. Refusals raise :class:`Unauthenticated` with ``reason`` (or
    :data:`REASON_DUPLICATE_KEY` for a repeated member).
    """
    try:
        value = _decoder.decode(data.decode("utf-8"))
    except _DuplicateKey as exc:
        raise _fail(REASON_DUPLICATE_KEY, f"{what} names member {str(exc)!r} twice") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, depth
        raise _fail(reason, f"{what} is not valid JSON: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise _fail(reason, f"{what} is not a JSON object")
    return value


def parse_compact(token: str, limits: JwsLimits = DEFAULT_LIMITS) -> CompactJws:
    """Check the structure and the header of ``token``; no key lookup, no crypto.

    Raises :class:`Unauthenticated` naming the first problem found, in this order: size,
    serialization, segment count, segment sizes, base64url, header JSON, header policy,
    signature presence.
    """
    if not isinstance(token, str):
        raise _fail(REASON_MALFORMED, "token is not text")
    if len(token) > limits.max_token:
        raise _fail(
            REASON_TOO_LARGE, f"token of {len(token)} characters; at most {limits.max_token}"
        )
    if token[:1] == "{":
        raise _fail(REASON_MALFORMED, "JWS JSON serialization is not accepted; use compact")
    dots = token.count(".")
    if dots != 2:
        raise _fail(REASON_MALFORMED, f"expected 3 segments separated by '.', got {dots + 1}")
    h64, p64, s64 = token.split(".")
    if len(h64) > limits.max_header:
        raise _fail(
            REASON_TOO_LARGE, f"header of {len(h64)} characters; at most {limits.max_header}"
        )
    if len(s64) > limits.max_signature:
        raise _fail(
            REASON_TOO_LARGE, f"signature of {len(s64)} characters; at most {limits.max_signature}"
        )
    if not h64:
        raise _fail(REASON_MALFORMED, "empty header segment")
    if _COMPACT_CHARS.fullmatch(token) is None:  # one scan for the three segments
        for what, seg in (("header", h64), ("payload", p64), ("signature", s64)):
            b64url_decode(seg, what)
    header, alg, kid = _HEADERS.get(h64) or _parse_header(h64)
    payload = _b64decode(p64, "payload")
    signature = _b64decode(s64, "signature")
    if not signature:
        raise _fail(REASON_BAD_SIGNATURE, "the signature is empty")
    signing_input = token[: len(h64) + 1 + len(p64)].encode("ascii")
    return CompactJws(header, alg, kid, payload, signing_input, signature)


# Tokens of one issuer share a handful of headers: parsed headers are kept (immutable, only
# successes, bounded) so the hot path skips their base64 and JSON. A flood of distinct headers
# only empties the cache; it cannot change what a header means.
_HEADERS: dict[str, tuple[Mapping[str, Any], str, str | None]] = {}
_HEADERS_MAX = 256


def _parse_header(h64: str) -> tuple[Mapping[str, Any], str, str | None]:
    header = decode_json_object(_b64decode(h64, "header"), "header", REASON_BAD_HEADER)
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise _fail(REASON_BAD_HEADER, "header has no string 'alg'")
    if alg.lower() == "none":
        raise _fail(REASON_ALG_NOT_ALLOWED, "alg 'none' is never accepted")
    if alg not in _SPECS:
        raise _fail(REASON_ALG_NOT_ALLOWED, f"alg {alg[:32]!r} is not supported")
    for name in _EMBEDDED_KEYS:
        if name in header:
            raise _fail(
                REASON_EMBEDDED_KEY, f"header carries '{name}'; keys never come from a token"
            )
    if "crit" in header:
        crit = header["crit"]
        if not isinstance(crit, list) or not crit or not all(isinstance(c, str) for c in crit):
            raise _fail(REASON_BAD_HEADER, "'crit' must be a non-empty list of names")
        unknown = [c for c in crit if c not in _UNDERSTOOD_CRIT]
        if unknown:
            raise _fail(REASON_UNSUPPORTED_CRIT, f"'crit' names unsupported {unknown[0][:32]!r}")
    if "b64" in header:
        raise _fail(REASON_BAD_HEADER, "unencoded payloads ('b64') are not supported")
    for name in ("typ", "cty"):
        if name in header and not isinstance(header[name], str):
            raise _fail(REASON_BAD_HEADER, f"'{name}' must be a string")
    kid = header.get("kid")
    if "kid" in header and not is_valid_kid(kid):  # null included: a kid is a string
        raise _fail(REASON_BAD_KID, "'kid' must be 1-128 characters of [A-Za-z0-9._~+/=:@-]")
    if len(_HEADERS) >= _HEADERS_MAX:
        _HEADERS.clear()
    parsed = (MappingProxyType(header), alg, kid)
    _HEADERS[h64] = parsed
    return parsed


def check_algorithm(jws: CompactJws, allowed: Collection[str]) -> None:
    """Refuse ``jws`` unless its ``alg`` is in ``allowed`` (exact, case-sensitive match)."""
    if jws.alg not in allowed:
        raise _fail(REASON_ALG_NOT_ALLOWED, f"alg {jws.alg} is not allowed for this issuer")


def _check(alg: str, key: VerificationKey, data: bytes, sig: bytes) -> bool:
    """The only function that runs crypto: whether ``sig`` is a valid ``alg`` signature."""
    spec = _SPECS[alg]
    m = key.material
    try:
        if spec.kty == "oct":
            assert isinstance(m, bytes)
            return hmac.compare_digest(hmac.digest(m, data, spec.hash_name), sig)
        if spec.kty == "RSA":
            assert isinstance(m, rsa.RSAPublicKey)
            assert spec.pad is not None
            assert spec.hash is not None
            if len(sig) != key.size:  # RFC 8017 §8.2.2 step 1
                return False
            m.verify(sig, data, spec.pad, spec.hash)
            return True
        if spec.kty == "EC":
            assert isinstance(m, ec.EllipticCurvePublicKey)
            assert spec.hash is not None
            n = key.size
            if len(sig) != 2 * n:  # raw r || s; a DER signature has another length
                return False
            r, s = int.from_bytes(sig[:n], "big"), int.from_bytes(sig[n:], "big")
            if r == 0 or s == 0:  # OpenSSL also refuses r, s >= the group order
                return False
            m.verify(encode_dss_signature(r, s), data, ec.ECDSA(spec.hash))
            return True
        assert isinstance(m, ed25519.Ed25519PublicKey)
        if len(sig) != 64:
            return False
        m.verify(sig, data)
        return True
    except InvalidSignature:
        return False


def verify_signature(jws: CompactJws, key: VerificationKey) -> None:
    """Verify the signature of ``jws`` with ``key``; raise :class:`Unauthenticated` if it fails.

    The key must fit ``jws.alg`` (type, curve, restriction, strength) -- this is what makes
    algorithm confusion impossible -- else the reason is :data:`REASON_KEY_MISMATCH`.
    """
    problem = key._unfit(jws.alg)
    if problem:
        raise _fail(REASON_KEY_MISMATCH, f"key {key.kid!r} cannot verify {jws.alg}: {problem}")
    if not _check(jws.alg, key, jws.signing_input, jws.signature):
        raise _fail(REASON_BAD_SIGNATURE, f"{jws.alg} signature does not verify")


KeyLookup: TypeAlias = Callable[[str | None], VerificationKey | None]


def verify_compact(
    token: str,
    keys: KeyLookup | Mapping[str | None, VerificationKey],
    algorithms: Collection[str],
    limits: JwsLimits = DEFAULT_LIMITS,
) -> CompactJws:
    """Parse, check and verify ``token`` in one synchronous call.

    ``keys`` maps a ``kid`` (``None`` for a token without one) to a key, as a mapping or a
    function. Returns the verified JWS; its payload is opaque bytes (see ``_jwt`` for claims).
    """
    jws = parse_compact(token, limits)
    check_algorithm(jws, algorithms)
    key = keys.get(jws.kid) if isinstance(keys, Mapping) else keys(jws.kid)
    if key is None:
        raise _fail(REASON_UNKNOWN_KEY, f"no key with kid {jws.kid!r}")
    verify_signature(jws, key)
    return jws


def sign_compact(
    header: Mapping[str, Any], payload: bytes | Mapping[str, Any], key: PrivateKey
) -> str:
    """Sign a JWS in compact serialization (for tests, tools and benchmarks: garrison itself
    verifies JWTs and never mints them). ``header`` must name ``alg``; a mapping payload is
    encoded as compact JSON."""
    alg = header["alg"]
    spec = _SPECS[alg]
    if not isinstance(payload, bytes):
        payload = json.dumps(payload, separators=(",", ":")).encode()
    h = b64url_encode(json.dumps(dict(header), separators=(",", ":")).encode())
    data = f"{h}.{b64url_encode(payload)}".encode("ascii")
    if isinstance(key, bytes):
        sig = hmac.digest(key, data, spec.hash_name)
    elif isinstance(key, rsa.RSAPrivateKey):
        assert spec.pad is not None
        assert spec.hash is not None
        sig = key.sign(data, spec.pad, spec.hash)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        assert spec.hash is not None
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(spec.hash)))
        n = _CURVES[key.curve.name][1]
        sig = r.to_bytes(n, "big") + s.to_bytes(n, "big")
    else:
        sig = key.sign(data)
    return f"{data.decode('ascii')}.{b64url_encode(sig)}"
