"""Device credentials: HMAC device tokens and forwarded client certificates (made here)."""

from __future__ import annotations

import base64
import datetime as dt
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.core import ConfigError, FakeClock, Unauthenticated, parse_config
from garrison.identity._device import (
    ClientCertConfig,
    ClientCertResolver,
    DeviceTokenConfig,
    DeviceTokenResolver,
)
from garrison.identity._model import (
    Assurance,
    CredentialKind,
    RequestCredentials,
    Resolution,
    TrustLevel,
)

K1, K2 = os.urandom(32), os.urandom(32)
NOW = dt.datetime.fromtimestamp(FakeClock().time(), dt.UTC)


# ==============================================================================================
# device tokens
# ==============================================================================================


def tokens(
    clock: FakeClock | None = None, keys: dict[str, bytes] | None = None, **kw: Any
) -> DeviceTokenResolver:
    base: dict[str, Any] = {"keys": {"k1": "env:K1", "k2": "env:K2"}, "active_key": "k1"}
    base.update(kw)
    return DeviceTokenResolver(
        DeviceTokenConfig(**base),
        keys=keys if keys is not None else {"k1": K1, "k2": K2},
        clock=clock or FakeClock(),
    )


async def token_resolve(r: DeviceTokenResolver, token: str, device: str | None) -> Resolution:
    headers = {"x-device-token": token}
    if device is not None:
        headers["x-device-id"] = device
    cred = r.find(RequestCredentials(headers=headers))
    assert cred is not None
    return await r.resolve(cred)


async def token_reason(r: DeviceTokenResolver, token: str, device: str | None = "bat-1") -> str:
    with pytest.raises(Unauthenticated) as info:
        await token_resolve(r, token, device)
    return info.value.reason


async def test_token_round_trip() -> None:
    clock = FakeClock()
    r = tokens(clock, device_type="battery")
    tok = r.issue("bat-1", lifetime=3600)
    device_id, expiry, kid, tag = tok.split(".")
    assert (device_id, int(expiry), kid, len(tag)) == ("bat-1", int(clock.time()) + 3600, "k1", 43)
    res = await token_resolve(r, tok, "bat-1")
    assert res.device is not None
    assert (res.device.id, res.device.type, res.device.trust) == (
        "bat-1",
        "battery",
        TrustLevel.REGISTERED,
    )
    assert res.user is None
    assert res.auth.credential is CredentialKind.DEVICE_TOKEN
    assert res.auth.assurance is Assurance.AAL1
    assert res.expires_at == int(clock.time()) + 3600


def test_token_find() -> None:
    r = tokens()
    assert r.find(RequestCredentials(headers={})) is None
    cred = r.find(RequestCredentials(headers={"x-device-token": " t ", "x-device-id": "d"}))
    assert cred is not None
    assert (cred.kind, cred.value, cred.device_id) == (CredentialKind.DEVICE_TOKEN, "t", "d")


async def test_token_bound_to_its_device() -> None:
    r = tokens()
    tok = r.issue("bat-1")
    assert await token_reason(r, tok, None) == "device_missing"
    assert await token_reason(r, tok, "bat-2") == "device_mismatch"
    assert await token_reason(r, tok, "bat-1 ") == "device_mismatch"


async def test_token_expiry_and_lifetime_cap() -> None:
    clock = FakeClock()
    r = tokens(clock, max_lifetime=100.0)
    tok = r.issue("bat-1")
    clock.advance(99)
    await token_resolve(r, tok, "bat-1")
    clock.advance(1)
    assert await token_reason(r, tok) == "token_expired"
    # a token minted (with the same key) for longer than this edge allows is refused
    generous = tokens(clock, max_lifetime=10_000.0)
    assert await token_reason(r, generous.issue("bat-1")) == "expiry_too_far"
    with pytest.raises(ValueError, match="lifetime"):
        r.issue("bat-1", lifetime=101)
    with pytest.raises(ValueError, match="device id"):
        r.issue("bat.1")


