"""Header hygiene: what is stripped inbound, what goes upstream, what goes back."""

from __future__ import annotations

import pytest

from garrison.gateway._headers import (
    HeaderPolicy,
    forwarded_headers,
    normalize,
    parse_cookies,
    read_request,
    read_response,
    render_cookie,
    strip_credentials,
)
from garrison.identity import Credential, CredentialKind, IdentityAction

POLICY = HeaderPolicy.create()


@pytest.mark.parametrize(
    "name",
    [
        b"garrison-passport",
        b"Garrison-Passport",
        b"GARRISON-PASSPORT",
        b" garrison-passport",
        b"garrison-passport\t",
        b"garrison_passport",
        b"x-garrison-passport",
        b"garrison-identity-action",
        b"garrison-caller",
        b"garrison-anything-new",
    ],
)
def test_internal_headers_are_stripped_in_any_spelling(name: bytes) -> None:
    got = read_request([(name, b"forged"), (b"accept", b"*/*")], POLICY)
    assert got.kept == [(b"accept", b"*/*")]
    assert got.stripped == 1
    assert all(not k.startswith("garrison") for k in got.credentials.headers)


def test_the_passport_can_never_be_let_through() -> None:
    policy = HeaderPolicy.create(passed=["garrison-criticality", "garrison-passport"])
    got = read_request(
        [(b"garrison-criticality", b"critical"), (b"garrison-passport", b"x")], policy
    )
    assert got.kept == [(b"garrison-criticality", b"critical")]


def test_configured_headers_are_stripped_too() -> None:
    got = read_request(
        [(b"x-internal-user", b"admin")], HeaderPolicy.create(stripped=["x-internal-user"])
    )
    assert got.kept == []


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    got = read_request(
        [
            (b"connection", b"keep-alive, X-Secret"),
            (b"x-secret", b"1"),
            (b"keep-alive", b"timeout=5"),
            (b"te", b"trailers"),
            (b"upgrade", b"h2c"),
            (b"transfer-encoding", b"chunked"),
            (b"host", b"edge.example"),
            (b"expect", b"100-continue"),
            (b"x-kept", b"yes"),
        ],
        POLICY,
    )
    assert got.kept == [(b"x-kept", b"yes")]
    assert got.chunked
    assert got.host == b"edge.example"
    assert "x-secret" not in got.credentials.headers


def test_forwarding_headers_are_replaced_unless_trusted() -> None:
    raw = [(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-proto", b"https"), (b"host", b"h")]
    untrusted = read_request(raw, POLICY)
    out = dict(forwarded_headers(untrusted, client=("10.0.0.1", 1), scheme="http", prefix=None))
    assert out == {
        b"x-forwarded-for": b"10.0.0.1",
        b"x-forwarded-proto": b"http",
        b"x-forwarded-host": b"h",
    }
    trusted = read_request(raw, HeaderPolicy.create(trust_forwarded=True))
    out = dict(forwarded_headers(trusted, client=("10.0.0.1", 1), scheme="http", prefix="/api"))
    assert out[b"x-forwarded-for"] == b"6.6.6.6, 10.0.0.1"
    assert out[b"x-forwarded-proto"] == b"https"
    assert out[b"x-forwarded-prefix"] == b"/api"


def test_credentials_seen_by_resolvers() -> None:
    got = read_request(
        [
            (b"authorization", b"Bearer abc"),
            (b"cookie", b'a=1; s="quoted"'),
            (b"cookie", b"a=2; b=3"),
            (b"x-api-key", b"k1"),
            (b"x_api_key", b"posing"),
            (b"content-length", b"12"),
        ],
        POLICY,
    )
    creds = got.credentials
    assert creds.headers["authorization"] == "Bearer abc"
    assert creds.headers["x-api-key"] == "k1"  # x_api_key does not pose as x-api-key
    assert creds.cookies == {"a": "1", "s": "quoted", "b": "3"}  # the first of a name wins
    assert got.content_length == b"12"
    assert (b"content-length", b"12") not in got.kept  # the proxy sets it


def test_conflicting_content_lengths() -> None:
    got = read_request([(b"content-length", b"1"), (b"content-length", b"2")], POLICY)
    assert got.content_length == b"conflict"


def test_size_and_count() -> None:
    got = read_request([(b"a", b"12"), (b"bb", b"3")], POLICY)
    assert (got.size, got.count) == (6, 2)


def test_parse_cookies_ignores_junk() -> None:
    assert parse_cookies("; =x; novalue; a=1;;b = 2 ") == {"a": "1", "b": "2"}


def test_strip_credentials() -> None:
    creds = [
        Credential(kind=CredentialKind.SESSION, value="sealed-cookie", resolver="s"),
        Credential(kind=CredentialKind.DEVICE_TOKEN, value="dev.tok", resolver="d"),
        Credential(kind=CredentialKind.CLIENT_CERT, value="", resolver="c"),
    ]
    headers = [
        (b"authorization", b"Bearer whatever"),
        (b"cookie", b"theme=dark; sess=sealed-cookie; lang=en"),
        (b"x-device-token", b"dev.tok"),
        (b"x-device-id", b"d1"),
        (b"accept", b""),
    ]
    assert strip_credentials(headers, creds) == [
        (b"cookie", b"theme=dark; lang=en"),
        (b"x-device-id", b"d1"),
        (b"accept", b""),
    ]
    quoted = [(b"cookie", b'sess="sealed-cookie"; a=1')]
    assert strip_credentials(quoted, creds) == [(b"cookie", b"a=1")]
    only_session = [(b"cookie", b"sess=sealed-cookie")]
    assert strip_credentials(only_session, creds) == []


def test_read_response() -> None:
    headers, actions = read_response(
        [
            (b"Content-Type", b"text/plain"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
            (b"Connection", b"x-hop"),
            (b"X-Hop", b"1"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Garrison-Passport", b"leak"),
            (b"garrison-identity-action", b"renew-session, end-session"),
            (b"garrison-identity-action", b"other"),
        ]
    )
    assert headers == [
        (b"content-type", b"text/plain"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]
    assert actions == ["renew-session", "end-session", "other"]


def test_render_cookie() -> None:
    set_ = IdentityAction(kind="set_cookie", name="__Host-s", value="v1.k.-.abc", max_age=60)
    assert render_cookie(set_, secure=False, samesite="lax") == (
        b"__Host-s=v1.k.-.abc; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=60"
    )
    clear = IdentityAction(kind="clear_cookie", name="s", max_age=0)
    assert render_cookie(clear, secure=True, samesite="strict") == (
        b"s=; Path=/; HttpOnly; SameSite=Strict; Secure; Max-Age=0"
    )
    assert (
        render_cookie(IdentityAction(kind="launch", name="s"), secure=True, samesite="lax") is None
    )
    bad = IdentityAction(kind="set_cookie", name="s", value="a;b")
    assert render_cookie(bad, secure=True, samesite="lax") is None
    assert (
        render_cookie(IdentityAction(kind="set_cookie", name="s s"), secure=True, samesite="lax")
        is None
    )


def test_normalize() -> None:
    assert normalize(b" Garrison_Passport\t") == b"garrison-passport"
