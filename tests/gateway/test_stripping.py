"""Property: an inbound passport header never reaches an upstream, whatever the route.

For every route (each auth mode, with and without scopes, prefix stripped or not) and any
credentials (none, valid, invalid, user and device), inbound passport and internal headers in
any spelling (case, repetition, surrounding whitespace, ``_`` for ``-``) are sent; the
upstream must see either nothing (the request was refused) or exactly one passport: the one
the gateway minted, which verifies, and none of the forged values anywhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from garrison.gateway import AiohttpUpstream, RecordingUpstream
from garrison.identity import TrustLevel

from .conftest import TestUpstream, call, device, make_gateway, passport_of, serve, stub_edge, user

MODES = ["anonymous", "user", "device", "user_or_device"]
ROUTES: list[dict[str, Any]] = []
for mode in MODES:
    ROUTES.append({"prefix": f"/{mode}", "service": "up", "auth": mode})
    ROUTES.append(
        {"prefix": f"/{mode}-strict", "service": "up", "auth": mode, "strip_prefix": True}
        | ({"scopes": ["read"], "roles": ["ops"]} if mode != "anonymous" else {})
    )
ROUTES.append({"prefix": "/open", "service": "up", "auth": "anonymous", "ignore_invalid": True})
PATHS = [r["prefix"] + "/x" for r in ROUTES]

EDGE_TOKENS = {
    "alice": user("alice", scopes=["read"], roles=["ops"]),
    "bob": user("bob"),
    "d1": device("d1"),
    "d0": device("d0", trust=TrustLevel.UNKNOWN),
}

INTERNAL = [
    "garrison-passport",
    "garrison-identity-action",
    "x-garrison-passport",
    "garrison-caller",
]


@st.composite
def spelling(draw: st.DrawFn, name: str) -> bytes:
    chars = [
        draw(st.sampled_from(["-", "_"])) if c == "-" else draw(st.sampled_from([c, c.upper()]))
        for c in name
    ]
    left = draw(st.sampled_from(["", " ", "\t", "  "]))
    right = draw(st.sampled_from(["", " ", "\t"]))
    return f"{left}{''.join(chars)}{right}".encode()


forged_values = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40
).map(lambda v: ("FORGED" + v).encode())

forged_headers = st.lists(
    st.tuples(st.sampled_from(INTERNAL).flatmap(spelling), forged_values), min_size=1, max_size=6
)

credentials = st.lists(
    st.sampled_from(
        [
            (b"authorization", b"Stub alice"),
            (b"authorization", b"Stub bob"),
            (b"authorization", b"Stub nobody"),
            (b"authorization", b"Bearer garbage"),
            (b"x-device", b"d1"),
            (b"x-device", b"d0"),
            (b"x-device", b"unknown-device"),
        ]
    ),
    max_size=2,
    unique_by=lambda h: h[0],
)


def check_upstream_saw(
    headers: list[tuple[bytes, bytes]], forged: list[tuple[bytes, bytes]]
) -> None:
    passport_of(headers)  # exactly one, and it verifies with the edge's key
    everything = b"\n".join(k + b":" + v for k, v in headers)
    for _, value in forged:
        assert value not in everything
    for name, _ in headers:
        n = name.strip().lower().replace(b"_", b"-")
        assert n == b"garrison-passport" or not n.startswith((b"garrison-identity", b"x-garrison"))


@pytest.mark.parametrize("path", PATHS)
@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(forged=forged_headers, creds=credentials, order=st.randoms(use_true_random=False))
async def test_no_inbound_passport_reaches_the_upstream(
    path: str, forged: list[tuple[bytes, bytes]], creds: list[tuple[bytes, bytes]], order: Any
) -> None:
    upstream = RecordingUpstream()
    gateway = make_gateway(ROUTES, edge=stub_edge(**EDGE_TOKENS), upstream=upstream)
    headers = [*forged, *creds, (b"accept", b"*/*")]
    order.shuffle(headers)
    answer = await call(gateway, "GET", path, headers)
    if answer.status == 200:
        (seen,) = upstream.requests
        check_upstream_saw(seen.headers, forged)
    else:
        assert answer.status in (401, 403), answer.body
        assert upstream.requests == []
    await gateway.aclose()


def test_every_mode_lets_some_request_through() -> None:
    """The property above is not vacuous: each route passes with the right credentials."""

    async def run() -> None:
        upstream = RecordingUpstream()
        gateway = make_gateway(ROUTES, edge=stub_edge(**EDGE_TOKENS), upstream=upstream)
        for path in PATHS:
            answer = await call(
                gateway,
                "GET",
                path,
                [
                    (b"authorization", b"Stub alice"),
                    (b"x-device", b"d1"),
                    (b"GARRISON-PASSPORT", b"F"),
                ],
            )
            assert answer.status == 200, (path, answer.body)
        assert len(upstream.requests) == len(PATHS)
        await gateway.aclose()

    asyncio.run(run())


# -- the same over real sockets --------------------------------------------------------------


@pytest.fixture
async def real() -> AsyncIterator[tuple[str, TestUpstream]]:
    up = TestUpstream()
    async with serve(up) as url:
        gateway = make_gateway(
            ROUTES, edge=stub_edge(**EDGE_TOKENS), upstream=AiohttpUpstream(), urls={"up": [url]}
        )
        async with serve(gateway, lifespan="on") as gw:
            yield gw, up


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(PATHS),
    forged=st.lists(
        st.tuples(
            st.sampled_from(INTERNAL).flatmap(spelling).map(lambda b: b.strip()),
            forged_values,
        ),
        min_size=1,
        max_size=4,
    ),
)
async def test_over_real_sockets(
    real: tuple[str, TestUpstream], path: str, forged: list[tuple[bytes, bytes]]
) -> None:
    gw, up = real
    before = len(up.seen)
    host = gw.removeprefix("http://")
    lines = [f"GET {path} HTTP/1.1".encode(), f"Host: {host}".encode()]
    lines += [b"Authorization: Stub alice", b"X-Device: d1", b"Connection: close"]
    lines += [name + b": " + value for name, value in forged]
    reader, writer = await asyncio.open_connection(*host.split(":"))
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert response.startswith(b"HTTP/1.1 200"), response[:300]
    assert len(up.seen) == before + 1
    check_upstream_saw(up.seen[-1].headers, forged)


async def test_a_passport_sent_by_an_upstream_never_reaches_the_client(
    real: tuple[str, TestUpstream],
) -> None:
    gw, _ = real
    async with httpx.AsyncClient(base_url=gw) as client:
        r = await client.get("/user/status/200", headers={"authorization": "Stub alice"})
    assert r.status_code == 200
    assert "garrison-passport" not in r.headers
