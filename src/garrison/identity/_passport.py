"""The passport on the wire: minting at the edge, verifying on every hop.

Theory of operation
-------------------
A token is base64url (no padding) of ``header || body || tag``::

    offset  size  field
    0       1     magic 0x50 ("P")
    1       1     version (1)
    2       1     algorithm: 1 = HS256, 2 = EdDSA (Ed25519)
    3       1     flags: bit 0 = degraded; bits 1-7 reserved, must be 0
    4       1     kid length n, 1..16
    5       n     kid, ASCII
    5+n     ...   body: msgpack array, schema chosen by the version (``_BodyV1``)
    end-T   T     tag over every byte before it: HMAC-SHA256 (T = 32) or Ed25519 (T = 64)

The header is fixed so that a verifier learns the version, algorithm and key from a handful
of byte reads, and the tag length follows from the key, so the body needs no length field.

``verify`` trusts nothing until the tag is checked, and decodes nothing it need not:

1. the encoded length against ``max_size`` (``too_large``), before any decoding;
2. base64url, strictly: no padding, no ``+`` or ``/``, no stray bits in the last character,
   so every token has exactly one spelling (``malformed``);
3. the fixed header: magic (``malformed``), version (``unknown_version``), algorithm
   (``unknown_alg``), reserved flags (``malformed``), the kid looked up in the keyring for that
   algorithm (``unknown_key``: no algorithm confusion, a kid names one key of one algorithm);
4. the tag over the exact received bytes: HMAC compared with :func:`hmac.compare_digest`, or
   Ed25519 verified (``bad_signature``);
5. only now the body, by msgspec into fixed-length typed tuples with bounded fields
   (``malformed``); the degraded flag of the header must equal the body's (``malformed``);
6. time, with ``leeway`` seconds of clock skew: ``expired``, ``not_yet_valid``.

Every failure is :class:`~garrison.core.Unauthenticated` whose ``reason`` is one of
:data:`REASONS`. ``mint`` checks what it signs (the bounds of ``ext`` and ``txn``, the size, and
that the body decodes as ``verify`` will decode it), so whatever it mints verifies.

Cost
----
``verify`` runs on every hop, so it does no work it can avoid, and saves none by weakening a
check (``bench/identity_verify.py`` measures it: about 3 µs of CPU with HS256, most of it in
three C calls, the base64, the HMAC and msgspec, and in allocating the passport):

* base64url goes through one ``bytes.translate`` to the standard alphabet (every byte outside
  the url-safe alphabet, ``+ / =`` included, becomes ``*``, which no decoder accepts), then
  msgspec's C base64 decoder, fed as a JSON string: three times cheaper than
  :func:`binascii.a2b_base64`, and as strict (the table leaves it no escape, quote, padding or
  non-ASCII byte to interpret; the unused low bits of the last character are checked before);
* the header is one dict lookup: every valid header (magic, version, algorithm, flags, kid
  length, kid) of every key of the keyring maps to that key's precomputed state, rebuilt
  whenever the keyring changes (it swaps its dict on every change). A header that is not in
  the table takes the step-by-step checks, which name the reason;
* HS256 copies the key's pre-keyed HMAC context (no key schedule per token) and compares with
  :func:`hmac.compare_digest`;
* the body decodes straight into tuples of the model's field order (``_BodyV1``), from which the
  :class:`Passport` is built positionally.
"""

from __future__ import annotations

import math
import re
import time
from binascii import b2a_base64
from collections.abc import Iterable, Mapping
from hmac import compare_digest
from typing import Annotated, Any, TypeAlias

import msgspec

from garrison.core import Clock, SystemClock, Unauthenticated, UsageError, new_id

from ._keys import ALG_IDS, MAX_KID, TAG_SIZES, Keyring, KeysConfig, PassportKey
from ._model import (
    Assurance,
    Authentication,
    CredentialKind,
    DeviceIdentity,
    Passport,
    Resolution,
    TrustLevel,
    UserIdentity,
)

__all__ = [
    "MAX_EXT_ENTRIES",
    "MAX_EXT_KEY",
    "MAX_EXT_VALUE",
    "MAX_TXN",
    "PASSPORT_HEADER",
    "REASONS",
    "PassportCodec",
    "TokenInfo",
    "inspect_token",
]

