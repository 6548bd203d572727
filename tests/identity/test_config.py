"""``[identity]``: validation naming the key, resolvers built in order, keys or the dev key."""

from __future__ import annotations

import base64
import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from garrison.core import ConfigError, parse_config
from garrison.identity._config import (
    RESOLVER_ORDER,
    IdentityConfig,
    build_resolvers,
    is_production,
)
from garrison.identity._edge import IdentityEdge

B64 = base64.urlsafe_b64encode(b"s" * 32).decode()
ENV = {
    "PK": B64,
    "SESSION_KEY": B64,
    "PEPPER": "p" * 40,
    "AS_SECRET": "secret",
    "DEVICE_KEY": "d" * 40,
    "JWT_SECRET": "j" * 40,
}

ALL: dict[str, Any] = {
    "passport": {"keys": {"p1": "env:PK"}, "active": "p1"},
    "session": {
        "keys": {"k1": "env:SESSION_KEY"},
        "active_key": "k1",
        "store": {"backend": "memory"},
    },
    "api_keys": {"pepper": "env:PEPPER", "store": {"backend": "memory"}},
    "introspection": {
        "endpoint": "http://127.0.0.1:9/introspect",
        "client_id": "edge",
        "client_secret": "env:AS_SECRET",
    },
    "device_tokens": {"keys": {"d1": "env:DEVICE_KEY"}, "active_key": "d1"},
    "jwt": {
        "issuers": {
            "corp": {
                "issuer": "https://corp.example",
                "audiences": ["api"],
                "algorithms": ["HS256"],
                "hmac_secret": "env:JWT_SECRET",
            }
        }
    },
}


def load(identity: dict[str, Any], tmp_path: Path, env: dict[str, str] | None = None) -> Any:
    config = parse_config({"identity": identity}, root=str(tmp_path), env=env or {})
    return config, IdentityConfig.from_config(config)


def test_empty_section(tmp_path: Path) -> None:
    _, ident = load({}, tmp_path)
    assert ident.resolver_sections == ()
    assert ident.allow_dev_key
    assert ident.passport.ttl == 60.0


async def test_every_resolver_is_built_in_a_fixed_order(tmp_path: Path) -> None:
    # the table's order in the file does not matter
    config, ident = load(dict(reversed(list(ALL.items()))), tmp_path)
    assert ident.resolver_sections == tuple(s for s in RESOLVER_ORDER if s != "client_certs")
    assert ident.resolver_names() == (
        "device_token",
        "api_key",
        "jwt",
        "introspection",
        "session",
    )
    resolvers = build_resolvers(ident, config, env=ENV)
    assert [r.name for r in resolvers] == list(ident.resolver_names())
    await IdentityEdge(resolvers, ident.codec(config, env=ENV)).aclose()


