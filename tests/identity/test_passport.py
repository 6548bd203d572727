"""The passport codec: round trips, the wire format, the verification order, the bounds."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.core import FakeClock, Unauthenticated, UsageError
from garrison.identity import _keys, _passport
from garrison.identity._keys import Keyring, PassportKey
from garrison.identity._model import (
    Assurance,
    Authentication,
    CredentialKind,
    DeviceIdentity,
    Passport,
    Resolution,
    TrustLevel,
    UserIdentity,
)
from garrison.identity._passport import (
    MAX_EXT_ENTRIES,
    MAX_EXT_VALUE,
    PASSPORT_HEADER,
    REASONS,
    PassportCodec,
    inspect_token,
)

NOW = 1_700_000_000.0
SECRET = b"s" * 32
OTHER = b"o" * 32
VECTORS = Path(__file__).parent / "vectors"


def unb64(token: str) -> bytearray:
    return bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def make(**over: Any) -> Passport:
    fields: dict[str, Any] = {
        "auth": Authentication(
            credential=CredentialKind.JWT,
            issuer="https://id.example.com/",
            method="mfa",
            assurance=Assurance.AAL2,
            at=NOW - 100,
        ),
        "issued_at": NOW,
        "expires_at": NOW + 60,
        "txn": "txn-1",
        "user": UserIdentity(subject="u-1", tenant="t-1", roles=("ops",), scopes=("read",)),
        "device": DeviceIdentity(id="d-1", type="battery", trust=TrustLevel.REGISTERED),
        "ext": {"region": "eu"},
    }
    fields.update(over)
    return Passport(**fields)


def reason(codec: PassportCodec, token: str | bytes) -> str:
    with pytest.raises(Unauthenticated) as info:
        codec.verify(token)
    assert info.value.reason in REASONS
    return info.value.reason


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall_start=NOW)


@pytest.fixture
def codec(clock: FakeClock) -> PassportCodec:
    return PassportCodec(Keyring.hmac({"k1": SECRET}, active="k1"), clock=clock)


@pytest.fixture
def ed_codec(clock: FakeClock) -> PassportCodec:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    return PassportCodec(Keyring.ed25519(private_keys={"e1": key}, active="e1"), clock=clock)


# -- round trips and the format -------------------------------------------------------------


@pytest.mark.parametrize(
    "passport",
    [
        make(),
        make(user=None, device=None, ext={}, auth=Authentication(CredentialKind.ANONYMOUS)),
        make(degraded=True),
        make(user=UserIdentity(subject="ünïcødé-✓", account="a", roles=(), scopes=())),
    ],
    ids=["full", "anonymous", "degraded", "unicode"],
)
@pytest.mark.parametrize("which", ["codec", "ed_codec"])
def test_round_trip(passport: Passport, which: str, request: pytest.FixtureRequest) -> None:
    c: PassportCodec = request.getfixturevalue(which)
    token = c.mint(passport)
    assert c.verify(token) == passport
    assert c.verify(token.encode()) == passport  # ASGI hands header values over as bytes


def test_token_is_header_safe_base64url_without_padding(codec: PassportCodec) -> None:
    token = codec.mint(make())
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert PASSPORT_HEADER == "garrison-passport"


@pytest.mark.parametrize(("which", "alg", "tag"), [("codec", 1, 32), ("ed_codec", 2, 64)])
def test_byte_layout(which: str, alg: int, tag: int, request: pytest.FixtureRequest) -> None:
    c: PassportCodec = request.getfixturevalue(which)
    kid = c.keyring.kids[0].encode()
    raw = unb64(c.mint(make(degraded=True)))
    assert raw[:5] == bytes((0x50, 1, alg, 0x01, len(kid)))
    assert raw[5 : 5 + len(kid)] == kid
    body = msgspec.msgpack.decode(raw[5 + len(kid) : -tag])
    assert body[:3] == [NOW, NOW + 60, "txn-1"]
    assert body[6] is True  # degraded, as in the flags byte
    assert len(body) == 8


def test_body_is_compact(codec: PassportCodec) -> None:
    # array-like: no field names on the wire
    raw = bytes(unb64(codec.mint(make())))
    for name in (b"subject", b"issued_at", b"credential", b"trust"):
        assert name not in raw


# -- verification order ---------------------------------------------------------------------


def test_size_is_checked_before_any_decoding(codec: PassportCodec) -> None:
    assert reason(codec, "!" * 4097) == "too_large"  # not base64 at all, yet too_large
    assert reason(codec, b"\xff" * 5000) == "too_large"
    assert reason(codec, "!" * 4096) == "malformed"


def test_tag_is_checked_before_the_body_is_decoded(
    codec: PassportCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    header = bytes((0x50, 1, 1, 0, 2)) + b"k1"
    garbage = b"\xc1\xc1 not msgpack at all"
    decoded: list[object] = []

    class SpyDecoder:
        def decode(self, data: object) -> object:
            decoded.append(data)
            raise AssertionError("the body must not be decoded before the tag checks out")

    monkeypatch.setattr(_passport, "_DECODER", SpyDecoder())
    assert reason(codec, b64(header + garbage + bytes(32))) == "bad_signature"
    assert decoded == []


def test_signed_garbage_body_is_malformed(codec: PassportCodec) -> None:
    signed = bytes((0x50, 1, 1, 0, 2)) + b"k1" + b"\xc1\xc1 not msgpack"
    tag = codec.keyring["k1"].sign(signed)
    assert reason(codec, b64(signed + tag)) == "malformed"


def test_hmac_tags_are_compared_with_compare_digest(
    codec: PassportCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = _passport.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(_passport, "compare_digest", spy)
    monkeypatch.setattr(_keys, "compare_digest", spy)  # PassportKey.verify, should it be used
    token = codec.mint(make())
    codec.verify(token)
    assert len(calls) == 1
    assert calls[0] == (
        codec.keyring["k1"].sign(bytes(unb64(token)[:-32])),
        bytes(unb64(token)[-32:]),
    )


def test_header_is_checked_before_the_tag(codec: PassportCodec) -> None:
    raw = unb64(codec.mint(make()))
    for index, value, expected in [
        (0, 0x51, "malformed"),
        (1, 2, "unknown_version"),
        (2, 9, "unknown_alg"),
        (2, 2, "unknown_key"),  # an HS256 kid under the EdDSA algorithm byte
        (3, 0x80, "malformed"),
        (4, 0, "malformed"),
        (4, 17, "malformed"),
    ]:
        bad = bytearray(raw)
        bad[index] = value
        assert reason(codec, b64(bytes(bad))) == expected, (index, value)


def test_unknown_kid(codec: PassportCodec) -> None:
    other = PassportCodec(Keyring.hmac({"k2": SECRET}, active="k2"), clock=codec.clock)
    assert reason(codec, other.mint(make())) == "unknown_key"


def test_wrong_secret_same_kid(codec: PassportCodec) -> None:
    other = PassportCodec(Keyring.hmac({"k1": OTHER}, active="k1"), clock=codec.clock)
    assert reason(codec, other.mint(make())) == "bad_signature"


@pytest.mark.parametrize(
    "token",
    ["", "A", "AAAA=", "éé", "UAEBAAJrMQ", "UAEB AAJrMQ", "UAEB+AJrMQ", "UAEB/AJrMQ", "UAEBAAJrMR"],
)
def test_malformed(codec: PassportCodec, token: str) -> None:
    assert reason(codec, token) == "malformed"


# -- every single bit -----------------------------------------------------------------------


@pytest.mark.parametrize("which", ["codec", "ed_codec"])
def test_every_single_bit_flip_of_the_bytes_is_rejected(
    which: str, request: pytest.FixtureRequest
) -> None:
    c: PassportCodec = request.getfixturevalue(which)
    raw = bytes(unb64(c.mint(make())))
    for i in range(len(raw)):
        for bit in range(8):
            bad = bytearray(raw)
            bad[i] ^= 1 << bit
            with pytest.raises(Unauthenticated):
                c.verify(b64(bytes(bad)))


def test_every_single_bit_flip_of_the_characters_is_rejected(codec: PassportCodec) -> None:
    # The string, not just the bytes: base64 must have one spelling per token, so no flip of a
    # character (including the unused low bits of the last one) decodes to the same bytes.
    tails = set()
    for n in (5, 6, 7):  # three lengths of txn: the last group is 2, 3 and 4 characters long
        t = codec.mint(make(txn="t" * n)).encode()
        tails.add(len(t) % 4)
        for i in range(len(t)):
            for bit in range(8):
                bad = bytearray(t)
                bad[i] ^= 1 << bit
                with pytest.raises(Unauthenticated):
                    codec.verify(bytes(bad))
    assert tails == {0, 2, 3}


# -- time -----------------------------------------------------------------------------------


def test_expiry_with_leeway(codec: PassportCodec, clock: FakeClock) -> None:
    token = codec.mint(make())
    clock.advance(60 + 2)  # exactly at expiry + leeway: still fine
    assert codec.verify(token).txn == "txn-1"
    clock.advance(0.01)
    assert reason(codec, token) == "expired"


def test_not_yet_valid(codec: PassportCodec) -> None:
    assert codec.verify(codec.mint(make(issued_at=NOW + 2, expires_at=NOW + 60)))
    assert reason(codec, codec.mint(make(issued_at=NOW + 2.5))) == "not_yet_valid"


def test_leeway_is_configurable(clock: FakeClock) -> None:
    strict = PassportCodec(Keyring.hmac({"k1": SECRET}, active="k1"), leeway=0, clock=clock)
    token = strict.mint(make())
    clock.advance(60.001)
    assert reason(strict, token) == "expired"
    with pytest.raises(ValueError, match="leeway"):
        PassportCodec(strict.keyring, leeway=30)


# -- mint_for -------------------------------------------------------------------------------


def resolution(**over: Any) -> Resolution:
    fields: dict[str, Any] = {
        "auth": Authentication(credential=CredentialKind.SESSION, issuer="session"),
        "expires_at": NOW + 3600,
        "user": UserIdentity(subject="u-9"),
    }
    fields.update(over)
    return Resolution(**fields)


def test_mint_for(codec: PassportCodec) -> None:
    passport, token = codec.mint_for(resolution(degraded=True))
    assert codec.verify(token) == passport
    assert passport.issued_at == NOW
    assert passport.expires_at == NOW + 60
    assert passport.degraded is True
    assert passport.user == UserIdentity(subject="u-9")
    assert re.fullmatch(r"[0-9a-f]{32}", passport.txn)
    assert codec.mint_for(resolution())[0].txn != passport.txn


def test_mint_for_never_outlives_the_credential(codec: PassportCodec) -> None:
    passport, _ = codec.mint_for(resolution(expires_at=NOW + 5))
    assert passport.expires_at == NOW + 5
    with pytest.raises(Unauthenticated) as info:
        codec.mint_for(resolution(expires_at=NOW))
    assert info.value.reason == "expired"


def test_mint_for_keeps_a_given_txn_and_ext(codec: PassportCodec) -> None:
    passport, token = codec.mint_for(resolution(), txn="upstream-123", ext={"plan": "gold"})
    assert passport.txn == "upstream-123"
    assert codec.verify(token).ext == {"plan": "gold"}


# -- what minting refuses -------------------------------------------------------------------


def test_verify_only_keyring_cannot_mint(clock: FakeClock) -> None:
    public = Ed25519PrivateKey.generate().public_key()
    c = PassportCodec(Keyring.ed25519(public_keys={"e1": public}), clock=clock)
    assert not c.keyring.can_sign
    with pytest.raises(UsageError, match="verify-only"):
        c.mint(make())
    with pytest.raises(UsageError):
        c.mint_for(resolution())


def test_a_public_key_verifies_what_its_private_key_minted(ed_codec: PassportCodec) -> None:
    verifier = PassportCodec(ed_codec.keyring.verify_only(), clock=ed_codec.clock)
    token = ed_codec.mint(make())
    assert verifier.verify(token) == make()
    key = verifier.keyring["e1"]
    assert isinstance(key.material, Ed25519PublicKey)


@pytest.mark.parametrize(
    ("ext", "match"),
    [
        ({f"k{i}": "v" for i in range(MAX_EXT_ENTRIES + 1)}, "entries"),
        ({"Region": "eu"}, "ext key"),
        ({"k" * 33: "v"}, "ext key"),
        ({"1st": "v"}, "ext key"),
        ({"plan": "x" * (MAX_EXT_VALUE + 1)}, "at most"),
        ({"access_token": "abc"}, "credential or personal data"),
        ({"user_email": "abc"}, "credential or personal data"),
        ({"session_cookie": "abc"}, "credential or personal data"),
        ({"note": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"}, "raw token"),
        ({"note": "Bearer abc"}, "raw token"),
    ],
)
def test_ext_bounds_and_no_credentials_or_pii(
    codec: PassportCodec, ext: dict[str, str], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        codec.mint(make(ext=ext))


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"txn": ""}, "txn"),
        ({"txn": "x" * 65}, "txn"),
        ({"txn": "has space"}, "txn"),
        ({"issued_at": float("nan")}, "finite"),
        ({"expires_at": float("inf")}, "finite"),
        ({"expires_at": NOW - 1}, "before it is issued"),
        ({"user": "alice"}, "not valid"),  # wrong type: mint checks verify could read it
    ],
)
def test_mint_refuses_invalid_passports(
    codec: PassportCodec, over: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        codec.mint(make(**over))


def test_mint_refuses_oversize(clock: FakeClock) -> None:
    small = PassportCodec(Keyring.hmac({"k1": SECRET}, active="k1"), max_size=256, clock=clock)
    with pytest.raises(ValueError, match="max_size 256"):
        small.mint(make(user=UserIdentity(subject="u", roles=tuple(f"r{i}" for i in range(60)))))


def test_passport_model_has_no_field_for_a_raw_credential() -> None:
    # ids only: a passport never carries the token it was minted from (see docs/identity.md)
    names = {f for s in (Passport, UserIdentity, DeviceIdentity, Authentication)
             for f in s.__struct_fields__}  # fmt: skip
    assert not names & {"token", "raw", "credential_value", "value", "email", "name", "secret"}


def test_codec_arguments_are_checked() -> None:
    kr = Keyring.hmac({"k1": SECRET}, active="k1")
    bad: list[dict[str, Any]] = [{"ttl": 0}, {"ttl": -1}, {"max_size": 10}, {"leeway": -1}]
    for kwargs in bad:
        with pytest.raises(ValueError):
            PassportCodec(kr, **kwargs)


def test_wire_arrays_list_the_model_fields_in_order() -> None:
    # verify builds the model positionally from the body's arrays: the orders must agree
    def names(t: type[msgspec.Struct]) -> tuple[str, ...]:
        return tuple(f.name for f in msgspec.structs.fields(t))

    assert names(Authentication) == ("credential", "issuer", "method", "assurance", "at")
    assert names(UserIdentity) == ("subject", "account", "tenant", "roles", "scopes")
    assert names(DeviceIdentity) == ("id", "type", "trust")
    assert names(Passport) == (
        "auth", "issued_at", "expires_at", "txn", "user", "device", "degraded", "ext",
    )  # fmt: skip
    p = make(degraded=True)
    wire = _passport._to_wire(p)
    assert _passport._from_wire(_passport._DECODER.decode(msgspec.msgpack.encode(wire))) == p


@pytest.mark.parametrize("extra", [[], [1], [None, None]])
def test_body_with_a_missing_or_extra_element_is_malformed(
    codec: PassportCodec, extra: list[object]
) -> None:
    wire = list(_passport._to_wire(make()))
    body = msgspec.msgpack.encode(wire[:-1] if not extra else wire + extra)
    signed = bytes((0x50, 1, 1, 0, 2)) + b"k1" + body
    assert reason(codec, b64(signed + codec.keyring["k1"].sign(signed))) == "malformed"


def test_keyring_changes_take_effect_at_the_next_verify(clock: FakeClock) -> None:
    # verify keeps a table of valid headers per keyring; the keyring swaps its dict of keys on
    # every change, which is what tells the codec to rebuild the table
    ring = Keyring.hmac({"k1": SECRET}, active="k1")
    codec = PassportCodec(ring, clock=clock)
    minted = PassportCodec(Keyring.hmac({"k2": OTHER}, active="k2"), clock=clock).mint(make())
    old = codec.mint(make())
    assert reason(codec, minted) == "unknown_key"
    before = ring._by_kid
    ring.add(PassportKey.hmac("k2", OTHER))
    assert ring._by_kid is not before
    assert codec.verify(minted) == make()
    ring.activate("k2")
    before = ring._by_kid
    ring.retire("k1")
    assert ring._by_kid is not before
    assert reason(codec, old) == "unknown_key"
    assert codec.verify(codec.mint(make())) == make()


def test_header_checks_name_the_reason_whatever_the_table(codec: PassportCodec) -> None:
    # the table only saves work: a header outside it goes through every check in order, and a
    # header that passes them all (the keyring changed under a verify) still verifies
    raw = bytes(unb64(codec.mint(make())))
    header = raw[:7]
    assert codec._check_header(raw)[:4] == (codec.keyring["k1"], 7, 32, False)
    assert codec._check_header(raw)[4] is not None
    codec._headers = (codec.keyring._by_kid, {})  # an empty table: every header is checked
    assert codec.verify(b64(raw)) == make()
    assert reason(codec, b64(header[:3] + b"\x02" + raw[4:])) == "malformed"  # reserved flag
    assert reason(codec, b64(raw[:5])) == "malformed"  # too short to hold a kid


# -- base64url, strictly --------------------------------------------------------------------


def _reference_b64decode(token: bytes) -> bytes | None:
    """Canonical base64url without padding, the slow and obvious way; None if not."""
    if not re.fullmatch(rb"[A-Za-z0-9_-]*", token) or len(token) % 4 == 1:
        return None
    raw = base64.urlsafe_b64decode(token + b"=" * (-len(token) % 4))
    return raw if base64.urlsafe_b64encode(raw).rstrip(b"=") == token else None


def _decode_or_none(token: bytes | str) -> bytes | None:
    try:
        return _passport._b64decode(token)
    except Unauthenticated as exc:
        why = exc.reason
    assert why == "malformed"
    return None


_B64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_HS_CODEC = PassportCodec(Keyring.hmac({"k1": SECRET}, active="k1"))


@settings(max_examples=2000, deadline=None)
@given(
    st.binary(max_size=40)
    | st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).rstrip(b"="))
    | st.lists(st.sampled_from(list(_B64_CHARS + b'+/=\\"* \n\x00\x80\xff')), max_size=12).map(
        bytes
    )
)
def test_property_base64url_decoding_is_strict_and_canonical(token: bytes) -> None:
    expected = _reference_b64decode(token)
    assert _decode_or_none(token) == expected
    if expected is None:  # verify has its own (inlined) copy of the decoder
        assert reason(_HS_CODEC, token) == "malformed"
    assert _decode_or_none(bytearray(token)) == expected
    if token.isascii():
        assert _decode_or_none(token.decode("ascii")) == expected


def test_base64url_bytes_the_json_decoder_could_misread_are_refused() -> None:
    # msgspec decodes the base64 inside a JSON string: no byte may end the string, escape or
    # pad, whatever its position
    good = base64.urlsafe_b64encode(b"passport").rstrip(b"=")
    for i in range(len(good) + 1):
        for bad in (b'"', b"\\", b"\\u0041", b"=", b"==", b"+", b"/", b"*", b" ", b"\x00", b"\xff"):
            token = good[:i] + bad + good[i:]
            assert _decode_or_none(token) == _reference_b64decode(token) is None, token


# -- inspect --------------------------------------------------------------------------------


def test_inspect_token_reads_without_verifying(codec: PassportCodec) -> None:
    token = codec.mint(make(degraded=True))
    info = inspect_token(token)
    assert (info.version, info.alg, info.kid, info.degraded) == (1, "HS256", "k1", True)
    assert info.passport == make(degraded=True)
    raw = unb64(token)
    raw[-1] ^= 1
    assert inspect_token(b64(bytes(raw))).passport == make(degraded=True)  # tag not checked
    with pytest.raises(Unauthenticated):
        inspect_token("AAAA")


# -- properties -----------------------------------------------------------------------------

_text = st.text(max_size=12)
_ascii_id = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=64)
_ext_key = st.from_regex(r"[a-z][a-z0-9_.-]{0,31}", fullmatch=True).filter(
    lambda k: not any(w in k for w in _passport._FORBIDDEN_EXT_WORDS)
)
_ext_value = st.text(max_size=MAX_EXT_VALUE).filter(lambda v: not _passport._TOKEN_LIKE.match(v))


@st.composite
def passports(draw: st.DrawFn) -> Passport:
    issued = draw(st.floats(1e9, 4e9, allow_nan=False, allow_infinity=False))
    lifetime = draw(st.floats(0, 3600, allow_nan=False))
    auth = Authentication(
        credential=draw(st.sampled_from(CredentialKind)),
        issuer=draw(_text),
        method=draw(_text),
        assurance=draw(st.sampled_from(Assurance)),
        at=draw(st.floats(0, 4e9)),
    )
    user = draw(
        st.none()
        | st.builds(
            UserIdentity,
            subject=_text,
            account=st.none() | _text,
            tenant=st.none() | _text,
            roles=st.lists(_text, max_size=4).map(tuple),
            scopes=st.lists(_text, max_size=4).map(tuple),
        )
    )
    device = draw(
        st.none()
        | st.builds(DeviceIdentity, id=_text, type=_text, trust=st.sampled_from(TrustLevel))
    )
    return Passport(
        auth=auth,
        issued_at=issued,
        expires_at=issued + lifetime,
        txn=draw(_ascii_id),
        user=user,
        device=device,
        degraded=draw(st.booleans()),
        ext=draw(st.dictionaries(_ext_key, _ext_value, max_size=MAX_EXT_ENTRIES)),
    )


_HS = Keyring.hmac({"k1": SECRET}, active="k1")
_ED = Keyring.ed25519(private_keys={"e1": bytes(range(32))}, active="e1")


@settings(max_examples=300, deadline=None)
@given(passports(), st.booleans())
def test_property_any_valid_passport_round_trips(passport: Passport, ed: bool) -> None:
    c = PassportCodec(
        _ED if ed else _HS, max_size=65536, clock=FakeClock(wall_start=passport.issued_at)
    )
    assert c.verify(c.mint(passport)) == passport


@settings(max_examples=300, deadline=None)
@given(passports(), st.data())
def test_property_any_single_bit_flip_is_rejected(passport: Passport, data: st.DataObject) -> None:
    c = PassportCodec(_HS, max_size=65536, clock=FakeClock(wall_start=passport.issued_at))
    raw = unb64(c.mint(passport))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(Unauthenticated):
        c.verify(b64(bytes(raw)))


# -- golden vectors -------------------------------------------------------------------------


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / "passport_v1.json").read_text())
    return data


def _verifier_keyring(vectors: dict[str, Any]) -> Keyring:
    def raw(s: str) -> bytes:
        return bytes(unb64(s))

    keys = []
    for kid, k in vectors["keys"].items():
        if k["alg"] == "HS256":
            keys.append(PassportKey.hmac(kid, raw(k["secret"])))
        else:  # verifiers get the public key only
            keys.append(
                PassportKey.ed25519(kid, Ed25519PublicKey.from_public_bytes(raw(k["public_key"])))
            )
    return Keyring(keys)


_CASES = _vectors()["cases"]


@pytest.mark.parametrize("case", _CASES, ids=[c["name"] for c in _CASES])
def test_golden_vector(case: dict[str, Any]) -> None:
    vectors = _vectors()
    codec = PassportCodec(
        _verifier_keyring(vectors), clock=FakeClock(wall_start=case["now"]), **vectors["verifier"]
    )
    expect = case["expect"]
    if "error" in expect:
        assert reason(codec, case["token"]) == expect["error"]
    else:
        assert codec.verify(case["token"]) == msgspec.convert(expect["passport"], Passport)


def test_golden_vectors_cover_every_reason() -> None:
    assert {c["expect"].get("error") for c in _CASES} - {None} == REASONS


def test_golden_vectors_regenerate_identically() -> None:
    assert _generator().render() == (VECTORS / "passport_v1.json").read_text()


def test_minting_reproduces_the_valid_vectors_byte_for_byte() -> None:
    # The generator is an independent implementation of the format: minting the same passport
    # with the same key must give the very same token (Ed25519 signatures are deterministic).
    vectors = _vectors()
    signers = {}
    for kid, k in vectors["keys"].items():
        if k["alg"] == "HS256":
            signers[kid] = Keyring.hmac({kid: bytes(unb64(k["secret"]))}, active=kid)
        else:
            signers[kid] = Keyring.ed25519(
                private_keys={kid: bytes(unb64(k["private_key"]))}, active=kid
            )
    minted = 0
    for case in _CASES:
        if "passport" not in case["expect"]:
            continue
        passport = msgspec.convert(case["expect"]["passport"], Passport)
        kid = inspect_token(case["token"]).kid
        assert PassportCodec(signers[kid]).mint(passport) == case["token"], case["name"]
        minted += 1
    assert minted >= 4