PASSPORT_HEADER = "garrison-passport"
"""The HTTP header that carries the passport between services (lowercase, as ASGI has it)."""

REASONS = frozenset(
    {
        "malformed",
        "too_large",
        "unknown_version",
        "unknown_alg",
        "unknown_key",
        "bad_signature",
        "expired",
        "not_yet_valid",
    }
)
"""Every ``Unauthenticated.reason`` :meth:`PassportCodec.verify` gives."""

MAGIC = 0x50
VERSION = 1
FLAG_DEGRADED = 0x01
_ALG_NAMES = {v: k for k, v in ALG_IDS.items()}

MAX_EXT_ENTRIES = 16
"""Most entries in ``Passport.ext``."""
MAX_EXT_KEY = 32
"""Longest ``ext`` key, in characters: lowercase letters, digits, ``_.-``."""
MAX_EXT_VALUE = 128
"""Longest ``ext`` value, in characters: room for ids, not for tokens."""
MAX_TXN = 64
"""Longest transaction id, in characters (printable ASCII, no spaces)."""

_EXT_KEY = re.compile(r"^[a-z][a-z0-9_.-]{0,31}\Z")
_TXN = re.compile(r"^[!-~]{1,64}\Z")
# ``ext`` is for ids. These catch the honest mistake of putting a credential or PII there; they
# are a guard rail, not a proof (see docs/identity.md, "What a passport must not carry").
_FORBIDDEN_EXT_WORDS = (
    "token", "secret", "password", "passwd", "cookie", "authorization", "bearer",
    "credential", "email", "phone", "ssn",
)  # fmt: skip
_TOKEN_LIKE = re.compile(r"^(eyJ[A-Za-z0-9_-]*\.|[Bb]earer\s)")


# -- body, version 1 -------------------------------------------------------------------------
# An array on the wire, no field names: a new field means a new version. Each nested array lists
# the fields of its model struct in that struct's own order, so that verify can build the model
# positionally (test_passport checks that the orders agree).

_Txn = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TXN)]
_AuthV1: TypeAlias = tuple[CredentialKind, str, str, Assurance, float]
"""credential, issuer, method, assurance, at: the fields of :class:`Authentication`."""
_UserV1: TypeAlias = tuple[str, str | None, str | None, tuple[str, ...], tuple[str, ...]]
"""subject, account, tenant, roles, scopes: the fields of :class:`UserIdentity`."""
_DeviceV1: TypeAlias = tuple[str, str, TrustLevel]
"""id, type, trust: the fields of :class:`DeviceIdentity`."""
_ExtV1 = Annotated[
    dict[
        Annotated[str, msgspec.Meta(max_length=MAX_EXT_KEY)],
        Annotated[str, msgspec.Meta(max_length=MAX_EXT_VALUE)],
    ],
    msgspec.Meta(max_length=MAX_EXT_ENTRIES),
]
_BodyV1: TypeAlias = tuple[
    float,  # issued_at
    float,  # expires_at
    _Txn,  # txn
    _AuthV1,  # auth
    _UserV1 | None,  # user
    _DeviceV1 | None,  # device
    bool,  # degraded
    _ExtV1,  # ext
]
"""The body: a fixed-length array (one element more or fewer does not decode)."""

_ENCODER = msgspec.msgpack.Encoder()
_DECODER: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(_BodyV1)


def _to_wire(p: Passport) -> tuple[object, ...]:
    a, u, d = p.auth, p.user, p.device
    return (
        p.issued_at,
        p.expires_at,
        p.txn,
        (a.credential, a.issuer, a.method, a.assurance, a.at),
        None if u is None else (u.subject, u.account, u.tenant, u.roles, u.scopes),
        None if d is None else (d.id, d.type, d.trust),
        p.degraded,
        p.ext,
    )


def _from_wire(w: _BodyV1) -> Passport:
    # PassportCodec.verify inlines this (it runs on every hop): keep the two alike.
    issued_at, expires_at, txn, auth, user, device, degraded, ext = w
    return Passport(
        Authentication(*auth),
        issued_at,
        expires_at,
        txn,
        None if user is None else UserIdentity(*user),
        None if device is None else DeviceIdentity(*device),
        degraded,
        ext,
    )


