"""``auditor``: the auditor's command line (thin: no torch, no faiss).

Every command that talks to a lab verifies each answer (lab signature, request binding,
ledger receipt) before printing anything; a failed check is an error (exit 4), a refusal by
the service is exit 3, bad local input (keys, options) exit 2.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from google.protobuf.json_format import MessageToDict

from auditor_client import __version__
from auditor_client.client import AUDITOR_ID_FILE, AuditorClient, TLSConfig, Verified
from auditor_client.errors import ServerRefusedError
from auditor_client.keys import KeyFileError, generate_keypair
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.errors import WireVerificationError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_INPUT = 2
EXIT_REFUSED = 3
EXIT_UNVERIFIED = 4


class _Group(click.Group):
    """Maps deliberate failures to one stderr line and an exit code saying who is at fault."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (KeyFileError, ValueError, OSError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_INPUT)
        except ServerRefusedError as exc:
            click.echo(f"refused by the lab: {exc}", err=True)
            sys.exit(EXIT_REFUSED)
        except WireVerificationError as exc:
            click.echo(f"VERIFICATION FAILED: {exc}", err=True)
            sys.exit(EXIT_UNVERIFIED)


@click.group(cls=_Group)
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
@click.option("--id", "auditor_id", help="The auditor id the lab registers this key under.")
@click.option("--force", is_flag=True, help="Replace an existing key.")
def keygen(out: Path, auditor_id: str | None, force: bool) -> None:
    """Create an Ed25519 signing key and print its public half for the lab to register."""
    pair = generate_keypair(out, overwrite=force)
    if auditor_id:
        (out / AUDITOR_ID_FILE).write_text(auditor_id + "\n", encoding="utf-8")
    click.echo(pair.public_text)


def _connection_options(fn: F) -> F:
    """The options every command that talks to a lab takes."""
    options = [
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
    for option in reversed(options):
        fn = option(fn)
    return fn


def read_lab_key(value: str) -> str:
    """``ed25519:<base64>`` given directly, or read from a file that holds it."""
    if value.startswith("ed25519:"):
        return value
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"--lab-key is neither ed25519:<base64> nor a readable file: {value}")
    return path.read_text(encoding="ascii").strip()


def _connect(kw: dict[str, Any]) -> AuditorClient:
    tls = None
    if not kw.pop("insecure"):
        tls = TLSConfig(ca=kw.pop("tls_ca"), cert=kw.pop("tls_cert"), key=kw.pop("tls_key"))
    return AuditorClient.connect(
        kw.pop("server"),
        key_dir=kw.pop("key_dir"),
        lab_public_key=read_lab_key(kw.pop("lab_key")),
        auditor_id=kw.pop("auditor_id"),
        tls=tls,
        insecure=tls is None,
        timeout_s=kw.pop("timeout"),
    )


def _as_dict(verified: Verified) -> dict[str, Any]:
    """The verified body plus its receipt, as JSON-friendly data."""
    return {
        "body": MessageToDict(verified.body, preserving_proto_field_name=True),
        "receipt": MessageToDict(verified.response.receipt, preserving_proto_field_name=True),
    }


def _command(fn: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(**kw: Any) -> None:
        client_kw = {
            k: kw.pop(k)
            for k in (
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
        }
        with _connect(client_kw) as client:
            fn(client, **kw)

    return wrapper


@main.command()
@_connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the verified body and receipt.")
@_command
def whoami(client: AuditorClient, as_json: bool) -> None:
    """Ask the lab who it thinks you are, your role and your quota."""
    verified = client.whoami()
    if as_json:
        click.echo(json.dumps(_as_dict(verified), indent=2))
        return
    who = verified.body.whoami
    click.echo(f"auditor:  {who.auditor_id} ({who.role})")
    click.echo(f"methods:  {', '.join(who.methods)}")
    click.echo(f"top_k:    up to {who.max_top_k}")
    click.echo(f"quota:    {who.queries_left_today} of {who.daily_queries} left today")
    _print_provenance(verified)


@main.command()
@_connection_options
@click.option("--prompt", required=True)
@click.option("--completion", required=True, help="The output whose training sources you ask.")
@click.option("--top-k", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the verified body and receipt.")
@_command
def attribute(
    client: AuditorClient, prompt: str, completion: str, top_k: int, as_json: bool
) -> None:
    """Which training examples most influenced COMPLETION after PROMPT?"""
    verified = client.attribute(prompt, completion, top_k=top_k)
    if as_json:
        click.echo(json.dumps(_as_dict(verified), indent=2))
        return
    answer = verified.body.attribute
    click.echo(f"log p(completion | prompt) = {answer.logprob:.3f}")
    for r in answer.results:
        click.echo(f"{r.rank:>3}. {r.score:+.4f}  [{r.data_class}/{r.disclosure}] {_label(r)}")
        if r.text:
            click.echo(f"       {r.span_text or r.text}"[:200])
    _print_provenance(verified)


def _label(r: pb.AttributionResult) -> str:
    where = f"{r.source.title} ({r.source.publisher})"
    return f"{r.record_id}: {where}" if r.record_id else where


def _print_provenance(verified: Verified) -> None:
    body, receipt = verified.body, verified.response.receipt
    click.echo(
        f"verified: lab signature, request binding, ledger leaf {receipt.leaf_index} of "
        f"{receipt.tree_head.tree_size}; snapshot {body.snapshot_id[:16]}, "
        f"policy {body.policy_hash[:16]}"
    )


def _register_subcommands() -> None:
    """Commands whose code lives with the package it drives."""
    from auditor_client.campaign.commands import campaign_group
    from auditor_client.report.commands import head_command, report_command, verify_command

    main.add_command(campaign_group)
    main.add_command(verify_command)
    main.add_command(report_command)
    main.add_command(head_command)


_register_subcommands()


if __name__ == "__main__":  # pragma: no cover
    main()
