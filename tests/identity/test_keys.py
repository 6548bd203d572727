"""Passport keys: validation, the keyring and rotation, configuration, the dev default."""

from __future__ import annotations

import base64
import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from garrison.core import ConfigError, FakeClock, Unauthenticated, convert_section, parse_config
from garrison.identity._keys import Keyring, KeysConfig, PassportKey
from garrison.identity._model import Authentication, CredentialKind, Passport
from garrison.identity._passport import PassportCodec

SECRET = b"a" * 32
SECRET2 = b"b" * 32


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def passport(now: float) -> Passport:
    auth = Authentication(credential=CredentialKind.API_KEY)
    return Passport(auth=auth, issued_at=now, expires_at=now + 60, txn="t")


# -- PassportKey ----------------------------------------------------------------------------


@pytest.mark.parametrize("kid", ["", "x" * 17, "naïve", "a b", "../etc", "k;drop", "k\x00"])
def test_bad_kids_are_refused(kid: str) -> None:
    with pytest.raises(ValueError, match="key id"):
        PassportKey.hmac(kid, SECRET)


def test_good_kids() -> None:
    for kid in ("k", "x" * 16, "2025-06.a_b", "K9"):
        assert PassportKey.hmac(kid, SECRET).kid == kid


def test_hmac_secret_needs_32_bytes() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes, got 31"):
        PassportKey.hmac("k", b"x" * 31)


def test_material_must_fit_the_algorithm() -> None:
    with pytest.raises(TypeError):
        PassportKey("k", "HS256", Ed25519PrivateKey.generate())
    with pytest.raises(TypeError):
        PassportKey("k", "EdDSA", SECRET)
    with pytest.raises(ValueError, match="unknown algorithm"):
        PassportKey("k", "RS256", SECRET)  # type: ignore[arg-type]


def test_repr_never_shows_the_secret() -> None:
    key = PassportKey.hmac("k", b"supersecretsupersecretsupersecret")
    assert "supersecret" not in repr(key)
    assert "supersecret" not in repr(Keyring([key]))


def test_sign_and_verify() -> None:
    hs = PassportKey.hmac("h", SECRET)
    assert (hs.can_sign, hs.tag_size, hs.alg_id) == (True, 32, 1)
    assert hs.verify(b"data", hs.sign(b"data"))
    assert not hs.verify(b"datb", hs.sign(b"data"))
    ed = PassportKey.ed25519("e", Ed25519PrivateKey.generate())
    assert (ed.can_sign, ed.tag_size, ed.alg_id) == (True, 64, 2)
    pub = ed.public()
    assert not pub.can_sign
    assert pub.verify(b"data", ed.sign(b"data"))
    assert not pub.verify(b"data", bytes(64))
    with pytest.raises(ValueError, match="verify-only"):
        pub.sign(b"data")
    assert hs.public() is hs  # a shared secret has no public half


# -- Keyring --------------------------------------------------------------------------------


def test_keyring_lookup() -> None:
    kr = Keyring.hmac({"k1": SECRET, "k2": SECRET2}, active="k2")
    assert kr.kids == ("k1", "k2")
    assert kr.active_kid == "k2"
    assert kr.can_sign
    assert kr.get("k1") is kr.get(b"k1") is kr["k1"]
    assert kr.get("nope") is None
    assert "k1" in kr
    assert "nope" not in kr
    assert len(kr) == 2
    assert [k.kid for k in kr] == ["k1", "k2"]
    with pytest.raises(KeyError):
        kr["nope"]


def test_keyring_without_active_key_cannot_sign() -> None:
    assert not Keyring.hmac({"k1": SECRET}).can_sign


def test_keyring_refuses_duplicates_and_unknown_active() -> None:
    with pytest.raises(ValueError, match="already"):
        Keyring([PassportKey.hmac("k", SECRET), PassportKey.hmac("k", SECRET2)])
    with pytest.raises(ValueError, match="not in the keyring"):
        Keyring.hmac({"k1": SECRET}, active="k2")


def test_ed25519_keyring_from_objects_and_raw_bytes() -> None:
    priv = Ed25519PrivateKey.generate()
    raw_pub = priv.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    kr = Keyring.ed25519(private_keys={"a": priv, "b": bytes(32)}, active="a")
    assert kr.can_sign
    verify_only = Keyring.ed25519(public_keys={"a": raw_pub})
    assert not verify_only.can_sign
    with pytest.raises(ValueError, match="verify-only"):
        verify_only.activate("a")
    with pytest.raises(ValueError, match="32 bytes"):
        Keyring.ed25519(public_keys={"a": b"short"})


