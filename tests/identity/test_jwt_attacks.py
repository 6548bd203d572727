"""Attacks on the JWT path: every forged, tampered, confused or malformed token is refused, for a
precise reason, at the earliest stage that can tell -- and nothing is ever fetched from a URL a
token names.

Each case runs through a real :class:`JwtResolver` whose issuers publish their keys on a real
HTTP server on 127.0.0.1; a second server, the *canary*, serves an attacker's key set at the URLs
the forged tokens point to (``jku``, ``x5u``) and must receive zero requests. The only function
that runs crypto (``_jws._check``) is counted, as are the JWKS fetches, so each case also pins
*where* it is refused:

* ``parse``  -- before any key lookup: no JWKS fetch, no crypto;
* ``lookup`` -- at the key lookup or the key/alg match: no crypto;
* ``crypto`` -- after exactly one signature check (a bad signature, or claims checked after it).
"""

from __future__ import annotations

import functools
import hmac
import http.server
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from garrison.core import FakeClock, Unauthenticated
from garrison.identity import Credential, CredentialKind, _jws
from garrison.identity._jws import (
    ALGORITHMS,
    PrivateKey,
    VerificationKey,
    b64url_decode,
    b64url_encode,
    sign_compact,
    verify_compact,
)
from garrison.identity._jwt import JwtResolver

NOW = 1_700_000_000
ISS_A, ISS_B, ISS_C = "https://a.example/", "https://b.example", "hmac-issuer"
SECRET_C = b"c" * 32

RSA_A = rsa.generate_private_key(65537, 2048)
EC_A = ec.generate_private_key(ec.SECP256R1())
EC384_A = ec.generate_private_key(ec.SECP384R1())
ED_A = ed25519.Ed25519PrivateKey.generate()
WEAK_A = rsa.generate_private_key(65537, 1024)
ENC_A = rsa.generate_private_key(65537, 2048)
RSA_B = rsa.generate_private_key(65537, 2048)
EC_B = ec.generate_private_key(ec.SECP256R1())
EVIL_RSA = rsa.generate_private_key(65537, 2048)
EVIL_EC = ec.generate_private_key(ec.SECP256R1())

DROP: Any = object()  # a claim or header member to leave out


def _uint(n: int) -> str:
    return b64url_encode(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    n = key.public_key().public_numbers()
    return {"kty": "RSA", "kid": kid, "n": _uint(n.n), "e": _uint(n.e), **extra}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    n = key.public_key().public_numbers()
    size = (key.curve.key_size + 7) // 8
    crv = {"secp256r1": "P-256", "secp384r1": "P-384"}[key.curve.name]
    return {
        "kty": "EC",
        "kid": kid,
        "crv": crv,
        "x": b64url_encode(n.x.to_bytes(size, "big")),
        "y": b64url_encode(n.y.to_bytes(size, "big")),
    }


def ed_jwk(key: ed25519.Ed25519PrivateKey, kid: str) -> dict[str, Any]:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64url_encode(raw)}


JWKS_A = {
    "keys": [
        rsa_jwk(RSA_A, "a-rsa", alg="RS256", use="sig"),
        rsa_jwk(RSA_A, "a-pss", alg="PS256"),
        ec_jwk(EC_A, "a-ec"),
        ec_jwk(EC384_A, "a-ec384"),
        ed_jwk(ED_A, "a-ed"),
        rsa_jwk(WEAK_A, "a-weak"),  # 1024 bits: skipped
        rsa_jwk(ENC_A, "a-enc", use="enc"),  # an encryption key: skipped
        {"kty": "oct", "kid": "a-oct", "k": b64url_encode(b"o" * 32)},  # a secret: skipped
    ]
}
JWKS_B = {"keys": [rsa_jwk(RSA_B, "b-rsa"), ec_jwk(EC_B, "b-ec")]}
EVIL_JWKS = {"keys": [rsa_jwk(EVIL_RSA, "evil"), rsa_jwk(EVIL_RSA, "a-rsa")]}

RSA_PEM = RSA_A.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
RSA_PKCS1_PEM = RSA_A.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
)
RSA_DER = RSA_A.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
)
EC_PEM = EC_A.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
EC_POINT = EC_A.public_key().public_bytes(
    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
)
ED_RAW = ED_A.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# -- token builders ----------------------------------------------------------------------------


def b64(data: str | bytes) -> str:
    return b64url_encode(data.encode() if isinstance(data, str) else data)