# -- base64url -------------------------------------------------------------------------------


def _b64_table() -> bytes:
    """url-safe alphabet -> standard alphabet; every other byte -> ``*``, which no base64
    decoder accepts (so ``+``, ``/``, ``=``, quotes, backslashes, controls and non-ASCII all
    fail, and the decoder below sees nothing but base64 characters and the padding we add)."""
    table = bytearray(b"*" * 256)
    for c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789":
        table[c] = c
    table[ord("-")] = ord("+")
    table[ord("_")] = ord("/")
    return bytes(table)


_B64_IN = _b64_table()
# msgspec's base64 decoder (standard alphabet, padded, C): fed a JSON string, it is about three
# times cheaper than binascii.a2b_base64 on a passport. ValidationError on any invalid character
# or a length that is not a multiple of 4.
_B64_DECODER = msgspec.json.Decoder(bytes)
_OPEN = b'"'
# The padding a length of 0, 2 or 3 (mod 4) calls for, and the closing quote; 1 is never valid.
_CLOSE = (b'"', b"", b'=="', b'="')
# The last character of a 2- or 3-character final group carries 4 or 2 unused bits, which must be
# zero: otherwise several spellings would decode to the same bytes.
_LAST_OK: tuple[frozenset[int], ...] = (
    frozenset(),
    frozenset(),
    frozenset(b"AQgw"),
    frozenset(b"AEIMQUYcgkosw048"),
)


_B64_OUT = bytes.maketrans(b"+/", b"-_")


def _b64encode(raw: bytes) -> str:
    return b2a_base64(raw, newline=False).rstrip(b"=").translate(_B64_OUT).decode("ascii")


def _ascii(token: str | bytes) -> bytes:
    """``token`` as bytes; ``malformed`` unless it is ASCII (a str) or bytes-like."""
    if isinstance(token, str):
        try:
            return token.encode("ascii")
        except UnicodeEncodeError:
            raise _fail("malformed", "passport is not ASCII") from None
    return bytes(token)


def _b64decode(token: str | bytes) -> bytes:
    """Strict, canonical base64url without padding. PassportCodec.verify inlines this."""
    data = token if type(token) is bytes else _ascii(token)
    rem = len(data) & 3
    if rem and (rem == 1 or data[-1] not in _LAST_OK[rem]):
        raise _fail("malformed", "passport is not canonical base64url")
    try:
        return _B64_DECODER.decode(_OPEN + data.translate(_B64_IN) + _CLOSE[rem])
    except msgspec.ValidationError:
        raise _fail("malformed", "passport is not base64url") from None


def _fail(reason: str, message: str) -> Unauthenticated:
    return Unauthenticated(message, reason=reason)


_HEADER_MIN = 6  # magic, version, alg, flags, kid length, one kid byte

# What verify needs of a valid header, precomputed: the key, the header's length (where the body
# starts), the tag's length, the degraded flag, and for HS256 the key's HMAC context with the
# header already fed (None for Ed25519). The header is the table's key, so the bytes it fed are
# the bytes received: the tag is still over every byte before it.
_KeyState: TypeAlias = tuple[PassportKey, int, int, bool, Any]


def _key_states(keys: Iterable[PassportKey]) -> dict[bytes, _KeyState]:
    """Every valid header of every key of ``keys`` (two per key: degraded or not), and its
    state."""
    table: dict[bytes, _KeyState] = {}
    for key in keys:
        kid = key._kid_bytes
        for degraded in (False, True):
            flags = FLAG_DEGRADED if degraded else 0
            header = bytes((MAGIC, VERSION, key.alg_id, flags, len(kid))) + kid
            mac = None
            if key._hmac is not None:
                mac = key._hmac.copy()
                mac.update(header)
            table[header] = (key, len(header), key.tag_size, degraded, mac)
    return table


# -- the codec -------------------------------------------------------------------------------


