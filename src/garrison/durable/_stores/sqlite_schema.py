"""The SQLite schema of the durable store and its migrations.

``garrison_schema`` holds one version per component (``durable`` here; actors and streams add
their own). Opening a store applies the missing migrations in one transaction, in order; a
database written by a newer garrison (a version above the newest known) is refused rather than
guessed at.
"""

from __future__ import annotations

import sqlite3

from garrison.core import ConfigError

__all__ = ["COMPONENT", "MIGRATIONS", "migrate"]

COMPONENT = "durable"

_V1 = """
CREATE TABLE wf_instances (
    id            TEXT PRIMARY KEY,
    workflow      TEXT NOT NULL,
    status        TEXT NOT NULL,
    run_id        TEXT NOT NULL,
    runs          INTEGER NOT NULL DEFAULT 1,
    args          BLOB NOT NULL,
    result        BLOB,
    failure       BLOB,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    closed_at     REAL,
    ready_at      REAL,
    owner         TEXT,
    lease_until   REAL,
    epoch         INTEGER NOT NULL DEFAULT 0,
    inbox_version INTEGER NOT NULL DEFAULT 0,
    steps         INTEGER NOT NULL DEFAULT 0,
    history_len   INTEGER NOT NULL DEFAULT 0,
    parent_id     TEXT,
    blocked       TEXT
);
CREATE INDEX wf_instances_ready ON wf_instances (ready_at) WHERE ready_at IS NOT NULL;
CREATE INDEX wf_instances_owner ON wf_instances (owner) WHERE owner IS NOT NULL;
CREATE INDEX wf_instances_created ON wf_instances (created_at);
CREATE INDEX wf_instances_status ON wf_instances (status, created_at);
CREATE INDEX wf_instances_parent ON wf_instances (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE wf_history (
    workflow_id TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    data        BLOB NOT NULL,
    PRIMARY KEY (workflow_id, seq)
) WITHOUT ROWID;

CREATE TABLE wf_inbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id TEXT NOT NULL,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    step        INTEGER NOT NULL DEFAULT 0,
    payload     BLOB NOT NULL,
    at          REAL NOT NULL
);
CREATE INDEX wf_inbox_workflow ON wf_inbox (workflow_id, seq);

CREATE TABLE wf_waiters (
    target_id   TEXT NOT NULL,
    waiter_id   TEXT NOT NULL,
    waiter_step INTEGER NOT NULL,
    PRIMARY KEY (target_id, waiter_id, waiter_step)
) WITHOUT ROWID;

CREATE TABLE wf_schedules (
    name     TEXT PRIMARY KEY,
    cron     TEXT NOT NULL,
    tz       TEXT NOT NULL,
    workflow TEXT NOT NULL,
    args     BLOB NOT NULL,
    next_at  REAL NOT NULL,
    last_at  REAL
);
"""

MIGRATIONS: list[str] = [_V1]
"""Migration ``i`` takes the schema from version ``i`` to ``i + 1``. Append, never edit."""


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the newest version in one transaction; the version reached."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS garrison_schema "
            "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        row = conn.execute(
            "SELECT version FROM garrison_schema WHERE component = ?", (COMPONENT,)
        ).fetchone()
        current = 0 if row is None else int(row[0])
        if current > len(MIGRATIONS):
            raise ConfigError(
                f"the database's {COMPONENT} schema is version {current}, newer than this "
                f"garrison knows ({len(MIGRATIONS)}): upgrade garrison",
                key="durable.store",
            )
        for script in MIGRATIONS[current:]:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(
            "INSERT INTO garrison_schema (component, version) VALUES (?, ?) "
            "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            (COMPONENT, len(MIGRATIONS)),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(MIGRATIONS)
