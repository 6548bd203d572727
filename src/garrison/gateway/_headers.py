"""Header hygiene at the edge (no I/O): what comes in, what goes upstream, what goes back.

Inbound, one pass over the request's headers (:func:`read_request`) sorts each header:

* **internal** headers are dropped unconditionally, *before anything reads them*: every
  ``garrison-*`` and ``x-garrison-*`` header (the passport, identity actions, the caller, ...)
  except those the configuration lets through, and never ``garrison-passport`` nor
  ``garrison-identity-*``. Names are compared after trimming whitespace, lowercasing and
  reading ``_`` as ``-`` (as some servers do), so no spelling of the passport header
  survives;
* **hop-by-hop** headers (RFC 9110 §7.6.1, plus those the Connection header names) are
  dropped; so are ``host`` and ``expect`` (the upstream connection has its own);
* **forwarding** headers (``x-forwarded-*``, ``forwarded``, ``x-real-ip``) are dropped unless
  the gateway trusts the proxy in front of it; :func:`forwarded_headers` sets them afresh;
* the rest is kept, and also read into the :class:`RequestCredentials` resolvers look at.

Outbound to the client (:func:`read_response`), hop-by-hop headers and the passport are
dropped and ``garrison-identity-action`` values are taken out for the edge to execute.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from garrison.core import DEADLINE_HEADER
from garrison.identity import Credential, IdentityAction, RequestCredentials
from garrison.identity._edge import IDENTITY_ACTION_HEADER

__all__ = [
    "HOP_BY_HOP",
    "HeaderPolicy",
    "InboundHeaders",
    "forwarded_headers",
    "normalize",
    "read_request",
    "read_response",
    "render_cookie",
    "strip_credentials",
]

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
"""Headers of one connection, never forwarded (RFC 9110 §7.6.1)."""
_ALSO_DROPPED = frozenset({b"host", b"expect"})
_FORWARDING = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"forwarded",
        b"x-real-ip",
    }
)
_INTERNAL_PREFIXES = (b"garrison-", b"x-garrison-")
_NEVER_PASSED = (b"garrison-passport", b"garrison-identity-")
_DEADLINE = DEADLINE_HEADER.encode()
_ACTION = IDENTITY_ACTION_HEADER.encode()
_COOKIE_VALUE = re.compile(r"^[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*\Z")  # RFC 6265
_COOKIE_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}\Z")
_WS = b" \t"


def normalize(name: bytes) -> bytes:
    """A header name as compared here: trimmed, lowercase, ``_`` read as ``-``."""
    return name.strip(b" \t\r\n\x0b\x0c").lower().replace(b"_", b"-")


@dataclass(frozen=True, slots=True)
class HeaderPolicy:
    """Which inbound headers the gateway strips beyond the fixed rules."""

    passed: frozenset[bytes] = frozenset()
    """``garrison-*`` headers let through (never the passport or ``garrison-identity-*``)."""
    stripped: frozenset[bytes] = frozenset()
    """More headers stripped unconditionally."""
    trust_forwarded: bool = False
    """Keep inbound forwarding headers."""

    @classmethod
    def create(
        cls, passed: Iterable[str] = (), stripped: Iterable[str] = (), trust_forwarded: bool = False
    ) -> HeaderPolicy:
        """A policy from configured header names."""
        ok = {normalize(n.encode("latin-1")) for n in passed}
        return cls(
            passed=frozenset(n for n in ok if not n.startswith(_NEVER_PASSED)),
            stripped=frozenset(normalize(n.encode("latin-1")) for n in stripped),
            trust_forwarded=trust_forwarded,
        )

    def is_internal(self, name: bytes) -> bool:
        """Whether normalized ``name`` is stripped as internal or configured."""
        if name.startswith(_INTERNAL_PREFIXES):
            return name not in self.passed
        return name in self.stripped


@dataclass(slots=True)
class InboundHeaders:
    """A request's headers, sorted by :func:`read_request`."""

    kept: Headers = field(default_factory=list)
    """Headers to forward (names lowercase), before credentials are stripped."""
    credentials: RequestCredentials = field(
        default_factory=lambda: RequestCredentials(headers={}, cookies={})
    )
    """What resolvers see (internal headers already removed)."""
    forwarded: dict[bytes, bytes] = field(default_factory=dict)
    """Inbound forwarding headers (kept only when trusted)."""
    host: bytes | None = None
    """The Host header."""
    timeout_ms: bytes | None = None
    """The client's ``garrison-timeout-ms``, raw."""
    content_length: bytes | None = None
    """The Content-Length header, raw."""
    chunked: bool = False
    """Whether the body is sent chunked."""
    size: int = 0
    """Bytes of names and values, every header counted."""
    count: int = 0
    """Number of headers."""
    stripped: int = 0
    """How many internal headers were dropped."""


