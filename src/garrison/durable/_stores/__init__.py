"""Stores of the durable pillar, chosen by URL and imported only when used."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from garrison.core import ConfigError

from .base import Store

__all__ = ["open_store"]


def open_store(url: str) -> Store:
    """The store named by ``url`` (not yet opened):

    * ``memory://`` — in memory, for tests (nothing survives the process);
    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` — embedded SQLite (WAL,
      one writer thread, group commit); ``?synchronous=normal`` trades the last commits on a
      power loss for speed (a process crash still loses nothing).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        from .sqlite import SqliteStore

        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.netloc or not path:
            raise ConfigError(
                f"expected sqlite:///relative/path.db or sqlite:////absolute/path.db, got {url!r}",
                key="durable.store",
            )
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"synchronous"}
        if unknown:
            raise ConfigError(
                f"unknown sqlite option(s) {sorted(unknown)} in {url!r}", key="durable.store"
            )
        return SqliteStore(path, synchronous=query.get("synchronous", "full"))
    if scheme in ("postgres", "postgresql"):
        raise ConfigError(
            "the PostgreSQL store is not available yet; use sqlite:///path.db", key="durable.store"
        )
    raise ConfigError(
        f"unknown store URL scheme {scheme!r} in {url!r} (expected sqlite:// or memory://)",
        key="durable.store",
    )
