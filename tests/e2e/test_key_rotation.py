"""Key rotation under load: zero auth errors while the passport keys and the JWT issuer's keys
rotate in a running deployment.

    load (aiohttp, 8 concurrent) -> garrison gateway -> whoami replica 0 / replica 1

All real processes on loopback: ``garrison gateway`` and two ``garrison run`` replicas, each
with an application folder of its own (its own ``garrison.toml`` and key files, as separate
machines would have). Passport keys come from the environment (the old key) and from a file
(the new one, written during the test); a running process picks up its edited configuration on
``SIGHUP`` (``garrison.identity._reload``), one process at a time.

Passport rotation, the documented three steps, each rolled out before the next:

1. the new key is added, verify-only, on the service: one replica reloads, then the other
   (a passport signed with the new key, sent straight to a replica, is refused before its
   reload and accepted after: the rollout really is one process at a time);
2. the gateway makes it its active key: the passports the replicas see switch kid;
3. after the longest passport lifetime (ttl + leeway), the old key is retired everywhere: a
   passport signed with it is refused (``unknown_key``) by both replicas.

JWT issuer rotation: the issuer's JWK set file gains a second key, and the client switches to
tokens signed with it mid-load; the unknown kid makes the gateway refetch the set (a token
signed with that key before it was published was refused, so the acceptance can only come from
the refetch).

The assertion for both: every request of the load is answered 200 -- no 401, no 403, nothing
else either.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from garrison.identity import (
    PASSPORT_HEADER,
    Authentication,
    CredentialKind,
    Keyring,
    Passport,
    PassportCodec,
    UserIdentity,
)

from ._procs import free_port_block, run_processes, service_argv, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

APP = Path(__file__).parent / "rotation_app"
OLD, NEW = "pp-2025-01", "pp-2025-06"
OLD_KEY = b"rotation-e2e-old-passport-key-of-32+-bytes"
NEW_KEY = b"rotation-e2e-new-passport-key-of-32+-bytes"
OLD_SPEC = "env:ROTATION_E2E_OLD_KEY"
NEW_SPEC = "file:keys/new.key"
TTL, LEEWAY = 3.0, 1.0
"""A short passport lifetime, so that step 3 can wait for it as the docs say."""
ISSUER, AUDIENCE = "https://issuer.rotation.example", "fleet"
JWKS_MIN_REFRESH = 1.0
CONCURRENCY = 8
PHASE = 250
"""Requests answered in each phase of a rotation before the next step starts."""
MAX_REQUESTS = 20_000
"""Hard bound of one load run."""

CONFIG = """\
# Written by tests/e2e/test_key_rotation.py
[app]
name = "rotation-e2e"
data_dir = "{data}"

[services.whoami]
app = "rotation_service:svc"
port = {service}
replicas = 2

[client]
load_balancer = "round_robin"

[identity]
allow_dev_key = false

[identity.passport]
ttl = {ttl}
leeway = {leeway}
{active}
[identity.passport.keys]
{keys}

[identity.jwt.issuers.corp]
issuer = "{issuer}"
audiences = ["{audience}"]
algorithms = ["ES256"]
jwks_file = "jwks.json"
min_refresh_interval = {min_refresh}

[gateway]
port = {gateway}

