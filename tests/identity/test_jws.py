"""The strict JWS compact verifier: every algorithm round-trips, and every refusal is precise."""

from __future__ import annotations

import base64
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from garrison.core import Unauthenticated
from garrison.identity import _jws
from garrison.identity._jws import (
    ALGORITHMS,
    JwsLimits,
    PrivateKey,
    VerificationKey,
    b64url_decode,
    b64url_encode,
    check_algorithm,
    decode_json_object,
    is_valid_kid,
    parse_compact,
    sign_compact,
    verify_compact,
    verify_signature,
)

SECRET = b"s" * 64
RSA = rsa.generate_private_key(65537, 2048)
P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
P521 = ec.generate_private_key(ec.SECP521R1())
ED = ed25519.Ed25519PrivateKey.generate()

SIGNERS: dict[str, PrivateKey] = {
    **dict.fromkeys(["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"], RSA),
    "ES256": P256,
    "ES384": P384,
    "ES512": P521,
    "EdDSA": ED,
    **dict.fromkeys(["HS256", "HS384", "HS512"], SECRET),
}


def verifier(alg: str) -> VerificationKey:
    key = SIGNERS[alg]
    return VerificationKey(key if isinstance(key, bytes) else key.public_key(), kid="k1")


def reason(exc: pytest.ExceptionInfo[Unauthenticated]) -> str:
    return exc.value.reason


def b64(data: bytes | str) -> str:
    return b64url_encode(data.encode() if isinstance(data, str) else data)


def test_supported_algorithms() -> None:
    assert set(SIGNERS) == ALGORITHMS


@pytest.mark.parametrize("alg", sorted(ALGORITHMS))
def test_every_algorithm_round_trips(alg: str) -> None:
    token = sign_compact({"alg": alg, "kid": "k1"}, {"sub": "u"}, SIGNERS[alg])
    jws = verify_compact(token, {"k1": verifier(alg)}, {alg})
    assert jws.alg == alg
    assert jws.kid == "k1"
    assert json.loads(jws.payload) == {"sub": "u"}
    assert jws.header == {"alg": alg, "kid": "k1"}


