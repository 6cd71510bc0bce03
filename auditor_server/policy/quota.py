"""Daily query quotas, persisted in SQLite so a restart does not hand out a fresh day.

Counts are keyed by (auditor id, UTC day): a new UTC day starts from zero, and old days
are kept as a record of use. Every check-and-increment is one ``BEGIN IMMEDIATE``
transaction, so it is atomic across threads (which also share a lock around the one
connection) and across processes sharing the file. This is the only IO in the policy
package; the decisions themselves are plain arithmetic.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from auditor_server.errors import ConfigError
from auditor_server.sqlitedb import connect_durable

__all__ = ["QuotaDecision", "QuotaStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS quota_usage (
    auditor_id TEXT NOT NULL,
    day TEXT NOT NULL,
    used INTEGER NOT NULL CHECK (used >= 0),
    PRIMARY KEY (auditor_id, day)
) WITHOUT ROWID
"""


@dataclass(frozen=True, slots=True)
class QuotaDecision:
    """Outcome of :meth:`QuotaStore.try_consume`.

    Attributes:
        allowed: Whether the ``n`` queries were granted (and counted). A refused request
            consumes nothing.
        used: Queries counted today after this decision.
        remaining: Queries still available today (never negative).
    """

    allowed: bool
    used: int
    remaining: int


def _day(now: float | datetime | None) -> str:
    """The UTC calendar day of ``now`` (Unix seconds or an aware datetime; None: now)."""
    if now is None:
        moment = datetime.now(UTC)
    elif isinstance(now, datetime):
        moment = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    else:
        moment = datetime.fromtimestamp(now, UTC)
    return moment.date().isoformat()


class QuotaStore:
    """Per-auditor, per-UTC-day query counters in one SQLite file (WAL mode).

    Thread-safe. Open with :meth:`open`; close with :meth:`close` or a ``with`` block.
    """

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        """Wrap an open connection; use :meth:`open` instead."""
        self._conn = connection
        self._lock = threading.Lock()
        self.path = path

    @classmethod
    def open(cls, path: Path, *, timeout_s: float = 10.0) -> QuotaStore:
        """Open (creating if needed) the quota database at ``path``.

        Args:
            path: The SQLite file; its directory must exist.
            timeout_s: How long a write waits for another process holding the lock.

        Returns:
            The store.

        Raises:
            ConfigError: The file cannot be opened or is not a quota database.
        """
        try:
            # Durable: a granted query is counted before its answer leaves, even on power loss.
            conn = connect_durable(Path(path), timeout_s=timeout_s)
            conn.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open quota database {path}: {exc}") from None
        return cls(conn, Path(path))

    def try_consume(
        self,
        auditor_id: str,
        limit: int,
        n: int = 1,
        now: float | datetime | None = None,
    ) -> QuotaDecision:
        """Count ``n`` queries for ``auditor_id`` today if that stays within ``limit``.

        All or nothing: either all ``n`` are counted or none are (a batch that does not fit
        is refused whole).

        Args:
            auditor_id: Whose quota.
            limit: The role's daily quota.
            n: How many queries to count (at least 1).
            now: Unix seconds or a datetime deciding the UTC day; ``None`` for the clock.

        Returns:
            The decision, with the usage after it.

        Raises:
            ValueError: ``n`` < 1 or ``limit`` < 0 (a caller bug, not the auditor's).
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        day = _day(now)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                used = self._used(auditor_id, day)
                allowed = used + n <= limit
                if allowed:
                    used += n
                    self._conn.execute(
                        "INSERT INTO quota_usage (auditor_id, day, used) VALUES (?, ?, ?) "
                        "ON CONFLICT (auditor_id, day) DO UPDATE SET used = excluded.used",
                        (auditor_id, day, used),
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return QuotaDecision(allowed=allowed, used=used, remaining=max(0, limit - used))

    def refund(self, auditor_id: str, n: int = 1, now: float | datetime | None = None) -> None:
        """Give back ``n`` queries counted today whose answers never left the lab.

        A query is counted before the engine runs (so concurrent requests cannot overdraw
        the quota); when the answer is then not delivered (deadline passed, call cancelled,
        internal error) the auditor gets the query back. Never goes below zero.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        day = _day(now)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "UPDATE quota_usage SET used = MAX(0, used - ?) "
                    "WHERE auditor_id = ? AND day = ?",
                    (n, auditor_id, day),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def remaining(self, auditor_id: str, limit: int, now: float | datetime | None = None) -> int:
        """Queries ``auditor_id`` may still make today under ``limit`` (never negative)."""
        with self._lock:
            used = self._used(auditor_id, _day(now))
        return max(0, limit - used)

    def used(self, auditor_id: str, now: float | datetime | None = None) -> int:
        """Queries counted for ``auditor_id`` on the UTC day of ``now``."""
        with self._lock:
            return self._used(auditor_id, _day(now))

    def _used(self, auditor_id: str, day: str) -> int:
        row = self._conn.execute(
            "SELECT used FROM quota_usage WHERE auditor_id = ? AND day = ?", (auditor_id, day)
        ).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> QuotaStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