[[gateway.routes]]
prefix = "/api"
service = "whoami"
auth = "user"
scopes = ["read"]
"""


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` atomically: a process reloading never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    os.replace(tmp, path)


def _b64(secret: bytes) -> bytes:
    return base64.urlsafe_b64encode(secret).rstrip(b"=")


class Issuer:
    """A JWT issuer: ES256 keys by kid, a JWK set file it publishes, tokens."""

    def __init__(self) -> None:
        self.keys: dict[str, ec.EllipticCurvePrivateKey] = {}

    def new_key(self, kid: str) -> None:
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())

    def jwks(self, *kids: str) -> bytes:
        out = []
        for kid in kids:
            jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(self.keys[kid].public_key()))
            out.append({**jwk, "kid": kid, "use": "sig", "alg": "ES256"})
        return json.dumps({"keys": out}).encode()

    def token(self, kid: str, **claims: object) -> str:
        now = int(time.time())
        body = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "scope": "read",
            "iat": now,
            "exp": now + 600,
            **claims,
        }
        return pyjwt.encode(body, self.keys[kid], algorithm="ES256", headers={"kid": kid})


@dataclass
class Deployment:
    """The running processes and their application folders."""

    gateway_dir: Path
    service_dir: Path
    ports: dict[str, int]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    def replica(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports['service'] + i}"

    def configure(self, folder: Path, keys: dict[str, str], active: str | None) -> None:
        """Write ``folder``'s garrison.toml with these passport keys (takes effect on SIGHUP)."""
        text = CONFIG.format(
            data=folder / ".garrison",
            service=self.ports["service"],
            gateway=self.ports["gateway"],
            ttl=TTL,
            leeway=LEEWAY,
            active=f'active = "{active}"\n' if active else "",
            keys="\n".join(f'"{kid}" = "{spec}"' for kid, spec in keys.items()),
            issuer=ISSUER,
            audience=AUDIENCE,
            min_refresh=JWKS_MIN_REFRESH,
        )
        _write(folder / "garrison.toml", text.encode(), 0o644)

    def hup(self, name: str) -> None:
        """Ask one process to reload its passport keys."""
        proc = self.procs[name]
        assert proc.poll() is None, f"{name} has exited ({proc.returncode})"
        os.kill(proc.pid, signal.SIGHUP)


@pytest.fixture
def issuer() -> Issuer:
    issuer = Issuer()
    issuer.new_key("jwt-a")
    issuer.new_key("jwt-b")
    return issuer


@pytest.fixture
def deployment(tmp_path: Path, issuer: Issuer) -> Iterator[Deployment]:
    base = free_port_block(3)
    d = Deployment(
        tmp_path / "gateway", tmp_path / "service", {"service": base, "gateway": base + 2}
    )
    d.configure(d.gateway_dir, {OLD: OLD_SPEC}, active=OLD)
    d.configure(d.service_dir, {OLD: OLD_SPEC}, active=None)  # services verify, never mint
    _write(d.gateway_dir / "jwks.json", issuer.jwks("jwt-a"), 0o644)
    env = {
        "ROTATION_E2E_OLD_KEY": _b64(OLD_KEY).decode(),
        "PYTHONPATH": os.pathsep.join([str(APP), os.environ.get("PYTHONPATH", "")]),
    }
    names = ["whoami-0", "whoami-1", "gateway"]
    argvs = [
        service_argv(d.service_dir, "whoami", 0),
        service_argv(d.service_dir, "whoami", 1),
        [sys.executable, "-m", "garrison", "gateway", str(d.gateway_dir)],
    ]
    with run_processes(argvs, env) as procs:
        d.procs = dict(zip(names, procs, strict=True))
        wait_ready([d.replica(0), d.replica(1)])
        wait_ready([d.gateway], path="/_garrison/healthz")
        yield d


# -- the load --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    start: float
    end: float
    status: int
    kid: str | None
    replica: int | None
    body: str


