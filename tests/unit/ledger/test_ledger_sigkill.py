"""A real crash: SIGKILL a process mid-append; every entry it reported committed survives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from auditor_client.wire import merkle
from auditor_server.ledger import Ledger, verify
from tests.unit.ledger.ledger_fixtures import LAB_KEY, KeySigner, append, leaf_of

REPO = Path(__file__).resolve().parents[3]


def test_sigkill_mid_append_loses_no_committed_entry(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.unit.ledger.append_child", str(db)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    reported: list[int] = []
    deadline = time.monotonic() + 60
    try:
        while len(reported) < 300 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            reported.append(int(line))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        # Lines already in the pipe were printed after their commit, so they count too.
        reported += [int(x) for x in child.stdout.read().split()]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert len(reported) >= 300, child.stderr.read() if child.stderr else ""
    assert reported == list(range(len(reported)))

    report = verify(db, lab_public_key=LAB_KEY.public_key())
    assert report.entries >= len(reported)  # the one in flight may have committed unreported
    with Ledger.open(db, signer=KeySigner(LAB_KEY)) as lg:
        head = lg.tree_head()
        assert head.tree_size == report.entries
        for i in [*reported[:: max(1, len(reported) // 50)], reported[-1]]:
            assert lg.leaf_hash(i) == leaf_of(i)
            merkle.verify_inclusion(
                leaf_of(i), i, head.tree_size, lg.inclusion_proof(i, head.tree_size), head.root_hash
            )
        # The log keeps growing where it stopped.
        assert append(lg, head.tree_size).index == head.tree_size