@pytest.mark.parametrize("alg", sorted(ALGORITHMS))
def test_every_algorithm_refuses_a_flipped_bit(alg: str) -> None:
    token = sign_compact({"alg": alg, "kid": "k1"}, b"payload", SIGNERS[alg])
    h, p, s = token.split(".")
    sig = bytearray(b64url_decode(s))
    sig[len(sig) // 2] ^= 1
    with pytest.raises(Unauthenticated) as exc:
        verify_compact(f"{h}.{p}.{b64url_encode(bytes(sig))}", {"k1": verifier(alg)}, {alg})
    assert reason(exc) == "bad_signature"


def test_key_lookup_may_be_a_function() -> None:
    token = sign_compact({"alg": "ES256"}, b"x", P256)
    seen: list[str | None] = []

    def lookup(kid: str | None) -> VerificationKey | None:
        seen.append(kid)
        return verifier("ES256")

    verify_compact(token, lookup, {"ES256"})
    assert seen == [None]


def test_unknown_kid() -> None:
    token = sign_compact({"alg": "ES256", "kid": "other"}, b"x", P256)
    with pytest.raises(Unauthenticated) as exc:
        verify_compact(token, {"k1": verifier("ES256")}, {"ES256"})
    assert reason(exc) == "unknown_key"


def test_allow_list_is_case_sensitive() -> None:
    token = sign_compact({"alg": "RS256"}, b"x", RSA)
    jws = parse_compact(token)
    check_algorithm(jws, {"RS256"})
    for allowed in ({"rs256"}, {"ES256"}, set()):
        with pytest.raises(Unauthenticated) as exc:
            check_algorithm(jws, allowed)
        assert reason(exc) == "alg_not_allowed"


@pytest.mark.parametrize(
    ("alg", "key", "why"),
    [
        ("HS256", RSA.public_key(), "needs a oct key"),  # algorithm confusion
        ("RS256", SECRET, "needs a RSA key"),
        ("ES256", RSA.public_key(), "needs a EC key"),
        ("ES256", P384.public_key(), "needs curve P-256"),
        ("ES384", P256.public_key(), "needs curve P-384"),
        ("ES512", P384.public_key(), "needs curve P-521"),
        ("EdDSA", P256.public_key(), "needs a OKP key"),
        ("RS256", ED.public_key(), "needs a RSA key"),
        ("HS384", b"s" * 32, "at least 48 bytes"),
        ("HS512", b"s" * 48, "at least 64 bytes"),
    ],
)
def test_key_type_must_match_the_algorithm_family(alg: str, key: Any, why: str) -> None:
    signer = SIGNERS[alg]
    token = sign_compact({"alg": alg}, b"x", signer)
    with pytest.raises(Unauthenticated) as exc:
        verify_signature(parse_compact(token), VerificationKey(key))
    assert reason(exc) == "key_mismatch"
    assert why in str(exc.value)


def test_a_key_restricted_to_one_algorithm_refuses_the_others() -> None:
    key = VerificationKey(RSA.public_key(), alg="RS256")
    assert key.fits("RS256")
    assert not key.fits("PS256")
    token = sign_compact({"alg": "PS256"}, b"x", RSA)
    with pytest.raises(Unauthenticated) as exc:
        verify_signature(parse_compact(token), key)
    assert reason(exc) == "key_mismatch"


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: VerificationKey(rsa.generate_private_key(65537, 1024).public_key()), "1024 bits"),
        (lambda: VerificationKey(rsa.generate_private_key(3, 2048).public_key()), None),
        (lambda: VerificationKey(ec.generate_private_key(ec.SECP256K1()).public_key()), "curve"),
        (lambda: VerificationKey(ed448.Ed448PrivateKey.generate().public_key()), "type"),  # type: ignore[arg-type]
        (lambda: VerificationKey(b"short"), "at least 32"),
        (lambda: VerificationKey(SECRET, kid="bad kid"), "kid"),
        (lambda: VerificationKey(SECRET, kid=""), "kid"),
        (lambda: VerificationKey(SECRET, alg="RS256"), "needs a RSA key"),
        (lambda: VerificationKey(SECRET, alg="none"), "not supported"),
        (lambda: VerificationKey(P256.public_key(), alg="ES384"), "curve P-384"),
        (lambda: VerificationKey(b"s" * 32, alg="HS512"), "at least 64"),
    ],
)
def test_verification_keys_check_their_strength(make: Any, error: str | None) -> None:
    if error is None:  # e = 3 is allowed (small, odd)
        assert make().kty == "RSA"
        return
    with pytest.raises((ValueError, TypeError), match=error):
        make()


def test_secrets_do_not_leak_into_repr() -> None:
    assert "sss" not in repr(VerificationKey(SECRET, kid="k"))


@pytest.mark.parametrize(
    ("segment", "ok"),
    [
        ("", True),
        ("QQ", True),
        ("QUI", True),
        ("QUJD", True),
        ("-_-_", True),
        ("QR", False),  # unused bits set: not canonical
        ("QUJ", False),
        ("Q", False),  # impossible length
        ("QQ==", False),  # padding
        ("QUI=", False),
        ("+/+/", False),  # standard alphabet
        ("QU JD", False),
        ("QUJD\n", False),
        ("QUJDé", False),
    ],
)
def test_strict_base64url(segment: str, ok: bool) -> None:
    if ok:
        assert b64url_encode(b64url_decode(segment)) == segment
        return
    with pytest.raises(Unauthenticated) as exc:
        b64url_decode(segment)
    assert reason(exc) == "bad_encoding"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"a": 1}', None),
        (b'{"a": {"b": [1, {"c": 2}]}}', None),
        (b'{"a": 1, "a": 2}', "duplicate_key"),
        (b'{"a": {"b": 1, "b": 1}}', "duplicate_key"),
        (b'{"a": [{"b": 1, "b": 1}]}', "duplicate_key"),
        (b"[1]", "bad"),
        (b'"a"', "bad"),
        (b"", "bad"),
        (b"\xff", "bad"),
        (b'\xef\xbb\xbf{"a": 1}', "bad"),
        (b'{"a": NaN}', "bad"),
        (b'{"a": Infinity}', "bad"),
        (b'{"a": 1e999}', "bad"),
        (b'{"a": ' + b"9" * 5000 + b"}", "bad"),
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "bad"),
    ],
)
def test_strict_json_objects(data: bytes, expected: str | None) -> None:
    if expected is None:
        assert isinstance(decode_json_object(data, "x", "bad"), dict)
        return
    with pytest.raises(Unauthenticated) as exc:
        decode_json_object(data, "x", "bad")
    assert reason(exc) == expected


