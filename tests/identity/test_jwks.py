"""JWK parsing and the per-issuer JWKS cache: single-flight, rate-limited refetch, last good set."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from garrison.core import FakeClock, ServiceUnavailable, Unauthenticated
from garrison.identity._jwks import (
    FileKeySource,
    HttpKeySource,
    JwkError,
    JwksCache,
    KeySet,
    StaticKeys,
    _roca_vulnerable,
    check_jwks_url,
    parse_jwk,
    parse_jwks,
)
from garrison.identity._jws import VerificationKey, b64url_encode

RSA = rsa.generate_private_key(65537, 2048)
P256 = ec.generate_private_key(ec.SECP256R1())
ED = ed25519.Ed25519PrivateKey.generate()


def _uint(n: int) -> str:
    return b64url_encode(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str | None = "r1", **extra: Any) -> dict[str, Any]:
    nums = key.public_key().public_numbers()
    jwk = {"kty": "RSA", "n": _uint(nums.n), "e": _uint(nums.e), **extra}
    return jwk if kid is None else {"kid": kid, **jwk}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str = "e1", **extra: Any) -> dict[str, Any]:
    nums = key.public_key().public_numbers()
    size = (key.curve.key_size + 7) // 8
    crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
    return {
        "kty": "EC",
        "kid": kid,
        "crv": crv,
        "x": b64url_encode(nums.x.to_bytes(size, "big")),
        "y": b64url_encode(nums.y.to_bytes(size, "big")),
        **extra,
    }


def ed_jwk(key: ed25519.Ed25519PrivateKey, kid: str = "d1") -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64url_encode(raw)}


def jwks(*keys: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


# -- parsing -----------------------------------------------------------------------------------


def test_parse_each_key_type() -> None:
    assert parse_jwk(rsa_jwk(RSA)).kty == "RSA"
    for curve, crv in ((ec.SECP256R1(), "P-256"), (ec.SECP384R1(), "P-384")):
        key = parse_jwk(ec_jwk(ec.generate_private_key(curve)))
        assert (key.kty, key.crv) == ("EC", crv)
    assert parse_jwk(ec_jwk(ec.generate_private_key(ec.SECP521R1()))).crv == "P-521"
    assert parse_jwk(ed_jwk(ED)).crv == "Ed25519"
    oct_key = {"kty": "oct", "k": b64url_encode(b"k" * 32), "alg": "HS256"}
    assert parse_jwk(oct_key, symmetric=True).kty == "oct"


@pytest.mark.parametrize(
    ("jwk", "error"),
    [
        ({**rsa_jwk(RSA), "use": "enc"}, "not a signature key"),
        ({**rsa_jwk(RSA), "key_ops": ["encrypt"]}, "does not allow 'verify'"),
        ({**rsa_jwk(RSA), "key_ops": "verify"}, "list of strings"),
        ({**rsa_jwk(RSA), "alg": "RSA-OAEP"}, "not a supported signature algorithm"),
        ({**rsa_jwk(RSA), "alg": "none"}, "not a supported"),
        ({**rsa_jwk(RSA), "alg": "ES256"}, "needs a EC key"),
        ({**rsa_jwk(RSA), "d": "AQAB"}, "private key material"),
        ({**rsa_jwk(RSA), "kid": "a b"}, "kid"),
        (rsa_jwk(rsa.generate_private_key(65537, 1024)), "1024 bits"),
        ({**rsa_jwk(RSA), "e": "AQ"}, "e must be"),
        ({**rsa_jwk(RSA), "n": "AQAB="}, "base64url"),
        ({"kty": "RSA", "e": "AQAB"}, "'n' is missing"),
        ({**ec_jwk(P256), "crv": "P-384"}, "48 bytes"),
        ({**ec_jwk(P256), "crv": "secp256k1"}, "not supported"),
        ({**ec_jwk(P256), "alg": "ES384"}, "curve P-384"),
        ({**ec_jwk(P256), "y": b64url_encode(b"\x01" * 32)}, "curve"),
        ({**ed_jwk(ED), "crv": "Ed448"}, "not supported"),
        ({**ed_jwk(ED), "x": b64url_encode(b"x" * 31)}, "32 bytes"),
        ({"kty": "oct", "k": b64url_encode(b"k" * 32)}, "shared secret"),
        ({"kty": "OCT", "k": "AAAA"}, "kty"),
        ({"kty": "RSA", **{k: v for k, v in rsa_jwk(RSA).items() if k != "kty"}, "x5u": 1}, None),
        ("not a key", "JSON object"),
    ],
)
def test_parse_refuses_unusable_keys(jwk: Any, error: str | None) -> None:
    if error is None:  # x5u / x5c members of a JWK are ignored, never fetched
        assert parse_jwk(jwk).kty == "RSA"
        return
    with pytest.raises(JwkError, match=error):
        parse_jwk(jwk)


def test_symmetric_keys_must_be_long_enough() -> None:
    with pytest.raises(JwkError, match="at least 32"):
        parse_jwk({"kty": "oct", "k": b64url_encode(b"k" * 31)}, symmetric=True)
    with pytest.raises(JwkError, match="at least 64"):
        parse_jwk({"kty": "oct", "k": b64url_encode(b"k" * 32), "alg": "HS512"}, symmetric=True)


def test_roca_fingerprint() -> None:
    assert _roca_vulnerable(65537**2 * 65537**7)  # a product of powers of 65537
    assert not any(
        _roca_vulnerable(rsa.generate_private_key(65537, 2048).public_key().public_numbers().n)
        for _ in range(5)
    )
    assert not _roca_vulnerable(RSA.public_key().public_numbers().n)


def test_parse_jwks_skips_unusable_keys_and_says_why() -> None:
    ks = parse_jwks(jwks(rsa_jwk(RSA), {**ec_jwk(P256), "use": "enc"}, ed_jwk(ED)))
    assert len(ks) == 2
    assert ks.get("r1") is not None
    assert ks.get("e1") is None
    assert ks.get("d1") is not None
    assert len(ks.skipped) == 1
    assert "keys[1] (kid 'e1')" in ks.skipped[0]


def test_duplicate_kids_drop_every_key_of_that_kid() -> None:
    other = rsa.generate_private_key(65537, 2048)
    ks = parse_jwks(jwks(rsa_jwk(RSA, "same"), rsa_jwk(other, "same"), ec_jwk(P256)))
    assert ks.get("same") is None
    assert ks.get("e1") is not None
    assert any("several keys" in s for s in ks.skipped)
    # even when one of the two is unusable anyway
    ks = parse_jwks(jwks(rsa_jwk(RSA, "same"), {**ec_jwk(P256, "same"), "use": "enc"}))
    assert len(ks) == 0


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        (b"[]", "'keys' list"),
        (b"{}", "'keys' list"),
        (b'{"keys": {}}', "'keys' list"),
        (b"not json", "not JSON"),
        (b"\xff", "not JSON"),
        (json.dumps({"keys": [{}] * 101}).encode(), "at most 100"),
    ],
)
def test_parse_jwks_refuses_broken_documents(doc: bytes, error: str) -> None:
    with pytest.raises(JwkError, match=error):
        parse_jwks(doc)


def test_shared_secrets_never_mix_with_public_keys() -> None:
    secret = {"kty": "oct", "k": b64url_encode(b"k" * 32), "kid": "s"}
    assert len(parse_jwks(jwks(secret, rsa_jwk(RSA)))) == 1  # public set: the secret is skipped
    with pytest.raises(JwkError, match="mixes"):
        parse_jwks(jwks(secret, rsa_jwk(RSA)), symmetric=True)


def test_key_set_lookup_rules() -> None:
    one = KeySet([VerificationKey(RSA.public_key(), kid="a")])
    assert one.get(None) is not None  # a single key serves a kid-less token
    assert one.get("b") is None
    anonymous = KeySet([VerificationKey(RSA.public_key())])
    assert anonymous.get("anything") is not None  # the issuer's only key, kid-less
    two = KeySet([VerificationKey(RSA.public_key(), kid="a"), VerificationKey(b"s" * 32, kid="b")])
    assert two.get(None) is None  # ambiguous
    assert two.get("b") is not None
    assert [k.kid for k in two] == ["a", "b"]


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://idp.example/.well-known/jwks.json", True),
        ("http://127.0.0.1:8080/jwks", True),
        ("http://127.9.9.9/jwks", True),
        ("http://[::1]:8080/jwks", True),
        ("http://localhost/jwks", True),
        ("http://idp.example/jwks", False),
        ("http://10.0.0.1/jwks", False),
        ("file:///etc/jwks.json", False),
        ("ftp://idp.example/jwks", False),
        ("https:///jwks", False),
        ("http://[::1/jwks", False),
    ],
)
def test_jwks_urls(url: str, ok: bool) -> None:
    assert (check_jwks_url(url) is None) is ok
    if not ok:
        with pytest.raises(ValueError, match="JWKS URL"):
            HttpKeySource(url)


async def test_static_keys() -> None:
    keys = StaticKeys([VerificationKey(b"s" * 32)])
    assert (await keys.get("whatever")).kty == "oct"
    assert keys.version == 1
    await keys.aclose()
    two = StaticKeys([VerificationKey(b"s" * 32, kid="a"), VerificationKey(b"t" * 32, kid="b")])
    with pytest.raises(Unauthenticated) as exc:
        await two.get(None)
    assert exc.value.reason == "unknown_key"


# -- the cache, with a fake source and a fake clock --------------------------------------------


class FakeSource:
    """Serves programmed documents; ``gate`` holds fetches until a test opens it."""

    description = "fake"

    def __init__(self, *docs: bytes | Exception) -> None:
        self.docs = list(docs)
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.closed = False

    async def fetch(self) -> bytes:
        self.calls += 1
        await self.gate.wait()
        doc = self.docs[0] if len(self.docs) == 1 else self.docs.pop(0)
        if isinstance(doc, Exception):
            raise doc
        return doc

    async def aclose(self) -> None:
        self.closed = True


KEYS_1 = jwks(rsa_jwk(RSA, "k1"))
OTHER = rsa.generate_private_key(65537, 2048)
KEYS_2 = jwks(rsa_jwk(RSA, "k1"), rsa_jwk(OTHER, "k2"))


def cache(
    source: FakeSource, clock: FakeClock, min_interval: float = 30.0, interval: float = 300.0
) -> JwksCache:
    return JwksCache(
        source, clock=clock, min_refresh_interval=min_interval, refresh_interval=interval
    )


async def test_first_lookups_share_one_fetch() -> None:
    src = FakeSource(KEYS_1)
    src.gate.clear()
    c = cache(src, FakeClock())
    waiters = [asyncio.ensure_future(c.get("k1")) for _ in range(50)]
    await asyncio.sleep(0)
    src.gate.set()
    keys = await asyncio.gather(*waiters)
    assert {k.kid for k in keys} == {"k1"}
    assert src.calls == 1
    assert c.fetches == 1
    assert c.version == 1


async def test_unknown_kid_flood_costs_one_fetch_per_interval() -> None:
    src = FakeSource(KEYS_1)
    clock = FakeClock()
    c = cache(src, clock, min_interval=30)
    await c.get("k1")
    assert src.calls == 1
    # a flood right after the first fetch: the interval has not passed, no fetch at all
    for i in range(1000):
        with pytest.raises(Unauthenticated) as exc:
            await c.get(f"forged-{i}")
        assert exc.value.reason == "unknown_key"
    assert src.calls == 1
    for _ in range(5):  # each interval: a concurrent flood shares exactly one fetch
        clock.advance(30)
        results = await asyncio.gather(
            *(c.get(f"forged-{i}") for i in range(200)), return_exceptions=True
        )
        assert all(isinstance(r, Unauthenticated) for r in results)
        clock.advance(10)
        for i in range(100):  # sequential misses inside the interval: no fetch
            with pytest.raises(Unauthenticated):
                await c.get(f"late-{i}")
    assert src.calls == 1 + 5


async def test_rotation_is_picked_up_on_an_unknown_kid() -> None:
    src = FakeSource(KEYS_1, KEYS_2)
    clock = FakeClock()
    c = cache(src, clock)
    await c.get("k1")
    with pytest.raises(Unauthenticated):
        await c.get("k2")  # too soon after the first fetch
    clock.advance(30)
    assert (await c.get("k2")).kid == "k2"
    assert c.version == 2


async def test_a_failed_refetch_keeps_the_last_good_set() -> None:
    src = FakeSource(KEYS_1, ConnectionError("down"), b"garbage", jwks(), jwks({"kty": "x"}))
    clock = FakeClock()
    c = cache(src, clock)
    await c.get("k1")
    for _ in range(4):
        clock.advance(30)
        with pytest.raises(Unauthenticated) as exc:
            await c.get("k2")
        assert exc.value.reason == "unknown_key"
        assert (await c.get("k1")).kid == "k1"  # still served
    assert c.failures == 4
    assert c.version == 1
    assert c.last_error is not None
    assert "no usable key" in c.last_error


async def test_keys_unavailable_until_a_fetch_succeeds() -> None:
    src = FakeSource(ConnectionError("refused"), KEYS_1)
    clock = FakeClock()
    c = cache(src, clock)
    for _ in range(3):  # the issuer is down, the token is not known to be bad: a 503
        with pytest.raises(ServiceUnavailable, match="refused"):
            await c.get("k1")
    assert src.calls == 1  # the failures are rate-limited too
    clock.advance(30)
    assert (await c.get("k1")).kid == "k1"
    assert src.calls == 2


async def test_an_old_set_is_refreshed_in_the_background() -> None:
    src = FakeSource(KEYS_1, KEYS_2)
    clock = FakeClock()
    c = cache(src, clock, interval=300)
    await c.get("k1")
    clock.advance(299)
    await c.get("k1")
    assert src.calls == 1
    clock.advance(1)
    src.gate.clear()
    key = await c.get("k1")  # served at once from the old set
    assert key.kid == "k1"
    assert src.calls == 1 or src.calls == 2
    await c.get("k1")  # the refresh is in flight: no second one
    src.gate.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert c.version == 2
    assert src.calls == 2
    assert c.keys is not None
    assert c.keys.get("k2") is not None


async def test_refresh_forces_a_fetch() -> None:
    src = FakeSource(KEYS_1, KEYS_2)
    c = cache(src, FakeClock())
    assert await c.refresh()
    assert await c.refresh()
    assert src.calls == 2


async def test_a_cancelled_waiter_does_not_cancel_the_shared_fetch() -> None:
    src = FakeSource(KEYS_1)
    src.gate.clear()
    c = cache(src, FakeClock())
    first = asyncio.ensure_future(c.get("k1"))
    second = asyncio.ensure_future(c.get("k1"))
    await asyncio.sleep(0)
    first.cancel()
    src.gate.set()
    assert (await second).kid == "k1"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert src.calls == 1


async def test_aclose_cancels_a_fetch_in_flight() -> None:
    src = FakeSource(KEYS_1)
    src.gate.clear()
    c = cache(src, FakeClock())
    waiter = asyncio.ensure_future(c.get("k1"))
    await asyncio.sleep(0)
    await c.aclose()
    assert src.closed
    with pytest.raises(ServiceUnavailable):
        await waiter  # the fetch was cancelled: no keys, but no CancelledError either


async def test_kidless_token_does_not_trigger_a_fetch() -> None:
    src = FakeSource(KEYS_2)
    clock = FakeClock()
    c = cache(src, clock)
    await c.get("k1")
    clock.advance(60)
    with pytest.raises(Unauthenticated) as exc:
        await c.get(None)
    assert exc.value.reason == "unknown_key"
    assert src.calls == 1


def test_cache_intervals_are_checked() -> None:
    with pytest.raises(ValueError, match="min_refresh_interval"):
        JwksCache(FakeSource(KEYS_1), min_refresh_interval=10, refresh_interval=5)


# -- a real HTTP server ------------------------------------------------------------------------


class Server:
    """A tiny threaded HTTP server on 127.0.0.1 that counts requests per path."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, dict[str, str], float]] = {}
        self.hits: Counter[str] = Counter()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits[self.path] += 1
                status, body, headers, delay = outer.routes.get(self.path, (404, b"", {}, 0.0))
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                for name, value in headers.items():
                    if name != "x-no-length":
                        self.send_header(name, value)
                if "x-no-length" not in headers:  # else HTTP/1.0: the body ends at close
                    self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def serve(
        self,
        path: str,
        body: bytes,
        status: int = 200,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> str:
        self.routes[path] = (status, body, headers or {}, delay)
        return self.base + path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


async def test_http_source_fetches(server: Server) -> None:
    src = HttpKeySource(server.serve("/jwks", KEYS_1))
    try:
        assert await src.fetch() == KEYS_1
    finally:
        await src.aclose()


@pytest.mark.parametrize(
    ("status", "body", "headers", "error"),
    [
        (500, b"oops", {}, "answered 500"),
        (302, b"", {"location": "/elsewhere"}, "answered 302"),  # redirects are not followed
        (200, b"x" * 5000, {}, "at most 4096"),  # content-length says too much
        (200, b"x" * 5000, {"x-no-length": "1"}, "more than 4096"),  # no length: counted
    ],
)
async def test_http_source_refuses(
    server: Server, status: int, body: bytes, headers: dict[str, str], error: str
) -> None:
    server.serve("/elsewhere", KEYS_1)
    src = HttpKeySource(server.serve("/jwks", body, status=status, headers=headers), max_bytes=4096)
    try:
        with pytest.raises(Exception, match=error):
            await src.fetch()
    finally:
        await src.aclose()
    assert server.hits["/elsewhere"] == 0


async def test_http_source_has_a_total_timeout(server: Server) -> None:
    src = HttpKeySource(server.serve("/slow", KEYS_1, delay=1.0), timeout=0.2)
    try:
        with pytest.raises((TimeoutError, Exception)):
            await src.fetch()
    finally:
        await src.aclose()


async def test_unknown_kid_flood_against_a_real_server(server: Server) -> None:
    url = server.serve("/jwks", KEYS_1)
    clock = FakeClock()
    c = JwksCache(HttpKeySource(url), clock=clock, min_refresh_interval=30, refresh_interval=600)
    try:
        assert (await c.get("k1")).kid == "k1"
        for interval in range(3):
            results = await asyncio.gather(
                *(c.get(f"made-up-{interval}-{i}") for i in range(300)), return_exceptions=True
            )
            assert all(
                isinstance(r, Unauthenticated) and r.reason == "unknown_key" for r in results
            )
            assert server.hits["/jwks"] == 1 + interval
            clock.advance(30)
        # the issuer rotates; then its endpoint fails: the last good set stays
        server.serve("/jwks", KEYS_2)
        assert (await c.get("k2")).kid == "k2"
        server.serve("/jwks", b"", status=503)
        clock.advance(30)
        with pytest.raises(Unauthenticated):
            await c.get("k3")
        assert (await c.get("k2")).kid == "k2"
        assert c.failures == 1
        assert "503" in (c.last_error or "")
    finally:
        await c.aclose()


async def test_file_source(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(KEYS_2)
    c = JwksCache(FileKeySource(path), clock=FakeClock())
    assert (await c.get("k2")).kid == "k2"
    await c.aclose()
    path.write_bytes(b" " * 2048)
    with pytest.raises(JwkError, match="larger than 1024"):
        await FileKeySource(path, max_bytes=1024).fetch()
    with pytest.raises(FileNotFoundError):
        await FileKeySource(tmp_path / "missing.json").fetch()
