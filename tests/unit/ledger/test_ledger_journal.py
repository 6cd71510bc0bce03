"""The head journal against real attacks on a real ledger file.

Each attack is shown twice: the check that existed before the journal (``verify`` without
it, which is what ``ledger verify`` did) accepts the damaged database, and the journal-aware
``Ledger.open`` and ``verify`` refuse it, naming the first head the database lost. The
attacks edit the SQLite file directly, as someone with database access would.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from auditor_client.keys import encode_public_key
from auditor_client.wire import merkle
from auditor_server.errors import ConfigError, InputError, IntegrityError, SandboxError
from auditor_server.ledger import (
    Ledger,
    LedgerIntegrityError,
    LedgerInUseError,
    TreeHead,
    journal_path_for,
    verify,
)
from auditor_server.ledger.commands import ledger_group
from auditor_server.ledger.journal import (
    HeadJournal,
    JournalReader,
    encode_head,
    write_new_journal,
)
from auditor_server.ledger.verify import AuditorHeads
from tests.unit.ledger.ledger_fixtures import LAB_KEY, OTHER_KEY, KeySigner, append

SIGNER = KeySigner(LAB_KEY)
PUBLIC = LAB_KEY.public_key()
LAB_PUBLIC = encode_public_key(PUBLIC)
ENTRIES = 20


class _MappedGroup(click.Group):
    """The main CLI's error mapping (auditor_server/cli.py), without importing the whole CLI."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SandboxError as exc:
            codes = ((InputError, 2), (ConfigError, 3), (IntegrityError, 4), (SandboxError, 1))
            click.echo(f"error: {exc}", err=True)
            sys.exit(next(c for cls, c in codes if isinstance(exc, cls)))


@click.group(cls=_MappedGroup)
def main() -> None:
    """Stand-in for ``auditor-server``."""


main.add_command(ledger_group)


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, ["ledger", *args])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    with Ledger.open(path, signer=SIGNER) as lg:
        for i in range(ENTRIES):
            append(lg, i)
    return path


def _truncate(db: Path, keep: int) -> None:
    """Cut the log to ``keep`` entries: leaves, heads and nodes, consistently."""
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM leaves WHERE leaf_index >= ?", (keep,))
        conn.execute("DELETE FROM tree_heads WHERE tree_size > ?", (keep,))
        conn.execute("DELETE FROM nodes WHERE ((node_index + 1) << level) > ?", (keep,))
    conn.close()


def _journal(db: Path) -> list[TreeHead]:
    return list(JournalReader(journal_path_for(db)))


def _db_heads(db: Path) -> list[TreeHead]:
    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT tree_size, root_hash, timestamp_ms, key_id, signature FROM tree_heads "
        "ORDER BY tree_size"
    ).fetchall()
    conn.close()
    return [TreeHead(*row) for row in rows]


# --- the journal itself -------------------------------------------------------------------