def test_verify_only_copy() -> None:
    kr = Keyring.ed25519(private_keys={"a": bytes(32)}, active="a")
    copy = kr.verify_only()
    assert not copy.can_sign
    assert isinstance(copy["a"].material, Ed25519PublicKey)
    assert kr.can_sign  # the original is untouched


def test_rotation_with_overlap() -> None:
    """The three steps of docs/identity.md, with an edge that mints and a service that verifies."""
    clock = FakeClock(wall_start=1_700_000_000.0)
    edge_keys = Keyring.hmac({"old": SECRET}, active="old")
    svc_keys = Keyring.hmac({"old": SECRET})
    edge = PassportCodec(edge_keys, clock=clock)
    svc = PassportCodec(svc_keys, clock=clock)
    before = edge.mint(passport(clock.time()))

    # 1. the new key, verify-only, everywhere first
    for kr in (edge_keys, svc_keys):
        kr.add(PassportKey.hmac("new", SECRET2))
    assert edge_keys.active_kid == "old"
    # 2. the edge signs with it; services already know it; old passports still verify
    edge_keys.activate("new")
    during = edge.mint(passport(clock.time()))
    assert svc.verify(during).txn == "t"
    assert svc.verify(before).txn == "t"
    # 3. after the longest lifetime, the old key is retired
    with pytest.raises(ValueError, match="active"):
        edge_keys.retire("new")
    for kr in (edge_keys, svc_keys):
        kr.retire("old")
    with pytest.raises(Unauthenticated) as info:
        svc.verify(before)
    assert info.value.reason == "unknown_key"
    assert svc.verify(during).txn == "t"
    with pytest.raises(ValueError, match="not in the keyring"):
        svc_keys.retire("old")


# -- configuration --------------------------------------------------------------------------


def section(raw: dict[str, Any]) -> KeysConfig:
    return convert_section(raw, KeysConfig, key="identity.passport")


def test_config_defaults() -> None:
    cfg = section({})
    assert (cfg.alg, cfg.active, cfg.keys, cfg.ttl, cfg.leeway, cfg.max_size) == (
        "HS256", None, {}, 60.0, 2.0, 4096,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "key", "match"),
    [
        ({"ttl": 0}, "identity.passport.ttl", "Expected"),
        ({"leeway": 60}, "identity.passport.leeway", "Expected"),
        ({"max_size": 10}, "identity.passport.max_size", "Expected"),
        ({"alg": "RS256"}, "identity.passport.alg", "HS256"),
        ({"active": "k9", "keys": {"k1": "env:X"}}, "identity.passport", "not in keys"),
        ({"public_keys": {"k1": "x"}}, "identity.passport", "'EdDSA' only"),
        ({"unknown": 1}, "identity.passport.unknown", "unknown key"),
    ],
)
def test_config_errors_name_the_key(raw: dict[str, Any], key: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        section(raw)
    assert info.value.key == key


def test_config_errors_name_the_environment_variable() -> None:
    data: dict[str, Any] = {"identity": {"passport": {}}}
    cfg = parse_config(data, env={"GARRISON_IDENTITY__PASSPORT__TTL": "0"})
    with pytest.raises(ConfigError, match="GARRISON_IDENTITY__PASSPORT__TTL"):
        convert_section(cfg.identity["passport"], KeysConfig, key="identity.passport", config=cfg)


def test_from_config_env_file_and_literal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "k2.key").write_text(b64(SECRET2) + "\n")
    os.chmod(tmp_path / "k2.key", 0o600)
    cfg = section(
        {
            "active": "k1",
            "keys": {"k1": "env:PK1", "k2": "file:k2.key", "k3": b64(b"c" * 40)},
        }
    )
    with caplog.at_level(logging.WARNING, logger="garrison.identity"):
        kr = Keyring.from_config(cfg, {"PK1": b64(SECRET)}, root=tmp_path)
    assert kr.active_kid == "k1"
    assert kr["k1"].material == SECRET
    assert kr["k2"].material == SECRET2
    assert kr["k3"].material == b"c" * 40
    assert "development" in caplog.text  # the literal is flagged as dev-only
    assert b64(b"c" * 40) not in caplog.text


def test_from_config_accepts_standard_base64_too() -> None:
    secret = bytes(range(200, 232))  # encodes with '+' and '/' in standard base64
    std = base64.b64encode(secret).decode()
    kr = Keyring.from_config(section({"keys": {"k": "env:K"}}), {"K": std})
    assert kr["k"].material == secret


