"""``auditor-server keys`` and ``auditor-server tls-demo-certs``: thin shells over the library.

Registered on the ``auditor-server`` group by :mod:`auditor_server.cli`, whose error
handling turns the :class:`~auditor_server.errors.ConfigError` these raise into one stderr
line and exit code 3.
"""

from __future__ import annotations

from pathlib import Path

import click

from auditor_server.security.lab_keys import generate_lab_key
from auditor_server.security.tls import write_demo_certs


@click.command("keys")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for lab.key (private, 0600) and lab.pub.",
)
@click.option("--force", is_flag=True, help="Replace an existing lab key (auditors must re-trust).")
def keys_command(out_dir: Path, force: bool) -> None:
    """Create the lab's signing key; print its public key and key id.

    Give the printed ``ed25519:...`` line to auditors: it is the key their clients verify
    every answer and tree head with.
    """
    key = generate_lab_key(out_dir, force=force)
    click.echo(key.public_text)
    click.echo(f"key id: {key.key_id}")


@click.command("tls-demo-certs")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for ca.pem, server.pem/.key and client.pem/.key.",
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="Name or IP address clients dial (repeatable; default: localhost and 127.0.0.1).",
)
@click.option("--force", is_flag=True, help="Replace existing certificate files.")
def tls_demo_certs_command(out_dir: Path, hosts: tuple[str, ...], force: bool) -> None:
    """Write a throwaway CA, server and client certificate for demos and tests (not production).

    Serve with ``--tls-cert server.pem --tls-key server.key``; add ``--tls-client-ca ca.pem``
    to require client certificates (mutual TLS).
    """
    certs = write_demo_certs(out_dir, hosts=hosts or ("localhost", "127.0.0.1"), force=force)
    for path in (
        certs.ca,
        certs.server_cert,
        certs.server_key,
        certs.client_cert,
        certs.client_key,
    ):
        click.echo(str(path))
