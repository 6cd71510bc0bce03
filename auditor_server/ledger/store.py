"""The ledger's SQLite schema and connection settings, shared by the writer and the verifier.

Four tables, created in this order:

* ``leaves``: one row per entry; ``leaf_index`` is the rowid (contiguous from 0), the three
  logged fields, the append time and the RFC 9162 leaf hash of ``ledger_leaf_data``.
* ``nodes``: every completed perfect subtree above the leaves (``level`` >= 1,
  ``node_index``), so any proof is O(log n) point reads instead of rehashing the log.
* ``tree_heads``: one signed head per tree size from 0 to the current size; the head of
  size ``i + 1`` is the one signed when leaf ``i`` was appended, so it carries that leaf's
  ``timestamp_ms``.
* ``meta``: the schema version.

One append writes one leaf row, its completed nodes and its head in one transaction; with
WAL and ``synchronous=FULL`` a committed append survives a crash or power loss and a torn
one never becomes visible.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from auditor_server.sqlitedb import connect_durable

SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS leaves (
    leaf_index      INTEGER PRIMARY KEY,
    request_digest  BLOB    NOT NULL,
    response_digest BLOB    NOT NULL,
    status          INTEGER NOT NULL,
    timestamp_ms    INTEGER NOT NULL,
    leaf_hash       BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    level      INTEGER NOT NULL,
    node_index INTEGER NOT NULL,
    hash       BLOB    NOT NULL,
    PRIMARY KEY (level, node_index)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tree_heads (
    tree_size    INTEGER PRIMARY KEY,
    root_hash    BLOB    NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    key_id       TEXT    NOT NULL,
    signature    BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

TABLES = ("leaves", "nodes", "tree_heads", "meta")


def connect_writer(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the ledger for appending, durably configured.

    ``isolation_level=None`` leaves transactions to explicit ``BEGIN IMMEDIATE``/``COMMIT``
    so exactly one append is one transaction; the connection is shared across the server's
    threads behind the ledger's lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect_durable(path)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        conn.close()
        raise
    return conn


def connect_reader(path: Path) -> sqlite3.Connection:
    """Open the ledger read-only, so checking a log can never change it.

    A live server may be appending meanwhile; callers read inside one transaction to see a
    single consistent snapshot (WAL readers do not block the writer).
    """
    uri = path.resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30.0)
