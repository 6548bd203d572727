"""Three real services on loopback, alpha -> beta -> gamma: only alpha receives a passport, and
every hop verifies the same identity, forwarded with no code in alpha or beta."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from garrison.identity import (
    Assurance,
    Authentication,
    CredentialKind,
    Resolution,
    UserIdentity,
)
from garrison.identity._keys import Keyring
from garrison.identity._passport import PASSPORT_HEADER, PassportCodec

from ._procs import free_port_block, run_processes, service_argv, wait_ready

pytestmark = pytest.mark.e2e

APP = Path(__file__).parent / "passport_app"


class Chain:
    def __init__(self, base: int, codec: PassportCodec) -> None:
        self.alpha = f"http://127.0.0.1:{base}"
        self.beta = f"http://127.0.0.1:{base + 1}"
        self.gamma = f"http://127.0.0.1:{base + 2}"
        self.codec = codec

    def mint(self, subject: str = "u-7", scopes: tuple[str, ...] = ("fleet:read",)) -> str:
        resolution = Resolution(
            auth=Authentication(CredentialKind.JWT, "https://idp", "pwd", Assurance.AAL1),
            expires_at=time.time() + 300,
            user=UserIdentity(subject, tenant="acme", scopes=scopes),
        )
        return self.codec.mint_for(resolution)[1]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    data_dir = tmp_path_factory.mktemp("passport-data")
    # The app's development key, as `garrison dev` would give the gateway and every service:
    # created here first, so the three processes read this one.
    codec = PassportCodec(Keyring.dev_default(APP, data_dir=str(data_dir)))
    base = free_port_block(3)
    env = {
        "GARRISON_SERVICES__ALPHA__PORT": str(base),
        "GARRISON_SERVICES__BETA__PORT": str(base + 1),
        "GARRISON_SERVICES__GAMMA__PORT": str(base + 2),
        "GARRISON_APP__DATA_DIR": str(data_dir),
        "GARRISON_ENV": "development",
    }
    argvs = [service_argv(APP, name) for name in ("alpha", "beta", "gamma")]
    c = Chain(base, codec)
    with run_processes(argvs, env):
        wait_ready([c.alpha, c.beta, c.gamma])
        yield c
    assert not (APP / ".garrison").exists()  # the key lived in the temporary folder


def get(url: str, token: str | None = None, method: str = "GET") -> httpx.Response:
    headers = {PASSPORT_HEADER: token} if token is not None else {}
    return httpx.request(method, url, headers=headers, timeout=10)


def test_every_hop_verifies_the_same_identity(chain: Chain) -> None:
    token = chain.mint()
    txn = chain.codec.verify(token).txn
    r = get(chain.alpha + "/hops", token)
    assert r.status_code == 200, r.text
    hops: dict[str, Any] = r.json()
    assert set(hops) == {"alpha", "beta", "gamma"}
    for name, seen in hops.items():
        assert seen is not None, name
        assert seen["subject"] == "u-7"
        assert seen["txn"] == txn
        assert seen["scopes"] == ["fleet:read"]


def test_the_passport_crosses_services_that_have_no_identity_code(chain: Chain) -> None:
    token = chain.mint(subject="u-8")
    r = get(chain.alpha + "/whoami", token)
    assert r.status_code == 200, r.text
    body = r.json()["body"]
    assert body["status"] == 200
    assert body["body"]["subject"] == "u-8"
    assert body["body"]["txn"] == chain.codec.verify(token).txn


def test_without_a_passport_the_far_end_refuses(chain: Chain) -> None:
    r = get(chain.alpha + "/whoami")
    assert r.status_code == 200
    gamma = r.json()["body"]
    assert gamma["status"] == 401
    assert gamma["body"]["detail"][0]["reason"] == "passport_required"
    hops = get(chain.alpha + "/hops").json()
    assert hops == {"alpha": None, "beta": None, "gamma": None}


def test_requirements_at_the_far_end(chain: Chain) -> None:
    r = get(chain.alpha + "/dispatch", chain.mint(), method="POST")
    gamma = r.json()["body"]
    assert gamma["status"] == 403
    assert gamma["body"]["detail"] == [{"reason": "missing_scopes", "missing": ["fleet:write"]}]
    writer = chain.mint(scopes=("fleet:read", "fleet:write"))
    r = get(chain.alpha + "/dispatch", writer, method="POST")
    assert r.json()["body"]["status"] == 200


def test_a_forged_passport_stops_at_the_first_hop(chain: Chain) -> None:
    forger = PassportCodec(Keyring.hmac({"dev": b"f" * 32}, active="dev"))
    resolution = Resolution(
        auth=Authentication(CredentialKind.JWT, "https://idp", "pwd", Assurance.AAL3),
        expires_at=time.time() + 300,
        user=UserIdentity("root", scopes=("fleet:write",)),
    )
    forged = forger.mint_for(resolution)[1]
    for url in (chain.alpha + "/whoami", chain.gamma + "/whoami"):
        r = get(url, forged)
        assert r.status_code == 401
        assert r.json()["detail"][0]["reason"] == "bad_signature"