def read_request(raw: Sequence[tuple[bytes, bytes]], policy: HeaderPolicy) -> InboundHeaders:
    """Sort the request's headers (see the module docstring)."""
    out = InboundHeaders()
    kept = out.kept
    values: dict[str, str] = {}
    connection: set[bytes] = set()
    size = 0
    for name, value in raw:
        size += len(name) + len(value)
        n = normalize(name)
        if policy.is_internal(n):
            if n == _DEADLINE:
                out.timeout_ms = value
            out.stripped += 1
            continue
        if n in HOP_BY_HOP or n in _ALSO_DROPPED:
            if n == b"connection":
                connection.update(normalize(t) for t in value.split(b","))
            elif n == b"transfer-encoding":
                out.chunked = out.chunked or b"chunked" in value.lower()
            elif n == b"host":
                out.host = value
            continue
        low = name.lower()
        if n in _FORWARDING:
            if policy.trust_forwarded and low == n:
                prior = out.forwarded.get(n)
                out.forwarded[n] = value if prior is None else prior + b", " + value
            continue
        if low == b"content-length":
            if out.content_length is not None and out.content_length != value:
                out.content_length = b"conflict"
            else:
                out.content_length = value
            continue  # the proxy sets it from what it forwards
        # Kept under its own (lowercased) name: reading ``_`` as ``-`` here would let
        # ``x_api_key`` pose as ``x-api-key`` to the resolvers.
        text = _text(value)
        key = low.decode("latin-1")
        prior_text = values.get(key)
        values[key] = (
            text if prior_text is None else prior_text + ("; " if key == "cookie" else ", ") + text
        )
        kept.append((low, value))
    if connection:
        kept[:] = [(n, v) for n, v in kept if normalize(n) not in connection]
        for key in [k for k in values if normalize(k.encode("latin-1")) in connection]:
            del values[key]
    out.size = size
    out.count = len(raw)
    out.credentials = RequestCredentials(
        headers=values, cookies=parse_cookies(values.get("cookie", ""))
    )
    return out


def parse_cookies(header: str) -> dict[str, str]:
    """``a=1; b=2`` as a dict; the first of a repeated name wins (the most specific path)."""
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        cookies.setdefault(name, value)
    return cookies


def strip_credentials(headers: Headers, credentials: Collection[Credential]) -> Headers:
    """``headers`` without the Authorization header and without any header or cookie whose
    value is one of ``credentials``: upstreams see the passport, never the token."""
    values = {c.value.encode("latin-1", "replace") for c in credentials if c.value}
    out: Headers = []
    for name, value in headers:
        if name == b"authorization":
            continue
        v = value.strip(_WS)
        if values and (v in values or v.rpartition(b" ")[2] in values):
            continue
        if name == b"cookie" and values:
            pairs = [
                p
                for p in value.split(b";")
                if p.partition(b"=")[2].strip(_WS).strip(b'"') not in values
            ]
            if not pairs:
                continue
            value = b";".join(pairs).strip(_WS)
        out.append((name, value))
    return out


def forwarded_headers(
    inbound: InboundHeaders,
    *,
    client: tuple[str, int] | None,
    scheme: str,
    prefix: str | None,
) -> Headers:
    """``x-forwarded-for/-proto/-host(/-prefix)`` for the upstream request."""
    fwd = inbound.forwarded
    ip = (client[0] if client else "unknown").encode("latin-1")
    prior = fwd.get(b"x-forwarded-for")
    out: Headers = [(b"x-forwarded-for", ip if prior is None else prior + b", " + ip)]
    out.append((b"x-forwarded-proto", fwd.get(b"x-forwarded-proto", scheme.encode("latin-1"))))
    host = fwd.get(b"x-forwarded-host", inbound.host)
    if host is not None:
        out.append((b"x-forwarded-host", host))
    for name in (b"x-forwarded-port", b"forwarded", b"x-real-ip"):
        if name in fwd:
            out.append((name, fwd[name]))
    if prefix is not None:
        out.append((b"x-forwarded-prefix", prefix.encode("latin-1")))
    return out


def read_response(raw: Iterable[tuple[bytes, bytes]]) -> tuple[Headers, list[str]]:
    """The upstream's headers to relay to the client, and the identity actions it asked for."""
    kept: Headers = []
    actions: list[str] = []
    connection: set[bytes] = set()
    for name, value in raw:
        n = normalize(name)
        if n == _ACTION:
            actions.extend(a.strip() for a in value.decode("latin-1").split(",") if a.strip())
            continue
        if n.startswith(_NEVER_PASSED):
            continue
        if n in HOP_BY_HOP:
            if n == b"connection":
                connection.update(normalize(t) for t in value.split(b","))
            continue
        kept.append((n, value))
    if connection:
        kept = [(n, v) for n, v in kept if n not in connection]
    return kept, actions


def render_cookie(action: IdentityAction, *, secure: bool, samesite: str) -> bytes | None:
    """The ``Set-Cookie`` value for a ``set_cookie`` / ``clear_cookie`` action; None when the
    action is unknown or its name or value is not a valid cookie."""
    if action.kind not in ("set_cookie", "clear_cookie"):
        return None
    value = action.value if action.kind == "set_cookie" else ""
    if not _COOKIE_NAME.match(action.name) or not _COOKIE_VALUE.match(value):
        return None
    parts = [f"{action.name}={value}", "Path=/", "HttpOnly", f"SameSite={samesite.title()}"]
    if secure or action.name.startswith(("__Host-", "__Secure-")) or samesite == "none":
        parts.append("Secure")
    if action.kind == "clear_cookie":
        parts.append("Max-Age=0")
    elif action.max_age is not None:
        parts.append(f"Max-Age={max(0, int(action.max_age))}")
    return "; ".join(parts).encode("ascii")


def _text(value: bytes) -> str:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return value.decode("latin-1")