class PassportCodec:
    """Mints passports at the edge and verifies them on every hop.

    ``keyring`` signs (its active key) and verifies (every key); ``ttl`` is the lifetime
    :meth:`mint_for` gives a passport; ``max_size`` bounds an encoded passport, in characters,
    both ways; ``leeway`` is the clock skew tolerated by :meth:`verify`, in seconds (at most 10).
    """

    __slots__ = ("_clock", "_headers", "_keyring", "_leeway", "_max_size", "_now", "_ttl")

    def __init__(
        self,
        keyring: Keyring,
        *,
        ttl: float = 60.0,
        max_size: int = 4096,
        leeway: float = 2.0,
        clock: Clock | None = None,
    ) -> None:
        if not (isinstance(ttl, (int, float)) and 0 < ttl <= 86_400):
            raise ValueError(f"ttl must be in (0, 86400] seconds, got {ttl!r}")
        if not (isinstance(max_size, int) and 128 <= max_size <= 65_536):
            raise ValueError(f"max_size must be an int in [128, 65536], got {max_size!r}")
        if not (isinstance(leeway, (int, float)) and 0 <= leeway <= 10):
            raise ValueError(f"leeway must be in [0, 10] seconds, got {leeway!r}")
        self._keyring = keyring
        self._ttl = float(ttl)
        self._max_size = max_size
        self._leeway = float(leeway)
        self._clock: Clock = clock if clock is not None else SystemClock()
        # bound once: verify runs on every hop (SystemClock.time is time.time, one frame less)
        self._now = time.time if type(self._clock) is SystemClock else self._clock.time
        # (the keyring's dict of keys these states were made from, the states by header)
        self._headers: tuple[object, dict[bytes, _KeyState]] = (None, {})

    @classmethod
    def from_config(
        cls, cfg: KeysConfig, keyring: Keyring, *, clock: Clock | None = None
    ) -> PassportCodec:
        """A codec with the ``ttl``, ``max_size`` and ``leeway`` of ``[identity.passport]``."""
        return cls(keyring, ttl=cfg.ttl, max_size=cfg.max_size, leeway=cfg.leeway, clock=clock)

    @property
    def clock(self) -> Clock:
        """Where :meth:`mint_for` and :meth:`verify` read the time."""
        return self._clock

    @property
    def keyring(self) -> Keyring:
        """The keys this codec signs and verifies with."""
        return self._keyring

    @property
    def ttl(self) -> float:
        """Lifetime of a minted passport, in seconds."""
        return self._ttl

    @property
    def max_size(self) -> int:
        """Largest encoded passport, in characters."""
        return self._max_size

    @property
    def leeway(self) -> float:
        """Clock skew tolerated by :meth:`verify`, in seconds."""
        return self._leeway

    # -- minting ---------------------------------------------------------------------------

    def mint_for(
        self,
        resolution: Resolution,
        *,
        txn: str | None = None,
        ext: Mapping[str, str] | None = None,
    ) -> tuple[Passport, str]:
        """The passport for a verified credential, and its token.

        Issued now, expiring after ``ttl`` or with the credential, whichever comes first; ``txn``
        is a new id unless given. A credential already expired by this clock raises
        :class:`Unauthenticated` (``expired``) rather than minting a passport born dead.
        """
        now = self._now()
        expires_at = min(now + self._ttl, resolution.expires_at)
        if not expires_at > now:
            raise _fail("expired", f"the credential expired at {resolution.expires_at}")
        passport = Passport(
            auth=resolution.auth,
            issued_at=now,
            expires_at=expires_at,
            txn=new_id() if txn is None else txn,
            user=resolution.user,
            device=resolution.device,
            degraded=resolution.degraded,
            ext=dict(ext) if ext else {},
        )
        return passport, self.mint(passport)

    def mint(self, passport: Passport) -> str:
        """Sign ``passport`` with the active key: an ASCII, header-safe token.

        :class:`ValueError` names what is wrong with a passport that breaks the format's bounds;
        :class:`~garrison.core.UsageError` if the keyring cannot sign.
        """
        key = self._keyring.active
        if key is None:
            raise UsageError(
                "cannot mint passports: the keyring has no active key (it is verify-only)"
            )
        _check(passport)
        try:
            body = _ENCODER.encode(_to_wire(passport))
            _DECODER.decode(body)  # what we mint, verify must be able to read
        except (AttributeError, TypeError, msgspec.MsgspecError) as exc:
            raise ValueError(f"passport is not valid: {exc}") from None
        flags = FLAG_DEGRADED if passport.degraded else 0
        kid = key.kid.encode("ascii")
        signed = bytes((MAGIC, VERSION, key.alg_id, flags, len(kid))) + kid + body
        token = _b64encode(signed + key.sign(signed))
        if len(token) > self._max_size:
            raise ValueError(
                f"passport encodes to {len(token)} characters, over max_size "
                f"{self._max_size}; shrink ext, roles or scopes"
            )
        return token

    # -- verifying -------------------------------------------------------------------------

    def verify(self, token: str | bytes) -> Passport:
        """The passport ``token`` carries, once its tag, version and times check out.

        Raises :class:`Unauthenticated` whose ``reason`` is one of :data:`REASONS`.
        """
        # 1. size, before anything else
        size = len(token)
        if size > self._max_size:
            raise _fail("too_large", f"passport of {size} characters exceeds {self._max_size}")
        # 2. base64url: _b64decode, inlined
        data = token if type(token) is bytes else _ascii(token)
        rem = len(data) & 3
        if rem and (rem == 1 or data[-1] not in _LAST_OK[rem]):
            raise _fail("malformed", "passport is not canonical base64url")
        try:
            raw = _B64_DECODER.decode(_OPEN + data.translate(_B64_IN) + _CLOSE[rem])
        except msgspec.ValidationError:
            raise _fail("malformed", "passport is not base64url") from None
        # 3. the header: a valid one is in the table, with its key; any other names its fault
        seen, states = self._headers
        if seen is not self._keyring._by_kid:
            seen, states = self._refresh()
        try:
            key, end, tag_size, degraded, mac = states[raw[: 5 + raw[4]]]
        except (IndexError, KeyError):  # shorter than 5 bytes, or not a valid header
            key, end, tag_size, degraded, mac = self._check_header(raw)
        # 4. the tag over the exact received bytes
        tag_start = len(raw) - tag_size
        if tag_start <= end:
            raise _fail("malformed", "passport truncated")
        body = raw[end:tag_start]
        if mac is not None:  # HS256: the header is in the context already
            h = mac.copy()
            h.update(body)
            ok = compare_digest(h.finalize(), raw[tag_start:])
        else:
            ok = key.verify(raw[:tag_start], raw[tag_start:])
        if not ok:
            raise _fail("bad_signature", f"passport tag does not verify with key {key.kid!r}")
        # 5. the body
        try:
            wire = _DECODER.decode(body)
        except msgspec.DecodeError as exc:  # ValidationError included
            raise _fail("malformed", f"signed passport body does not decode: {exc}") from None
        issued_at, expires_at, txn, auth, user, device, body_degraded, ext = wire
        if body_degraded is not degraded:
            raise _fail("malformed", "degraded flag of the header and body disagree")
        # 6. time
        now = self._now()
        if not now <= expires_at + self._leeway:  # written so that NaN fails too
            raise _fail("expired", f"passport expired at {expires_at} (now {now})")
        if not issued_at <= now + self._leeway:
            raise _fail("not_yet_valid", f"passport issued in the future at {issued_at}")
        # _from_wire, inlined
        return Passport(
            Authentication(*auth),
            issued_at,
            expires_at,
            txn,
            None if user is None else UserIdentity(*user),
            None if device is None else DeviceIdentity(*device),
            body_degraded,
            ext,
        )

    def _refresh(self) -> tuple[object, dict[bytes, _KeyState]]:
        """The header table of the keyring as it is now (it swaps its dict on every change)."""
        by_kid = self._keyring._by_kid
        self._headers = headers = (by_kid, _key_states(by_kid.values()))
        return headers

    def _check_header(self, raw: bytes) -> _KeyState:
        """The header checks one by one, for a header not in the table: raises the reason.

        Returns the key's state should every check pass (a keyring changed under a concurrent
        verify), so that the table only ever saves work, never decides.
        """
        n = len(raw)
        if n < _HEADER_MIN or raw[0] != MAGIC:
            raise _fail("malformed", "not a passport (bad magic or too short)")
        if raw[1] != VERSION:
            raise _fail("unknown_version", f"unknown passport version {raw[1]}")
        alg = raw[2]
        if alg not in _ALG_NAMES:
            raise _fail("unknown_alg", f"unknown passport algorithm {alg}")
        flags = raw[3]
        if flags & ~FLAG_DEGRADED:
            raise _fail("malformed", f"reserved passport flags set: {flags:#04x}")
        klen = raw[4]
        end = 5 + klen
        if not 0 < klen <= MAX_KID or n < end:
            raise _fail("malformed", "bad passport key id length")
        key = self._keyring.get(raw[5:end])
        if key is None or key.alg_id != alg:
            raise _fail("unknown_key", f"no {_ALG_NAMES[alg]} key with id {raw[5:end]!r}")
        return _key_states((key,))[raw[:end]]


