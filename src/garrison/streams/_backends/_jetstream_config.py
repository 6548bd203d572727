"""The ``nats://`` log URL: servers and options, validated with errors that name the option."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from garrison.core import ConfigError

__all__ = ["JetStreamOptions", "parse_url"]

_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,31}")


@dataclass(frozen=True)
class JetStreamOptions:
    """The ``?options`` of a ``nats://`` log URL."""

    prefix: str = "garrison"
    """Names of this log's streams, subjects and KV buckets start with it and ``_`` (several
    logs can share a server; no ``_`` in it, so names parse back unambiguously)."""
    storage: str = "file"
    """``file`` (durable) or ``memory`` (for tests: lost when the server restarts)."""
    replicas: int = 1
    """Stream replicas in a JetStream cluster (1..5)."""
    dedupe_window: float = 120.0
    """Seconds the streams remember message ids (``duplicate_window``)."""
    ack_timeout: float = 10.0
    """Seconds to wait for the server's acknowledgement of a publish or API call."""
    connect_timeout: float = 5.0
    """Seconds to wait for the first connection."""
    max_reconnect: int = 60
    """Reconnect attempts after the connection drops (-1: forever)."""
    max_pending: int = 4000
    """Most unacknowledged publishes in flight on the connection (backpressure)."""
    name: str = "garrison"
    """The client name the server shows."""
    create: bool = True
    """Whether ``open()`` creates the log (its KV buckets and transaction log) when missing;
    ``false`` makes it fail with ``NotFound`` instead (the operator CLI: a mistyped prefix is
    reported, not created)."""


_OPTION_TYPES: dict[str, type] = {
    "prefix": str,
    "storage": str,
    "replicas": int,
    "dedupe_window": float,
    "ack_timeout": float,
    "connect_timeout": float,
    "max_reconnect": int,
    "max_pending": int,
    "name": str,
    "create": bool,
}
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _bad(url: str, message: str) -> ConfigError:
    return ConfigError(f"{message} (in {url!r})", key="streams.url")


def parse_url(url: str) -> tuple[list[str], JetStreamOptions]:
    """The server URLs and options of a ``nats://`` / ``tls://`` log URL; ``ConfigError``."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("nats", "tls"):
        raise _bad(url, f"expected a nats:// or tls:// URL, got scheme {scheme!r}")
    if parts.path not in ("", "/"):
        raise _bad(url, f"unexpected path {parts.path!r}: options go in ?key=value")
    netloc = parts.netloc
    auth = ""
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        auth += "@"
    servers = []
    for hostport in netloc.split(","):
        host, sep, port = hostport.rpartition(":") if "]" not in hostport[-1:] else ("", "", "")
        if not sep:
            host, port = hostport, "4222"
        host = host.strip("[]")
        if not host:
            raise _bad(url, f"expected host:port, got {hostport!r}")
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise _bad(url, f"port must be a number in 1..65535, got {port!r}")
        shown = f"[{host}]" if ":" in host else host
        servers.append(f"{scheme}://{auth}{shown}:{port}")
    values: dict[str, Any] = {}
    for key, vals in parse_qs(parts.query, keep_blank_values=True).items():
        if key not in _OPTION_TYPES:
            raise _bad(url, f"unknown option {key!r}; expected one of {sorted(_OPTION_TYPES)}")
        raw = unquote(vals[-1])
        kind = _OPTION_TYPES[key]
        try:
            if kind is bool:
                if raw.lower() not in _BOOLS:
                    raise ValueError(raw)
                values[key] = _BOOLS[raw.lower()]
            else:
                values[key] = kind(raw)
        except ValueError:
            raise _bad(url, f"option {key}: expected {kind.__name__}, got {raw!r}") from None
    opts = JetStreamOptions(**values)
    if not _PREFIX.fullmatch(opts.prefix):
        raise _bad(url, "prefix: 1-32 of A-Z a-z 0-9 -, starting with a letter or digit")
    if opts.storage not in ("file", "memory"):
        raise _bad(url, f"storage must be 'file' or 'memory', got {opts.storage!r}")
    if not 1 <= opts.replicas <= 5:
        raise _bad(url, f"replicas must be in 1..5, got {opts.replicas}")
    for key in ("dedupe_window", "ack_timeout", "connect_timeout"):
        if not getattr(opts, key) > 0:
            raise _bad(url, f"{key} must be positive, got {getattr(opts, key)}")
    if opts.max_pending < 1:
        raise _bad(url, f"max_pending must be >= 1, got {opts.max_pending}")
    if opts.max_reconnect < -1:
        raise _bad(url, f"max_reconnect must be >= -1, got {opts.max_reconnect}")
    return servers, opts
