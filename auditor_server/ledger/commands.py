"""``auditor-server ledger ...``: offline checks of the lab's ledger file, and its journal.

``verify`` is a thin shell over :func:`auditor_server.ledger.verify.verify`: the database,
its head journal and optionally heads auditors exported. ``init-journal`` gives a ledger
from before head journals its journal, which the server requires before it will open a log
with entries. Failures are raised as the project's errors (an integrity failure is an
``IntegrityError``), and the main CLI turns them into one stderr line and an exit code (4
for integrity).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from auditor_client.headstore import HeadFileError, read_export
from auditor_client.keys import KeyFileError, decode_public_key, read_public_key_text
from auditor_client.wire import digests
from auditor_server.ledger.errors import LedgerError
from auditor_server.ledger.journal import TreeHead, journal_path_for, write_new_journal
from auditor_server.ledger.store import connect_reader
from auditor_server.ledger.verify import AuditorHeads, verify

__all__ = ["ledger_group"]


def _lab_key(ctx: click.Context, param: click.Parameter, value: str) -> Ed25519PublicKey:
    """Accept the key as ``ed25519:<base64>`` or as a file holding that text."""
    try:
        return decode_public_key(read_public_key_text(value))
    except KeyFileError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.group(name="ledger")
def ledger_group() -> None:
    """Inspect and check the lab's append-only ledger."""


@ledger_group.command("verify")
@click.option(
    "--db",
    "db_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The ledger's SQLite file (opened read-only; safe beside a running server).",
)
@click.option(
    "--lab-key",
    "lab_key",
    required=True,
    callback=_lab_key,
    help="The lab's public key, 'ed25519:<base64>', or a file containing it.",
)
@click.option(
    "--journal",
    "journal_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The head journal (default: the database's sibling .heads file).",
)
@click.option(
    "--no-journal",
    is_flag=True,
    help="Skip the journal (a copied database): a truncated tail then passes unnoticed.",
)
@click.option(
    "--heads",
    "heads_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An auditor's `auditor head export` file: the log must reproduce every head in it "
    "(repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def verify_command(
    db_path: Path,
    lab_key: Ed25519PublicKey,
    journal_path: Path | None,
    no_journal: bool,
    heads_files: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Recompute every entry and check every signed tree head (exit 4 on tampering).

    The recomputed log must also reproduce every head in the head journal (a truncated or
    rewritten database fails here, naming the first head it lost) and in any auditor
    export given with --heads (which also catches a journal rewritten with the database).
    """
    given = [_auditor_heads(path, lab_key) for path in heads_files]
    report = verify(
        db_path,
        lab_public_key=lab_key,
        journal=journal_path,
        check_journal=not no_journal,
        auditor_heads=given,
    )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": True,
                    "entries": report.entries,
                    "heads": report.heads,
                    "nodes": report.nodes,
                    "root_hash": report.root_hash.hex(),
                    "newest_timestamp_ms": report.newest_timestamp_ms,
                    "key_id": report.key_id,
                    "journal_heads": report.journal_heads,
                    "journal_newest_size": report.journal_newest_size,
                    "journal_torn_tail": report.journal_torn_tail,
                    "auditor_heads": report.auditor_heads,
                },
                sort_keys=True,
            )
        )
    else:
        if report.journal_heads is None:
            journal = "journal not checked"
        else:
            journal = f"{report.journal_heads} journaled heads match"
            if report.journal_torn_tail:
                journal += " (+ a torn last line, cut at next open)"
        auditors = f"; {report.auditor_heads} auditor heads match" if heads_files else ""
        click.echo(
            f"ok: {report.entries} entries, {report.heads} signed heads, "
            f"root {report.root_hash.hex()} (key {report.key_id}); {journal}{auditors}"
        )


def _auditor_heads(path: Path, lab_key: Ed25519PublicKey) -> AuditorHeads:
    """An auditor's export as heads to check (its signatures are checked by ``verify``)."""
    try:
        export = read_export(path)
    except (HeadFileError, OSError) as exc:
        raise LedgerError(f"--heads {path}: {exc}") from exc
    if export.lab_key_id != digests.key_id(lab_key):
        raise LedgerError(
            f"--heads {path}: heads of lab key {export.lab_key_id}, not of "
            f"{digests.key_id(lab_key)}"
        )
    return AuditorHeads(
        source=str(path),
        heads=tuple(
            TreeHead.from_proto(h) for h in export.heads
        ),
    )


@ledger_group.command("init-journal")
@click.option(
    "--db",
    "db_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The ledger's SQLite file (the server must be stopped).",
)
@click.option(
    "--lab-key",
    "lab_key",
    required=True,
    callback=_lab_key,
    help="The lab's public key, 'ed25519:<base64>', or a file containing it.",
)
def init_journal_command(db_path: Path, lab_key: Ed25519PublicKey) -> None:
    """Create the head journal of a ledger from before journals, from its database.

    This trusts the database as it is now: if it was already truncated or rewritten, the
    journal records the damaged history. Only auditors' heads (`ledger verify --heads`)
    can tell. The database is fully verified first; an existing journal is never replaced.
    """
    journal = journal_path_for(db_path)
    if journal.exists():
        raise LedgerError(f"{journal} already exists; nothing to do")
    report = verify(db_path, lab_public_key=lab_key, check_journal=False)
    conn = connect_reader(db_path)
    try:
        conn.execute("BEGIN")
        rows = conn.execute(
            "SELECT tree_size, root_hash, timestamp_ms, key_id, signature FROM tree_heads "
            "WHERE tree_size <= ? ORDER BY tree_size",
            (report.entries,),
        )
        count = write_new_journal(journal, (TreeHead(*row) for row in rows))
    finally:
        conn.close()
    click.echo(
        f"wrote {journal}: {count} heads from {db_path} ({report.entries} entries, verified). "
        "WARNING: this trusts the database as it is now; check it against auditors' exported "
        "heads with `ledger verify --heads` if any were handed out before"
    )