def _check(p: Passport) -> None:
    """The bounds a passport must keep to be minted; ValueError naming the first it breaks."""
    if not (math.isfinite(p.issued_at) and math.isfinite(p.expires_at)):
        raise ValueError("passport times must be finite")
    if p.expires_at < p.issued_at:
        raise ValueError(f"passport expires ({p.expires_at}) before it is issued ({p.issued_at})")
    if not isinstance(p.txn, str) or not _TXN.match(p.txn):
        raise ValueError(f"txn must be 1 to {MAX_TXN} printable ASCII characters, got {p.txn!r}")
    if len(p.ext) > MAX_EXT_ENTRIES:
        raise ValueError(f"ext holds {len(p.ext)} entries; at most {MAX_EXT_ENTRIES} fit")
    for k, v in p.ext.items():
        if not isinstance(k, str) or not _EXT_KEY.match(k):
            raise ValueError(
                f"ext key {k!r}: expected 1 to {MAX_EXT_KEY} of a-z 0-9 _ . -, "
                "starting with a letter"
            )
        if any(word in k for word in _FORBIDDEN_EXT_WORDS):
            raise ValueError(
                f"ext key {k!r} looks like a credential or personal data; a passport carries "
                "ids only"
            )
        if not isinstance(v, str) or len(v) > MAX_EXT_VALUE:
            raise ValueError(f"ext[{k!r}]: expected a string of at most {MAX_EXT_VALUE} characters")
        if _TOKEN_LIKE.match(v):
            raise ValueError(f"ext[{k!r}] looks like a raw token; a passport never carries one")


