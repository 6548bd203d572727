"""Log backends of the streams pillar, chosen by URL and imported only when used."""

from __future__ import annotations

import importlib
from urllib.parse import parse_qs, urlsplit

from garrison.core import Clock, ConfigError

from .base import LogBackend

__all__ = ["open_log"]

_SYNC = ("full", "normal")


def open_log(url: str, *, clock: Clock | None = None) -> LogBackend:
    """The log named by ``url`` (not yet opened: ``await log.open()``):

    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` — the embedded SQLite log
      (WAL, one writer thread with group commit); ``?synchronous=normal`` trades the last
      commits on a power loss for speed (a process crash still loses nothing);
    * ``memory://`` — SQLite in memory, for tests (nothing survives the process);
    * ``nats://host:port[?options]`` — NATS JetStream (needs the ``nats`` extra).

    ``clock`` (default: the system clock) times leases, retention and append timestamps.
    """
    if not isinstance(url, str) or not url:
        raise ConfigError(f"expected a log URL string, got {url!r}", key="streams.url")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    if scheme in ("sqlite", "memory"):
        from .sqlite import SqliteLog

        if scheme == "memory":
            if parts.netloc or parts.path not in ("", "/"):
                raise ConfigError(
                    f"expected memory:// (nothing after it), got {url!r}", key="streams.url"
                )
            path = ":memory:"
        else:
            path = parts.path[1:] if parts.path.startswith("/") else parts.path
            if parts.netloc or not path:
                raise ConfigError(
                    "expected sqlite:///relative/path.db or sqlite:////absolute/path.db, "
                    f"got {url!r}",
                    key="streams.url",
                )
        unknown = set(query) - {"synchronous"}
        if unknown:
            raise ConfigError(
                f"unknown sqlite option(s) {sorted(unknown)} in {url!r}", key="streams.url"
            )
        sync = query.get("synchronous", "full").lower()
        if sync not in _SYNC:
            raise ConfigError(
                f"synchronous must be one of {list(_SYNC)}, got {sync!r}", key="streams.url"
            )
        return SqliteLog(path, synchronous=sync, clock=clock)
    if scheme in ("nats", "tls"):
        # Imported by name so that this module type-checks whether or not it is installed.
        try:
            mod = importlib.import_module(".jetstream", __name__)
        except ImportError as exc:
            raise ConfigError(
                f"the JetStream log backend is not available ({exc}); install garrison[nats]",
                key="streams.url",
            ) from exc
        backend: LogBackend = mod.open_jetstream(url, clock=clock)
        return backend
    raise ConfigError(
        f"unknown log URL scheme {scheme!r} in {url!r} (expected sqlite://, memory:// or nats://)",
        key="streams.url",
    )
