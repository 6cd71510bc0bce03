"""``auditor``: the auditor's command line (thin: no torch, no faiss)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from auditor_client import __version__
from auditor_client.keys import KeyFileError, generate_keypair


@click.group()
@click.version_option(__version__, prog_name="auditor")
def main() -> None:
    """Auditor side of auditor-sandbox."""


@main.command()
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for auditor.key (0600) and auditor.pub.",
)
@click.option("--force", is_flag=True, help="Replace an existing key.")
def keygen(out: Path, force: bool) -> None:
    """Create an Ed25519 signing key and print its public half for the lab to register."""
    try:
        pair = generate_keypair(out, overwrite=force)
    except KeyFileError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(pair.public_text)


if __name__ == "__main__":  # pragma: no cover
    main()
