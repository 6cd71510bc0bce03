"""What every ``auditor`` command shares: exit codes, connection options, the lab's key.

Commands live with the package they drive (``campaign/commands.py``, ``report/commands.py``)
and are registered on the ``auditor`` group in :mod:`auditor_client.cli`; this module is
below all of them, so each can use the same options and the same exit codes without
importing the CLI that imports it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from auditor_client.client import AuditorClient, TLSConfig
from auditor_client.errors import CampaignError, CampaignStopped, ServerRefusedError
from auditor_client.keys import KeyFileError, read_public_key_text
from auditor_client.wire.errors import WireVerificationError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_INPUT = 2
"""Bad local input: a campaign file, a key, an option."""
EXIT_REFUSED = 3
"""The lab refused a request (the refusal is in its ledger)."""
EXIT_UNVERIFIED = 4
"""An answer, proof or report failed verification."""
EXIT_STOPPED = 5
"""A campaign stopped early and can be resumed."""


class AuditorGroup(click.Group):
    """Maps deliberate failures to one stderr line and an exit code saying who is at fault.

    Used by ``auditor`` and by ``auditor campaign``, so a command exits the same way whether
    its group is invoked on its own or registered under ``auditor``.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CampaignStopped as exc:
            click.echo(f"{exc}", err=True)
            sys.exit(EXIT_STOPPED)
        except ServerRefusedError as exc:
            click.echo(f"refused by the lab: {exc}", err=True)
            sys.exit(EXIT_REFUSED)
        except WireVerificationError as exc:
            click.echo(f"VERIFICATION FAILED: {exc}", err=True)
            sys.exit(EXIT_UNVERIFIED)
        except (CampaignError, KeyFileError, ValueError, OSError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_INPUT)


def read_lab_key(value: str) -> str:
    """``--lab-key``: ``ed25519:<base64>`` given directly, or read from a file that holds it.

    Raises:
        KeyFileError: neither a key nor a readable file.
    """
    return read_public_key_text(value)


_CONNECTION_OPTIONS = [
    click.option("--server", required=True, help="host:port of the lab's audit service."),
    click.option(
        "--key",
        "key_dir",
        required=True,
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="Directory holding auditor.key (from `auditor keygen`).",
    ),
    click.option(
        "--lab-key",
        required=True,
        help="The lab's public key, ed25519:<base64>, or a file holding it.",
    ),
    click.option("--auditor-id", help="Registered auditor id (default: DIR/auditor.id)."),
    click.option(
        "--tls-ca",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="CA certificate that signed the server's certificate.",
    ),
    click.option(
        "--tls-cert",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Client certificate (mutual TLS).",
    ),
    click.option(
        "--tls-key",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Client certificate's key (mutual TLS).",
    ),
    click.option("--insecure", is_flag=True, help="Plaintext (local tests only)."),
    click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True),
]
_CONNECTION_KEYS = (
    "server",
    "key_dir",
    "lab_key",
    "auditor_id",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "insecure",
    "timeout",
)


def with_client(fn: Callable[..., None]) -> Callable[..., None]:
    """Give a command the connection options and call it with a connected client first.

    The client is closed when the command returns.
    """

    @functools.wraps(fn)
    def wrapper(**kw: Any) -> None:
        options = {k: kw.pop(k) for k in _CONNECTION_KEYS}
        with _connect(options) as client:
            fn(client, **kw)

    command: Callable[..., None] = wrapper
    for option in reversed(_CONNECTION_OPTIONS):
        command = option(command)
    return command


def _connect(options: dict[str, Any]) -> AuditorClient:
    tls = None
    if not options["insecure"]:
        tls = TLSConfig(ca=options["tls_ca"], cert=options["tls_cert"], key=options["tls_key"])
    return AuditorClient.connect(
        options["server"],
        key_dir=options["key_dir"],
        lab_public_key=read_lab_key(options["lab_key"]),
        auditor_id=options["auditor_id"],
        tls=tls,
        insecure=tls is None,
        timeout_s=options["timeout"],
    )
