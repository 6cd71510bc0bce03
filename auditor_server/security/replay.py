"""The persistent replay cache: each (auditor id, nonce) is accepted at most once.

A signed request stays valid for ``±window_ms`` around its timestamp, so its nonce must be
remembered at least that long, *including across restarts* (a cache kept only in memory
would reopen the window on every restart, and a captured request could be replayed right
after one). Entries live in SQLite (WAL, ``synchronous=FULL``): a recorded nonce is on disk
before the request is answered.

Entries are pruned once their timestamp is more than ``2 × window_ms`` old (twice the window,
so clock jitter and a small window change never expose a nonce). The cache also keeps a
*horizon*: one past the newest timestamp it ever pruned. A request older than the horizon is
refused even if the timestamp check let it through (after the window was widened, or the
server's clock stepped back), because its nonce may have been pruned.

Thread-safe: one connection behind a lock; several processes may share the file, since
the uniqueness check is SQLite's own ``UNIQUE`` constraint inside one transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from types import TracebackType

from auditor_server.security.errors import ReplayedNonce, StaleTimestamp
from auditor_server.sqlitedb import connect_durable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nonces (
    auditor_id TEXT NOT NULL,
    nonce BLOB NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    UNIQUE (auditor_id, nonce)
);
CREATE INDEX IF NOT EXISTS nonces_by_time ON nonces (timestamp_ms);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
_HORIZON = "horizon_ms"


class ReplayCache:
    """Durable set of accepted (auditor id, nonce) pairs; open with :meth:`open`."""

    def __init__(self, conn: sqlite3.Connection, *, path: Path, window_ms: int) -> None:
        """Wrap an open, initialised connection; use :meth:`open` instead."""
        self._conn = conn
        self._lock = threading.Lock()
        self._last_prune_ms: int | None = None
        self.path = path
        self.window_ms = window_ms

    @classmethod
    def open(cls, path: Path, *, window_ms: int) -> ReplayCache:
        """Open (creating if needed) the cache at ``path``.

        Args:
            path: the SQLite file; keep it across restarts.
            window_ms: the timestamp window the verifier uses; entries are kept for twice it.

        Raises:
            ValueError: ``window_ms`` is not positive.
            sqlite3.DatabaseError: the file exists but is not a usable database.
        """
        if window_ms <= 0:
            raise ValueError(f"window_ms must be positive, got {window_ms}")
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect_durable(path)
        try:
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return cls(conn, path=path, window_ms=window_ms)

    def check_and_record(
        self, auditor_id: str, nonce: bytes, timestamp_ms: int, now_ms: int
    ) -> None:
        """Record the nonce, or refuse it if this auditor already used it.

        The check and the insert are one SQLite transaction (``BEGIN IMMEDIATE``), so two
        threads or processes racing with the same nonce cannot both succeed.

        Raises:
            ReplayedNonce: (auditor_id, nonce) is already recorded.
            StaleTimestamp: ``timestamp_ms`` is older than what the cache still remembers.
        """
        with self._lock:
            self._maybe_prune(now_ms)
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if timestamp_ms < self._horizon():
                    raise StaleTimestamp(
                        "request timestamp is older than the server's replay protection "
                        "covers; sign a fresh request"
                    )
                self._conn.execute(
                    "INSERT INTO nonces (auditor_id, nonce, timestamp_ms) VALUES (?, ?, ?)",
                    (auditor_id, nonce, timestamp_ms),
                )
            except sqlite3.IntegrityError:
                self._conn.execute("ROLLBACK")
                raise ReplayedNonce() from None
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def prune(self, now_ms: int) -> int:
        """Drop entries more than ``2 × window_ms`` old and move the horizon past them.

        Called by :meth:`check_and_record` at most once per window; public for maintenance
        and tests.

        Returns:
            How many entries were removed.
        """
        with self._lock:
            return self._prune(now_ms)

    def __len__(self) -> int:
        """Number of nonces remembered."""
        with self._lock:
            row = self._conn.execute("SELECT COUNT(*) FROM nonces").fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the database; the recorded nonces stay on disk."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ReplayCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _maybe_prune(self, now_ms: int) -> None:
        if self._last_prune_ms is None or now_ms - self._last_prune_ms >= self.window_ms:
            self._prune(now_ms)

    def _prune(self, now_ms: int) -> int:
        cutoff = now_ms - 2 * self.window_ms
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            (newest,) = self._conn.execute(
                "SELECT MAX(timestamp_ms) FROM nonces WHERE timestamp_ms < ?", (cutoff,)
            ).fetchone()
            removed = self._conn.execute(
                "DELETE FROM nonces WHERE timestamp_ms < ?", (cutoff,)
            ).rowcount
            if newest is not None:
                # Only the pruned timestamps need refusing from now on, and the horizon only
                # moves forward, so a clock stepping back cannot revive a pruned nonce, and
                # one that jumped ahead locks out no request newer than what was pruned.
                self._conn.execute(
                    "INSERT INTO meta (name, value) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = MAX(value, excluded.value)",
                    (_HORIZON, int(newest) + 1),
                )
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        self._last_prune_ms = now_ms
        return int(removed)

    def _horizon(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (_HORIZON,)).fetchone()
        return int(row[0]) if row is not None else -(2**63)
