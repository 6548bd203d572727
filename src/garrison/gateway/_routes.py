"""Route matching and path hygiene (no I/O).

A path is matched on its *decoded* form (what ASGI calls ``path``), on segment boundaries,
longest prefix first. Before matching, a path with a dot segment (``/a/../b``, ``/a/./b``,
which an upstream might normalise into a route with weaker rules) or an empty segment
(``//``) is refused: the route that was checked must be the route that is served.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from garrison.identity._edge import AccessRule

from ._config import RouteConfig

__all__ = ["Route", "RouteTable", "bad_path", "upstream_path"]

_SAFE = "/:@!$&'()*+,;=-._~"


@dataclass(frozen=True, slots=True)
class Route:
    """A compiled route."""

    config: RouteConfig
    """As configured."""
    rule: AccessRule
    """Its identity requirements."""
    prefix: str
    """The prefix, with ``/`` for the root route."""
    methods: frozenset[str]
    """Allowed methods; empty: any."""
    resolvers: frozenset[str] | None
    """Resolvers allowed to authenticate here; None: all."""

    @classmethod
    def compile(cls, config: RouteConfig) -> Route:
        """The route for ``config``."""
        return cls(
            config=config,
            rule=config.rule(),
            prefix=config.prefix,
            methods=frozenset(config.methods),
            resolvers=None if config.resolvers is None else frozenset(config.resolvers),
        )

    def matches(self, path: str) -> bool:
        """Whether ``path`` lies under this route's prefix, on a segment boundary."""
        p = self.prefix
        if p == "/":
            return True
        return path == p or (path.startswith(p) and path[len(p)] == "/")


class RouteTable:
    """Routes by prefix, longest first."""

    def __init__(self, routes: Iterable[RouteConfig]) -> None:
        compiled = [Route.compile(r) for r in routes]
        self.routes: Sequence[Route] = sorted(compiled, key=lambda r: len(r.prefix), reverse=True)

    def match(self, path: str) -> Route | None:
        """The route serving ``path`` (decoded), or None."""
        for route in self.routes:
            if route.matches(path):
                return route
        return None


def bad_path(path: str) -> str | None:
    """Why ``path`` (decoded) is refused, or None when it is fine."""
    if not path.startswith("/"):
        return "the path must start with '/'"
    if "//" in path:
        return "the path has an empty segment ('//')"
    for segment in path.split("/"):
        if segment in (".", ".."):
            return "the path has a '.' or '..' segment"
    if any(c in path for c in "\x00\r\n\\"):
        return "the path has a control character or a backslash"
    return None


def upstream_path(route: Route, path: str, raw_path: bytes | None) -> bytes:
    """The path sent upstream (still percent-encoded), with the prefix removed when the route
    says so. The client's encoding is kept where it can be (``%2F`` stays ``%2F``)."""
    raw = raw_path if raw_path else quote(path, safe=_SAFE).encode("ascii")
    if not route.config.strip_prefix or route.prefix == "/":
        return raw
    prefix = route.prefix.encode("ascii")
    if raw.startswith(prefix) and (len(raw) == len(prefix) or raw[len(prefix)] == 0x2F):
        rest = raw[len(prefix) :]
    else:  # the client percent-encoded part of the prefix: rebuild from the decoded path
        rest = quote(path[len(route.prefix) :], safe=_SAFE).encode("ascii")
    return rest if rest.startswith(b"/") else b"/" + rest