async def test_token_tampering() -> None:
    r = tokens()
    tok = r.issue("bat-1")
    device_id, expiry, kid, tag = tok.split(".")
    assert await token_reason(r, f"bat-2.{expiry}.{kid}.{tag}", "bat-2") == "bad_signature"
    assert await token_reason(r, f"{device_id}.{int(expiry) + 1}.{kid}.{tag}") == "bad_signature"
    assert await token_reason(r, f"{device_id}.{expiry}.k2.{tag}") == "bad_signature"
    assert await token_reason(r, f"{device_id}.{expiry}.k9.{tag}") == "unknown_key"
    other = tokens(keys={"k1": os.urandom(32), "k2": K2})
    assert await token_reason(other, tok) == "bad_signature"


@settings(max_examples=200, deadline=None)
@given(data=st.data())
async def test_any_token_bit_flip_is_rejected(data: st.DataObject) -> None:
    r = tokens()
    tok = r.issue("bat-1")
    raw = bytearray(tok.encode())
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= 1 << data.draw(st.integers(0, 7))
    try:
        flipped = raw.decode()
    except UnicodeDecodeError:
        return
    with pytest.raises(Unauthenticated):
        await token_resolve(r, flipped, "bat-1")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b.c",
        "a.b.c.d.e",
        "bat-1.notanumber.k1." + "A" * 43,
        "bat-1.1234567890123.k1." + "A" * 43,
        "bat-1.1700000000.k1." + "A" * 42,
        "bat-1.1700000000.k1." + "A" * 42 + "=",
        ".1700000000.k1." + "A" * 43,
        "bat/1.1700000000.k1." + "A" * 43,
        "x" * 300,
    ],
)
async def test_malformed_tokens(token: str) -> None:
    r = tokens()
    cred = r.find(RequestCredentials(headers={"x-device-token": "x", "x-device-id": "bat-1"}))
    assert cred is not None
    with pytest.raises(Unauthenticated) as info:
        await r.resolve(msgspec.structs.replace(cred, value=token))
    assert info.value.reason == "malformed_device_token"


async def test_token_key_rotation() -> None:
    clock = FakeClock()
    old = tokens(clock)
    tok = old.issue("bat-1")
    rotated = tokens(clock, active_key="k2")
    assert rotated.issue("bat-1").split(".")[2] == "k2"
    await token_resolve(rotated, tok, "bat-1")  # old key still accepted during the overlap
    retired = tokens(clock, active_key="k2", retired_keys=["k1"], keys={"k2": K2})
    assert await token_reason(retired, tok) == "retired_key"


async def test_device_revocation() -> None:
    r = tokens(revoked_devices=["bat-9"])
    assert await token_reason(r, r.issue("bat-9"), "bat-9") == "device_revoked"
    tok = r.issue("bat-1")
    generation = r.generation
    await token_resolve(r, tok, "bat-1")
    r.revoke_device("bat-1")
    assert r.generation != generation  # a CachedResolver in front drops what it verified
    assert await token_reason(r, tok, "bat-1") == "device_revoked"


def test_token_from_config() -> None:
    env = {"A": "a" * 32, "B": "b" * 40}
    r = DeviceTokenResolver.from_config(
        {"keys": {"a": "env:A", "b": "env:B"}, "active_key": "b"}, env=env
    )
    assert r.issue("d1").split(".")[2] == "b"


