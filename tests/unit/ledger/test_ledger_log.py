"""The ledger writer: receipts and proofs check out with the client's verifier, across reopen."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditor_client.wire import merkle
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.envelope import verify_tree_head
from auditor_client.wire.errors import ProofError
from auditor_server.errors import InputError
from auditor_server.ledger import Ledger, LedgerError, LedgerIntegrityError, TreeHead, verify
from tests.unit.ledger.ledger_fixtures import LAB_KEY, KeySigner, append, leaf_of

SIGNER = KeySigner(LAB_KEY)


def _check_head(head: TreeHead) -> None:
    """A head the ledger returns verifies with the client's tree-head check."""
    verify_tree_head(
        pb.SignedTreeHead(
            tree_size=head.tree_size,
            root_hash=head.root_hash,
            timestamp_ms=head.timestamp_ms,
            lab_key_id=head.key_id,
            signature=head.signature,
        ),
        lab_public_key=LAB_KEY.public_key(),
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(tmp_path / "ledger.db", signer=SIGNER) as opened:
        yield opened


def test_a_new_ledger_has_a_signed_empty_head(ledger: Ledger) -> None:
    head = ledger.tree_head()
    assert ledger.size == 0
    assert (head.tree_size, head.root_hash) == (0, merkle.EMPTY_ROOT)
    _check_head(head)


def test_every_receipt_verifies_with_the_client_verifier(ledger: Ledger) -> None:
    for i in range(40):
        result = append(ledger, i)
        assert result.index == i
        assert result.leaf_hash == leaf_of(i) == ledger.leaf_hash(i)
        assert result.tree_head.tree_size == i + 1
        assert result.tree_head == ledger.tree_head() == ledger.tree_head(i + 1)
        _check_head(result.tree_head)
        merkle.verify_inclusion(
            leaf_of(i), i, i + 1, list(result.inclusion_path), result.tree_head.root_hash
        )
    assert ledger.tree_head().root_hash == merkle.root_hash([leaf_of(i) for i in range(40)])


def test_every_proof_between_stored_sizes_verifies(ledger: Ledger) -> None:
    for i in range(33):
        append(ledger, i)
    heads = [ledger.tree_head(n) for n in range(34)]
    for n in range(1, 34):
        _check_head(heads[n])
        for i in range(n):
            path = ledger.inclusion_proof(i, n)
            merkle.verify_inclusion(leaf_of(i), i, n, path, heads[n].root_hash)
        for m in range(1, n + 1):
            path = ledger.consistency_proof(m, n)
            merkle.verify_consistency(m, n, heads[m].root_hash, heads[n].root_hash, path)


def test_a_proof_does_not_verify_against_another_head(ledger: Ledger) -> None:
    for i in range(9):
        append(ledger, i)
    path = ledger.inclusion_proof(3, 9)
    with pytest.raises(ProofError, match="leads to root"):
        merkle.verify_inclusion(leaf_of(4), 3, 9, path, ledger.tree_head(9).root_hash)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda lg: lg.tree_head(6), "tree size 6 is out of range; the log holds 5 entries"),
        (lambda lg: lg.tree_head(-1), "tree size -1 is out of range"),
        (lambda lg: lg.leaf_hash(5), "leaf index 5 is out of range"),
        (lambda lg: lg.inclusion_proof(5, 5), "leaf index 5 is not in a tree of size 5"),
        (lambda lg: lg.inclusion_proof(0, 6), "tree size 6 is out of range"),
        (lambda lg: lg.inclusion_proof(0, 0), "leaf index 0 is not in a tree of size 0"),
        (lambda lg: lg.consistency_proof(0, 3), "no consistency proof from tree size 0 to 3"),
        (lambda lg: lg.consistency_proof(4, 3), "no consistency proof from tree size 4 to 3"),
        (lambda lg: lg.consistency_proof(1, 6), "tree size 6 is out of range"),
    ],
)
def test_out_of_range_requests_are_input_errors(ledger: Ledger, call: object, message: str) -> None:
    for i in range(5):
        append(ledger, i)
    with pytest.raises(LedgerError, match=message) as info:
        call(ledger)  # type: ignore[operator]
    assert isinstance(info.value, InputError)


def test_malformed_entries_are_refused_and_nothing_is_written(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="32 bytes"):
        ledger.append(request_digest=b"short", response_digest=bytes(32), status=0)
    with pytest.raises(LedgerError, match="32-bit status"):
        ledger.append(request_digest=bytes(32), response_digest=bytes(32), status=-1)
    assert ledger.size == 0


def test_reopen_keeps_the_tree_and_keeps_growing_it(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with Ledger.open(db, signer=SIGNER) as first:
        for i in range(11):
            append(first, i)
        old = first.tree_head()
    with Ledger.open(db, signer=SIGNER) as again:
        assert again.size == 11
        assert again.tree_head() == old
        for i in range(11, 20):
            result = append(again, i)
            assert result.index == i
        new = again.tree_head()
        path = again.consistency_proof(old.tree_size, new.tree_size)
    merkle.verify_consistency(11, 20, old.root_hash, new.root_hash, path)
    assert verify(db, lab_public_key=LAB_KEY.public_key()).entries == 20


def test_concurrent_appends_get_distinct_contiguous_indices(ledger: Ledger, tmp_path: Path) -> None:
    got: list[int] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        for k in range(25):
            index = append(ledger, 1000 * w + k).index
            with lock:
                got.append(index)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(200))
    report = verify(tmp_path / "ledger.db", lab_public_key=LAB_KEY.public_key())
    assert (report.entries, report.heads) == (200, 201)


def test_head_timestamps_never_go_backwards(tmp_path: Path) -> None:
    times = iter([5_000, 9_000, 7_000, 8_000, 12_000])
    with Ledger.open(tmp_path / "ledger.db", signer=SIGNER, clock=lambda: next(times)) as lg:
        stamps = [append(lg, i).tree_head.timestamp_ms for i in range(4)]
    assert stamps == [9_000, 9_000, 9_000, 12_000]


def test_open_refuses_a_log_whose_stored_tree_disagrees_with_its_head(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with Ledger.open(db, signer=SIGNER) as lg:
        for i in range(6):
            append(lg, i)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE nodes SET hash = ? WHERE level = 2 AND node_index = 0", (bytes(32),))
    conn.close()
    with pytest.raises(LedgerIntegrityError, match="signed head says"):
        Ledger.open(db, signer=SIGNER)


def test_open_refuses_a_log_with_entries_beyond_its_newest_head(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with Ledger.open(db, signer=SIGNER) as lg:
        for i in range(3):
            append(lg, i)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM tree_heads WHERE tree_size = 3")
    conn.close()
    with pytest.raises(LedgerIntegrityError, match="newest signed head is for size 2"):
        Ledger.open(db, signer=SIGNER)


def test_a_closed_ledger_refuses_work(tmp_path: Path) -> None:
    lg = Ledger.open(tmp_path / "ledger.db", signer=SIGNER)
    lg.close()
    lg.close()
    with pytest.raises(LedgerError, match="closed"):
        append(lg, 0)
