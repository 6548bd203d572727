"""Generate the golden vectors of the garrison passport, format v1: ``passport_v1.json``.

Run ``python tests/identity/vectors/make_vectors.py`` to rewrite the file; the test suite
checks that the file verifies exactly as recorded and that this script reproduces it byte for
byte. The script is deterministic (fixed keys, times, transaction ids; Ed25519 signatures are
deterministic by RFC 8032) and deliberately does NOT use garrison's codec: it builds every
token from the format description with the standard library, msgspec and cryptography, so the
vectors are an independent check of the implementation, usable from any language.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

OUT = Path(__file__).with_name("passport_v1.json")

MAGIC, VERSION, HS256, EDDSA, DEGRADED = 0x50, 1, 1, 2, 0x01
HS_KID = "hs-2025-01"
HS_SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(100, 132))
ED_KID = "ed-2025-01"
# The secret key of RFC 8032, section 7.1, TEST 1.
ED_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
ED_KEY = Ed25519PrivateKey.from_private_bytes(ED_SEED)
ED_PUBLIC = ED_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

NOW = 1_750_000_000.0
TTL = 60.0
LEEWAY = 2.0
MAX_SIZE = 4096

DESCRIPTION = [
    "Golden vectors for the garrison passport, wire format version 1 (see docs/identity.md).",
    "token = base64url without padding of: header || body || tag.",
    "header: magic 0x50, version 0x01, alg (1 = HS256, 2 = EdDSA), flags (bit 0 = degraded,",
    "  bits 1-7 reserved = 0), kid length n (1..16), kid (n ASCII bytes).",
    "body: msgpack array [issued_at f64, expires_at f64, txn str,",
    "  auth [credential str, issuer str, method str, assurance int, at f64],",
    "  user nil | [subject str, account str|nil, tenant str|nil, roles [str], scopes [str]],",
    "  device nil | [id str, type str, trust int], degraded bool, ext {str: str}].",
    "tag: HMAC-SHA256 (32 bytes) or Ed25519 (64 bytes) over header || body.",
    "Verify each case with a verifier holding every key of 'keys' (Ed25519: the public key",
    "only), leeway and max_size from 'verifier', and the clock at 'now' (seconds since the",
    "epoch). 'expect' is either {'passport': ...} (the decoded passport) or {'error': reason}.",
    "Regenerate with: python tests/identity/vectors/make_vectors.py",
]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def header(
    alg: int, kid: str, *, flags: int = 0, version: int = VERSION, magic: int = MAGIC
) -> bytes:
    k = kid.encode("ascii")
    return bytes((magic, version, alg, flags, len(k))) + k


def hs_tag(data: bytes, secret: bytes = HS_SECRET) -> bytes:
    return hmac.new(secret, data, hashlib.sha256).digest()


def ed_tag(data: bytes) -> bytes:
    return ED_KEY.sign(data)


def seal_hs(
    body: bytes,
    *,
    kid: str = HS_KID,
    secret: bytes = HS_SECRET,
    flags: int = 0,
    version: int = VERSION,
    alg: int = HS256,
) -> str:
    signed = header(alg, kid, flags=flags, version=version) + body
    return b64(signed + hs_tag(signed, secret))


def seal_ed(body: bytes, *, kid: str = ED_KID, flags: int = 0) -> str:
    signed = header(EDDSA, kid, flags=flags) + body
    return b64(signed + ed_tag(signed))


def unb64(token: str) -> bytearray:
    return bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


# -- passports, as the JSON a verifier should decode them to, and as the msgpack body --------


def passport(**over: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "auth": {
            "credential": "jwt",
            "issuer": "https://id.example.com/",
            "method": "mfa",
            "assurance": 2,
            "at": NOW - 300.0,
        },
        "issued_at": NOW,
        "expires_at": NOW + TTL,
        "txn": "0197a1b2c3d47e5f8a9b0c1d2e3f4a5b",
        "user": {
            "subject": "u-7f3a9c",
            "account": "acct-42",
            "tenant": "t-fleet-eu",
            "roles": ["operator"],
            "scopes": ["sites:read", "dispatch:write"],
        },
        "device": {"id": "bat-000123", "type": "battery", "trust": 1},
        "degraded": False,
        "ext": {"region": "eu-west", "plan": "gold"},
    }
    p.update(over)
    return p


ANONYMOUS = passport(
    auth={"credential": "anonymous", "issuer": "", "method": "", "assurance": 0, "at": 0.0},
    txn="anon-txn-0001",
    user=None,
    device=None,
    ext={},
)


def body(p: dict[str, Any], *, extra: list[Any] | None = None) -> bytes:
    a, u, d = p["auth"], p["user"], p["device"]
    arr: list[Any] = [
        p["issued_at"],
        p["expires_at"],
        p["txn"],
        [a["credential"], a["issuer"], a["method"], a["assurance"], a["at"]],
        None if u is None else [u["subject"], u["account"], u["tenant"], u["roles"], u["scopes"]],
        None if d is None else [d["id"], d["type"], d["trust"]],
        p["degraded"],
        p["ext"],
    ]
    return msgspec.msgpack.encode(arr + (extra or []))


# -- the cases -------------------------------------------------------------------------------


def ok(
    name: str, description: str, token: str, p: dict[str, Any], now: float = NOW
) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "now": now,
        "token": token,
        "expect": {"passport": p},
    }


def bad(name: str, description: str, token: str, reason: str, now: float = NOW) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "now": now,
        "token": token,
        "expect": {"error": reason},
    }


def flip(token: str, byte_index: int, bit: int) -> str:
    raw = unb64(token)
    raw[byte_index] ^= 1 << bit
    return b64(bytes(raw))


def cases() -> list[dict[str, Any]]:
    full = passport()
    degraded = passport(degraded=True, txn="degraded-txn-0001")
    valid_hs = seal_hs(body(full))
    valid_ed = seal_ed(body(full))
    hdr = len(header(HS256, HS_KID))
    return [
        ok("valid_hs256", "a full passport (user, device, ext), HS256", valid_hs, full),
        ok(
            "valid_hs256_anonymous",
            "an anonymous passport, HS256",
            seal_hs(body(ANONYMOUS)),
            ANONYMOUS,
        ),
        ok(
            "valid_hs256_degraded",
            "degraded flag set in header and body",
            seal_hs(body(degraded), flags=DEGRADED),
            degraded,
        ),
        ok("valid_eddsa", "a full passport, Ed25519 (RFC 8032 test key 1)", valid_ed, full),
        ok(
            "valid_within_leeway",
            "1.5 s past expiry, inside the 2 s leeway",
            valid_hs,
            full,
            now=NOW + TTL + 1.5,
        ),
        ok(
            "valid_issued_within_leeway",
            "issued 1.5 s in the verifier's future",
            valid_hs,
            full,
            now=NOW - 1.5,
        ),
        bad(
            "expired",
            "2.5 s past expiry, beyond the leeway",
            valid_hs,
            "expired",
            now=NOW + TTL + 2.5,
        ),
        bad(
            "not_yet_valid",
            "issued 3 s in the verifier's future",
            valid_hs,
            "not_yet_valid",
            now=NOW - 3.0,
        ),
        bad(
            "wrong_key_id",
            "signed by a key id the verifier does not know",
            seal_hs(body(full), kid="hs-2099-99", secret=OTHER_SECRET),
            "unknown_key",
        ),
        bad(
            "wrong_secret",
            "known key id, but signed with another secret",
            seal_hs(body(full), secret=OTHER_SECRET),
            "bad_signature",
        ),
        bad(
            "flipped_bit_body",
            "one bit flipped in the body",
            flip(valid_hs, hdr + 20, 2),
            "bad_signature",
        ),
        bad(
            "flipped_bit_tag", "one bit flipped in the tag", flip(valid_hs, -1, 0), "bad_signature"
        ),
        bad(
            "flipped_degraded_flag",
            "the degraded flag flipped: the header is signed too",
            flip(valid_hs, 3, 0),
            "bad_signature",
        ),
        bad(
            "flipped_bit_eddsa",
            "one bit flipped in an Ed25519 passport's body",
            flip(valid_ed, hdr + 20, 5),
            "bad_signature",
        ),
        bad(
            "truncated",
            "the last 4 bytes cut off",
            b64(bytes(unb64(valid_hs)[:-4])),
            "bad_signature",
        ),
        bad(
            "truncated_to_header",
            "cut inside the fixed header",
            b64(bytes(unb64(valid_hs)[:4])),
            "malformed",
        ),
        bad(
            "truncated_no_body",
            "header and a tag only, no body",
            b64(header(HS256, HS_KID) + hs_tag(header(HS256, HS_KID))),
            "malformed",
        ),
        bad(
            "unknown_version",
            "version byte 2, correctly signed",
            seal_hs(body(full), version=2),
            "unknown_version",
        ),
        bad("bad_alg", "algorithm byte 7", seal_hs(body(full), alg=7), "unknown_alg"),
        bad("alg_none", "algorithm byte 0", seal_hs(body(full), alg=0), "unknown_alg"),
        bad(
            "alg_confusion_hs_with_ed_kid",
            "HS256 tag keyed with the Ed25519 public key, under the Ed25519 key id",
            seal_hs(body(full), kid=ED_KID, secret=ED_PUBLIC),
            "unknown_key",
        ),
        bad(
            "alg_confusion_ed_with_hs_kid",
            "alg EdDSA under the HS256 key id",
            b64(header(EDDSA, HS_KID) + body(full) + ed_tag(header(EDDSA, HS_KID) + body(full))),
            "unknown_key",
        ),
        bad(
            "degraded_flag_mismatch",
            "header says degraded, body does not (correctly signed)",
            seal_hs(body(full), flags=DEGRADED),
            "malformed",
        ),
        bad(
            "degraded_body_mismatch",
            "body says degraded, header does not (correctly signed)",
            seal_hs(body(degraded)),
            "malformed",
        ),
        bad(
            "reserved_flag",
            "reserved flag bit 1 set (correctly signed)",
            seal_hs(body(full), flags=0x02),
            "malformed",
        ),
        bad(
            "bad_magic",
            "magic byte 0x51",
            b64(bytes([0x51]) + bytes(unb64(valid_hs)[1:])),
            "malformed",
        ),
        bad("empty_kid", "kid length 0", seal_hs(body(full), kid=""), "malformed"),
        bad(
            "signed_garbage_body",
            "a correctly signed body that is not msgpack",
            seal_hs(b"\xc1\xc1\xc1 not msgpack"),
            "malformed",
        ),
        bad(
            "garbage_body_bad_tag",
            "a garbage body with a wrong tag: the tag is checked first",
            b64(header(HS256, HS_KID) + b"\xc1\xc1\xc1 not msgpack" + bytes(32)),
            "bad_signature",
        ),
        bad(
            "extra_body_field",
            "a ninth body field (correctly signed)",
            seal_hs(body(full, extra=["surprise"])),
            "malformed",
        ),
        bad(
            "wrong_body_type",
            "issued_at is a string (correctly signed)",
            seal_hs(body(passport(issued_at="now"))),
            "malformed",
        ),
        bad(
            "oversized",
            f"a correctly signed passport longer than {MAX_SIZE} characters",
            seal_hs(
                body(
                    passport(
                        user={
                            **full["user"],
                            "roles": [f"role-{i:04d}-" + "x" * 24 for i in range(120)],
                        }
                    )
                )
            ),
            "too_large",
        ),
        bad("empty", "the empty string", "", "malformed"),
        bad("not_base64", "a character outside base64url", "!" + valid_hs[1:], "malformed"),
        bad("non_ascii", "a non-ASCII character", "\u00e9" + valid_hs[1:], "malformed"),
        bad(
            "padded",
            "base64 padding, which the format forbids",
            valid_hs + "=" * (-len(valid_hs) % 4 or 4),
            "malformed",
        ),
        bad(
            "standard_alphabet",
            "'+' and '/' instead of '-' and '_'",
            valid_hs.replace("-", "+").replace("_", "/"),
            "malformed",
        ),
        bad(
            "non_canonical_tail",
            "unused low bits of the last character set",
            non_canonical(valid_hs),
            "malformed",
        ),
    ]


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def non_canonical(token: str) -> str:
    unused = {2: 4, 3: 2}[len(token) % 4]  # bits of the last character that carry nothing
    last = _ALPHABET.index(token[-1]) | 1
    assert last % (1 << unused), token
    return token[:-1] + _ALPHABET[last]


def vectors() -> dict[str, Any]:
    c = cases()
    assert any(ch in "-_" for ch in {x["name"]: x["token"] for x in c}["valid_hs256"]), (
        "pick another txn"
    )
    return {
        "format": "garrison passport v1",
        "description": DESCRIPTION,
        "keys": {
            HS_KID: {"alg": "HS256", "secret": b64(HS_SECRET)},
            ED_KID: {"alg": "EdDSA", "public_key": b64(ED_PUBLIC), "private_key": b64(ED_SEED)},
        },
        "verifier": {"leeway": LEEWAY, "max_size": MAX_SIZE},
        "cases": c,
    }


def render() -> str:
    """The file's exact text."""
    return json.dumps(vectors(), indent=2, ensure_ascii=True) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="ascii")
    sys.stdout.write(f"wrote {OUT}\n")