@pytest.mark.parametrize(
    ("raw", "env", "key"),
    [
        ({"keys": {}, "active_key": "a"}, {}, "keys"),
        ({"keys": {"a b": "env:A"}, "active_key": "a b"}, {}, "keys.a b"),
        ({"keys": {"a": "env:A"}, "active_key": "b"}, {}, "active_key"),
        ({"keys": {"a": "env:A"}, "active_key": "a", "retired_keys": ["a"]}, {}, "active_key"),
        ({"keys": {"a": "env:A"}, "active_key": "a"}, {"A": "short"}, "keys.a"),
        ({"keys": {"a": "env:A"}, "active_key": "a"}, {}, "keys.a"),
        ({"keys": {"a": "env:A"}, "active_key": "a", "token_header": "X"}, {}, "token_header"),
        ({"keys": {"a": "env:A"}, "active_key": "a", "device_header": ""}, {}, "device_header"),
        ({"keys": {"a": "env:A"}, "active_key": "a", "max_lifetime": 0}, {}, "max_lifetime"),
        (
            {"keys": {"a": "env:A"}, "active_key": "a", "revoked_devices": ["a.b"]},
            {},
            "revoked_devices",
        ),
    ],
)
def test_token_config_errors_name_the_key(
    raw: dict[str, Any], env: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        DeviceTokenResolver.from_config(raw, env=env)
    assert info.value.key == f"identity.device_tokens.{key}"


# ==============================================================================================
# client certificates
# ==============================================================================================


@dataclass
class CA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def make_ca(name: str = "Fleet Device CA", *, days: int = 3650, start: int = -1) -> CA:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + dt.timedelta(days=start))
        .not_valid_after(NOW + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return CA(key, cert)


def make_leaf(
    ca: CA,
    *,
    cn: str | None = "bat-1",
    uris: list[str] | None = None,
    start: dt.timedelta = dt.timedelta(days=-1),
    end: dt.timedelta = dt.timedelta(days=30),
    is_ca: bool = False,
    eku: list[x509.ObjectIdentifier] | None = None,
    issuer: x509.Name | None = None,
    rsa_key: bool = False,
) -> x509.Certificate:
    key: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if rsa_key
        else ec.generate_private_key(ec.SECP256R1())
    )
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleet")]
    if cn is not None:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(issuer or ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + start)
        .not_valid_after(NOW + end)
    )
    if uris:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    if is_ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    b = b.add_extension(
        x509.ExtendedKeyUsage(eku if eku is not None else [ExtendedKeyUsageOID.CLIENT_AUTH]),
        critical=False,
    )
    return b.sign(ca.key, hashes.SHA256())


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def nginx(cert: x509.Certificate) -> str:
    """What nginx puts in ``$ssl_client_escaped_cert``: the URL-encoded PEM."""
    return urllib.parse.quote(pem(cert), safe="")


@pytest.fixture(scope="module")
def ca() -> CA:
    return make_ca()


def certs(
    ca: CA, clock: FakeClock | None = None, secret: bytes | None = None, **kw: Any
) -> ClientCertResolver:
    base: dict[str, Any] = {"ca_certs": ["ca.pem"], "trusted_proxy": True}
    base.update(kw)
    return ClientCertResolver(
        ClientCertConfig(**base),
        ca_certs=[ca.cert],
        proxy_secret=secret,
        clock=clock or FakeClock(),
    )


async def cert_resolve(
    r: ClientCertResolver, value: str, extra: dict[str, str] | None = None
) -> Resolution:
    headers = {"x-forwarded-client-cert": value, **(extra or {})}
    cred = r.find(RequestCredentials(headers=headers))
    assert cred is not None
    return await r.resolve(cred)


async def cert_reason(
    r: ClientCertResolver, value: str, extra: dict[str, str] | None = None
) -> str:
    with pytest.raises(Unauthenticated) as info:
        await cert_resolve(r, value, extra)
    return info.value.reason


async def test_certificate_round_trip(ca: CA) -> None:
    leaf = make_leaf(ca)
    r = certs(ca, device_type="charger")
    res = await cert_resolve(r, nginx(leaf))
    assert res.device is not None
    assert (res.device.id, res.device.type, res.device.trust) == (
        "bat-1",
        "charger",
        TrustLevel.ATTESTED,
    )
    assert res.auth.credential is CredentialKind.CLIENT_CERT
    assert res.auth.assurance is Assurance.AAL3
    assert res.auth.method == "mtls"
    assert res.auth.issuer == "CN=Fleet Device CA"
    assert res.expires_at == leaf.not_valid_after_utc.timestamp()
    assert res.user is None


async def test_certificate_cache(ca: CA) -> None:
    r = certs(ca)
    value = nginx(make_leaf(ca))
    await cert_resolve(r, value)
    await cert_resolve(r, value)
    assert (r.cache.stats.hits, r.cache.stats.misses) == (1, 1)


async def test_rsa_leaf_and_raw_pem(ca: CA) -> None:
    r = certs(ca)
    res = await cert_resolve(r, pem(make_leaf(ca, rsa_key=True)))
    assert res.device is not None


async def test_envoy_xfcc_uses_the_last_element(ca: CA) -> None:
    good = make_leaf(ca, cn="bat-7")
    forged = make_leaf(make_ca("Evil CA"), cn="bat-1")
    quoted = urllib.parse.quote(pem(good), safe="")
    value = (
        f'By=spiffe://edge;Hash=abc;Cert="{urllib.parse.quote(pem(forged), safe="")}";'
        f'Subject="CN=bat-1,O=x",'
        f'By=spiffe://edge;Hash=def;Subject="O=fleet,CN=bat-7";Cert="{quoted}";URI='
    )
    res = await cert_resolve(certs(ca), value)
    assert res.device is not None
    assert res.device.id == "bat-7"


