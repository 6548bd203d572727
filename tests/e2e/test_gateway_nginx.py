"""Behind a real proxy: nginx ``auth_request`` asks the garrison gateway, a garrison service
verifies the passport nginx forwards.

    client -> nginx :N ---- auth_request ---> garrison gateway :G /_garrison/auth
                    \\-- proxy_pass + garrison-passport --> whoami service :S

Also the gateway as the proxy itself (client -> gateway -> service), all real processes on
loopback. nginx is Debian's package (``.ci/run`` installs it); without it the test is skipped,
except in CI where it fails.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt as pyjwt
import pytest

from garrison.identity._keys import Keyring
from garrison.identity._passport import PassportCodec

from ._procs import free_port_block, run_processes, service_argv, wait_ready

pytestmark = pytest.mark.e2e

APP = Path(__file__).parent / "gateway_app"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PASSPORT_KEY = b"e2e-passport-key-of-32-bytes!!!!"
JWT_SECRET = "e2e-jwt-secret-" + "x" * 40
CODEC = PassportCodec(Keyring.hmac({"e2e": PASSPORT_KEY}, active="e2e"))

NGINX_CONF = """
worker_processes 1;
user root;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 128; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    upstream whoami {{ server 127.0.0.1:{service}; keepalive 8; }}

    server {{
        listen 127.0.0.1:{port};

        # Every request asks the garrison gateway first: the original method and URI, every
        # header of the client, no body.
        location = /_garrison_auth {{
            internal;
            proxy_pass http://127.0.0.1:{gateway}/_garrison/auth;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
        }}

        location / {{
            auth_request /_garrison_auth;
            auth_request_set $garrison_passport $upstream_http_garrison_passport;
            auth_request_set $garrison_cookie $upstream_http_set_cookie;
            add_header Set-Cookie $garrison_cookie;
            # Replaces whatever garrison-passport the client sent; the credential stays here.
            proxy_set_header garrison-passport $garrison_passport;
            proxy_set_header Authorization "";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://whoami;
        }}
    }}
}}
"""


@dataclass
class Stack:
    nginx: str
    gateway: str
    service: str


def token(**over: object) -> str:
    claims = {
        "iss": "https://corp.example",
        "aud": "fleet",
        "sub": "alice",
        "exp": int(time.time()) + 300,
        "scope": "read",
        **over,
    }
    return pyjwt.encode(claims, JWT_SECRET, algorithm="HS256")


def bearer(**over: object) -> dict[str, str]:
    return {"authorization": f"Bearer {token(**over)}"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not os.path.exists(NGINX):
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed; .ci/run installs it (apt-get install nginx)")
        pytest.skip("nginx is not installed (apt-get install nginx); CI runs this test")
    base = free_port_block(3)
    service, gateway, port = base, base + 1, base + 2
    data = tmp_path_factory.mktemp("gateway-e2e")
    env = {
        "GARRISON_SERVICES__WHOAMI__PORT": str(service),
        "GARRISON_GATEWAY__PORT": str(gateway),
        "GARRISON_APP__DATA_DIR": str(data),
        "GW_E2E_PASSPORT_KEY": base64.urlsafe_b64encode(PASSPORT_KEY).decode(),
        "GW_E2E_JWT_SECRET": JWT_SECRET,
        "PYTHONPATH": str(APP),
    }
    prefix = tmp_path_factory.mktemp("nginx")
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, gateway=gateway, service=service))
    argvs = [
        service_argv(APP, "whoami"),
        [*service_argv(APP, "whoami")[:3], "gateway", str(APP)],
    ]
    s = Stack(
        f"http://127.0.0.1:{port}", f"http://127.0.0.1:{gateway}", f"http://127.0.0.1:{service}"
    )
    with run_processes(argvs, env):
        wait_ready([s.service])
        wait_ready([s.gateway], path="/_garrison/healthz")
        check = subprocess.run(
            [NGINX, "-t", "-c", str(conf), "-p", str(prefix)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stderr
        with run_processes([[NGINX, "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"]], {}):
            wait_ready([s.nginx], path="/public/ping")
            yield s


def test_nginx_forwards_the_passport_the_gateway_minted(stack: Stack) -> None:
    r = httpx.get(
        stack.nginx + "/api/sites/7",
        headers={**bearer(), "garrison-passport": "forged", "x-garrison-passport": "forged"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["subject"] == "alice"  # the service verified the passport itself
    assert seen["scopes"] == ["read"]
    assert seen["authorization"] is None  # the credential stayed at the edge
    (forwarded,) = seen["passport_headers"]  # one passport, not the client's
    passport = CODEC.verify(forwarded)
    assert passport.user is not None
    assert passport.user.subject == "alice"
    assert passport.txn == seen["txn"]


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/api/sites", {}, 401),
        ("/api/sites", {"garrison-passport": "forged"}, 401),
        ("/api/sites", {"authorization": "Bearer not.a.jwt"}, 401),
        ("/api/sites", {"authorization": f"Bearer {token(exp=int(time.time()) - 600)}"}, 401),
        ("/api/sites", {"authorization": f"Bearer {token(scope='write')}"}, 403),
        ("/api/admin/users", {"authorization": f"Bearer {token()}"}, 403),
    ],
)
def test_nginx_denies_what_the_gateway_denies(
    stack: Stack, path: str, headers: dict[str, str], status: int
) -> None:
    r = httpx.get(stack.nginx + path, headers=headers, timeout=10)
    assert r.status_code == status, r.text


@pytest.mark.parametrize("path", ["/public/../api/admin/x", "/public/%2e%2e/api/admin/x"])
def test_dot_segments_cannot_move_a_request_to_another_route(stack: Stack, path: str) -> None:
    # nginx normalises the path it proxies, but hands the gateway the URI as sent: a request
    # that would be checked as /public and served as /api/admin is refused.
    host, port = stack.nginx.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    assert raw.split(b" ", 2)[1] == b"403", raw[:200]


def test_anonymous_routes_get_an_anonymous_passport(stack: Stack) -> None:
    r = httpx.get(stack.nginx + "/public/hello", headers={"garrison-passport": "forged"})
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["anonymous"] is True
    (forwarded,) = seen["passport_headers"]
    assert CODEC.verify(forwarded).anonymous


def test_the_gateway_as_the_proxy(stack: Stack) -> None:
    with httpx.Client(base_url=stack.gateway, timeout=10) as client:
        r = client.get("/api/sites/7", headers={**bearer(), "GARRISON-PASSPORT": "forged"})
        assert r.status_code == 200, r.text
        seen = r.json()
        assert seen["subject"] == "alice"
        (forwarded,) = seen["passport_headers"]
        assert CODEC.verify(forwarded).user is not None
        body = os.urandom(2 * 1024 * 1024)
        r = client.post("/api/upload", content=body, headers=bearer())
        assert r.json() == {"received": len(body), "subject": "alice"}
        r = client.get("/api/sites")
        assert r.status_code == 401
        assert r.json()["detail"] == [{"reason": "credential_missing"}]


def test_a_service_rejects_a_forged_passport_sent_to_it_directly(stack: Stack) -> None:
    # What the gateway and nginx prevent at the edge, the service refuses on its own.
    r = httpx.get(stack.service + "/api/sites", headers={"garrison-passport": "forged"})
    assert r.status_code == 401