def test_every_head_is_journaled_before_it_is_returned(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(path, signer=SIGNER) as lg:
        assert journal_path_for(path) == tmp_path / "ledger.heads"
        returned = [lg.tree_head()]
        for i in range(7):
            returned.append(append(lg, i).tree_head)
            assert _journal(path)[-1] == returned[-1]  # already on disk when returned
    assert _journal(path) == returned == _db_heads(path)
    assert all(
        line.endswith(b"\n") for line in journal_path_for(path).read_bytes().splitlines(True)
    )
    report = verify(path, lab_public_key=PUBLIC)
    assert (report.journal_heads, report.journal_newest_size) == (8, 7)


def test_a_second_writer_is_refused(db: Path) -> None:
    with Ledger.open(db, signer=SIGNER):
        with pytest.raises(LedgerInUseError, match="locked by another process"):
            Ledger.open(db, signer=SIGNER)
        assert verify(db, lab_public_key=PUBLIC).entries == ENTRIES  # readers never lock
    with Ledger.open(db, signer=SIGNER) as again:  # released on close
        assert again.size == ENTRIES


# --- attack 1: truncation -----------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 4, 100])
def test_a_truncated_database_passes_the_old_check_but_is_refused(db: Path, cut: int) -> None:
    keep = max(ENTRIES - cut, 0)
    handed_out = _journal(db)[-1]  # what the last auditor got: the head of size 20
    _truncate(db, keep)

    # Before the journal: the cut log is a perfectly valid shorter log.
    assert verify(db, lab_public_key=PUBLIC, check_journal=False).entries == keep

    first_lost = f"size {keep + 1}, root"
    with pytest.raises(LedgerIntegrityError, match=rf"log holds {keep} entries.*{first_lost}"):
        Ledger.open(db, signer=SIGNER)
    with pytest.raises(LedgerIntegrityError, match=rf"{first_lost}.*holds only {keep} entries"):
        verify(db, lab_public_key=PUBLIC)
    out = _cli("verify", "--db", str(db), "--lab-key", LAB_PUBLIC)
    assert out.exit_code == 4, out.output
    assert f"signed head of size {keep + 1}," in out.output and "truncated" in out.output

    # The refused open signed nothing: the head of size 20 is still the only one for 20.
    assert _journal(db)[-1] == handed_out
    assert len(_db_heads(db)) == keep + 1


def test_a_deleted_database_is_refused(db: Path) -> None:
    db.unlink()
    with pytest.raises(LedgerIntegrityError, match=r"log holds 0 entries.*size 1, root"):
        Ledger.open(db, signer=SIGNER)


# --- attack 2: rewrite (truncate, then let the lab's key sign new entries) ----------------


def _rewrite(db: Path, keep: int, new_entries: int) -> Path:
    """The realistic rewrite: cut the log, start a server on it with a journal rebuilt from
    the cut database (what the old code did, journal or not), let it sign other entries.
    Returns the original journal, put back in place."""
    original = journal_path_for(db)
    saved = db.with_name("saved.heads")
    shutil.copy(original, saved)
    _truncate(db, keep)
    original.unlink()
    write_new_journal(original, iter(_db_heads(db)))
    with Ledger.open(db, signer=SIGNER) as lg:
        for i in range(new_entries):
            append(lg, 1000 + i)
    os.replace(saved, original)
    return original


def test_a_rewritten_database_passes_the_old_check_but_is_refused(db: Path) -> None:
    handed_out = _journal(db)[-1]
    _rewrite(db, keep=16, new_entries=8)  # now 24 entries; sizes 17..24 have other roots

    # Every row is internally consistent and signed by the lab key: the old check passes.
    report = verify(db, lab_public_key=PUBLIC, check_journal=False)
    assert report.entries == 24
    with sqlite3.connect(db) as conn:
        (stored_20,) = conn.execute(
            "SELECT root_hash FROM tree_heads WHERE tree_size = 20"
        ).fetchone()
    conn.close()
    assert stored_20 != handed_out.root_hash  # a second root for a size already handed out

    with pytest.raises(LedgerIntegrityError, match=r"root at tree size 17 is .*rewritten"):
        Ledger.open(db, signer=SIGNER)
    with pytest.raises(LedgerIntegrityError, match=r"head journal .* size 17, root .*rewritten"):
        verify(db, lab_public_key=PUBLIC)
    out = _cli("verify", "--db", str(db), "--lab-key", LAB_PUBLIC)
    assert out.exit_code == 4 and "size 17" in out.output, out.output


def test_an_auditors_heads_catch_a_journal_rewritten_with_the_database(
    db: Path, tmp_path: Path
) -> None:
    """An insider rewrites both files: the server opens, only outside heads can tell."""
    handed_out = _journal(db)[-1]
    _rewrite(db, keep=16, new_entries=8)
    journal_path_for(db).unlink()
    write_new_journal(journal_path_for(db), iter(_db_heads(db)))  # the journal rewritten too
    Ledger.open(db, signer=SIGNER).close()
    assert verify(db, lab_public_key=PUBLIC).entries == 24

    auditor = AuditorHeads(source="auditor.json", heads=(handed_out,))
    with pytest.raises(LedgerIntegrityError, match=r"auditor heads from auditor.json.*size 20"):
        verify(db, lab_public_key=PUBLIC, auditor_heads=[auditor])


# --- refusing to sign ---------------------------------------------------------------------


def test_refuses_to_sign_a_size_already_journaled_with_another_root(db: Path) -> None:
    with Ledger.open(db, signer=SIGNER) as lg:
        # Something else journaled a head for the next size (a second writer that got past
        # the lock, or a restored journal): signing another root for it would fork the log.
        forged = TreeHead(ENTRIES + 1, bytes(32), 1, SIGNER.key_id, bytes(64))
        with journal_path_for(db).open("ab") as fh:
            fh.write(encode_head(forged))
        with pytest.raises(
            LedgerIntegrityError, match=rf"refusing to sign root .* size {ENTRIES + 1}"
        ):
            append(lg, 99)
        assert lg.size == ENTRIES  # nothing committed
    assert verify(db, lab_public_key=PUBLIC, check_journal=False).entries == ENTRIES


# --- crash safety -------------------------------------------------------------------------


def test_a_torn_last_line_is_cut_and_its_head_rejournaled(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash mid-write leaves part of the newest head's line (its commit already done)."""
    path = journal_path_for(db)
    data = path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: last_start + 40])  # the head of size 20, torn after 40 bytes

    report = verify(db, lab_public_key=PUBLIC)  # read-only: reported, not an error
    assert report.journal_torn_tail and report.journal_newest_size == ENTRIES - 1

    with caplog.at_level(logging.WARNING), Ledger.open(db, signer=SIGNER) as lg:
        assert "torn record" in caplog.text
        assert lg.tree_head() == _db_heads(db)[-1]
        append(lg, 500)
    assert path.read_bytes().startswith(data)  # the cut line was rewritten whole
    assert [h.tree_size for h in _journal(db)] == list(range(ENTRIES + 2))
    assert not verify(db, lab_public_key=PUBLIC).journal_torn_tail


