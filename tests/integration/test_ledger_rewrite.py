"""Rewriting the lab's ledger behind a real server, and who notices.

Two attacks on a log a real ``auditor-server serve`` wrote, each by editing the files
directly with the server stopped:

1. **Database only** (someone with database access): cut the last entries. The check that
   existed before the head journal (``ledger verify --no-journal``) passes the shorter log;
   the server now refuses to start, naming the first head it lost, and still refuses with
   the journal deleted too.
2. **Database and journal** (an insider controlling the whole state directory): cut the
   log, rebuild the journal from what is left, restart; the server runs, and other
   auditors' answers regrow the log with another history. The auditor who held heads from
   before (in its head store) catches it: ``auditor head check`` exits 4 with both signed
   heads, and so does ``check_heads`` in Python.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from auditor_client.headstore import HeadStore
from auditor_client.keys import decode_public_key
from auditor_client.wire.errors import SplitViewError
from tests.integration.lab_server import REPO, Lab, build_lab, cli, env


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return build_lab(tmp_path_factory.mktemp("rewrite-lab"))


def _fresh(built: Lab, tmp_path: Path) -> Lab:
    return dataclasses.replace(built, state=tmp_path / "state", process=None, stderr_lines=[])


def _truncate(db: Path, keep: int) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM leaves WHERE leaf_index >= ?", (keep,))
        conn.execute("DELETE FROM tree_heads WHERE tree_size > ?", (keep,))
        conn.execute("DELETE FROM nodes WHERE ((node_index + 1) << level) > ?", (keep,))
    conn.close()


def _size(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    (count,) = conn.execute("SELECT COUNT(*) FROM leaves").fetchone()
    conn.close()
    size: int = count
    return size


def _serve_fails(lab: Lab) -> subprocess.CompletedProcess[str]:
    """Start the server expecting it to refuse; returns the finished process."""
    args = cli(
        "serve",
        "--index",
        str(lab.index),
        "--policy",
        str(lab.policy),
        "--lab-key",
        str(lab.lab_key_dir),
        "--state",
        str(lab.state),
        "--port",
        "0",
        "--insecure",
    )
    return subprocess.run(args, capture_output=True, text=True, env=env(), timeout=180)


def _server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), capture_output=True, text=True, env=env(), timeout=120)


def _ledger_verify(lab: Lab, *extra: str) -> subprocess.CompletedProcess[str]:
    db = str(lab.state / "ledger.db")
    return _server("ledger", "verify", "--db", db, "--lab-key", lab.lab_public, *extra)


def _auditor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auditor_client.cli", *args],
        capture_output=True,
        text=True,
        env=env(),
        cwd=REPO,
        timeout=120,
    )


def _head_check(lab: Lab) -> subprocess.CompletedProcess[str]:
    return _auditor(
        "head",
        "check",
        "--server",
        lab.address,
        "--key",
        str(lab.keys["reg"]),
        "--auditor-id",
        "reg",
        "--lab-key",
        lab.lab_public,
        "--insecure",
    )


@pytest.mark.timeout(300)
def test_a_truncated_database_stops_the_server(built: Lab, tmp_path: Path) -> None:
    lab = _fresh(built, tmp_path)
    lab.start()
    with lab.client() as client:
        for _ in range(8):
            client.whoami()
    lab.stop()
    db = lab.state / "ledger.db"
    size = _size(db)
    assert size >= 8
    _truncate(db, size - 3)

    # The old check: a valid, shorter log.
    old = _ledger_verify(lab, "--no-journal")
    assert old.returncode == 0, old.stderr
    assert old.stdout.startswith(f"ok: {size - 3} entries")

    checked = _ledger_verify(lab)
    assert checked.returncode == 4
    assert f"signed head of size {size - 2}," in checked.stderr and "truncated" in checked.stderr

    refused = _serve_fails(lab)
    assert refused.returncode == 4, refused.stderr[-2000:]
    assert f"log holds {size - 3} entries" in refused.stderr
    assert f"signed head of size {size - 2}," in refused.stderr

    # Without the journal as well: still no start (the journal is required once entries exist).
    (lab.state / "ledger.heads").unlink()
    refused = _serve_fails(lab)
    assert refused.returncode == 4, refused.stderr[-2000:]
    assert "no head journal" in refused.stderr and "ledger init-journal" in refused.stderr


@pytest.mark.timeout(300)
def test_an_insider_rewriting_both_files_is_caught_by_the_auditors_heads(
    built: Lab, tmp_path: Path
) -> None:
    lab = _fresh(built, tmp_path)
    lab.start()
    with lab.client() as reg:
        for _ in range(6):
            reg.whoami()
    first = _head_check(lab)  # every head reg holds, proven against the lab's newest
    assert first.returncode == 0, first.stderr
    assert "consistent: all" in first.stdout
    held = {h.tree_size: h for h in HeadStore().lab(decode_public_key(lab.lab_public)).heads()}
    lab.stop()

    # The insider: cut the log to 3 entries, rebuild the journal from the cut database, go.
    db = lab.state / "ledger.db"
    _truncate(db, 3)
    (lab.state / "ledger.heads").unlink()
    init = _server("ledger", "init-journal", "--db", str(db), "--lab-key", lab.lab_public)
    assert init.returncode == 0, init.stderr
    lab.start()
    try:
        # Another auditor, on another machine (its own head store), regrows the log.
        with lab.client("tp", head_store=HeadStore(tmp_path / "tp-heads")) as tp:
            for _ in range(3 * max(held)):
                tp.whoami()
        assert _ledger_verify(lab).returncode == 0  # the lab's own files agree with each other

        caught = _head_check(lab)
        assert caught.returncode == 4, caught.stdout + caught.stderr
        assert "SPLIT VIEW" in caught.stderr and "cannot prove its head" in caught.stderr
        evidence = json.loads(caught.stdout)
        assert evidence["split_view"] is True
        old = held[evidence["held"]["tree_size"]]
        assert evidence["held"]["root_hash"] == old.root_hash.hex()
        assert evidence["conflicting"]["tree_size"] > max(held)

        with lab.client() as reg, pytest.raises(SplitViewError):
            reg.check_heads()

        # And the lab, given reg's exported heads, cannot pass its own check either.
        export = tmp_path / "reg-heads.json"
        out = _auditor("head", "export", "--lab-key", lab.lab_public, "--out", str(export))
        assert out.returncode == 0, out.stderr
    finally:
        lab.stop()
    against = _ledger_verify(lab, "--heads", str(export))
    assert against.returncode == 4, against.stdout + against.stderr
    assert "auditor heads from" in against.stderr and "size 4," in against.stderr
