"""Route matching, path hygiene and the path sent upstream."""

from __future__ import annotations

import pytest

from garrison.gateway import RouteConfig
from garrison.gateway._routes import Route, RouteTable, bad_path, upstream_path


def table(*prefixes: str) -> RouteTable:
    return RouteTable(RouteConfig(prefix=p, service="s") for p in prefixes)


@pytest.mark.parametrize(
    ("path", "prefix"),
    [
        ("/api", "/api"),
        ("/api/", "/api"),
        ("/api/x", "/api"),
        ("/api/v2", "/api/v2"),
        ("/api/v2/x", "/api/v2"),
        ("/apix", "/"),
        ("/", "/"),
        ("/other", "/"),
    ],
)
def test_longest_prefix_on_segment_boundaries(path: str, prefix: str) -> None:
    route = table("/", "/api", "/api/v2").match(path)
    assert route is not None
    assert route.prefix == prefix


def test_no_match_without_a_root_route() -> None:
    assert table("/api").match("/apix") is None


@pytest.mark.parametrize(
    "path",
    ["/a/../b", "/a/./b", "/..", "/a/..", "//a", "/a//b", "a", "/a\\b", "/a\x00"],
)
def test_bad_paths(path: str) -> None:
    assert bad_path(path) is not None


@pytest.mark.parametrize("path", ["/", "/a", "/a/b/", "/a/..b", "/a/.well-known", "/%2e"])
def test_good_paths(path: str) -> None:
    assert bad_path(path) is None


def route(prefix: str, strip: bool) -> Route:
    return Route.compile(RouteConfig(prefix=prefix, service="s", strip_prefix=strip))


@pytest.mark.parametrize(
    ("prefix", "strip", "path", "raw", "want"),
    [
        ("/api", False, "/api/x", b"/api/x", b"/api/x"),
        ("/api", True, "/api/x", b"/api/x", b"/x"),
        ("/api", True, "/api", b"/api", b"/"),
        ("/api", True, "/api/a/b", b"/api/a%2Fb", b"/a%2Fb"),  # the client's encoding is kept
        ("/api", True, "/api/x y", b"/%61pi/x%20y", b"/x%20y"),  # prefix encoded: rebuilt
        ("/", True, "/x", b"/x", b"/x"),
        ("/api", False, "/api/é", None, b"/api/%C3%A9"),
    ],
)
def test_upstream_path(prefix: str, strip: bool, path: str, raw: bytes | None, want: bytes) -> None:
    assert upstream_path(route(prefix, strip), path, raw) == want
