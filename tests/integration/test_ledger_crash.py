"""kill -9 the server under load: after a restart the log verifies and no receipt is lost.

Every receipt a client received before the crash names a committed leaf; after the restart
each of those leaves must still be in the log (inclusion proof against the new head) and
every tree head a client saw must be a prefix of the new one (consistency proof).
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from auditor_client.client import Verified
from auditor_client.errors import ServerRefusedError
from auditor_client.wire import digests, merkle
from auditor_client.wire.receipts import answer_status
from tests.integration.lab_server import Lab, build_lab, cli, env


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return build_lab(tmp_path_factory.mktemp("crash-lab"))


def _fresh(built: Lab, tmp_path: Path) -> Lab:
    """The built lab with its own, empty state directory."""
    return dataclasses.replace(built, state=tmp_path / "state", process=None, stderr_lines=[])


def test_log_survives_kill_9_under_load(built: Lab, tmp_path: Path) -> None:
    lab = _fresh(built, tmp_path)
    lab.start()
    received: list[Verified] = []
    lock = threading.Lock()
    stop = threading.Event()

    def hammer(worker: int) -> None:
        with lab.client() as client:
            client.retries = 0
            n = 0
            while not stop.is_set():
                try:
                    if n % 2:
                        answer = client.whoami()
                    else:
                        answer = client.attribute("The", f" fox number {worker} {n}", top_k=2)
                except ServerRefusedError:
                    return  # the server is gone
                with lock:
                    received.append(answer)
                n += 1

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(received) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lab.process is not None
    lab.process.send_signal(signal.SIGKILL)
    lab.process.wait(timeout=30)
    lab.process = None
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert len(received) >= 40

    verify = subprocess.run(
        cli("ledger", "verify", "--db", str(lab.state / "ledger.db"), "--lab-key", lab.lab_public),
        capture_output=True,
        text=True,
        env=env(),
        timeout=120,
    )
    assert verify.returncode == 0, verify.stderr

    lab.start()
    try:
        with lab.client() as client:
            head = client.tree_head().body.tree_head.tree_head
            biggest = max(v.response.receipt.tree_head.tree_size for v in received)
            # Nothing was committed after the last answer sent, and nothing was lost.
            assert head.tree_size >= biggest
            for v in received:
                receipt = v.response.receipt
                leaf = merkle.leaf_hash(
                    digests.ledger_leaf_data(
                        request_digest=v.body.request_digest,
                        response_digest=digests.response_digest(v.response.body),
                        status=answer_status(v.body),
                    )
                )
                proof = client.inclusion_proof(receipt.leaf_index, head.tree_size).body
                assert proof.inclusion_proof.leaf_hash == leaf
                merkle.verify_inclusion(
                    leaf,
                    receipt.leaf_index,
                    head.tree_size,
                    list(proof.inclusion_proof.path),
                    proof.inclusion_proof.tree_head.root_hash,
                )
                old = receipt.tree_head
                cons = client.consistency_proof(old.tree_size, head.tree_size).body
                merkle.verify_consistency(
                    old.tree_size,
                    head.tree_size,
                    old.root_hash,
                    cons.consistency_proof.tree_head.root_hash,
                    list(cons.consistency_proof.path),
                )
    finally:
        lab.stop()


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE leaves SET status = 13 WHERE leaf_index = 2",
        "UPDATE leaves SET request_digest = zeroblob(32) WHERE leaf_index = 2",
        "DELETE FROM leaves WHERE leaf_index = 2",
    ],
    ids=["status", "request_digest", "deleted"],
)
def test_ledger_verify_detects_an_edited_row(built: Lab, tmp_path: Path, edit: str) -> None:
    """Through the real CLI, on a log the real server wrote."""
    import sqlite3

    lab = _fresh(built, tmp_path)
    lab.start()
    with lab.client() as client:
        for _ in range(5):
            client.whoami()
    lab.stop()
    db = lab.state / "ledger.db"
    args = cli("ledger", "verify", "--db", str(db), "--lab-key", lab.lab_public)
    assert subprocess.run(args, capture_output=True, env=env(), timeout=120).returncode == 0
    with sqlite3.connect(db) as conn:
        conn.execute(edit)
    out = subprocess.run(args, capture_output=True, text=True, env=env(), timeout=120)
    assert out.returncode == 4, out.stdout + out.stderr
    assert "leaf 2" in out.stderr