class Load:
    """``CONCURRENCY`` workers calling the gateway until stopped (at most ``MAX_REQUESTS``),
    each request with the credential ``token()`` gives at that moment."""

    def __init__(self, url: str, token: Callable[[], str]) -> None:
        self.url = url
        self.token = token
        self.samples: list[Sample] = []
        self._stop = asyncio.Event()
        self._issued = 0

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(self._worker(session) for _ in range(CONCURRENCY)))

    async def _worker(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set() and self._issued < MAX_REQUESTS:
            self._issued += 1
            headers = {"authorization": f"Bearer {self.token()}"}
            start = time.monotonic()
            try:
                async with session.get(self.url, headers=headers) as resp:
                    status, text = resp.status, await resp.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, text = 0, f"{type(exc).__name__}: {exc}"
            kid = replica = None
            if status == 200:
                seen = json.loads(text)
                kid, replica = seen["kid"], seen["replica"]
            self.samples.append(Sample(start, time.monotonic(), status, kid, replica, text[:300]))

    async def answered(self, more: int, timeout: float = 60.0) -> None:
        """Wait until ``more`` further requests have been answered."""
        target = len(self.samples) + more
        end = time.monotonic() + timeout
        while len(self.samples) < target:
            assert time.monotonic() < end, f"load stalled at {len(self.samples)} requests"
            assert self._issued < MAX_REQUESTS, "the load reached its bound before the rotation"
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()

    def failures(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for s in self.samples:
            if s.status != 200:
                out.setdefault(s.status, []).append(s.body)
        return out


async def _poll(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while True:
        if await check():
            return
        assert time.monotonic() < end, f"timed out waiting for: {what}"
        await asyncio.sleep(0.05)


def _passport(key: bytes, kid: str) -> str:
    """A passport signed with ``key`` under ``kid``, as a gateway holding it would mint."""
    now = time.time()
    passport = Passport(
        auth=Authentication(credential=CredentialKind.JWT, issuer=ISSUER, at=now),
        issued_at=now,
        expires_at=now + TTL,
        txn="rotation-probe",
        user=UserIdentity(subject="probe", scopes=("read",)),
    )
    return PassportCodec(Keyring.hmac({kid: key}, active=kid)).mint(passport)


async def _direct(session: aiohttp.ClientSession, url: str, token: str) -> tuple[int, str]:
    """Send a passport straight to a replica (as a caller inside the mesh would)."""
    async with session.get(url + "/api/probe", headers={PASSPORT_HEADER: token}) as resp:
        return resp.status, await resp.text()


def _assert_no_failures(load: Load) -> None:
    failures = load.failures()
    auth = {s: len(b) for s, b in failures.items() if s in (401, 403)}
    assert not auth, f"auth errors during the rotation: {auth}; first: {failures}"
    assert not failures, (
        f"non-200 answers during the rotation: { {s: b[:3] for s, b in failures.items()} }"
    )


# -- the tests -------------------------------------------------------------------------------


def test_passport_key_rotation_under_load(deployment: Deployment, issuer: Issuer) -> None:
    d = deployment
    token = issuer.token("jwt-a")  # one cached credential for the whole run
    load = Load(d.gateway + "/api/who", lambda: token)
    marks: dict[str, float] = {}

    async def rotate(session: aiohttp.ClientSession) -> None:
        await load.answered(PHASE)  # baseline: old key only

        # Step 1: the new key, verify-only, on the service; one replica after the other.
        _write(d.service_dir / "keys" / "new.key", _b64(NEW_KEY))
        d.configure(d.service_dir, {OLD: OLD_SPEC, NEW: NEW_SPEC}, active=None)
        for i in (0, 1):
            status, text = await _direct(session, d.replica(i), _passport(NEW_KEY, NEW))
            assert status == 401, text  # this replica has not reloaded yet
            assert "unknown_key" in text
            d.hup(f"whoami-{i}")

            async def knows_new(i: int = i) -> bool:
                return (await _direct(session, d.replica(i), _passport(NEW_KEY, NEW)))[0] == 200

            await _poll(knows_new, f"replica {i} accepts the new key")
            await load.answered(PHASE // 2)  # traffic with the replicas on different keys

        # Step 2: the gateway signs with the new key.
        _write(d.gateway_dir / "keys" / "new.key", _b64(NEW_KEY))
        d.configure(d.gateway_dir, {OLD: OLD_SPEC, NEW: NEW_SPEC}, active=NEW)
        marks["activate"] = time.monotonic()
        d.hup("gateway")

        async def gateway_signs_new() -> bool:
            headers = {"authorization": f"Bearer {token}"}
            async with session.get(d.gateway + "/api/probe", headers=headers) as resp:
                return resp.status == 200 and (await resp.json())["kid"] == NEW

        await _poll(gateway_signs_new, "the gateway signs with the new key")
        marks["activated"] = time.monotonic()
        await load.answered(PHASE)

        # Step 3: once every passport signed with the old key has expired, retire it.
        await asyncio.sleep(max(0.0, marks["activated"] + TTL + LEEWAY - time.monotonic()))
        d.configure(d.service_dir, {NEW: NEW_SPEC}, active=None)
        for i in (0, 1):
            d.hup(f"whoami-{i}")

            async def refuses_old(i: int = i) -> bool:
                status, text = await _direct(session, d.replica(i), _passport(OLD_KEY, OLD))
                return status == 401 and "unknown_key" in text

            await _poll(refuses_old, f"replica {i} refuses the retired key")
        d.configure(d.gateway_dir, {NEW: NEW_SPEC}, active=NEW)
        d.hup("gateway")
        await load.answered(PHASE)
        marks["retired"] = time.monotonic()
        await load.answered(PHASE)

    async def main() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            runner = asyncio.create_task(load.run())
            try:
                await rotate(session)
            finally:
                load.stop()
                await runner

    asyncio.run(main())

    samples = load.samples
    assert len(samples) >= 1500, len(samples)
    _assert_no_failures(load)
    before = [s for s in samples if s.end < marks["activate"]]
    after = [s for s in samples if s.start > marks["activated"]]
    assert len(before) >= 2 * PHASE
    assert len(after) >= 3 * PHASE
    assert {s.kid for s in before} == {OLD}
    assert {s.kid for s in after} == {NEW}
    assert [s.kid for s in samples if s.start > marks["retired"]].count(NEW) >= PHASE
    for i in (0, 1):  # both replicas served passports of both keys
        assert {s.kid for s in samples if s.replica == i} == {OLD, NEW}
    for name, proc in d.procs.items():
        assert proc.poll() is None, f"{name} exited during the rotation"


def test_jwt_issuer_key_rotation_under_load(deployment: Deployment, issuer: Issuer) -> None:
    d = deployment
    current = {"token": issuer.token("jwt-a")}
    load = Load(d.gateway + "/api/who", lambda: current["token"])
    marks: dict[str, float] = {}

    async def rotate(session: aiohttp.ClientSession) -> None:
        # Before it is published, a token signed with the new key is refused. This first
        # request is also the gateway's first fetch of the key set.
        early = {"authorization": f"Bearer {issuer.token('jwt-b', jti='early')}"}
        async with session.get(d.gateway + "/api/probe", headers=early) as resp:
            text = await resp.text()
            assert resp.status == 401, text
            assert "unknown_key" in text
        marks["first_fetch"] = time.monotonic()
        runner = asyncio.create_task(load.run())
        try:
            await load.answered(PHASE)
            # The issuer publishes its new key; clients do not use it yet.
            _write(d.gateway_dir / "jwks.json", issuer.jwks("jwt-a", "jwt-b"), 0o644)
            await load.answered(PHASE)
            # The refetch an unknown kid triggers is rate limited (min_refresh_interval, here
            # 1 s since the probe's fetch); a real issuer waits far longer before signing.
            wait = marks["first_fetch"] + JWKS_MIN_REFRESH + 0.2 - time.monotonic()
            await asyncio.sleep(max(0.0, wait))
            marks["switch"] = time.monotonic()
            current["token"] = issuer.token("jwt-b")  # mid-load, every worker at once
            await load.answered(3 * PHASE)
        finally:
            load.stop()
            await runner

    async def main() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await rotate(session)

    asyncio.run(main())

    samples = load.samples
    assert len(samples) >= 1250, len(samples)
    _assert_no_failures(load)
    after = [s for s in samples if s.start > marks["switch"]]
    assert len(after) >= 3 * PHASE
    # The passports (and so the service) are unaffected by the issuer's keys.
    assert {s.kid for s in samples} == {OLD}
