"""SIGHUP reload of the passport keys (``garrison.identity._reload``); the e2e test
``tests/e2e/test_key_rotation.py`` rotates keys this way under load."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import threading
from pathlib import Path

import pytest

from garrison.core import ConfigError
from garrison.identity import PassportCodec
from garrison.identity._reload import PassportKeyReloader, reload_on_sighup

SECRET_A = base64.urlsafe_b64encode(b"a" * 32).decode()
SECRET_B = base64.urlsafe_b64encode(b"b" * 32).decode()


def write(root: Path, passport: str) -> str:
    (root / "keys").mkdir(exist_ok=True)
    for name, secret in (("a.key", SECRET_A), ("b.key", SECRET_B)):
        (root / "keys" / name).write_text(secret)
        (root / "keys" / name).chmod(0o600)
    path = root / "garrison.toml"
    path.write_text(f'[app]\nname = "t"\n\n[identity.passport]\n{passport}\n')
    return str(path)


def reloader(source: str, applied: list[PassportCodec], *, signing: bool) -> PassportKeyReloader:
    return PassportKeyReloader(source, applied.append, signing=signing, what="test")


def test_load_builds_the_keys_the_file_names_now(tmp_path: Path) -> None:
    source = write(tmp_path, 'keys = { a = "file:keys/a.key" }\nactive = "a"')
    r = reloader(source, [], signing=True)
    assert r.load().keyring.kids == ("a",)
    write(
        tmp_path, 'keys = { a = "file:keys/a.key", b = "file:keys/b.key" }\nactive = "b"\nttl = 5'
    )
    codec = r.load()
    assert codec.keyring.kids == ("a", "b")
    assert codec.keyring.active_kid == "b"
    assert codec.ttl == 5


@pytest.mark.parametrize(
    ("passport", "signing", "key"),
    [
        ("", False, "identity.passport.keys"),  # never the development key
        ('keys = { a = "file:keys/a.key" }', True, "identity.passport.active"),  # edge: mints
        ('keys = { a = "file:keys/missing.key" }', False, "identity.passport.keys.a"),
        ('keys = { a = "file:keys/a.key" }\nactive = "b"', False, "identity.passport"),
    ],
)
def test_load_refuses_what_cannot_be_used(
    tmp_path: Path, passport: str, signing: bool, key: str
) -> None:
    r = reloader(write(tmp_path, passport), [], signing=signing)
    with pytest.raises(ConfigError) as err:
        r.load()
    assert key in str(err.value)


async def test_a_failed_reload_keeps_the_keys_in_use(tmp_path: Path) -> None:
    applied: list[PassportCodec] = []
    r = reloader(write(tmp_path, "this is not toml ="), applied, signing=False)
    assert await r.reload() is False
    assert (applied, r.failures, r.reloads) == ([], 1, 0)
    write(tmp_path, 'keys = { a = "file:keys/a.key" }')
    assert await r.reload() is True
    assert [c.keyring.kids for c in applied] == [("a",)]


async def test_requests_during_a_reload_coalesce_into_one_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied: list[PassportCodec] = []
    r = reloader(write(tmp_path, 'keys = { a = "file:keys/a.key" }'), applied, signing=False)
    entered, gate = threading.Event(), threading.Event()
    load = r.load
    loads = 0

    def slow_load() -> PassportCodec:
        nonlocal loads
        loads += 1
        if loads == 1:  # the first reload is reading while the signals arrive
            entered.set()
            gate.wait(5)
        return load()

    monkeypatch.setattr(r, "load", slow_load)
    r.request()
    assert await asyncio.to_thread(entered.wait, 5)
    write(tmp_path, 'keys = { a = "file:keys/a.key", b = "file:keys/b.key" }')
    for _ in range(5):
        r.request()
    gate.set()
    assert r._task is not None
    await r._task
    assert loads == 2  # the one running, then one for all five requests
    assert applied[-1].keyring.kids == ("a", "b")  # the last state of the files wins


async def test_sighup_reloads_once_the_app_has_started(tmp_path: Path) -> None:
    applied: list[PassportCodec] = []
    source = write(tmp_path, 'keys = { a = "file:keys/a.key" }')
    started: list[str] = []

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        started.append(scope["type"])

    previous = signal.getsignal(signal.SIGHUP)
    wrapped = reload_on_sighup(app, source, applied.append, signing=False, what="test")
    loop = asyncio.get_running_loop()
    try:
        assert (
            signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        )  # a hang-up before start is harmless
        await wrapped({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
        assert started == ["lifespan"]
        for _ in range(100):  # the catch-up reload at install
            if applied:
                break
            await asyncio.sleep(0.01)
        assert [c.keyring.kids for c in applied] == [("a",)]
        write(tmp_path, 'keys = { b = "file:keys/b.key" }')
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(200):
            if len(applied) == 2:
                break
            await asyncio.sleep(0.01)
        assert [c.keyring.kids for c in applied] == [("a",), ("b",)]
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        signal.signal(signal.SIGHUP, previous)