def test_json_whitespace_is_fine() -> None:
    # RFC 7515 Example 3.3 has whitespace in the header JSON
    header = b64('{\n "alg" : "HS256" ,\t"kid":"k1"}')
    token = f"{header}.{b64('x')}."
    data = f"{header}.{b64('x')}".encode()
    token += b64url_encode(hmac.digest(SECRET, data, "sha256"))
    verify_compact(token, {"k1": verifier("HS256")}, {"HS256"})


def test_header_is_read_only_and_cached_safely() -> None:
    token = sign_compact({"alg": "ES256", "kid": "k1"}, b"x", P256)
    first = parse_compact(token)
    with pytest.raises(TypeError):
        first.header["alg"] = "none"  # type: ignore[index]
    second = parse_compact(token)
    assert second.header is first.header  # served from the header cache
    assert second.alg == "ES256"


def test_header_cache_is_bounded() -> None:
    for i in range(_jws._HEADERS_MAX * 2):
        parse_compact(sign_compact({"alg": "HS256", "kid": f"k{i}"}, b"x", SECRET))
    assert len(_jws._HEADERS) <= _jws._HEADERS_MAX


def test_limits_apply_before_decoding() -> None:
    limits = JwsLimits(max_token=100, max_header=20, max_signature=10)
    with pytest.raises(Unauthenticated) as exc:
        parse_compact("A" * 101, limits)
    assert reason(exc) == "token_too_large"
    with pytest.raises(Unauthenticated) as exc:
        parse_compact("!" * 21 + ".." + "A", limits)
    assert reason(exc) == "token_too_large"  # not bad_encoding: sizes come first
    with pytest.raises(Unauthenticated) as exc:
        parse_compact("eyJ9..AAAAAAAAAAAAAAAA", limits)
    assert reason(exc) == "token_too_large"


def test_checks_run_in_order() -> None:
    # a token with every fault is refused for the first one in the documented order
    none = h64({"alg": "none", "jku": "http://x"})
    assert _reason(f"{none}.e30.") == "alg_not_allowed"
    assert _reason(f"{none}.e30") == "malformed_token"
    assert _reason(f"{none}.e30.!!") == "bad_encoding"
    assert _reason(h64({"alg": "RS256", "jku": "u", "crit": ["x"]}) + ".e30.AA") == "embedded_key"
    assert _reason(h64({"alg": "RS256", "crit": ["x"], "kid": ""}) + ".e30.AA") == (
        "unsupported_crit"
    )
    assert _reason(h64({"alg": "RS256", "kid": ""}) + ".e30.") == "bad_kid"
    assert _reason(h64({"alg": "RS256", "kid": "k"}) + ".e30.") == "bad_signature"


def h64(header: dict[str, Any]) -> str:
    return b64(json.dumps(header))


