"""``ledger verify`` on the command line: summary, JSON, key forms and exit codes."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from auditor_client.keys import encode_public_key
from auditor_server.errors import ConfigError, InputError, IntegrityError, SandboxError
from auditor_server.ledger import Ledger
from auditor_server.ledger.commands import ledger_group
from tests.unit.ledger.ledger_fixtures import LAB_KEY, OTHER_KEY, KeySigner, append

LAB_PUBLIC = encode_public_key(LAB_KEY.public_key())


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


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    with Ledger.open(path, signer=KeySigner(LAB_KEY)) as lg:
        for i in range(6):
            append(lg, i)
    return path


def _run(*args: str) -> Any:
    return CliRunner().invoke(main, ["ledger", "verify", *args])


def test_verify_prints_a_one_line_summary(db: Path) -> None:
    out = _run("--db", str(db), "--lab-key", LAB_PUBLIC)
    assert out.exit_code == 0, out.output
    assert out.output.startswith("ok: 6 entries, 7 signed heads, root ")
    assert len(out.output.strip().splitlines()) == 1


def test_verify_json_and_a_key_file(db: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "lab.pub"
    key_file.write_text(LAB_PUBLIC + "\n")
    out = _run("--db", str(db), "--lab-key", str(key_file), "--json")
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    assert summary["ok"] is True
    assert (summary["entries"], summary["heads"]) == (6, 7)
    assert len(bytes.fromhex(summary["root_hash"])) == 32


def test_a_tampered_log_exits_4_naming_the_row(db: Path) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE leaves SET status = 13 WHERE leaf_index = 3")
    conn.close()
    out = _run("--db", str(db), "--lab-key", LAB_PUBLIC)
    assert out.exit_code == 4
    assert "leaf 3:" in out.output


def test_another_labs_key_exits_4(db: Path) -> None:
    out = _run("--db", str(db), "--lab-key", encode_public_key(OTHER_KEY.public_key()))
    assert out.exit_code == 4
    assert "signed by key" in out.output


@pytest.mark.parametrize("key", ["ed25519:not-base64!", "/no/such/key/file", "ed25519:AAAA"])
def test_a_bad_key_argument_is_a_usage_error(db: Path, key: str) -> None:
    out = _run("--db", str(db), "--lab-key", key)
    assert out.exit_code == 2
    assert "--lab-key" in out.output


def test_a_missing_db_is_a_usage_error(tmp_path: Path) -> None:
    out = _run("--db", str(tmp_path / "none.db"), "--lab-key", LAB_PUBLIC)
    assert out.exit_code == 2
