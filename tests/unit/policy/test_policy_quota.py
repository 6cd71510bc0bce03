"""Daily quotas: limits hold, days roll over, counts survive restarts and races."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from auditor_server.policy.quota import QuotaStore

NOON = datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()


def test_consume_up_to_the_limit_then_refuse(tmp_path: Path) -> None:
    with QuotaStore.open(tmp_path / "q.db") as store:
        for i in range(3):
            d = store.try_consume("a", 3, now=NOON)
            assert (d.allowed, d.used, d.remaining) == (True, i + 1, 2 - i)
        d = store.try_consume("a", 3, now=NOON)
        assert (d.allowed, d.used, d.remaining) == (False, 3, 0)
        assert store.remaining("a", 3, now=NOON) == 0
        assert store.remaining("b", 3, now=NOON) == 3  # per auditor


def test_a_batch_is_all_or_nothing(tmp_path: Path) -> None:
    with QuotaStore.open(tmp_path / "q.db") as store:
        assert store.try_consume("a", 5, n=4, now=NOON).allowed
        refused = store.try_consume("a", 5, n=2, now=NOON)
        assert not refused.allowed and refused.used == 4
        assert store.try_consume("a", 5, n=1, now=NOON).allowed


def test_a_new_utc_day_starts_from_zero(tmp_path: Path) -> None:
    last_second = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    midnight = datetime(2026, 3, 2, 0, 0, 0, tzinfo=UTC)
    with QuotaStore.open(tmp_path / "q.db") as store:
        assert store.try_consume("a", 1, now=last_second).allowed
        assert not store.try_consume("a", 1, now=last_second.timestamp()).allowed
        assert store.try_consume("a", 1, now=midnight).allowed
        assert store.used("a", now=last_second) == 1


def test_a_lowered_limit_never_shows_negative_remaining(tmp_path: Path) -> None:
    with QuotaStore.open(tmp_path / "q.db") as store:
        store.try_consume("a", 10, n=8, now=NOON)
        assert store.remaining("a", 5, now=NOON) == 0
        assert store.try_consume("a", 5, now=NOON).remaining == 0


def test_counts_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with QuotaStore.open(path) as store:
        store.try_consume("a", 10, n=7, now=NOON)
    with QuotaStore.open(path) as store:
        assert store.remaining("a", 10, now=NOON) == 3
        assert store.try_consume("a", 10, n=3, now=NOON).allowed
        assert not store.try_consume("a", 10, now=NOON).allowed
        mode = store._conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


def test_bad_arguments_are_caller_bugs(tmp_path: Path) -> None:
    with QuotaStore.open(tmp_path / "q.db") as store:
        with pytest.raises(ValueError, match="n must be at least 1"):
            store.try_consume("a", 5, n=0, now=NOON)
        with pytest.raises(ValueError, match="limit must not be negative"):
            store.try_consume("a", -1, now=NOON)


def test_threads_and_connections_never_exceed_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    limit, threads, attempts = 60, 6, 25
    stores = [QuotaStore.open(path), QuotaStore.open(path)]  # two "processes"
    granted: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def hammer(index: int) -> None:
        store = stores[index % 2]
        barrier.wait()
        mine = sum(store.try_consume("a", limit, now=NOON).allowed for _ in range(attempts))
        with lock:
            granted.append(mine)

    workers = [threading.Thread(target=hammer, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sum(granted) == limit
    assert stores[0].used("a", now=NOON) == limit
    for store in stores:
        store.close()


def test_refund_gives_back_undelivered_queries_but_never_below_zero(tmp_path: Path) -> None:
    with QuotaStore.open(tmp_path / "q.db") as store:
        assert store.try_consume("a", 3, n=3, now=NOON).allowed
        assert not store.try_consume("a", 3, now=NOON).allowed
        store.refund("a", now=NOON)
        assert store.remaining("a", 3, now=NOON) == 1
        assert store.try_consume("a", 3, now=NOON).allowed
        store.refund("a", n=10, now=NOON)
        assert store.used("a", now=NOON) == 0
        store.refund("nobody", now=NOON)  # nothing counted: nothing to give back
        assert store.used("nobody", now=NOON) == 0
        with pytest.raises(ValueError):
            store.refund("a", n=0, now=NOON)
