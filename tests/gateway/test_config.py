"""``[gateway]``: defaults, and bad configuration rejected with an error naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from garrison.core import ConfigError, parse_config
from garrison.gateway import GatewayConfig, RouteConfig
from garrison.identity import Assurance, TrustLevel

SERVICES = {"api": {"app": "m:svc", "port": 9100}, "web": {"app": "m:web", "port": 9200}}


def load(gateway: dict[str, Any], env: dict[str, str] | None = None, **kw: Any) -> Any:
    config = parse_config({"services": SERVICES, "gateway": gateway}, env=env or {})
    return GatewayConfig.from_config(config, **kw)


def test_defaults() -> None:
    gw, routes = load({})
    assert (gw.host, gw.port, gw.timeout, routes) == ("127.0.0.1", 8080, 30.0, [])
    assert gw.limits.max_body_bytes == 10 * 1024 * 1024
    assert gw.auth_clients == ["127.0.0.1", "::1"]


def test_routes_and_their_rules() -> None:
    _, routes = load(
        {
            "routes": [
                {"prefix": "/api", "service": "api", "scopes": ["a:read"], "min_assurance": "aal2"},
                {"prefix": "/dev", "service": "api", "auth": "device", "device_trust": "attested"},
                {"prefix": "/", "service": "web", "auth": "anonymous", "ignore_invalid": True},
            ]
        }
    )
    api, dev, web = (r.rule() for r in routes)
    assert (api.auth, api.scopes, api.min_assurance) == ("user", ("a:read",), Assurance.AAL2)
    assert (dev.auth, dev.device_trust) == ("device", TrustLevel.ATTESTED)
    assert web.allows_anonymous


def test_environment_overrides_reach_the_gateway() -> None:
    gw, _ = load({}, env={"GARRISON_GATEWAY__PORT": "9999", "GARRISON_GATEWAY__TIMEOUT": "2.5"})
    assert (gw.port, gw.timeout) == (9999, 2.5)


@pytest.mark.parametrize(
    ("gateway", "key", "text"),
    [
        ({"prot": 1}, "gateway.prot", "unknown key"),
        ({"port": 0}, "gateway.port", ">= 1"),
        ({"port": 9100}, "gateway.port", "also used by service 'api'"),
        ({"timeout": -1}, "gateway.timeout", "> 0"),
        ({"limits": {"max_headers": 1}}, "gateway.limits.max_headers", ">= 8"),
        ({"limits": {"max_body": 1}}, "gateway.limits.max_body", "unknown key"),
        ({"pass_headers": ["garrison-passport"]}, "gateway.pass_headers.0", "always stripped"),
        ({"strip_headers": ["X Bad"]}, "gateway.strip_headers.0", "lowercase header"),
        ({"cookie_samesite": "sometimes"}, "gateway.cookie_samesite", "'lax'"),
        ({"routes": [{"service": "api"}]}, "gateway.routes.0.prefix", "missing required key"),
        ({"routes": [{"prefix": "api"}]}, "gateway.routes.0.prefix", "starting with '/'"),
        ({"routes": [{"prefix": "/a/../b"}]}, "gateway.routes.0.prefix", "'..'"),
        ({"routes": [{"prefix": "/a/"}]}, "gateway.routes.0.prefix", "trailing"),
        ({"routes": [{"prefix": "/_garrison/x"}]}, "gateway.routes.0.prefix", "gateway's own"),
        ({"routes": [{"prefix": "/a", "auth": "admin"}]}, "gateway.routes.0.auth", "'anonymous'"),
        (
            {"routes": [{"prefix": "/a", "auth": "anonymous", "scopes": ["x"]}]},
            "gateway.routes.0.auth",
            "need an identity",
        ),
        (
            {"routes": [{"prefix": "/a", "ignore_invalid": True}]},
            "gateway.routes.0.ignore_invalid",
            "anonymous",
        ),
        (
            {"routes": [{"prefix": "/a", "min_assurance": 7}]},
            "gateway.routes.0.min_assurance",
            "0-3",
        ),
        (
            {"routes": [{"prefix": "/a", "auth": "anonymous", "min_assurance": 1}]},
            "gateway.routes.0.min_assurance",
            "cannot require",
        ),
        (
            {"routes": [{"prefix": "/a", "min_assurance": "high"}]},
            "gateway.routes.0.min_assurance",
            "aal2",
        ),
        (
            {"routes": [{"prefix": "/a", "device_trust": "x"}]},
            "gateway.routes.0.device_trust",
            "attested",
        ),
        (
            {"routes": [{"prefix": "/a", "methods": ["get"]}]},
            "gateway.routes.0.methods.0",
            "upper-case",
        ),
        (
            {"routes": [{"prefix": "/a", "scopes": ["a b"]}]},
            "gateway.routes.0.scopes.0",
            "without spaces",
        ),
        ({"routes": [{"prefix": "/a", "timeout": 0}]}, "gateway.routes.0.timeout", "> 0"),
        (
            {"routes": [{"prefix": "/a", "service": "nope"}]},
            "gateway.routes.0.service",
            "declared: api, web",
        ),
        (
            {"routes": [{"prefix": "/a", "service": "api"}, {"prefix": "/a", "service": "web"}]},
            "gateway.routes.1",
            "already route 0",
        ),
        ({"routes": [{"prefix": "/a", "colour": "red"}]}, "gateway.routes.0.colour", "unknown key"),
        ({"routes": "all"}, "gateway.routes", "array"),
    ],
)
def test_bad_configuration_names_the_key(gateway: dict[str, Any], key: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(gateway)
    assert info.value.key == key, str(info.value)
    assert text in str(info.value)


def test_unknown_resolvers_are_named() -> None:
    with pytest.raises(ConfigError) as info:
        load(
            {"routes": [{"prefix": "/a", "resolvers": ["jwt", "sesion"]}]},
            resolvers={"jwt", "session"},
        )
    assert info.value.key == "gateway.routes.0.resolvers.1"
    assert "known: jwt, session" in str(info.value)


def test_route_config_in_code() -> None:
    r = RouteConfig(prefix="/x", min_assurance=2)
    assert r.rule().min_assurance == Assurance.AAL2
    with pytest.raises(ConfigError):
        RouteConfig(prefix="x")
