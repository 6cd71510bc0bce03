"""``auditor-server ledger ...``: offline checks of the lab's ledger file.

A thin shell over :func:`auditor_server.ledger.verify.verify`. Failures are raised as the
project's errors (an integrity failure is an ``IntegrityError``), and the main CLI turns
them into one stderr line and an exit code (4 for integrity).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from auditor_client.keys import KeyFileError, decode_public_key, read_public_key_text
from auditor_server.ledger.verify import verify

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
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def verify_command(db_path: Path, lab_key: Ed25519PublicKey, as_json: bool) -> None:
    """Recompute every entry and check every signed tree head (exit 4 on tampering).

    Cannot detect the tail of the log deleted together with its heads; auditors' receipts
    catch that with consistency proofs.
    """
    report = verify(db_path, lab_public_key=lab_key)
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
                },
                sort_keys=True,
            )
        )
    else:
        click.echo(
            f"ok: {report.entries} entries, {report.heads} signed heads, "
            f"root {report.root_hash.hex()} (key {report.key_id})"
        )
