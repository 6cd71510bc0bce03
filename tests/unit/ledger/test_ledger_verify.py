"""``verify`` catches every edited, inserted or deleted row, and names where; and its one limit."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from auditor_client.wire import digests, merkle
from auditor_server.errors import InputError, IntegrityError
from auditor_server.ledger import Ledger, LedgerError, LedgerIntegrityError, verify
from tests.unit.ledger.ledger_fixtures import LAB_KEY, OTHER_KEY, KeySigner, append, entry

SIGNER = KeySigner(LAB_KEY)
PUBLIC = LAB_KEY.public_key()
ENTRIES = 20


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    with Ledger.open(path, signer=SIGNER) as lg:
        for i in range(ENTRIES):
            append(lg, i)
    return path


def _sql(db: Path, statement: str, *args: object) -> None:
    conn = sqlite3.connect(db)
    with conn:
        assert conn.execute(statement, args).rowcount == 1
    conn.close()


def test_an_untouched_log_verifies(db: Path) -> None:
    report = verify(db, lab_public_key=PUBLIC)
    assert (report.entries, report.heads) == (ENTRIES, ENTRIES + 1)
    assert report.nodes == ENTRIES - bin(ENTRIES).count("1")
    with Ledger.open(db, signer=SIGNER) as lg:
        assert report.root_hash == lg.tree_head().root_hash
        assert report.newest_timestamp_ms == lg.tree_head().timestamp_ms


def test_an_empty_log_verifies(tmp_path: Path) -> None:
    Ledger.open(tmp_path / "ledger.db", signer=SIGNER).close()
    report = verify(tmp_path / "ledger.db", lab_public_key=PUBLIC)
    assert (report.entries, report.heads, report.root_hash) == (0, 1, merkle.EMPTY_ROOT)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("request_digest", b"\x00" * 32, "leaf 7: stored leaf hash .* does not match"),
        ("response_digest", b"\x01" * 32, "leaf 7: stored leaf hash .* does not match"),
        ("status", 13, "leaf 7: stored leaf hash .* does not match"),
        ("timestamp_ms", 1, "leaf 7: timestamp 1 differs from its signed head's"),
        ("leaf_hash", b"\x02" * 32, "leaf 7: stored leaf hash 0202"),
        ("leaf_index", 100, "leaf 7 is missing: the next stored leaf index is 8"),
        ("request_digest", b"short", "leaf 7: ledger digests must be 32 bytes"),
        ("status", "zero", "leaf 7: malformed digest or status column"),
    ],
)
def test_editing_any_column_of_a_leaf_is_detected(
    db: Path, column: str, value: object, message: str
) -> None:
    _sql(db, f"UPDATE leaves SET {column} = ? WHERE leaf_index = 7", value)
    with pytest.raises(LedgerIntegrityError, match=message) as info:
        verify(db, lab_public_key=PUBLIC)
    assert isinstance(info.value, IntegrityError)


def test_rewriting_a_leaf_and_its_hash_together_is_caught_by_the_signed_heads(db: Path) -> None:
    request, response, _ = entry(7)
    forged = merkle.leaf_hash(
        digests.ledger_leaf_data(request_digest=request, response_digest=response, status=13)
    )
    _sql(db, "UPDATE leaves SET status = 13, leaf_hash = ? WHERE leaf_index = 7", forged)
    with pytest.raises(LedgerIntegrityError, match=r"head 8: stored root .*, but the leaves give"):
        verify(db, lab_public_key=PUBLIC)


def test_deleting_a_middle_leaf_is_detected(db: Path) -> None:
    _sql(db, "DELETE FROM leaves WHERE leaf_index = 9")
    with pytest.raises(LedgerIntegrityError, match="leaf 9 is missing"):
        verify(db, lab_public_key=PUBLIC)


def test_deleting_the_last_leaf_is_detected(db: Path) -> None:
    _sql(db, "DELETE FROM leaves WHERE leaf_index = ?", ENTRIES - 1)
    with pytest.raises(
        LedgerIntegrityError, match=f"head for tree size {ENTRIES} exists, but the log holds only"
    ):
        verify(db, lab_public_key=PUBLIC)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("root_hash", b"\x03" * 32, "head 12: stored root 0303"),
        ("timestamp_ms", 42, "head 12: signature does not verify"),
        ("signature", b"\x00" * 64, "head 12: signature does not verify"),
        ("key_id", "someone-else", "head 12: signed by key 'someone-else'"),
        ("tree_size", 1000, "signed head for tree size 12 is missing"),
    ],
)
def test_editing_a_tree_head_is_detected(
    db: Path, column: str, value: object, message: str
) -> None:
    _sql(db, f"UPDATE tree_heads SET {column} = ? WHERE tree_size = 12", value)
    with pytest.raises(LedgerIntegrityError, match=message):
        verify(db, lab_public_key=PUBLIC)


def test_deleting_a_tree_head_is_detected(db: Path) -> None:
    _sql(db, "DELETE FROM tree_heads WHERE tree_size = 5")
    with pytest.raises(LedgerIntegrityError, match="signed head for tree size 5 is missing"):
        verify(db, lab_public_key=PUBLIC)


def test_editing_or_deleting_a_stored_node_is_detected(db: Path) -> None:
    _sql(db, "UPDATE nodes SET hash = ? WHERE level = 1 AND node_index = 3", bytes(32))
    with pytest.raises(LedgerIntegrityError, match=r"node \(level 1, index 3\) is missing or"):
        verify(db, lab_public_key=PUBLIC)
    _sql(db, "DELETE FROM nodes WHERE level = 1 AND node_index = 3")
    with pytest.raises(LedgerIntegrityError, match=r"node \(level 1, index 3\) is missing or"):
        verify(db, lab_public_key=PUBLIC)


def test_heads_signed_by_another_key_are_refused(db: Path) -> None:
    with pytest.raises(LedgerIntegrityError, match="head 0: signed by key"):
        verify(db, lab_public_key=OTHER_KEY.public_key())


def test_a_missing_or_foreign_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger file") as info:
        verify(tmp_path / "nope.db", lab_public_key=PUBLIC)
    assert isinstance(info.value, InputError)
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    with pytest.raises(LedgerIntegrityError, match="table\\(s\\) leaves, nodes"):
        verify(other, lab_public_key=PUBLIC)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(LedgerIntegrityError, match="unreadable ledger database"):
        verify(garbage, lab_public_key=PUBLIC)


def test_verify_runs_beside_a_live_writer(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(path, signer=SIGNER) as lg:
        for i in range(10):
            append(lg, i)
        assert verify(path, lab_public_key=PUBLIC).entries == 10
        append(lg, 10)
        assert verify(path, lab_public_key=PUBLIC).entries == 11


def test_a_truncated_tail_is_caught_by_the_journal_and_by_an_auditors_receipt(db: Path) -> None:
    """Drop the last entries with their heads and nodes: the database alone is a valid
    shorter log (verify without the journal passes, as every verify did before the journal),
    but the head journal makes verify and the server refuse it. An insider who rewrites the
    journal too is caught by an auditor's head store (tests/integration/test_ledger_rewrite.py)."""
    with Ledger.open(db, signer=SIGNER) as lg:
        assert lg.tree_head().tree_size == 20
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM leaves WHERE leaf_index >= 16")
        conn.execute("DELETE FROM tree_heads WHERE tree_size > 16")
        conn.execute("DELETE FROM nodes WHERE ((node_index + 1) << level) > 16")
    conn.close()
    assert verify(db, lab_public_key=PUBLIC, check_journal=False).entries == 16
    with pytest.raises(LedgerIntegrityError):
        verify(db, lab_public_key=PUBLIC)
    with pytest.raises(LedgerIntegrityError):
        Ledger.open(db, signer=SIGNER)

