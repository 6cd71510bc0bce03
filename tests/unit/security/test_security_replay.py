"""The replay cache: once per nonce, across threads, restarts and processes; bounded pruning."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from auditor_server.security.errors import ReplayedNonce, StaleTimestamp
from auditor_server.security.replay import ReplayCache

NOW = 1_760_000_000_000
WINDOW = 60_000
NONCE = b"\x07" * 16


def test_second_use_is_refused_and_other_auditors_are_independent(tmp_path: Path) -> None:
    with ReplayCache.open(tmp_path / "r.db", window_ms=WINDOW) as cache:
        cache.check_and_record("a", NONCE, NOW, NOW)
        with pytest.raises(ReplayedNonce):
            cache.check_and_record("a", NONCE, NOW + 5, NOW + 5)
        cache.check_and_record("b", NONCE, NOW, NOW)
        assert len(cache) == 2


def test_entries_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with ReplayCache.open(path, window_ms=WINDOW) as cache:
        cache.check_and_record("a", NONCE, NOW, NOW)
    with ReplayCache.open(path, window_ms=WINDOW) as cache, pytest.raises(ReplayedNonce):
        cache.check_and_record("a", NONCE, NOW, NOW + 1)


def test_entries_survive_into_a_new_process(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with ReplayCache.open(path, window_ms=WINDOW) as cache:
        cache.check_and_record("a", NONCE, NOW, NOW)
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from auditor_server.security.errors import ReplayedNonce
        from auditor_server.security.replay import ReplayCache
        with ReplayCache.open(Path({str(path)!r}), window_ms={WINDOW}) as cache:
            try:
                cache.check_and_record("a", {NONCE!r}, {NOW}, {NOW + 10})
            except ReplayedNonce:
                print("replay refused")
            cache.check_and_record("a", b"\\x08" * 16, {NOW}, {NOW + 10})
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
        timeout=60,
    )
    assert out.stdout.strip() == "replay refused"
    with ReplayCache.open(path, window_ms=WINDOW) as cache:
        assert len(cache) == 2  # the other process's insert is durable too


def test_racing_threads_accept_a_nonce_exactly_once(tmp_path: Path) -> None:
    with ReplayCache.open(tmp_path / "r.db", window_ms=WINDOW) as cache:
        results: list[str] = []
        barrier = threading.Barrier(8)

        def attempt() -> None:
            barrier.wait()
            try:
                cache.check_and_record("a", NONCE, NOW, NOW)
                results.append("ok")
            except ReplayedNonce:
                results.append("replay")

        threads = [threading.Thread(target=attempt) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == ["ok"] + ["replay"] * 7


def test_two_connections_race_on_one_file(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with (
        ReplayCache.open(path, window_ms=WINDOW) as first,
        ReplayCache.open(path, window_ms=WINDOW) as second,
    ):
        first.check_and_record("a", NONCE, NOW, NOW)
        with pytest.raises(ReplayedNonce):
            second.check_and_record("a", NONCE, NOW, NOW)


def test_pruning_keeps_two_windows_and_refuses_what_it_forgot(tmp_path: Path) -> None:
    with ReplayCache.open(tmp_path / "r.db", window_ms=WINDOW) as cache:
        cache.check_and_record("a", b"\x01" * 16, NOW - 2 * WINDOW - 1, NOW)  # prunable later
        cache.check_and_record("a", b"\x02" * 16, NOW - 2 * WINDOW, NOW)  # kept: exactly 2W
        cache.check_and_record("a", b"\x03" * 16, NOW, NOW)
        assert cache.prune(NOW) == 1
        assert len(cache) == 2
        # The forgotten nonce cannot come back, even to a verifier with a wider window.
        with pytest.raises(StaleTimestamp):
            cache.check_and_record("a", b"\x01" * 16, NOW - 2 * WINDOW - 1, NOW)
        with pytest.raises(ReplayedNonce):
            cache.check_and_record("a", b"\x02" * 16, NOW - 2 * WINDOW, NOW)


def test_horizon_survives_restart_and_a_clock_stepping_back(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with ReplayCache.open(path, window_ms=WINDOW) as cache:
        cache.check_and_record("a", NONCE, NOW, NOW)
        cache.prune(NOW + 10 * WINDOW)  # the clock jumped ahead; NONCE is pruned
        assert len(cache) == 0
    with ReplayCache.open(path, window_ms=WINDOW) as cache:
        with pytest.raises(StaleTimestamp):  # clock back at NOW: NONCE must not be revived
            cache.check_and_record("a", NONCE, NOW, NOW)
        cache.check_and_record("a", b"\x09" * 16, NOW + 1, NOW + 1)  # newer requests still fine


def test_check_and_record_prunes_at_most_once_per_window(tmp_path: Path) -> None:
    with ReplayCache.open(tmp_path / "r.db", window_ms=WINDOW) as cache:
        cache.check_and_record("a", b"\x01" * 16, NOW, NOW)
        cache.check_and_record("a", b"\x02" * 16, NOW + 3 * WINDOW, NOW + 3 * WINDOW)
        assert len(cache) == 1  # the first was pruned as a side effect


def test_opens_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with ReplayCache.open(path, window_ms=WINDOW):
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()


def test_window_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        ReplayCache.open(tmp_path / "r.db", window_ms=0)