def test_a_journal_behind_the_database_catches_up(db: Path) -> None:
    """A crash after the commit but before the journal write: the head was never returned."""
    path = journal_path_for(db)
    lines = path.read_bytes().splitlines(True)
    path.write_bytes(b"".join(lines[:-1]))
    assert verify(db, lab_public_key=PUBLIC).journal_newest_size == ENTRIES - 1
    with Ledger.open(db, signer=SIGNER) as lg:
        assert lg.size == ENTRIES
    assert path.read_bytes() == b"".join(lines)


def test_garbage_is_not_mistaken_for_a_torn_write(db: Path) -> None:
    path = journal_path_for(db)
    with path.open("ab") as fh:
        fh.write(b"\0" * 10_000)
    with pytest.raises(LedgerIntegrityError, match="not a crash artifact"):
        Ledger.open(db, signer=SIGNER)
    lines = path.read_bytes()[:-10_000].splitlines(True)
    lines[3] = b'{"tree_size": "three"}\n'
    path.write_bytes(b"".join(lines))
    with pytest.raises(LedgerIntegrityError, match="line 4 is not a signed head"):
        verify(db, lab_public_key=PUBLIC)


def test_a_failed_journal_write_withholds_the_head_until_it_is_journaled(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Ledger.open(db, signer=SIGNER) as lg:
        real = HeadJournal.append

        def full_disk(self: HeadJournal, head: TreeHead) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(HeadJournal, "append", full_disk)
        with pytest.raises(OSError, match="No space"):
            append(lg, 100)
        monkeypatch.setattr(HeadJournal, "append", real)
        assert _journal(db)[-1].tree_size == ENTRIES  # committed, not journaled, not returned
        head = lg.tree_head()  # journals it first
        assert head.tree_size == ENTRIES + 1 and _journal(db)[-1] == head
        assert append(lg, 101).index == ENTRIES + 1
    assert verify(db, lab_public_key=PUBLIC).entries == ENTRIES + 2


# --- state directories from before the journal --------------------------------------------


def test_a_log_without_its_journal_is_refused_until_init_journal(db: Path) -> None:
    journal_path_for(db).unlink()
    with pytest.raises(LedgerIntegrityError, match=r"no head journal.*ledger init-journal"):
        Ledger.open(db, signer=SIGNER)
    with pytest.raises(LedgerIntegrityError, match="no head journal"):
        verify(db, lab_public_key=PUBLIC)
    assert verify(db, lab_public_key=PUBLIC, check_journal=False).entries == ENTRIES
    assert _cli("verify", "--db", str(db), "--lab-key", LAB_PUBLIC, "--no-journal").exit_code == 0

    wrong_key = encode_public_key(OTHER_KEY.public_key())
    assert _cli("init-journal", "--db", str(db), "--lab-key", wrong_key).exit_code == 4
    assert not journal_path_for(db).exists()
    out = _cli("init-journal", "--db", str(db), "--lab-key", LAB_PUBLIC)
    assert out.exit_code == 0, out.output
    assert "WARNING: this trusts the database" in out.output
    assert _journal(db) == _db_heads(db)
    assert _cli("init-journal", "--db", str(db), "--lab-key", LAB_PUBLIC).exit_code == 2
    with Ledger.open(db, signer=SIGNER) as lg:
        assert lg.size == ENTRIES


def test_an_empty_log_gets_a_journal_without_ceremony(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger.open(path, signer=SIGNER).close()
    journal_path_for(path).unlink()
    with Ledger.open(path, signer=SIGNER) as lg:
        assert lg.tree_head().root_hash == merkle.EMPTY_ROOT
    assert [h.tree_size for h in _journal(path)] == [0]


# --- auditors' heads on the command line --------------------------------------------------


def _export(path: Path, heads: list[TreeHead], key_id: str | None = None) -> Path:
    import json

    path.write_text(
        json.dumps(
            {
                "format": "auditor-sandbox/heads/v1",
                "lab_key_id": key_id or SIGNER.key_id,
                "heads": [json.loads(encode_head(h)) for h in heads],
            }
        )
    )
    return path


def test_ledger_verify_checks_an_auditors_export(db: Path, tmp_path: Path) -> None:
    held = _journal(db)[::5]
    good = _export(tmp_path / "good.json", held)
    out = _cli("verify", "--db", str(db), "--lab-key", LAB_PUBLIC, "--heads", str(good))
    assert out.exit_code == 0, out.output
    assert f"{len(held)} auditor heads match" in out.output

    h = held[-1]
    forged = TreeHead(h.tree_size, h.root_hash, h.timestamp_ms + 1, h.key_id, h.signature)
    bad = _export(tmp_path / "forged.json", [forged])
    out = _cli("verify", "--db", str(db), "--lab-key", LAB_PUBLIC, "--heads", str(bad))
    assert out.exit_code == 2 and "not signed by lab key" in out.output, out.output

    other = _export(tmp_path / "other.json", held, key_id="0" * 32)
    out = _cli("verify", "--db", str(db), "--lab-key", LAB_PUBLIC, "--heads", str(other))
    assert out.exit_code == 2 and "heads of lab key" in out.output, out.output

    _truncate(db, 12)
    journal_path_for(db).unlink()
    write_new_journal(journal_path_for(db), iter(_db_heads(db)))
    out = _cli("verify", "--db", str(db), "--lab-key", LAB_PUBLIC, "--heads", str(good))
    assert out.exit_code == 4 and "size 15" in out.output and "truncated" in out.output