async def test_client_certificates_come_first(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device ca")])
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    config, ident = load(
        {**ALL, "client_certs": {"ca_certs": ["ca.pem"], "trusted_proxy": True}}, tmp_path
    )
    assert ident.resolver_sections == RESOLVER_ORDER
    resolvers = build_resolvers(ident, config, env=ENV)
    assert resolvers[0].name == "client_cert"
    await IdentityEdge(resolvers, ident.codec(config, env=ENV)).aclose()


@pytest.mark.parametrize(
    ("identity", "key", "text"),
    [
        ({"sesion": {}}, "identity.sesion", "unknown key; expected one of"),
        ({"allow_dev_key": "yes"}, "identity.allow_dev_key", "true or false"),
        ({"passport": {"ttl": 0}}, "identity.passport.ttl", "> 0"),
        ({"passport": {"active": "x"}}, "identity.passport", "not in keys"),
        ({"session": {"keys": {}, "active_key": "k"}}, "identity.session.keys", "at least one"),
        (
            {"session": {"keys": {"k1": "env:X"}, "active_key": "k2"}},
            "identity.session.active_key",
            "not one of the keys",
        ),
        (
            {"api_keys": {"pepper": "env:P", "prefix": "Bad"}},
            "identity.api_keys.prefix",
            "lowercase",
        ),
        (
            {"device_tokens": {"keys": {"d": "env:D"}}},
            "identity.device_tokens.active_key",
            "missing",
        ),
        (
            {"introspection": {"endpoint": "ftp://x", "client_id": "c", "client_secret": "env:S"}},
            "identity.introspection.endpoint",
            "https",
        ),
        ({"jwt": {"issuers": {}}}, "identity.jwt.issuers", "no issuer"),
        (
            {"jwt": {"issuers": {"corp": {"issuer": "https://c", "audiences": []}}}},
            "identity.jwt.issuers.corp.audiences",
            "",
        ),
        ({"cache": {"max_entries": 0}}, "identity.cache.max_entries", ">= 1"),
    ],
)
def test_bad_configuration_names_the_key(
    identity: dict[str, Any], key: str, text: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        load(identity, tmp_path)
    assert info.value.key == key, str(info.value)
    assert text in str(info.value)


def test_missing_secrets_are_named_when_resolvers_are_built(tmp_path: Path) -> None:
    config, ident = load({"device_tokens": ALL["device_tokens"]}, tmp_path)
    with pytest.raises(ConfigError) as info:
        build_resolvers(ident, config, env={})
    assert info.value.key == "identity.device_tokens.keys.d1"


def test_resolver_names_must_be_unique(tmp_path: Path) -> None:
    config, ident = load(
        {
            "device_tokens": {**ALL["device_tokens"], "name": "creds"},
            "api_keys": {**ALL["api_keys"], "name": "creds"},
        },
        tmp_path,
    )
    with pytest.raises(ConfigError) as info:
        build_resolvers(ident, config, env=ENV)
    assert info.value.key == "identity.api_keys.name"


def test_configured_passport_keys(tmp_path: Path) -> None:
    config, ident = load({"passport": ALL["passport"]}, tmp_path)
    codec = ident.codec(config, env=ENV)
    assert codec.keyring.active_kid == "p1"
    assert not (tmp_path / ".garrison" / "passport.key").exists()
    with pytest.raises(ConfigError) as info:
        ident.keyring(config, env={})
    assert info.value.key == "identity.passport.keys.p1"


def test_the_development_key_outside_production(tmp_path: Path) -> None:
    config, ident = load({}, tmp_path)
    ring = ident.keyring(config, env={})
    assert ring.active_kid == "dev"
    assert (tmp_path / ".garrison" / "passport.key").exists()
    again = ident.keyring(config, env={})  # every process of the app gets the same key
    assert again.active is not None
    assert ring.active is not None
    assert again.active.material == ring.active.material


@pytest.mark.parametrize(
    ("identity", "env"),
    [
        ({}, {"GARRISON_ENV": "production"}),
        ({}, {"GARRISON_ENV": "Prod"}),
        ({"allow_dev_key": False}, {}),
    ],
)
def test_production_refuses_to_start_without_keys(
    identity: dict[str, Any], env: dict[str, str], tmp_path: Path
) -> None:
    config, ident = load(identity, tmp_path)
    with pytest.raises(ConfigError) as info:
        ident.keyring(config, env=env)
    assert info.value.key == "identity.passport.keys"
    assert "production" in str(info.value)
    assert not (tmp_path / ".garrison").exists()


def test_is_production() -> None:
    assert is_production({"GARRISON_ENV": " production "})
    assert not is_production({"GARRISON_ENV": "dev"})
    assert not is_production({})


def test_environment_overrides_are_blamed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load({}, tmp_path, env={"GARRISON_IDENTITY__PASSPORT__TTL": "-5"})
    assert info.value.key == "identity.passport.ttl"
    assert "GARRISON_IDENTITY__PASSPORT__TTL" in str(info.value)