@pytest.mark.parametrize(
    "value",
    [
        'By=x;Cert="unterminated',
        "By=x;Hash=abc,By=y;Cert=",
        'By=x;Cert="%2D%2D%2D%2D%2DBEGIN CERTIFICATE%2D%2D%2D%2D%2D%0Agarbage"',
    ],
)
async def test_bad_xfcc(ca: CA, value: str) -> None:
    assert await cert_reason(certs(ca), value) == "malformed_certificate"


async def test_untrusted_proxy(ca: CA) -> None:
    value = nginx(make_leaf(ca))
    assert await cert_reason(certs(ca, trusted_proxy=False), value) == "untrusted_proxy"


async def test_proxy_secret_header(ca: CA) -> None:
    secret = b"proxy-shared-secret-0123456789abcdef"
    r = certs(
        ca,
        secret=secret,
        proxy_secret_header="x-garrison-proxy",
        proxy_secret="env:PROXY",
    )
    value = nginx(make_leaf(ca))
    await cert_resolve(r, value, {"x-garrison-proxy": secret.decode()})
    # the same certificate, now cached, is still refused without the proxy's proof
    assert await cert_reason(r, value) == "untrusted_proxy"
    assert await cert_reason(r, value, {"x-garrison-proxy": "guess"}) == "untrusted_proxy"


def test_empty_header_is_no_credential(ca: CA) -> None:
    r = certs(ca)
    assert r.find(RequestCredentials(headers={"x-forwarded-client-cert": ""})) is None
    assert r.find(RequestCredentials(headers={})) is None


async def test_wrong_ca(ca: CA) -> None:
    r = certs(ca)
    other = make_ca("Other CA")
    assert await cert_reason(r, nginx(make_leaf(other))) == "unknown_issuer"
    # same issuer *name*, different key: the signature gives it away
    impostor = make_ca("Fleet Device CA")
    assert await cert_reason(r, nginx(make_leaf(impostor))) == "bad_certificate_signature"


async def test_validity_dates(ca: CA) -> None:
    r = certs(ca)
    early = make_leaf(ca, start=dt.timedelta(hours=1), end=dt.timedelta(days=2))
    assert await cert_reason(r, nginx(early)) == "certificate_not_yet_valid"
    late = make_leaf(ca, start=dt.timedelta(days=-10), end=dt.timedelta(seconds=-1))
    assert await cert_reason(r, nginx(late)) == "certificate_expired"


async def test_expiry_while_cached(ca: CA) -> None:
    clock = FakeClock()
    leaf = make_leaf(ca, end=dt.timedelta(seconds=100))
    r = certs(ca, clock)
    await cert_resolve(r, nginx(leaf))
    clock.advance(101)
    assert await cert_reason(r, nginx(leaf)) == "certificate_expired"


async def test_expired_ca() -> None:
    old = make_ca(days=-1, start=-100)
    leaf = make_leaf(old, start=dt.timedelta(days=-50), end=dt.timedelta(days=10))
    assert await cert_reason(certs(old), nginx(leaf)) == "issuer_expired"


