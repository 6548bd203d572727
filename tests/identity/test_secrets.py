"""Secret references (``env:`` / ``file:``): one reader with one set of rules for every secret."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from garrison.core import ConfigError, load_config
from garrison.identity import Keyring
from garrison.identity._keys import KeysConfig
from garrison.identity._secrets import read_secret, secret_reference


def test_env_and_file_references(tmp_path: Path) -> None:
    assert read_secret("env:X", key="k", env={"X": " abc\n"}) == b"abc"
    f = tmp_path / "s"
    f.write_text("xyz\n")
    f.chmod(0o600)
    assert read_secret(f"file:{f}", key="k") == b"xyz"  # an absolute path stays as it is
    assert secret_reference("env:X")
    assert secret_reference("file:x")
    assert not secret_reference("hunter2")


@pytest.mark.parametrize(
    ("ref", "env", "msg"),
    [
        ("env:MISSING", {}, "not set"),
        ("env:", {}, "empty variable name"),
        ("env:E", {"E": "  "}, "empty"),
        ("file:", {}, "empty path"),
        ("file:nope/missing.key", {}, "cannot read secret file"),
        ("hunter2", {}, "secret reference"),
    ],
)
def test_bad_references_name_the_key(
    tmp_path: Path, ref: str, env: dict[str, str], msg: str
) -> None:
    with pytest.raises(ConfigError, match=msg) as info:
        read_secret(ref, key="identity.x", env=env, root=tmp_path, source="garrison.toml")
    assert info.value.key == "identity.x"
    assert "garrison.toml" in str(info.value)


def test_relative_files_resolve_against_the_app_root_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = tmp_path / "app"
    (app / "keys").mkdir(parents=True)
    (app / "keys" / "pepper").write_text("p" * 32)
    (app / "keys" / "pepper").chmod(0o600)
    (app / "garrison.toml").write_text('[app]\nname = "a"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(app, env={})
    assert read_secret("file:keys/pepper", key="k", app=config) == b"p" * 32
    with pytest.raises(ConfigError, match="cannot read"):
        read_secret("file:keys/pepper", key="k")  # without the app: the working directory


def test_a_file_others_can_read_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = tmp_path / "open"
    f.write_text("s3cret")
    f.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="garrison.identity"):
        assert read_secret("file:open", key="identity.jwt.hmac_secret", root=tmp_path) == b"s3cret"
    assert any("chmod 600" in r.getMessage() for r in caplog.records)


def test_the_keyring_reads_files_by_the_same_rules(tmp_path: Path) -> None:
    (tmp_path / "k1").write_bytes(os.urandom(32).hex().encode())
    (tmp_path / "k1").chmod(0o600)
    cfg = KeysConfig(keys={"k1": "file:k1"}, active="k1")
    ring = Keyring.from_config(cfg, env={}, root=tmp_path)
    assert ring.active.kid == "k1"
    with pytest.raises(ConfigError, match="cannot read secret file") as info:
        Keyring.from_config(KeysConfig(keys={"k1": "file:nope"}), env={}, root=tmp_path)
    assert info.value.key == "identity.passport.keys.k1"
