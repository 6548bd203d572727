"""Stores of the durable pillar, chosen by URL and imported only when used."""

from __future__ import annotations

import importlib.util
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from garrison.core import ConfigError

from .base import Store

__all__ = ["open_store"]


def open_store(url: str) -> Store:
    """The store named by ``url`` (not yet opened):

    * ``memory://`` — in memory, for tests (nothing survives the process);
    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` — embedded SQLite (WAL,
      one writer thread, group commit); ``?synchronous=normal`` trades the last commits on a
      power loss for speed (a process crash still loses nothing);
    * ``postgresql://user:password@host:port/db`` (or ``postgres://``) — PostgreSQL via asyncpg
      (the ``garrison[postgres]`` extra), for several worker processes and machines;
      ``?schema=name`` keeps the tables in that schema (created if missing; default ``public``),
      ``?pool_size=n`` bounds the connections (default 10); ``sslmode`` and
      ``target_session_attrs`` are passed on to asyncpg.
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
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = set(query) - {"synchronous"}
        if unknown:
            raise ConfigError(
                f"unknown sqlite option(s) {sorted(unknown)} in {url!r}", key="durable.store"
            )
        return SqliteStore(path, synchronous=query.get("synchronous", "full"))
    if scheme in ("postgres", "postgresql"):
        return _postgres(url)
    raise ConfigError(
        f"unknown store URL scheme {scheme!r} in {url!r} "
        "(expected sqlite://, postgresql:// or memory://)",
        key="durable.store",
    )


_PG_PASSED_ON = ("sslmode", "target_session_attrs")
"""Query options of a PostgreSQL URL that asyncpg itself understands."""


def _postgres(raw: str) -> Store:
    parts = urlsplit(raw)
    url = _redacted(raw)  # for messages: never echo a password
    if not parts.hostname and not parts.path.strip("/"):
        raise ConfigError(
            f"expected postgresql://user@host:port/database, got {url!r}", key="durable.store"
        )
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = set(query) - {"schema", "pool_size", *_PG_PASSED_ON}
    if unknown:
        raise ConfigError(
            f"unknown postgresql option(s) {sorted(unknown)} in {url!r} "
            f"(known: schema, pool_size, {', '.join(_PG_PASSED_ON)})",
            key="durable.store",
        )
    pool_size = query.pop("pool_size", "10")
    if not pool_size.isdigit() or int(pool_size) < 1:
        raise ConfigError(
            f"pool_size must be an integer >= 1, got {pool_size!r} in {url!r}",
            key="durable.store",
        )
    schema = query.pop("schema", "public")
    if importlib.util.find_spec("asyncpg") is None:
        raise ConfigError(
            "the PostgreSQL store needs asyncpg: pip install 'garrison[postgres]'",
            key="durable.store",
        )
    from .postgres import PostgresStore

    dsn = urlunsplit(parts._replace(query=urlencode(query)))  # garrison's own options removed
    return PostgresStore(dsn, schema=schema, pool_size=int(pool_size))


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