@pytest.mark.parametrize(
    ("spec", "env", "match"),
    [
        ("env:MISSING", {}, "'MISSING' is not set"),
        ("env:", {}, "empty variable"),
        ("env:SHORT", {"SHORT": b64(b"x" * 16)}, "at least 32 bytes"),
        ("env:BAD", {"BAD": "not base64 !!"}, "base64"),
        ("file:does-not-exist", {}, "does-not-exist"),
    ],
)
def test_from_config_errors_name_the_key(
    spec: str, env: dict[str, str], match: str, tmp_path: Path
) -> None:
    cfg = section({"keys": {"k1": spec}})
    with pytest.raises(ConfigError, match=match) as info:
        Keyring.from_config(cfg, env, root=tmp_path, source="garrison.toml")
    assert info.value.key == "identity.passport.keys.k1"
    assert "garrison.toml" in str(info.value)


def test_from_config_refuses_a_bad_key_id() -> None:
    with pytest.raises(ConfigError, match="key id") as info:
        Keyring.from_config(section({"keys": {"bad kid!": "env:K"}}), {"K": b64(SECRET)})
    assert info.value.key == "identity.passport.keys.bad kid!"


def test_from_config_without_keys_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no passport keys") as info:
        Keyring.from_config(section({}), {})
    assert info.value.key == "identity.passport.keys"


def test_from_config_warns_about_a_key_file_others_can_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "k.key"
    path.write_text(b64(SECRET))
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="garrison.identity"):
        Keyring.from_config(section({"keys": {"k": f"file:{path}"}}), {})
    assert "readable by others" in caplog.text


def test_from_config_eddsa_pem_and_raw(tmp_path: Path) -> None:
    priv = Ed25519PrivateKey.generate()
    pem = priv.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "signer.pem").write_bytes(pem)
    os.chmod(tmp_path / "signer.pem", 0o600)
    pub_pem = priv.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    raw_pub = priv.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    signer = Keyring.from_config(
        section({"alg": "EdDSA", "active": "e1", "keys": {"e1": "file:signer.pem"}}),
        {},
        root=tmp_path,
    )
    assert signer.can_sign
    for spec in ("env:PUB", b64(raw_pub)):
        verifier = Keyring.from_config(
            section({"alg": "EdDSA", "public_keys": {"e1": spec}}), {"PUB": pub_pem.decode()}
        )
        assert not verifier.can_sign
        clock = FakeClock()
        token = PassportCodec(signer, clock=clock).mint(passport(clock.time()))
        assert PassportCodec(verifier, clock=clock).verify(token).txn == "t"


def test_from_config_eddsa_refuses_a_public_pem_as_private(tmp_path: Path) -> None:
    pub_pem = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError) as info:
        Keyring.from_config(
            section({"alg": "EdDSA", "keys": {"e1": "env:K"}}), {"K": pub_pem.decode()}
        )
    assert info.value.key == "identity.passport.keys.e1"


def test_codec_from_config() -> None:
    cfg = section({"ttl": 30, "leeway": 1, "max_size": 1024, "keys": {"k": "env:K"}, "active": "k"})
    codec = PassportCodec.from_config(cfg, Keyring.from_config(cfg, {"K": b64(SECRET)}))
    assert (codec.ttl, codec.leeway, codec.max_size, codec.keyring.active_kid) == (30, 1, 1024, "k")


# -- the development default ----------------------------------------------------------------


def test_dev_default_creates_once_and_reuses(tmp_path: Path) -> None:
    first = Keyring.dev_default(tmp_path)
    path = tmp_path / ".garrison" / "passport.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.can_sign
    second = Keyring.dev_default(tmp_path)
    assert first["dev"].material == second["dev"].material
    secret = first["dev"].material
    assert isinstance(secret, bytes)
    assert len(secret) == 32
    clock = FakeClock()
    token = PassportCodec(first, clock=clock).mint(passport(clock.time()))
    assert PassportCodec(second, clock=clock).verify(token).txn == "t"
    assert [p.name for p in path.parent.iterdir()] == ["passport.key"]  # no temp files left


def test_dev_default_is_race_free(tmp_path: Path) -> None:
    secrets: list[bytes] = []

    def load() -> None:
        secret = Keyring.dev_default(tmp_path)["dev"].material
        assert isinstance(secret, bytes)
        secrets.append(secret)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(secrets) == 8
    assert len(set(secrets)) == 1


def test_dev_default_refuses_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / ".garrison" / "passport.key"
    path.parent.mkdir()
    path.write_text("c2hvcnQ")  # "short"
    with pytest.raises(ConfigError, match="delete the file"):
        Keyring.dev_default(tmp_path)
    path.write_text("!!! not base64")
    with pytest.raises(ConfigError, match="development passport key"):
        Keyring.dev_default(tmp_path)
