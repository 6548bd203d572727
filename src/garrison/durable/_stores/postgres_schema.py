"""The PostgreSQL schema of the durable store and its migrations.

The same tables as the SQLite store (see ``sqlite_schema.py``), in PostgreSQL types: ids and
names ``text``, payloads ``bytea``, times ``double precision`` epoch seconds (the store's clock,
not the server's), counters ``bigint``. ``garrison_schema`` holds one version per component
(``durable`` here). Opening a store applies the missing migrations in one transaction, in
order, under an advisory lock so that several workers starting at once migrate exactly once; a
schema written by a newer garrison (a version above the newest known) is refused rather than
guessed at.
"""

from __future__ import annotations

import re
from typing import Any

from garrison.core import ConfigError

__all__ = ["COMPONENT", "MIGRATIONS", "check_schema_name", "migrate"]

COMPONENT = "durable"

# One lock id for every garrison migration in a database (any number: only garrison takes it).
_MIGRATION_LOCK = 0x6761727269736F6E  # "garrison"

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_V1 = """
CREATE TABLE wf_instances (
    id            text PRIMARY KEY,
    workflow      text NOT NULL,
    status        text NOT NULL,
    run_id        text NOT NULL,
    runs          bigint NOT NULL DEFAULT 1,
    args          bytea NOT NULL,
    result        bytea,
    failure       bytea,
    created_at    double precision NOT NULL,
    updated_at    double precision NOT NULL,
    closed_at     double precision,
    ready_at      double precision,
    owner         text,
    lease_until   double precision,
    epoch         bigint NOT NULL DEFAULT 0,
    inbox_version bigint NOT NULL DEFAULT 0,
    steps         bigint NOT NULL DEFAULT 0,
    history_len   bigint NOT NULL DEFAULT 0,
    parent_id     text,
    blocked       text
);
CREATE INDEX wf_instances_ready ON wf_instances (ready_at) WHERE ready_at IS NOT NULL;
CREATE INDEX wf_instances_owner ON wf_instances (owner) WHERE owner IS NOT NULL;
CREATE INDEX wf_instances_created ON wf_instances (created_at);
CREATE INDEX wf_instances_status ON wf_instances (status, created_at);
CREATE INDEX wf_instances_parent ON wf_instances (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE wf_history (
    workflow_id text NOT NULL,
    seq         bigint NOT NULL,
    data        bytea NOT NULL,
    PRIMARY KEY (workflow_id, seq)
);

CREATE TABLE wf_inbox (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id text NOT NULL,
    kind        text NOT NULL,
    name        text NOT NULL,
    step        bigint NOT NULL DEFAULT 0,
    payload     bytea NOT NULL,
    at          double precision NOT NULL
);
CREATE INDEX wf_inbox_workflow ON wf_inbox (workflow_id, seq);

CREATE TABLE wf_waiters (
    target_id   text NOT NULL,
    waiter_id   text NOT NULL,
    waiter_step bigint NOT NULL,
    PRIMARY KEY (target_id, waiter_id, waiter_step)
);

CREATE TABLE wf_schedules (
    name     text PRIMARY KEY,
    cron     text NOT NULL,
    tz       text NOT NULL,
    workflow text NOT NULL,
    args     bytea NOT NULL,
    next_at  double precision NOT NULL,
    last_at  double precision
);
"""

MIGRATIONS: list[str] = [_V1]
"""Migration ``i`` takes the schema from version ``i`` to ``i + 1``. Append, never edit."""


def check_schema_name(name: str) -> str:
    """``name`` if it is a plain lower-case identifier (it is spliced into DDL), else a
    :class:`ConfigError`."""
    if not _SCHEMA_NAME.fullmatch(name):
        raise ConfigError(
            f"the PostgreSQL schema name must be 1-63 lower-case letters, digits or _ and not "
            f"start with a digit, got {name!r}",
            key="durable.store",
        )
    return name


async def migrate(
    conn: Any, schema: str, component: str = COMPONENT, migrations: list[str] | None = None
) -> int:
    """Create ``schema`` if needed and bring ``component`` (the workflow tables by default; the
    actor store passes its own ``migrations``) to the newest version in one transaction; the
    version reached. ``conn`` is an asyncpg connection (asyncpg ships no type information)."""
    check_schema_name(schema)
    if migrations is None:
        migrations = MIGRATIONS
    async with conn.transaction():
        # Serializes concurrent openers (CREATE SCHEMA/TABLE IF NOT EXISTS race otherwise).
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".garrison_schema '
            "(component text PRIMARY KEY, version bigint NOT NULL)"
        )
        row = await conn.fetchval(
            f'SELECT version FROM "{schema}".garrison_schema WHERE component = $1', component
        )
        current = 0 if row is None else int(row)
        if current > len(migrations):
            raise ConfigError(
                f"the database's {component} schema ({schema}) is version {current}, newer than "
                f"this garrison knows ({len(migrations)}): upgrade garrison",
                key="durable.store",
            )
        await conn.execute(f'SET LOCAL search_path TO "{schema}"')
        for script in migrations[current:]:
            await conn.execute(script)  # a multi-statement script: simple query protocol
        await conn.execute(
            "INSERT INTO garrison_schema (component, version) VALUES ($1, $2) "
            "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            component,
            len(migrations),
        )
    return len(migrations)