def _reason(token: str) -> str:
    with pytest.raises(Unauthenticated) as exc:
        parse_compact(token)
    return exc.value.reason


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({"alg": "RS256", "typ": 1}, "bad_header"),
        ({"alg": "RS256", "cty": None}, "bad_header"),
        ({"alg": "RS256", "b64": False}, "bad_header"),
        ({"alg": "RS256", "crit": []}, "bad_header"),
        ({"alg": "RS256", "crit": "b64"}, "bad_header"),
        ({"alg": "RS256", "crit": ["b64"], "b64": False}, "unsupported_crit"),
        ({"alg": "RS256", "x5c": ["MII"]}, "embedded_key"),
        ({"alg": "RS256", "x5u": "https://x"}, "embedded_key"),
        ({"alg": "RS256", "jwk": {}}, "embedded_key"),
        ({"alg": "RS256", "jku": "https://x"}, "embedded_key"),
        ({"alg": "RS256", "kid": None}, "bad_kid"),
        ({"alg": "RS256", "kid": 1}, "bad_kid"),
        ({"alg": "RS256", "kid": "a" * 129}, "bad_kid"),
        ({"alg": "NONE"}, "alg_not_allowed"),
        ({"alg": "ES256K"}, "alg_not_allowed"),
        ({"alg": None}, "bad_header"),
        ({}, "bad_header"),
    ],
)
def test_header_policy(header: dict[str, Any], expected: str) -> None:
    assert _reason(h64(header) + ".e30.AAAA") == expected


def test_thumbprints_are_ignored_not_refused() -> None:
    # x5t / x5t#S256 are hints some issuers send next to kid; never used, harmless
    token = sign_compact({"alg": "ES256", "kid": "k1", "x5t": "abc"}, b"x", P256)
    verify_compact(token, {"k1": verifier("ES256")}, {"ES256"})


@pytest.mark.parametrize(
    "kid",
    ["a", "kid-ec-sign", "bilbo.baggins@hobbiton.example", "XnOfq6KW9mEkT+P8M/a=", "urn:k:1"],
)
def test_real_world_kids_are_valid(kid: str) -> None:
    assert is_valid_kid(kid)


@pytest.mark.parametrize("kid", ["", " a", "a b", "a\\b", "a'b", 'a"b', "a\x00", "é", "a" * 129, 1])
def test_odd_kids_are_invalid(kid: Any) -> None:
    assert not is_valid_kid(kid)


def test_ecdsa_signatures_must_be_raw_r_s() -> None:
    token = sign_compact({"alg": "ES256"}, b"x", P256)
    h, p, s = token.split(".")
    raw = b64url_decode(s)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    for sig in (der, raw + b"\x00", raw[:-1], bytes(64)):
        with pytest.raises(Unauthenticated) as exc:
            verify_compact(f"{h}.{p}.{b64url_encode(sig)}", {None: verifier("ES256")}, {"ES256"})
        assert reason(exc) == "bad_signature"


def test_rsa_signatures_must_have_the_modulus_length() -> None:
    token = sign_compact({"alg": "RS256"}, b"x", RSA)
    h, p, s = token.split(".")
    raw = b64url_decode(s)
    for sig in (b"\x00" + raw, raw[1:] if raw[0] == 0 else raw[:-1]):
        with pytest.raises(Unauthenticated) as exc:
            verify_compact(f"{h}.{p}.{b64url_encode(sig)}", {None: verifier("RS256")}, {"RS256"})
        assert reason(exc) == "bad_signature"


def test_sign_compact_matches_pyjwt() -> None:
    import jwt

    pem = RSA.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for alg in ("RS256", "PS384", "ES256", "EdDSA", "HS256"):
        token = sign_compact({"alg": alg, "typ": "JWT"}, {"sub": "u"}, SIGNERS[alg])
        key: Any = SIGNERS[alg]
        key = key if isinstance(key, bytes) else key.public_key()
        assert jwt.decode(token, key, algorithms=[alg]) == {"sub": "u"}
    ours = jwt.encode({"sub": "u"}, RSA, algorithm="RS256", headers={"kid": "k1"})
    assert verify_compact(ours, {"k1": verifier("RS256")}, {"RS256"}).payload
    assert pem  # the PEM of the public key is what HS confusion attacks sign with


def test_only_the_signing_input_is_signed() -> None:
    token = sign_compact({"alg": "HS256"}, b"payload", SECRET)
    jws = parse_compact(token)
    assert jws.signing_input == token.rsplit(".", 1)[0].encode()
    assert base64.urlsafe_b64encode(jws.payload).rstrip(b"=") == token.split(".")[1].encode()
