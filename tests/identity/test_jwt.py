"""The JWT resolver: finding bearer tokens, claims checks, mapping to a Resolution, config."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from garrison.core import (
    ConfigError,
    FakeClock,
    ServiceUnavailable,
    Unauthenticated,
    parse_config,
)
from garrison.identity import (
    Assurance,
    Credential,
    CredentialKind,
    RequestCredentials,
    Resolver,
    TrustLevel,
)
from garrison.identity._jws import PrivateKey, b64url_encode, sign_compact
from garrison.identity._jwt import JwtIssuerConfig, JwtResolver

NOW = 1_700_000_000.0
ISS_A = "https://a.example/"
ISS_B = "https://b.example"
RSA_A = rsa.generate_private_key(65537, 2048)
EC_A = ec.generate_private_key(ec.SECP256R1())
ED_B = ed25519.Ed25519PrivateKey.generate()
SECRET = "x" * 48


def _uint(n: int) -> str:
    return b64url_encode(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def jwks_a() -> dict[str, Any]:
    r = RSA_A.public_key().public_numbers()
    e = EC_A.public_key().public_numbers()
    return {
        "keys": [
            {"kty": "RSA", "kid": "a-rsa", "alg": "RS256", "n": _uint(r.n), "e": _uint(r.e)},
            {
                "kty": "EC",
                "kid": "a-ec",
                "crv": "P-256",
                "x": b64url_encode(e.x.to_bytes(32, "big")),
                "y": b64url_encode(e.y.to_bytes(32, "big")),
            },
        ]
    }


def jwks_b() -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization

    raw = ED_B.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "b-ed", "x": b64url_encode(raw)}]}


def section(tmp_path: Path, **a: Any) -> dict[str, Any]:
    (tmp_path / "a.json").write_text(json.dumps(jwks_a()))
    (tmp_path / "b.json").write_text(json.dumps(jwks_b()))
    return {
        "issuers": {
            "a": {
                "issuer": ISS_A,
                "audiences": ["api", "other-api"],
                "algorithms": ["RS256", "ES256"],
                "jwks_file": "a.json",
                "leeway": 30,
                "claims": {"tenant": "tid", "account": "acct", "device_id": "did"},
                "acr_levels": {"urn:aal3": 3},
                **a,
            },
            "b": {
                "issuer": ISS_B,
                "audiences": ["api"],
                "algorithms": ["EdDSA"],
                "jwks_file": "b.json",
            },
            "c": {
                "issuer": "hmac-issuer",
                "audiences": ["api"],
                "algorithms": ["HS256", "HS384"],
                "hmac_secret": "env:JWT_SECRET",
            },
        }
    }


def build(tmp_path: Path, clock: FakeClock | None = None, **a: Any) -> JwtResolver:
    cfg = parse_config({"identity": {"jwt": section(tmp_path, **a)}}, root=str(tmp_path))
    return JwtResolver.from_config(
        cfg.identity["jwt"],
        app=cfg,
        clock=clock or FakeClock(wall_start=NOW),
        env={"JWT_SECRET": SECRET},
    )


@pytest.fixture
async def resolver(tmp_path: Path) -> AsyncIterator[JwtResolver]:
    r = build(tmp_path)
    yield r
    await r.aclose()


def claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS_A,
        "sub": "user-1",
        "aud": "api",
        "exp": NOW + 600,
        "iat": NOW - 10,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def token(
    key: PrivateKey = RSA_A, alg: str = "RS256", kid: str | None = "a-rsa", **over: Any
) -> str:
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    return sign_compact(header, claims(**over), key)


def cred(value: str) -> Credential:
    return Credential(kind=CredentialKind.JWT, value=value, resolver="jwt")


async def refused(r: JwtResolver, tok: str) -> str:
    with pytest.raises(Unauthenticated) as exc:
        await r.resolve(cred(tok))
    return exc.value.reason


# -- find --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "found"),
    [
        ({"authorization": "Bearer a.b.c"}, "a.b.c"),
        ({"authorization": "bearer a.b.c"}, "a.b.c"),
        ({"authorization": "BEARER  a.b.c "}, "a.b.c"),
        ({"authorization": "Bearer opaque-token"}, None),  # for the introspection resolver
        ({"authorization": "Bearer a.b.c.d.e"}, None),  # a JWE
        ({"authorization": "Basic dXNlcjpwYXNz"}, None),
        ({"authorization": "Bearer"}, None),
        ({"authorization": ""}, None),
        ({"cookie": "session=a.b.c"}, None),
        ({}, None),
    ],
)
def test_find(tmp_path: Path, headers: dict[str, str], found: str | None) -> None:
    r = build(tmp_path)
    c = r.find(RequestCredentials(headers=headers))
    assert (c.value if c else None) == found
    if c:
        assert c.kind is CredentialKind.JWT
        assert c.resolver == "jwt"


def test_implements_the_resolver_protocol(tmp_path: Path) -> None:
    r: Resolver = build(tmp_path)
    assert r.name == "jwt"


# -- resolve -----------------------------------------------------------------------------------


async def test_resolves_and_maps_claims(resolver: JwtResolver) -> None:
    tok = token(
        tid="tenant-9",
        acct="acct-3",
        roles=["admin", "ops", "admin"],
        scope="read:sites write:devices",
        amr=["pwd", "otp"],
        auth_time=NOW - 100,
        did="battery-42",
    )
    c = resolver.find(RequestCredentials(headers={"authorization": f"Bearer {tok}"}))
    assert c is not None
    res = await resolver.resolve(c)
    assert res.user is not None
    assert res.user.subject == "user-1"
    assert res.user.tenant == "tenant-9"
    assert res.user.account == "acct-3"
    assert res.user.roles == ("admin", "ops")
    assert res.user.scopes == ("read:sites", "write:devices")
    assert res.device is not None
    assert (res.device.id, res.device.trust) == ("battery-42", TrustLevel.REGISTERED)
    assert res.auth.credential is CredentialKind.JWT
    assert res.auth.issuer == ISS_A
    assert res.auth.method == "pwd+otp"
    assert res.auth.assurance is Assurance.AAL2
    assert res.auth.at == NOW - 100
    assert res.expires_at == NOW + 600
    assert not res.degraded


async def test_scp_list_and_single_factor(resolver: JwtResolver) -> None:
    res = await resolver.resolve(cred(token(alg="ES256", key=EC_A, kid="a-ec", scp=["a", "b"])))
    assert res.user is not None
    assert res.user.scopes == ("a", "b")
    assert res.user.roles == ()
    assert res.device is None
    assert res.auth.assurance is Assurance.AAL1
    assert res.auth.method == ""
    assert res.auth.at == 0.0


@pytest.mark.parametrize(
    ("extra", "level"),
    [
        ({"acr": "urn:aal3"}, Assurance.AAL3),
        ({"acr": "urn:unknown"}, Assurance.AAL1),
        ({"acr": "urn:unknown", "amr": ["mfa"]}, Assurance.AAL2),
        ({"amr": ["pwd"]}, Assurance.AAL1),
        ({"amr": ["hwk", "pin"]}, Assurance.AAL2),
    ],
)
async def test_assurance(resolver: JwtResolver, extra: dict[str, Any], level: Assurance) -> None:
    res = await resolver.resolve(cred(token(**extra)))
    assert res.auth.assurance is level


async def test_several_issuers_each_with_its_own_keys(resolver: JwtResolver) -> None:
    tok_b = sign_compact({"alg": "EdDSA", "kid": "b-ed"}, claims(iss=ISS_B), ED_B)
    assert (await resolver.resolve(cred(tok_b))).auth.issuer == ISS_B
    hs = sign_compact({"alg": "HS384"}, claims(iss="hmac-issuer"), SECRET.encode())
    assert (await resolver.resolve(cred(hs))).auth.issuer == "hmac-issuer"
    # issuer B's key does not verify issuer A's tokens, and A's allow-list has no EdDSA
    forged = sign_compact({"alg": "EdDSA", "kid": "b-ed"}, claims(iss=ISS_A), ED_B)
    assert await refused(resolver, forged) == "alg_not_allowed"


@pytest.mark.parametrize(
    ("over", "ok"),
    [
        ({"exp": NOW - 29}, True),  # within the 30 s leeway
        ({"exp": NOW - 30}, False),
        ({"nbf": NOW + 30}, True),
        ({"nbf": NOW + 31}, False),
        ({"iat": NOW + 30}, True),
        ({"iat": NOW + 31}, False),
        ({"iat": None}, True),
        ({"exp": NOW + 10.5}, True),
    ],
)
async def test_time_claims_with_leeway(
    resolver: JwtResolver, over: dict[str, Any], ok: bool
) -> None:
    tok = token(**over)
    if ok:
        await resolver.resolve(cred(tok))
    else:
        assert await refused(resolver, tok) in {"expired", "not_yet_valid", "issued_in_future"}


async def test_the_clock_moves(tmp_path: Path) -> None:
    clock = FakeClock(wall_start=NOW)
    r = build(tmp_path, clock=clock)
    tok = token(exp=NOW + 60)
    await r.resolve(cred(tok))
    clock.advance(89)
    await r.resolve(cred(tok))
    clock.advance(1)
    assert await refused(r, tok) == "expired"
    await r.aclose()


async def test_audience_lists(resolver: JwtResolver) -> None:
    await resolver.resolve(cred(token(aud=["x", "other-api"])))
    assert await refused(resolver, token(aud=["x", "y"])) == "wrong_audience"


async def test_require_iat_and_token_types(tmp_path: Path) -> None:
    r = build(tmp_path, require_iat=True, token_types=["at+jwt"])
    at = sign_compact(
        {"alg": "RS256", "kid": "a-rsa", "typ": "application/at+JWT"}, claims(), RSA_A
    )
    await r.resolve(cred(at))
    no_iat = sign_compact(
        {"alg": "RS256", "kid": "a-rsa", "typ": "at+jwt"}, claims(iat=None), RSA_A
    )
    assert await refused(r, no_iat) == "missing_claim"
    assert await refused(r, token()) == "wrong_type"  # typ JWT: maybe an ID token
    await r.aclose()


async def test_verify_returns_claims(resolver: JwtResolver) -> None:
    v = await resolver.verify(token(custom={"k": 1}))
    assert v.claims["custom"] == {"k": 1}
    assert v.issuer.issuer == ISS_A
    assert v.header["kid"] == "a-rsa"


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"sub": None}, "missing_claim"),
        ({"sub": 12}, "bad_claim"),
        ({"sub": ""}, "bad_claim"),
        ({"sub": "a\nb"}, "bad_claim"),
        ({"sub": "x" * 257}, "bad_claim"),
        ({"tid": ["t"]}, "bad_claim"),
        ({"roles": "admin ops"}, None),
        ({"roles": [1]}, "bad_claim"),
        ({"roles": ["r"] * 257}, "bad_claim"),
        ({"scope": 5}, "bad_claim"),
        ({"amr": "pwd"}, None),
        ({"amr": [{}]}, "bad_claim"),
        ({"auth_time": "yesterday"}, "bad_claim"),
        ({"did": 7}, "bad_claim"),
    ],
)
async def test_claim_types(resolver: JwtResolver, over: dict[str, Any], reason: str | None) -> None:
    tok = token(**over)
    if reason is None:
        await resolver.resolve(cred(tok))
    else:
        assert await refused(resolver, tok) == reason


async def test_generation_changes_with_the_keys(resolver: JwtResolver) -> None:
    before = resolver.generation
    await resolver.resolve(cred(token()))
    assert resolver.generation == before + 1  # issuer A's set was loaded


async def test_a_jwks_url_issuer(tmp_path: Path) -> None:
    # the HTTP path itself is covered in test_jwks and test_jwt_attacks; here: the config wiring
    r = JwtResolver.from_config(
        {
            "issuers": {
                "x": {"issuer": "x", "audiences": ["api"], "jwks_url": "http://127.0.0.1:9/k"}
            }
        },
        clock=FakeClock(wall_start=NOW),
    )
    tok = sign_compact({"alg": "RS256", "kid": "a-rsa"}, claims(iss="x"), RSA_A)
    with pytest.raises(ServiceUnavailable, match="unavailable"):  # nothing listens on port 9
        await r.resolve(cred(tok))
    await r.aclose()


# -- configuration -----------------------------------------------------------------------------


def config_error(tmp_path: Path, env: dict[str, str] | None = None, **a: Any) -> ConfigError:
    cfg = parse_config({"identity": {"jwt": section(tmp_path, **a)}}, root=str(tmp_path))
    with pytest.raises(ConfigError) as exc:
        JwtResolver.from_config(
            cfg.identity["jwt"], app=cfg, env={"JWT_SECRET": SECRET} if env is None else env
        )
    return exc.value


@pytest.mark.parametrize(
    ("a", "key", "text"),
    [
        ({"leeway": 301}, "leeway", "<= 300"),
        ({"leeway": -1}, "leeway", ">= 0"),
        ({"audiences": []}, "audiences", "length >= 1"),
        ({"algorithms": []}, "algorithms", "length >= 1"),
        ({"algorithms": ["none"]}, "algorithms.0", "expected one of"),
        ({"algorithms": ["rs256"]}, "algorithms.0", "expected one of"),
        ({"algorithms": ["RS256", "HS256"]}, "algorithms", "needs hmac_secret"),
        ({"jwks_file": None, "jwks_url": "http://idp.example/jwks"}, "jwks_url", "https"),
        ({"jwks_url": "https://idp/jwks"}, "jwks_file", "exactly one"),
        ({"jwks_file": None}, "jwks_url", "exactly one"),
        ({"hmac_secret": "literal"}, "hmac_secret", "env:VARIABLE"),
        ({"min_refresh_interval": 100, "refresh_interval": 50}, "refresh_interval", ">="),
        ({"fetch_timeout": 0}, "fetch_timeout", "> 0"),
        ({"acr_levels": {"x": 4}}, "acr_levels.x", "<= 3"),
        ({"claims": {"subject": ""}}, "claims.subject", "length >= 1"),
        ({"claims": {"roles": 3}}, "claims.roles", "str"),
        ({"bogus": 1}, "bogus", "unknown key"),
        ({"issuer": ISS_B}, "issuer", "already configured"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, a: dict[str, Any], key: str, text: str) -> None:
    err = config_error(tmp_path, **a)
    assert err.key.startswith("identity.jwt.issuers.")
    assert err.key.endswith(key), err.key
    assert text in str(err)


def test_hmac_secret_comes_from_the_environment(tmp_path: Path) -> None:
    err = config_error(tmp_path, env={})
    assert err.key == "identity.jwt.issuers.c.hmac_secret"
    assert "'JWT_SECRET' is not set" in str(err)
    err = config_error(tmp_path, env={"JWT_SECRET": "short"})
    assert "at least 48" in str(err)  # HS384 is allowed: the secret must fit it


async def test_hmac_secret_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("f" * 40 + "\n")
    r = JwtResolver.from_config(
        {
            "issuers": {
                "c": {
                    "issuer": "c",
                    "audiences": ["api"],
                    "algorithms": ["HS256"],
                    "hmac_secret": f"file:{tmp_path / 'secret'}",
                }
            }
        },
        clock=FakeClock(wall_start=NOW),
    )
    tok = sign_compact({"alg": "HS256"}, claims(iss="c"), b"f" * 40)
    assert (await r.resolve(cred(tok))).auth.issuer == "c"
    await r.aclose()


def test_hmac_issuers_take_only_hs_algorithms() -> None:
    with pytest.raises(ConfigError) as exc:
        JwtResolver.from_config(
            {
                "issuers": {
                    "c": {
                        "issuer": "c",
                        "audiences": ["a"],
                        "algorithms": ["HS256", "RS256"],
                        "hmac_secret": "env:S",
                    }
                }
            },
            env={"S": SECRET},
        )
    assert exc.value.key == "identity.jwt.issuers.c.algorithms"


def test_no_issuer_is_an_error() -> None:
    with pytest.raises(ConfigError) as exc:
        JwtResolver.from_config({})
    assert exc.value.key == "identity.jwt.issuers"
    with pytest.raises(ConfigError) as exc:
        JwtResolver.from_config({"issuers": {}, "nme": "x"})
    assert exc.value.key == "identity.jwt.nme"


def test_config_defaults() -> None:
    import msgspec

    cfg = msgspec.convert(
        {"issuer": "i", "audiences": ["a"], "jwks_url": "https://i/jwks"}, JwtIssuerConfig
    )
    assert cfg.algorithms == ["RS256"]
    assert cfg.leeway == 30
    assert cfg.claims.scopes == ("scope", "scp")


def test_environment_overrides_reach_issuer_settings(tmp_path: Path) -> None:
    data = {"identity": {"jwt": section(tmp_path)}}
    cfg = parse_config(
        data,
        root=str(tmp_path),
        env={"GARRISON_IDENTITY__JWT__ISSUERS__A__LEEWAY": "900"},
    )
    with pytest.raises(ConfigError) as exc:
        JwtResolver.from_config(cfg.identity["jwt"], app=cfg, env={"JWT_SECRET": SECRET})
    assert exc.value.key == "identity.jwt.issuers.a.leeway"
    assert "GARRISON_IDENTITY__JWT__ISSUERS__A__LEEWAY" in str(exc.value)
