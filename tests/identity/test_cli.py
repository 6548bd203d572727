"""``garrison passport decode|verify``: output, exit statuses, one-line errors."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner, Result

from garrison.identity import (
    Assurance,
    Authentication,
    CredentialKind,
    DeviceIdentity,
    Resolution,
    UserIdentity,
)
from garrison.identity._cli import passport_app
from garrison.identity._keys import Keyring
from garrison.identity._passport import PassportCodec

runner = CliRunner()
SECRET = b"cli-test-secret-" * 2
SECRET_B64 = base64.urlsafe_b64encode(SECRET).decode().rstrip("=")


def invoke(*args: str, stdin: str | None = None) -> Result:
    return runner.invoke(passport_app, list(args), input=stdin)


def resolution(expires_at: float | None = None, degraded: bool = False) -> Resolution:
    return Resolution(
        auth=Authentication(
            credential=CredentialKind.JWT, issuer="https://idp", assurance=Assurance.AAL2
        ),
        expires_at=time.time() + 3600 if expires_at is None else expires_at,
        user=UserIdentity("u-42", tenant="acme", roles=("operator",), scopes=("fleet:read",)),
        device=DeviceIdentity("bat-1", "battery"),
        degraded=degraded,
    )


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "garrison.toml").write_text(
        '[app]\nname = "t"\n\n[identity.passport]\nactive = "k1"\n'
        f'keys = {{ k1 = "{SECRET_B64}" }}\n'
    )
    return tmp_path


@pytest.fixture
def codec(app_dir: Path) -> PassportCodec:
    return PassportCodec(Keyring.hmac({"k1": SECRET}, active="k1"))


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# -- decode ----------------------------------------------------------------------------------


def test_decode_shows_the_header_and_body_marked_unverified(codec: PassportCodec) -> None:
    _, token = codec.mint_for(resolution(), txn="txn-7")
    r = invoke("decode", token)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("UNVERIFIED")
    assert "HS256" in r.stdout
    assert "'k1'" in r.stdout
    for text in ("txn-7", "u-42", "acme", "operator", "fleet:read", "bat-1", "AAL2"):
        assert text in r.stdout


def test_decode_needs_no_keys_and_reads_stdin(codec: PassportCodec) -> None:
    _, token = codec.mint_for(resolution(degraded=True), txn="txn-8")
    r = invoke("decode", "-", stdin=f"garrison-passport: {token}\n")
    assert r.exit_code == 0, r.output
    assert "txn-8" in r.stdout
    assert "degraded" in r.stdout


def test_decode_json(codec: PassportCodec) -> None:
    _, token = codec.mint_for(resolution(), txn="txn-9")
    r = invoke("decode", "--json", token)
    assert r.exit_code == 0
    out = json.loads(r.stdout)
    assert out["verified"] is False
    assert out["header"]["kid"] == "k1"
    assert out["passport"]["txn"] == "txn-9"
    assert out["passport"]["user"]["subject"] == "u-42"


@pytest.mark.parametrize("token", ["garbage!", "UAEB", "AAAAAAAAAAAAAAAA"])
def test_decode_garbage_is_one_line_and_exit_1(token: str) -> None:
    r = invoke("decode", token)
    assert r.exit_code == 1
    assert one_line(r.stderr).startswith("invalid passport: malformed:")
    assert r.stdout == ""


# -- verify ----------------------------------------------------------------------------------


def test_verify_a_valid_passport(codec: PassportCodec, app_dir: Path) -> None:
    _, token = codec.mint_for(resolution(), txn="txn-1")
    r = invoke("verify", token, "--app-dir", str(app_dir))
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("VALID")
    assert "txn-1" in r.stdout
    r = invoke("verify", "--json", token, "--app-dir", str(app_dir))
    assert json.loads(r.stdout)["verified"] is True


def test_verify_defaults_to_the_current_folder(
    codec: PassportCodec, app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(app_dir)
    _, token = codec.mint_for(resolution())
    assert invoke("verify", token).exit_code == 0


def test_verify_rejections_are_exit_1_with_the_reason(codec: PassportCodec, app_dir: Path) -> None:
    valid = codec.verify(codec.mint_for(resolution())[1])
    old = msgspec.structs.replace(valid, issued_at=time.time() - 600, expires_at=time.time() - 540)
    other_secret = PassportCodec(Keyring.hmac({"k1": b"x" * 32}, active="k1"))
    other_kid = PassportCodec(Keyring.hmac({"zz": b"x" * 32}, active="zz"))
    cases = {
        "expired": codec.mint(old),
        "bad_signature": other_secret.mint(valid),
        "unknown_key": other_kid.mint(valid),
        "malformed": "not-a-passport",
    }
    for reason, token in cases.items():
        r = invoke("verify", token, "--app-dir", str(app_dir))
        assert r.exit_code == 1, (reason, r.output)
        assert one_line(r.stderr).startswith(f"invalid passport: {reason}:")
        r = invoke("verify", "--json", token, "--app-dir", str(app_dir))
        assert r.exit_code == 1
        assert json.loads(r.stdout)["reason"] == reason


def test_verify_with_the_development_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GARRISON_ENV", raising=False)
    (tmp_path / "garrison.toml").write_text('[app]\nname = "dev"\n')
    r = invoke("verify", "AAAA", "--app-dir", str(tmp_path))
    assert r.exit_code == 2  # no development key yet: nothing to verify with, none created
    assert "no development key" in one_line(r.stderr)
    assert not (tmp_path / ".garrison").exists()
    dev = PassportCodec(Keyring.dev_default(tmp_path))
    _, token = dev.mint_for(resolution())
    assert invoke("verify", token, "--app-dir", str(tmp_path)).exit_code == 0
    monkeypatch.setenv("GARRISON_ENV", "production")
    r = invoke("verify", token, "--app-dir", str(tmp_path))
    assert r.exit_code == 2
    assert "production" in one_line(r.stderr)


@pytest.mark.parametrize(
    ("setup", "says"),
    [
        ("missing", "does not exist"),
        ("bad_toml", "not valid TOML"),
        ("bad_key", "identity.passport.keys.k1"),
        ("missing_env", "GARRISON_TEST_UNSET_KEY"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(tmp_path: Path, setup: str, says: str) -> None:
    app = tmp_path / "app"
    if setup != "missing":
        app.mkdir()
        toml = {
            "bad_toml": "[app\n",
            "bad_key": '[identity.passport]\nkeys = { k1 = "c2hvcnQ" }\n',
            "missing_env": '[identity.passport]\nkeys = { k1 = "env:GARRISON_TEST_UNSET_KEY" }\n',
        }[setup]
        (app / "garrison.toml").write_text(toml)
    r = invoke("verify", "AAAA", "--app-dir", str(app))
    assert r.exit_code == 2, r.output
    line = one_line(r.stderr)
    assert line.startswith("garrison passport: error:")
    assert says in line


def test_usage_errors_exit_2() -> None:
    assert invoke("verify").exit_code == 2
    assert invoke("decode", "   ").exit_code == 2
    assert invoke("nonsense").exit_code == 2
    r = invoke("--help")
    assert r.exit_code == 0
    assert "decode" in r.stdout
    assert "verify" in r.stdout
