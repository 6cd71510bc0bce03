"""The one way the service opens its small durable SQLite stores (ledger, replay, quotas).

Each store is shared by the gRPC server's threads behind its own lock and must not lose a
committed write on a crash or power loss: autocommit mode (transactions are the stores'
explicit ``BEGIN IMMEDIATE``/``COMMIT``), WAL so readers never block the writer, and
``synchronous=FULL`` so a commit is on disk before the answer it backs leaves the lab.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect_durable(path: Path, *, timeout_s: float = 30.0) -> sqlite3.Connection:
    """Open (creating if needed) ``path`` for durable, thread-shared writes.

    Raises:
        sqlite3.Error: the file cannot be opened or is not a database (nothing is left open).
    """
    conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    except sqlite3.Error:
        conn.close()
        raise
    return conn