async def test_leaf_constraints(ca: CA) -> None:
    r = certs(ca)
    assert await cert_reason(r, nginx(make_leaf(ca, is_ca=True))) == "not_a_leaf_certificate"
    server_only = make_leaf(ca, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    assert await cert_reason(r, nginx(server_only)) == "wrong_key_usage"


async def test_device_id_from_cn(ca: CA) -> None:
    r = certs(ca)
    assert await cert_reason(r, nginx(make_leaf(ca, cn=None))) == "no_device_id"
    assert await cert_reason(r, nginx(make_leaf(ca, cn="bad/id"))) == "bad_device_id"


async def test_device_id_from_san_uri(ca: CA) -> None:
    prefix = "spiffe://fleet.example/device/"
    r = certs(ca, device_id_from="san_uri", san_uri_prefix=prefix)
    leaf = make_leaf(ca, cn="ignored", uris=["https://fleet.example/x", prefix + "inv-42"])
    res = await cert_resolve(r, nginx(leaf))
    assert res.device is not None
    assert res.device.id == "inv-42"
    assert await cert_reason(r, nginx(make_leaf(ca))) == "no_device_id"
    two = make_leaf(ca, uris=[prefix + "a", prefix + "b"])
    assert await cert_reason(r, nginx(two)) == "no_device_id"


async def test_revoked_device_certificate(ca: CA) -> None:
    r = certs(ca, revoked_devices=["bat-9"])
    assert await cert_reason(r, nginx(make_leaf(ca, cn="bat-9"))) == "device_revoked"
    value = nginx(make_leaf(ca, cn="bat-1"))
    await cert_resolve(r, value)
    r.revoke_device("bat-1")
    assert await cert_reason(r, value) == "device_revoked"  # even though cached


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        urllib.parse.quote("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----"),
        "-----BEGIN CERTIFICATE-----\n"
        + base64.b64encode(b"\x30\x03\x02\x01\x01").decode()
        + "\n-----END CERTIFICATE-----\n",
        "%E9%FF-----BEGIN CERTIFICATE-----é",
        "A" * 20_000,
    ],
)
async def test_malformed_certificates(ca: CA, value: str) -> None:
    assert await cert_reason(certs(ca), value) == "malformed_certificate"


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=300))
async def test_arbitrary_headers_are_only_ever_unauthenticated(text: str) -> None:
    ca = make_ca()
    r = certs(ca)
    cred = r.find(RequestCredentials(headers={"x-forwarded-client-cert": "x"}))
    assert cred is not None
    with pytest.raises(Unauthenticated):
        await r.resolve(msgspec.structs.replace(cred, value=text))


# -- configuration ------------------------------------------------------------------------------


async def test_cert_from_config(tmp_path: Path, ca: CA) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.pem").write_text(pem(make_ca("Old CA").cert) + pem(ca.cert))
    app = parse_config({}, root=str(tmp_path))
    r = ClientCertResolver.from_config(
        {
            "ca_certs": ["pki/ca.pem"],
            "trusted_proxy": True,
            "proxy_secret_header": "x-proxy",
            "proxy_secret": "env:P",
        },
        app=app,
        env={"P": "letmein"},
        clock=FakeClock(),
    )
    await cert_resolve(r, nginx(make_leaf(ca)), {"x-proxy": "letmein"})


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"ca_certs": []}, "ca_certs"),
        ({"ca_certs": ["missing.pem"]}, "ca_certs.0"),
        ({"ca_certs": ["ca.pem"], "header": "X-Cert"}, "header"),
        ({"ca_certs": ["ca.pem"], "proxy_secret_header": "x-p"}, "proxy_secret"),
        ({"ca_certs": ["ca.pem"], "proxy_secret": "env:P"}, "proxy_secret"),
        (
            {"ca_certs": ["ca.pem"], "proxy_secret_header": "X P", "proxy_secret": "env:P"},
            "proxy_secret_header",
        ),
        ({"ca_certs": ["ca.pem"], "device_id_from": "san_uri"}, "san_uri_prefix"),
        ({"ca_certs": ["ca.pem"], "device_id_from": "ou"}, "device_id_from"),
        ({"ca_certs": ["ca.pem"], "max_header_bytes": 10}, "max_header_bytes"),
        ({"ca_certs": ["ca.pem"], "revoked_devices": ["a b"]}, "revoked_devices"),
    ],
)
def test_cert_config_errors_name_the_key(
    tmp_path: Path, ca: CA, raw: dict[str, Any], key: str
) -> None:
    (tmp_path / "ca.pem").write_text(pem(ca.cert))
    app = parse_config({}, root=str(tmp_path))
    with pytest.raises(ConfigError) as info:
        ClientCertResolver.from_config(raw, app=app, env={})
    assert info.value.key == f"identity.client_certs.{key}"


def test_cert_ca_file_with_garbage(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    app = parse_config({}, root=str(tmp_path))
    with pytest.raises(ConfigError, match="cannot load CA") as info:
        ClientCertResolver.from_config({"ca_certs": ["ca.pem"]}, app=app)
    assert info.value.key == "identity.client_certs.ca_certs.0"