def b64j(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")))


def claims(**over: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "iss": ISS_A,
        "sub": "user-1",
        "aud": "api",
        "exp": NOW + 600,
        "iat": NOW - 5,
    }
    c.update(over)
    return {k: v for k, v in c.items() if v is not DROP}


def tok(
    key: PrivateKey = RSA_A,
    header: dict[str, Any] | None = None,
    payload: dict[str, Any] | None = None,
    **over: Any,
) -> str:
    """A properly signed token: header/claim overrides on top of a valid issuer-A token."""
    h: dict[str, Any] = {"alg": "RS256", "kid": "a-rsa", "typ": "JWT"}
    h.update(header or {})
    h = {k: v for k, v in h.items() if v is not DROP}
    return sign_compact(h, claims(**(payload or {}), **over), key)


def resign(header: str | bytes, payload: str | bytes, key: PrivateKey = RSA_A) -> str:
    """Sign raw header and payload bytes (RS256 for RSA keys, HS256 for secrets)."""
    data = f"{b64(header)}.{b64(payload)}".encode()
    if isinstance(key, bytes):
        sig = hmac.digest(key, data, "sha256")
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        sig = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return f"{data.decode()}.{b64(sig)}"


def with_sig(token: str, sig: bytes | str) -> str:
    h, p, _ = token.split(".")
    return f"{h}.{p}.{sig if isinstance(sig, str) else b64(sig)}"


def flip(token: str, index: int) -> str:
    sig = bytearray(b64url_decode(token.split(".")[2]))
    sig[index] ^= 0x01
    return with_sig(token, bytes(sig))


def replace_payload(token: str, **over: Any) -> str:
    h, _, s = token.split(".")
    return f"{h}.{b64j(claims(**over))}.{s}"


def replace_header(token: str, header: dict[str, Any]) -> str:
    _, p, s = token.split(".")
    return f"{b64j(header)}.{p}.{s}"


def es256_raw_sig(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def der_sig(token: str) -> str:
    raw = b64url_decode(token.split(".")[2])
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    return with_sig(token, der)


def non_canonical_payload(token: str) -> str:
    h, p, s = token.split(".")
    while len(p) % 4 not in (2, 3):
        p += "A"
    return f"{h}.{p[:-1]}B.{s}"  # 'B' (1) sets the lowest unused bit, whatever the length


def length_1_mod_4(token: str) -> str:
    h, p, s = token.split(".")
    while len(p) % 4 != 1:
        p += "A"
    return f"{h}.{p}.{s}"


def _with_alg(alg: str, ctx: Ctx) -> str:
    return none_token(alg)


def flattened(token: str) -> str:
    """The flattened JWS JSON serialization of a compact token."""
    h, p, s = token.split(".")
    return json.dumps({"protected": h, "payload": p, "signature": s})


def none_token(alg: str, sig: str = "", **header: Any) -> str:
    return f"{b64j({'alg': alg, **header})}.{b64j(claims())}.{sig}"


@dataclass(frozen=True)
class Ctx:
    canary: str
    jwks_a: str


@dataclass(frozen=True)
class Attack:
    id: str
    build: Callable[[Ctx], str]
    reason: str
    stage: str  # parse | lookup | crypto


def _a(id: str, reason: str, stage: str, build: Callable[[Ctx], str]) -> Attack:
    return Attack(id, build, reason, stage)


VALID_RS = tok()
VALID_ES = tok(EC_A, {"alg": "ES256", "kid": "a-ec"})
VALID_ED = tok(ED_A, {"alg": "EdDSA", "kid": "a-ed"})

ATTACKS: list[Attack] = [
    # -- alg none, in every spelling --------------------------------------------------------
    _a("none", "alg_not_allowed", "parse", lambda c: none_token("none")),
    _a("None", "alg_not_allowed", "parse", lambda c: none_token("None")),
    _a("NONE", "alg_not_allowed", "parse", lambda c: none_token("NONE")),
    _a("nOnE", "alg_not_allowed", "parse", lambda c: none_token("nOnE")),
    _a("NoNe", "alg_not_allowed", "parse", lambda c: none_token("NoNe")),
    _a("none-with-kid", "alg_not_allowed", "parse", lambda c: none_token("none", kid="a-rsa")),
    _a(
        "none-with-valid-rs256-sig",
        "alg_not_allowed",
        "parse",
        lambda c: none_token("none", VALID_RS.split(".")[2]),
    ),
    _a("none-with-garbage-sig", "alg_not_allowed", "parse", lambda c: none_token("none", "AAAA")),
    _a("none-trailing-space", "alg_not_allowed", "parse", lambda c: none_token("none ")),
    # -- algorithms not implemented, not allowed, or not strings ----------------------------
    *(
        _a(f"alg-{alg}", "alg_not_allowed", "parse", functools.partial(_with_alg, alg))
        for alg in ("rs256", "Rs256", "RS256 ", "HS1", "ES256K", "ES224", "RSA1_5", "dir")
    ),
    _a("alg-A256GCM", "alg_not_allowed", "parse", lambda c: none_token("A256GCM")),
    _a("alg-RS1", "alg_not_allowed", "parse", lambda c: none_token("RS1")),
    _a("alg-empty", "alg_not_allowed", "parse", lambda c: none_token("")),
    _a(
        "alg-PS512-not-allow-listed",
        "alg_not_allowed",
        "parse",
        lambda c: tok(header={"alg": "PS512"}),
    ),
    _a(
        "alg-ES512-not-allow-listed",
        "alg_not_allowed",
        "parse",
        lambda c: tok(ec.generate_private_key(ec.SECP521R1()), {"alg": "ES512"}),
    ),
    _a(
        "alg-HS256-random-secret",
        "alg_not_allowed",
        "parse",
        lambda c: tok(b"r" * 32, {"alg": "HS256"}),
    ),
    _a(
        "alg-number", "bad_header", "parse", lambda c: f"{b64j({'alg': 256})}.{b64j(claims())}.AAAA"
    ),
    _a(
        "alg-list",
        "bad_header",
        "parse",
        lambda c: f"{b64j({'alg': ['RS256']})}.{b64j(claims())}.AAAA",
    ),
    _a("alg-null", "bad_header", "parse", lambda c: f"{b64j({'alg': None})}.{b64j(claims())}.AAAA"),
    _a(
        "alg-missing",
        "bad_header",
        "parse",
        lambda c: f"{b64j({'kid': 'a-rsa'})}.{b64j(claims())}.AAAA",
    ),
    _a(
        "alg-object",
        "bad_header",
        "parse",
        lambda c: f"{b64j({'alg': {'n': 'RS256'}})}.{b64j(claims())}.AA",
    ),
    # -- RS/ES -> HS confusion: HMAC "signed" with the issuer's public key material -------
    _a("HS256-rsa-spki-pem", "alg_not_allowed", "parse", lambda c: tok(RSA_PEM, {"alg": "HS256"})),
    _a(
        "HS256-rsa-pkcs1-pem",
        "alg_not_allowed",
        "parse",
        lambda c: tok(RSA_PKCS1_PEM, {"alg": "HS256"}),
    ),
    _a("HS256-rsa-der", "alg_not_allowed", "parse", lambda c: tok(RSA_DER, {"alg": "HS256"})),
    _a(
        "HS256-rsa-jwk-json",
        "alg_not_allowed",
        "parse",
        lambda c: tok(json.dumps(JWKS_A["keys"][0]).encode(), {"alg": "HS256"}),
    ),
    _a("HS384-rsa-pem", "alg_not_allowed", "parse", lambda c: tok(RSA_PEM, {"alg": "HS384"})),
    _a("HS512-rsa-pem", "alg_not_allowed", "parse", lambda c: tok(RSA_PEM, {"alg": "HS512"})),
    _a(
        "HS256-ec-pem",
        "alg_not_allowed",
        "parse",
        lambda c: tok(EC_PEM, {"alg": "HS256", "kid": "a-ec"}),
    ),
    _a(
        "HS256-ec-point",
        "alg_not_allowed",
        "parse",
        lambda c: tok(EC_POINT, {"alg": "HS256", "kid": "a-ec"}),
    ),
    _a(
        "HS256-ed-raw",
        "alg_not_allowed",
        "parse",
        lambda c: tok(ED_RAW + ED_RAW, {"alg": "HS256", "kid": "a-ed"}),
    ),
    _a(
        "HS256-whole-jwks",
        "alg_not_allowed",
        "parse",
        lambda c: tok(json.dumps(JWKS_A).encode(), {"alg": "HS256"}),
    ),
    _a(
        "HS256-rsa-pem-at-hmac-issuer",
        "bad_signature",
        "crypto",
        lambda c: tok(RSA_PEM, {"alg": "HS256", "kid": DROP}, iss=ISS_C),
    ),
    _a(
        "HS256-ec-pem-at-hmac-issuer",
        "bad_signature",
        "crypto",
        lambda c: tok(EC_PEM, {"alg": "HS256", "kid": DROP}, iss=ISS_C),
    ),
    # -- a key of the wrong type, curve or algorithm restriction ---------------------------
    _a("ES256-on-rsa-kid", "key_mismatch", "lookup", lambda c: tok(EC_A, {"alg": "ES256"})),
    _a("RS256-on-ec-kid", "key_mismatch", "lookup", lambda c: tok(header={"kid": "a-ec"})),
    _a("PS256-on-rs256-only-key", "key_mismatch", "lookup", lambda c: tok(header={"alg": "PS256"})),
    _a("RS256-on-ps256-only-key", "key_mismatch", "lookup", lambda c: tok(header={"kid": "a-pss"})),
    _a(
        "ES384-on-p256-key",
        "key_mismatch",
        "lookup",
        lambda c: tok(EC384_A, {"alg": "ES384", "kid": "a-ec"}),
    ),
    _a(
        "ES256-on-p384-key",
        "key_mismatch",
        "lookup",
        lambda c: tok(EC_A, {"alg": "ES256", "kid": "a-ec384"}),
    ),
    _a(
        "EdDSA-on-ec-key",
        "key_mismatch",
        "lookup",
        lambda c: tok(ED_A, {"alg": "EdDSA", "kid": "a-ec"}),
    ),
    _a(
        "ES256-on-ed-key",
        "key_mismatch",
        "lookup",
        lambda c: tok(EC_A, {"alg": "ES256", "kid": "a-ed"}),
    ),
    # -- keys embedded in, or pointed at by, the token -------------------------------------
    _a(
        "jwk-attacker-kid",
        "embedded_key",
        "parse",
        lambda c: tok(EVIL_RSA, {"kid": "evil", "jwk": rsa_jwk(EVIL_RSA, "evil")}),
    ),
    _a(
        "jwk-victim-kid",
        "embedded_key",
        "parse",
        lambda c: tok(EVIL_RSA, {"jwk": rsa_jwk(EVIL_RSA, "a-rsa")}),
    ),
    _a(
        "jwk-no-kid",
        "embedded_key",
        "parse",
        lambda c: tok(EVIL_RSA, {"kid": DROP, "jwk": rsa_jwk(EVIL_RSA, "x")}),
    ),
    _a(
        "jwk-ec",
        "embedded_key",
        "parse",
        lambda c: tok(EVIL_EC, {"alg": "ES256", "kid": "a-ec", "jwk": ec_jwk(EVIL_EC, "a-ec")}),
    ),
    _a(
        "jku-canary",
        "embedded_key",
        "parse",
        lambda c: tok(EVIL_RSA, {"kid": "evil", "jku": c.canary + "/jwks"}),
    ),
    _a(
        "jku-canary-victim-kid",
        "embedded_key",
        "parse",
        lambda c: tok(EVIL_RSA, {"jku": c.canary + "/jwks"}),
    ),
    _a("jku-the-real-jwks-url", "embedded_key", "parse", lambda c: tok(header={"jku": c.jwks_a})),
    _a(
        "jku-file-url",
        "embedded_key",
        "parse",
        lambda c: tok(EVIL_RSA, {"jku": "file:///etc/passwd"}),
    ),
    _a("x5u-canary", "embedded_key", "parse", lambda c: tok(EVIL_RSA, {"x5u": c.canary + "/cert"})),
    _a(
        "x5c-chain",
        "embedded_key",
        "parse",
        lambda c: tok(EVIL_RSA, {"x5c": ["MIIBIjANBgkqhkiG9w0B"]}),
    ),
    _a(
        "jku-x5u-jwk-together",
        "embedded_key",
        "parse",
        lambda c: tok(
            EVIL_RSA,
            {"jku": c.canary + "/jwks", "x5u": c.canary + "/cert", "jwk": rsa_jwk(EVIL_RSA, "e")},
        ),
    ),
    # -- kid injection: kids are dictionary keys, nothing more ------------------------------
    _a(
        "kid-path-traversal",
        "unknown_key",
        "lookup",
        lambda c: tok(header={"kid": "../../../../etc/passwd"}),
    ),
    _a("kid-absolute-path", "unknown_key", "lookup", lambda c: tok(header={"kid": "/etc/passwd"})),
    _a(
        "kid-file-url", "unknown_key", "lookup", lambda c: tok(header={"kid": "file:///etc/passwd"})
    ),
    _a("kid-dev-null", "unknown_key", "lookup", lambda c: tok(header={"kid": "/dev/null"})),
    _a("kid-windows-path", "bad_kid", "parse", lambda c: tok(header={"kid": "..\\..\\win.ini"})),
    _a("kid-sql-or", "bad_kid", "parse", lambda c: tok(header={"kid": "' OR '1'='1"})),
    _a("kid-sql-comment", "bad_kid", "parse", lambda c: tok(header={"kid": "a-rsa' OR 1=1 --"})),
    _a("kid-sql-drop", "bad_kid", "parse", lambda c: tok(header={"kid": "1; DROP TABLE keys; --"})),
    _a("kid-129-chars", "bad_kid", "parse", lambda c: tok(header={"kid": "k" * 129})),
    _a("kid-huge", "token_too_large", "parse", lambda c: tok(header={"kid": "k" * 5000})),
    _a("kid-empty", "bad_kid", "parse", lambda c: tok(header={"kid": ""})),
    _a("kid-number", "bad_kid", "parse", lambda c: tok(header={"kid": 123})),
    _a("kid-null", "bad_kid", "parse", lambda c: tok(header={"kid": None})),
    _a("kid-list", "bad_kid", "parse", lambda c: tok(header={"kid": ["a-rsa"]})),
    _a("kid-nosql-object", "bad_kid", "parse", lambda c: tok(header={"kid": {"$ne": ""}})),
    _a("kid-nul-byte", "bad_kid", "parse", lambda c: tok(header={"kid": "a-rsa\x00"})),
    _a("kid-newline", "bad_kid", "parse", lambda c: tok(header={"kid": "a-rsa\nX-Injected: 1"})),
    _a(
        "kid-url-encoded",
        "bad_kid",
        "parse",
        lambda c: tok(header={"kid": "%2e%2e%2fetc%2fpasswd"}),
    ),
    _a("kid-jndi", "bad_kid", "parse", lambda c: tok(header={"kid": "${jndi:ldap://127.0.0.1/a}"})),
    _a("kid-homoglyph", "bad_kid", "parse", lambda c: tok(header={"kid": "\u0430-rsa"})),
    _a("kid-trailing-space", "bad_kid", "parse", lambda c: tok(header={"kid": "a-rsa "})),
    _a("kid-wildcard", "bad_kid", "parse", lambda c: tok(header={"kid": "*"})),
    _a("kid-case-variant", "unknown_key", "lookup", lambda c: tok(header={"kid": "A-RSA"})),
    _a("kid-missing-several-keys", "unknown_key", "lookup", lambda c: tok(header={"kid": DROP})),
    _a(
        "kid-of-weak-1024-bit-key",
        "unknown_key",
        "lookup",
        lambda c: tok(WEAK_A, {"kid": "a-weak"}),
    ),
    _a("kid-of-encryption-key", "unknown_key", "lookup", lambda c: tok(ENC_A, {"kid": "a-enc"})),
    _a("kid-of-secret-in-jwks", "unknown_key", "lookup", lambda c: tok(header={"kid": "a-oct"})),
    # -- time ----------------------------------------------------------------------------
    _a("expired", "expired", "crypto", lambda c: tok(exp=NOW - 3600)),
    _a("expired-past-leeway", "expired", "crypto", lambda c: tok(exp=NOW - 61)),
    _a("exp-missing", "missing_claim", "crypto", lambda c: tok(exp=DROP)),
    _a("exp-null", "missing_claim", "crypto", lambda c: tok(exp=None)),
    _a("exp-string", "bad_claim", "crypto", lambda c: tok(exp=str(NOW + 600))),
    _a("exp-bool", "bad_claim", "crypto", lambda c: tok(exp=True)),
    _a("exp-far-future", "bad_claim", "crypto", lambda c: tok(exp=10**20)),
    _a("exp-negative", "bad_claim", "crypto", lambda c: tok(exp=-1)),
    _a(
        "exp-infinite",
        "bad_payload",
        "parse",
        lambda c: resign(
            '{"alg":"RS256","kid":"a-rsa"}', f'{{"iss":"{ISS_A}","aud":"api","exp":1e999}}'
        ),
    ),
    _a(
        "exp-nan",
        "bad_payload",
        "parse",
        lambda c: resign('{"alg":"RS256","kid":"a-rsa"}', f'{{"iss":"{ISS_A}","exp":NaN}}'),
    ),
    _a("nbf-future", "not_yet_valid", "crypto", lambda c: tok(nbf=NOW + 3600)),
    _a("nbf-string", "bad_claim", "crypto", lambda c: tok(nbf="now")),
    _a("iat-future", "issued_in_future", "crypto", lambda c: tok(iat=NOW + 3600)),
    # -- issuer and audience -------------------------------------------------------------
    _a(
        "iss-unknown",
        "unknown_issuer",
        "parse",
        lambda c: tok(EVIL_RSA, iss="https://evil.example/"),
    ),
    _a("iss-trailing-slash", "unknown_issuer", "parse", lambda c: tok(iss=ISS_A.rstrip("/"))),
    _a("iss-case-variant", "unknown_issuer", "parse", lambda c: tok(iss=ISS_A.upper())),
    _a("iss-missing", "missing_claim", "parse", lambda c: tok(iss=DROP)),
    _a("iss-number", "bad_claim", "parse", lambda c: tok(iss=1)),
    _a("iss-list", "bad_claim", "parse", lambda c: tok(iss=[ISS_A])),
    _a("aud-wrong", "wrong_audience", "crypto", lambda c: tok(aud="other-service")),
    _a("aud-list-without-ours", "wrong_audience", "crypto", lambda c: tok(aud=["x", "y"])),
    _a("aud-missing", "missing_claim", "crypto", lambda c: tok(aud=DROP)),
    _a("aud-empty-list", "bad_claim", "crypto", lambda c: tok(aud=[])),
    _a("aud-number", "bad_claim", "crypto", lambda c: tok(aud=1)),
    _a("aud-case-variant", "wrong_audience", "crypto", lambda c: tok(aud="API")),
    _a("aud-of-another-issuer", "wrong_audience", "crypto", lambda c: tok(aud="api-b")),
    # -- issuer A's token, issuer B's key (and the other way round) ------------------------
    _a("A-token-B-key-B-kid", "unknown_key", "lookup", lambda c: tok(RSA_B, {"kid": "b-rsa"})),
    _a("A-token-B-key-A-kid", "bad_signature", "crypto", lambda c: tok(RSA_B)),
    _a(
        "B-token-A-key-A-kid",
        "unknown_key",
        "lookup",
        lambda c: tok(header={"typ": "at+jwt"}, iss=ISS_B, aud="api-b"),
    ),
    _a("A-token-C-secret", "alg_not_allowed", "parse", lambda c: tok(SECRET_C, {"alg": "HS256"})),
    _a("C-token-A-key", "alg_not_allowed", "parse", lambda c: tok(iss=ISS_C)),
    _a(
        "C-token-wrong-secret",
        "bad_signature",
        "crypto",
        lambda c: tok(b"w" * 32, {"alg": "HS256"}, iss=ISS_C),
    ),
    _a(
        "A-token-attacker-ec-key",
        "bad_signature",
        "crypto",
        lambda c: tok(EVIL_EC, {"alg": "ES256", "kid": "a-ec"}),
    ),
    _a(
        "B-token-typ-jwt",
        "wrong_type",
        "parse",
        lambda c: tok(RSA_B, {"kid": "b-rsa"}, iss=ISS_B, aud="api-b"),
    ),
    _a(
        "B-token-no-typ",
        "wrong_type",
        "parse",
        lambda c: tok(RSA_B, {"kid": "b-rsa", "typ": DROP}, iss=ISS_B, aud="api-b"),
    ),
    # -- tampering -----------------------------------------------------------------------
    _a("tampered-sub", "bad_signature", "crypto", lambda c: replace_payload(VALID_RS, sub="admin")),
    _a(
        "tampered-exp",
        "bad_signature",
        "crypto",
        lambda c: replace_payload(VALID_RS, exp=NOW + 10**6),
    ),
    _a(
        "tampered-aud",
        "bad_signature",
        "crypto",
        lambda c: replace_payload(VALID_ES, aud=["api", "evil"]),
    ),
    _a(
        "tampered-roles",
        "bad_signature",
        "crypto",
        lambda c: replace_payload(VALID_ED, roles=["admin"]),
    ),
    _a(
        "tampered-header-typ",
        "bad_signature",
        "crypto",
        lambda c: replace_header(VALID_RS, {"alg": "RS256", "kid": "a-rsa", "typ": "at+jwt"}),
    ),
    _a(
        "tampered-header-extra-member",
        "bad_signature",
        "crypto",
        lambda c: replace_header(VALID_RS, {"alg": "RS256", "kid": "a-rsa", "typ": "JWT", "x": 1}),
    ),
    _a(
        "tampered-header-alg-to-PS256",
        "key_mismatch",
        "lookup",
        lambda c: replace_header(VALID_RS, {"alg": "PS256", "kid": "a-rsa", "typ": "JWT"}),
    ),
    _a("sig-first-bit", "bad_signature", "crypto", lambda c: flip(VALID_RS, 0)),
    _a("sig-last-bit", "bad_signature", "crypto", lambda c: flip(VALID_RS, -1)),
    _a("sig-ec-bit", "bad_signature", "crypto", lambda c: flip(VALID_ES, 40)),
    _a("sig-ed-bit", "bad_signature", "crypto", lambda c: flip(VALID_ED, 3)),
    _a(
        "sig-truncated",
        "bad_signature",
        "crypto",
        lambda c: with_sig(VALID_RS, b64url_decode(VALID_RS.split(".")[2])[:-1]),
    ),
    _a(
        "sig-zero-appended",
        "bad_signature",
        "crypto",
        lambda c: with_sig(VALID_RS, b64url_decode(VALID_RS.split(".")[2]) + b"\0"),
    ),
    _a(
        "sig-of-another-token",
        "bad_signature",
        "crypto",
        lambda c: with_sig(VALID_RS, tok(sub="x").split(".")[2]),
    ),
    _a("sig-all-zero", "bad_signature", "crypto", lambda c: with_sig(VALID_RS, bytes(256))),
    _a("sig-empty", "bad_signature", "parse", lambda c: with_sig(VALID_RS, "")),
    _a("ecdsa-der-signature", "bad_signature", "crypto", lambda c: der_sig(VALID_ES)),
    _a("ecdsa-r0-s0", "bad_signature", "crypto", lambda c: with_sig(VALID_ES, es256_raw_sig(0, 0))),
    _a("ecdsa-96-byte-sig", "bad_signature", "crypto", lambda c: with_sig(VALID_ES, bytes(96))),
    _a(
        "eddsa-truncated",
        "bad_signature",
        "crypto",
        lambda c: with_sig(VALID_ED, b64url_decode(VALID_ED.split(".")[2])[:63]),
    ),
    # -- structure and encoding ----------------------------------------------------------
    _a("stripped-signature", "malformed_token", "parse", lambda c: VALID_RS.rsplit(".", 1)[0]),
    _a("one-segment", "malformed_token", "parse", lambda c: VALID_RS.split(".")[1]),
    _a("four-segments", "malformed_token", "parse", lambda c: VALID_RS + ".AAAA"),
    _a("five-segments-jwe", "malformed_token", "parse", lambda c: VALID_RS + ".AAAA.AAAA"),
    _a("trailing-dot", "malformed_token", "parse", lambda c: VALID_RS + "."),
    _a("only-dots", "malformed_token", "parse", lambda c: ".."),
    _a("empty-token", "malformed_token", "parse", lambda c: ""),
    _a(
        "json-serialization-general",
        "malformed_token",
        "parse",
        lambda c: json.dumps(
            {
                "payload": VALID_RS.split(".")[1],
                "signatures": [
                    {"protected": VALID_RS.split(".")[0], "signature": VALID_RS.split(".")[2]}
                ],
            }
        ),
    ),
    _a(
        "json-serialization-flattened",
        "malformed_token",
        "parse",
        lambda c: flattened(VALID_RS),
    ),
    _a("leading-space", "bad_encoding", "parse", lambda c: " " + VALID_RS),
    _a("header-padding", "bad_encoding", "parse", lambda c: VALID_RS.replace(".", "=.", 1)),
    _a("signature-padding", "bad_encoding", "parse", lambda c: VALID_RS + "=="),
    _a(
        "signature-std-alphabet",
        "bad_encoding",
        "parse",
        lambda c: with_sig(VALID_RS, "+/" + VALID_RS.split(".")[2][2:]),
    ),
    _a(
        "non-ascii-payload",
        "bad_encoding",
        "parse",
        lambda c: replace_payload(VALID_RS).replace(".", ".\u00e9", 1),
    ),
    _a("non-canonical-bits", "bad_encoding", "parse", lambda c: non_canonical_payload(VALID_RS)),
    _a("length-1-mod-4", "bad_encoding", "parse", lambda c: length_1_mod_4(VALID_RS)),
    _a("newline-inside", "bad_encoding", "parse", lambda c: VALID_RS[:40] + "\n" + VALID_RS[40:]),
    _a("bearer-inside-token", "bad_encoding", "parse", lambda c: "Bearer " + VALID_RS),
    # -- JSON ----------------------------------------------------------------------------
    _a(
        "header-not-json",
        "bad_header",
        "parse",
        lambda c: resign("{alg:RS256}", json.dumps(claims())),
    ),
    _a("header-array", "bad_header", "parse", lambda c: resign('["RS256"]', json.dumps(claims()))),
    _a("header-string", "bad_header", "parse", lambda c: resign('"RS256"', json.dumps(claims()))),
    _a(
        "header-bad-utf8",
        "bad_header",
        "parse",
        lambda c: resign(b'\xff{"alg":"RS256"}', json.dumps(claims())),
    ),
    _a(
        "header-bom",
        "bad_header",
        "parse",
        lambda c: resign(b'\xef\xbb\xbf{"alg":"RS256","kid":"a-rsa"}', json.dumps(claims())),
    ),
    _a(
        "header-duplicate-alg",
        "duplicate_key",
        "parse",
        lambda c: resign('{"alg":"none","alg":"RS256","kid":"a-rsa"}', json.dumps(claims())),
    ),
    _a(
        "header-duplicate-kid",
        "duplicate_key",
        "parse",
        lambda c: resign('{"alg":"RS256","kid":"evil","kid":"a-rsa"}', json.dumps(claims())),
    ),
    _a(
        "header-nested-duplicate",
        "duplicate_key",
        "parse",
        lambda c: resign('{"alg":"RS256","kid":"a-rsa","x":{"y":1,"y":2}}', json.dumps(claims())),
    ),
    _a(
        "payload-duplicate-sub",
        "duplicate_key",
        "parse",
        lambda c: resign(
            '{"alg":"RS256","kid":"a-rsa"}',
            f'{{"iss":"{ISS_A}","aud":"api","exp":{NOW + 600},"sub":"u","sub":"admin"}}',
        ),
    ),
    _a(
        "payload-duplicate-iss",
        "duplicate_key",
        "parse",
        lambda c: resign(
            '{"alg":"RS256","kid":"a-rsa"}',
            f'{{"iss":"https://evil.example/","iss":"{ISS_A}","aud":"api","exp":{NOW + 600}}}',
        ),
    ),
    _a(
        "payload-duplicate-exp",
        "duplicate_key",
        "parse",
        lambda c: resign(
            '{"alg":"RS256","kid":"a-rsa"}',
            f'{{"iss":"{ISS_A}","aud":"api","exp":1,"exp":{NOW + 600},"sub":"u"}}',
        ),
    ),
    _a(
        "payload-nested-duplicate",
        "duplicate_key",
        "parse",
        lambda c: resign(
            '{"alg":"RS256","kid":"a-rsa"}',
            f'{{"iss":"{ISS_A}","aud":"api","exp":{NOW + 600},"o":{{"r":"a","r":"b"}}}}',
        ),
    ),
    _a(
        "payload-not-json",
        "bad_payload",
        "parse",
        lambda c: resign('{"alg":"RS256","kid":"a-rsa"}', "hello"),
    ),
    _a(
        "payload-array",
        "bad_payload",
        "parse",
        lambda c: resign('{"alg":"RS256","kid":"a-rsa"}', "[1,2]"),
    ),
    _a(
        "payload-empty",
        "bad_payload",
        "parse",
        lambda c: resign('{"alg":"RS256","kid":"a-rsa"}', ""),
    ),
    _a(
        "payload-null",
        "bad_payload",
        "parse",
        lambda c: resign('{"alg":"RS256","kid":"a-rsa"}', "null"),
    ),
    _a(
        "payload-deep-nesting",
        "bad_payload",
        "parse",
        lambda c: resign('{"alg":"RS256","kid":"a-rsa"}', '{"a":' + "[" * 2000 + "]" * 2000 + "}"),
    ),
    _a(
        "payload-huge-integer",
        "bad_payload",
        "parse",
        lambda c: resign('{"alg":"RS256","kid":"a-rsa"}', '{"exp":' + "9" * 4400 + "}"),
    ),
    _a(
        "payload-bad-utf8",
        "bad_payload",
        "parse",
        lambda c: resign('{"alg":"RS256","kid":"a-rsa"}', b'{"sub":"\xff"}'),
    ),
    # -- size: refused before any decoding, lookup or crypto -------------------------------
    _a("token-8193-chars", "token_too_large", "parse", lambda c: tok(pad="x" * 6000)),
    _a("token-1-mib", "token_too_large", "parse", lambda c: VALID_RS + "A" * (1 << 20)),
    _a("header-1025-chars", "token_too_large", "parse", lambda c: tok(header={"pad": "x" * 760})),
    _a(
        "header-x5c-chain",
        "token_too_large",
        "parse",
        lambda c: tok(EVIL_RSA, {"x5c": ["M" * 1500] * 3}),
    ),
    _a("signature-too-long", "token_too_large", "parse", lambda c: with_sig(VALID_RS, "A" * 1400)),
    _a("dots-flood", "token_too_large", "parse", lambda c: "." * 100_000),
    # -- crit and unencoded payloads -----------------------------------------------------
    _a(
        "crit-exp", "unsupported_crit", "parse", lambda c: tok(header={"crit": ["exp"], "exp": NOW})
    ),
    _a(
        "crit-b64",
        "unsupported_crit",
        "parse",
        lambda c: tok(header={"crit": ["b64"], "b64": False}),
    ),
    _a(
        "crit-url",
        "unsupported_crit",
        "parse",
        lambda c: tok(header={"crit": ["http://x.invalid/e"]}),
    ),
    _a("crit-empty", "bad_header", "parse", lambda c: tok(header={"crit": []})),
    _a("crit-string", "bad_header", "parse", lambda c: tok(header={"crit": "exp"})),
    _a("crit-number", "bad_header", "parse", lambda c: tok(header={"crit": [1]})),
    _a("b64-false-without-crit", "bad_header", "parse", lambda c: tok(header={"b64": False})),
    # -- token types ---------------------------------------------------------------------
    _a("nested-jwt-cty", "wrong_type", "parse", lambda c: tok(header={"cty": "JWT"})),
    _a("typ-number", "bad_header", "parse", lambda c: tok(header={"typ": 1})),
    # -- claims the passport is made of --------------------------------------------------
    _a("sub-missing", "missing_claim", "crypto", lambda c: tok(sub=DROP)),
    _a("sub-object", "bad_claim", "crypto", lambda c: tok(sub={"id": "admin"})),
    _a("sub-control-chars", "bad_claim", "crypto", lambda c: tok(sub="user\r\nX-Admin: 1")),
    _a("roles-flood", "bad_claim", "crypto", lambda c: tok(roles=[f"r{i}" for i in range(300)])),
    _a("scope-number", "bad_claim", "crypto", lambda c: tok(scope=7)),
]

CONTROLS: list[tuple[str, Callable[[], str]]] = [
    ("A-RS256", lambda: VALID_RS),
    ("A-PS256", lambda: tok(header={"alg": "PS256", "kid": "a-pss"})),
    ("A-ES256", lambda: VALID_ES),
    ("A-ES384", lambda: tok(EC384_A, {"alg": "ES384", "kid": "a-ec384"})),
    ("A-EdDSA", lambda: VALID_ED),
    ("A-exp-within-leeway", lambda: tok(exp=NOW - 59)),
    ("B-RS256", lambda: tok(RSA_B, {"kid": "b-rsa", "typ": "at+jwt"}, iss=ISS_B, aud="api-b")),
    (
        "B-ES256",
        lambda: tok(EC_B, {"alg": "ES256", "kid": "b-ec", "typ": "at+jwt"}, iss=ISS_B, aud="api-b"),
    ),
    ("C-HS256", lambda: tok(SECRET_C, {"alg": "HS256", "kid": DROP}, iss=ISS_C)),
]


# -- servers and the resolver ------------------------------------------------------------------


class Server:
    """A tiny threaded HTTP server on 127.0.0.1 that counts requests per path."""

    def __init__(self, routes: dict[str, bytes]) -> None:
        self.routes = routes
        self.hits: Counter[str] = Counter()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits[self.path] += 1
                body = outer.routes.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("content-length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def idp() -> Iterator[Server]:
    s = Server({"/a": json.dumps(JWKS_A).encode(), "/b": json.dumps(JWKS_B).encode()})
    yield s
    s.close()


@pytest.fixture(scope="module")
def canary() -> Iterator[Server]:
    evil = json.dumps(EVIL_JWKS).encode()
    s = Server({"/jwks": evil, "/cert": b"-----BEGIN CERTIFICATE-----"})
    yield s
    assert sum(s.hits.values()) == 0, f"the canary was contacted: {dict(s.hits)}"
    s.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall_start=NOW)


@pytest.fixture
async def resolver(idp: Server, clock: FakeClock) -> AsyncIterator[JwtResolver]:
    idp.hits.clear()
    section = {
        "issuers": {
            "a": {
                "issuer": ISS_A,
                "audiences": ["api"],
                "algorithms": ["RS256", "PS256", "ES256", "ES384", "EdDSA"],
                "jwks_url": idp.base + "/a",
                "leeway": 60,
            },
            "b": {
                "issuer": ISS_B,
                "audiences": ["api-b"],
                "algorithms": ["RS256", "ES256"],
                "jwks_url": idp.base + "/b",
                "token_types": ["at+jwt"],
            },
            "c": {
                "issuer": ISS_C,
                "audiences": ["api"],
                "algorithms": ["HS256"],
                "hmac_secret": "env:C_SECRET",
            },
        }
    }
    r = JwtResolver.from_config(section, clock=clock, env={"C_SECRET": SECRET_C.decode()})
    yield r
    await r.aclose()


@pytest.fixture
def crypto_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = _jws._check

    def counting(alg: str, key: VerificationKey, data: bytes, sig: bytes) -> bool:
        calls.append(alg)
        return real(alg, key, data, sig)

    monkeypatch.setattr(_jws, "_check", counting)
    return calls


def credential(token: str) -> Credential:
    return Credential(kind=CredentialKind.JWT, value=token, resolver="jwt")


# -- the tests ---------------------------------------------------------------------------------


def test_there_are_at_least_100_attack_cases() -> None:
    assert len(ATTACKS) + len(CONFUSION) >= 100
    assert len({a.id for a in ATTACKS}) == len(ATTACKS)


@pytest.mark.parametrize(("name", "build"), CONTROLS, ids=[c[0] for c in CONTROLS])
async def test_control_tokens_are_accepted(
    resolver: JwtResolver, crypto_calls: list[str], name: str, build: Callable[[], str]
) -> None:
    # the setup accepts real tokens, so every refusal below is the attack's doing
    res = await resolver.resolve(credential(build()))
    assert res.user is not None
    assert res.user.subject == "user-1"
    assert len(crypto_calls) == 1


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
async def test_attack_is_refused(
    resolver: JwtResolver,
    idp: Server,
    canary: Server,
    crypto_calls: list[str],
    attack: Attack,
) -> None:
    token = attack.build(Ctx(canary=canary.base, jwks_a=idp.base + "/a"))
    with pytest.raises(Unauthenticated) as exc:
        await resolver.resolve(credential(token))
    assert exc.value.reason == attack.reason, str(exc.value)
    assert str(exc.value)  # a message for the logs
    assert sum(canary.hits.values()) == 0
    if attack.stage == "parse":
        assert crypto_calls == []
        assert sum(idp.hits.values()) == 0  # no key was even looked up
    elif attack.stage == "lookup":
        assert crypto_calls == []
    else:
        assert len(crypto_calls) == 1
    assert sum(idp.hits.values()) <= 1  # the first load; never a refetch in the same instant


CONFUSION: list[tuple[str, str, PrivateKey, VerificationKey]] = [
    ("HS256-rsa-pem", "HS256", RSA_PEM, VerificationKey(RSA_A.public_key())),
    ("HS384-rsa-der", "HS384", RSA_DER + RSA_DER, VerificationKey(RSA_A.public_key())),
    ("HS512-rsa-pem", "HS512", RSA_PEM, VerificationKey(RSA_A.public_key())),
    ("HS256-ec-pem", "HS256", EC_PEM, VerificationKey(EC_A.public_key())),
    ("HS256-ed-raw", "HS256", ED_RAW + ED_RAW, VerificationKey(ED_A.public_key())),
    ("RS256-with-secret-key", "RS256", RSA_A, VerificationKey(SECRET_C)),
]


@pytest.mark.parametrize(("name", "alg", "signer", "key"), CONFUSION, ids=[c[0] for c in CONFUSION])
def test_confusion_is_impossible_by_construction(
    crypto_calls: list[str], name: str, alg: str, signer: PrivateKey, key: VerificationKey
) -> None:
    # even with every algorithm allowed, a public key never verifies an HMAC (nor the reverse)
    token = sign_compact({"alg": alg}, b'{"sub":"admin"}', signer)
    with pytest.raises(Unauthenticated) as exc:
        verify_compact(token, {None: key}, ALGORITHMS)
    assert exc.value.reason == "key_mismatch"
    assert crypto_calls == []


async def test_unknown_kid_flood_through_the_resolver(
    resolver: JwtResolver, idp: Server, clock: FakeClock, crypto_calls: list[str]
) -> None:
    await resolver.resolve(credential(VALID_RS))
    assert idp.hits["/a"] == 1
    for round_ in range(3):
        for i in range(300):
            forged = tok(EVIL_RSA, {"kid": f"forged-{round_}-{i}"})
            with pytest.raises(Unauthenticated) as exc:
                await resolver.resolve(credential(forged))
            assert exc.value.reason == "unknown_key"
        assert idp.hits["/a"] == 1 + round_  # at most one fetch per interval
        clock.advance(30)  # the default min_refresh_interval
    assert len(crypto_calls) == 1  # only the control token's signature was checked


async def test_oversized_tokens_cost_no_decoding(
    resolver: JwtResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[str] = []
    real = _jws._b64decode

    def counting(segment: str, what: str) -> bytes:
        decoded.append(what)
        return real(segment, what)

    monkeypatch.setattr(_jws, "_b64decode", counting)
    for token in ("A" * 9000 + "..", tok(pad="x" * 6000), with_sig(VALID_RS, "A" * 1400)):
        with pytest.raises(Unauthenticated) as exc:
            await resolver.resolve(credential(token))
        assert exc.value.reason == "token_too_large"
    assert decoded == []