# -- inspecting (operators, tests) -----------------------------------------------------------


class TokenInfo(msgspec.Struct, frozen=True):
    """What a token says about itself, *unverified*: for operators and debugging only."""

    version: int
    """The format version byte."""
    alg: str
    """``HS256``, ``EdDSA``, or ``unknown(N)``."""
    kid: str
    """The key id (non-ASCII bytes escaped)."""
    degraded: bool
    """The header's degraded flag."""
    size: int
    """Decoded size in bytes."""
    passport: Passport | None
    """The body, when it decodes as this version's schema; None otherwise."""


def inspect_token(token: str | bytes) -> TokenInfo:
    """Read a token's header and body WITHOUT checking its tag or times.

    Never use the result to authorize anything: :meth:`PassportCodec.verify` does that. Raises
    :class:`Unauthenticated` (``malformed``) when not even the header can be read.
    """
    raw = _b64decode(token)
    if len(raw) < _HEADER_MIN or raw[0] != MAGIC or len(raw) < 5 + raw[4]:
        raise _fail("malformed", "not a passport")
    klen = raw[4]
    alg = _ALG_NAMES.get(raw[2], f"unknown({raw[2]})")
    passport = None
    tag = TAG_SIZES.get(alg)
    if raw[1] == VERSION and tag is not None and len(raw) > 5 + klen + tag:
        try:
            passport = _from_wire(_DECODER.decode(raw[5 + klen : -tag]))
        except msgspec.DecodeError:
            passport = None
    return TokenInfo(
        version=raw[1],
        alg=alg,
        kid=raw[5 : 5 + klen].decode("ascii", "backslashreplace"),
        degraded=bool(raw[3] & FLAG_DEGRADED),
        size=len(raw),
        passport=passport,
    )
