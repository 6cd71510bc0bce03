"""``auditor verify``, ``auditor report`` and ``auditor head``: the report's command line.

``auditor head`` is a group: ``proof`` (also the bare ``auditor head --report … --out …``
of old) fetches a newer-head proof for a report; ``export``, ``import`` and ``check`` work on
the auditor's head store (:mod:`auditor_client.headstore`), so one auditor can prove the
lab never rewrote the history it saw and two auditors can compare what they were shown.

The lead registers these on the ``auditor`` group in :mod:`auditor_client.cli`, whose error
handler turns a :class:`~auditor_client.wire.errors.WireVerificationError` (and so a
:class:`~auditor_client.report.errors.ReportVerificationError`) into one stderr line and
exit 4, bad local input into exit 2, and a refusal by the lab into exit 3. ``verify`` also
exits 4 itself (after printing the failing entry), so it behaves the same when invoked on
its own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from auditor_client.campaign.types import Exchange
from auditor_client.client import AuditorClient
from auditor_client.cliutil import EXIT_UNVERIFIED, read_lab_key, with_client
from auditor_client.headstore import HeadStore, LabHeads, head_to_json, read_export
from auditor_client.keys import decode_public_key, encode_public_key
from auditor_client.report.build import write_json_atomic, write_report
from auditor_client.report.errors import ReportVerificationError
from auditor_client.report.verify import (
    NEWER_HEAD_FORMAT,
    load_json,
    verify_report,
    verify_report_data,
)
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.errors import SplitViewError


@click.command("verify")
@click.argument("report", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--lab-key",
    required=True,
    help="The lab's public key, ed25519:<base64>, or a file holding it (obtained out of band).",
)
@click.option(
    "--newer-head",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A file from `auditor head`: check the lab's current log still extends the report's.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify_command(report: Path, lab_key: str, newer_head: Path | None, as_json: bool) -> None:
    """Re-verify REPORT offline: every signature, receipt, proof and finding.

    Exit 0 with a summary line when everything checks; exit 4 naming the first bad entry.
    """
    try:
        summary = verify_report(report, lab_public_key=read_lab_key(lab_key), newer_head=newer_head)
    except ReportVerificationError as exc:
        if as_json:
            click.echo(json.dumps({"verified": False, "entry": exc.entry, "error": exc.detail}))
        click.echo(f"VERIFICATION FAILED: {exc}", err=True)
        sys.exit(EXIT_UNVERIFIED)
    if as_json:
        click.echo(json.dumps(summary.to_json(), indent=2))
    else:
        click.echo(summary.line())


@click.command("report")
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--lab-key",
    help="Verify against this lab key while building (default: the key the campaign used).",
)
def report_command(out_dir: Path, lab_key: str | None) -> None:
    """Rebuild OUT_DIR/report.json, index.html and report.md from a campaign directory.

    Exit 4 when the build-time verification fails (the files are still written, marked as
    failed, so the evidence can be examined).
    """
    key = read_lab_key(lab_key) if lab_key else _campaign_lab_key(out_dir)
    path = write_report(out_dir, lab_public_key=key)
    check = load_json(path, what="report").get("verification") or {}
    click.echo(f"wrote {path}, {out_dir / 'index.html'}, {out_dir / 'report.md'}")
    if check.get("status") == "failed":
        click.echo(f"VERIFICATION FAILED: {check.get('error')}", err=True)
        sys.exit(EXIT_UNVERIFIED)
    if check.get("status") == "verified":
        click.echo(f"verified: {check.get('answers')} answers at build time")
    else:
        click.echo(f"not verified at build time: {check.get('reason')}")


def _campaign_lab_key(out_dir: Path) -> str | None:
    """The lab key named by the campaign file the run used, when it can still be read."""
    campaign = load_json(out_dir / "campaign.json", what="campaign")
    source = campaign.get("campaign_file")
    if not isinstance(source, str):
        return None
    try:
        from auditor_client.campaign.model import Campaign

        key: str = Campaign.from_file(Path(source)).lab_public_key()
    except Exception:  # the campaign file moved or changed; build unverified
        return None
    return key


class _HeadGroup(click.Group):
    """``auditor head SUBCOMMAND …``, and still ``auditor head --report R --out F …``.

    Arguments that do not start with a subcommand's name go to ``proof``, the command that
    ``auditor head`` was before it became a group, so existing scripts keep working.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["proof", *args]
        return super().parse_args(ctx, args)


@click.group("head", cls=_HeadGroup)
def head_command() -> None:
    """The lab's signed tree heads: prove a report's head, or keep and compare heads.

    Every answer's receipt carries a head the lab signed; the auditor client keeps them all
    in its head store ($AUDITOR_HEAD_STORE, default ~/.local/share/auditor/heads). `check`
    proves with the lab that its log still extends every one of them; `export` and `import`
    exchange them with another auditor, whose heads must agree with ours. A conflict exits
    4 and prints both signed heads: evidence that the lab showed two different histories.
    """


def _store_heads(lab_key: str) -> LabHeads:
    return HeadStore.default().lab(decode_public_key(read_lab_key(lab_key)))


def _split_view(exc: SplitViewError) -> None:
    """Print both heads (stdout, JSON: the evidence) and the verdict (stderr); exit 4."""
    click.echo(
        json.dumps(
            {
                "split_view": True,
                "reason": exc.reason,
                "held": head_to_json(exc.held),
                "conflicting": head_to_json(exc.other),
            },
            indent=2,
            sort_keys=True,
        )
    )
    click.echo(f"SPLIT VIEW: {exc}", err=True)
    sys.exit(EXIT_UNVERIFIED)


_LAB_KEY_OPTION = click.option(
    "--lab-key",
    required=True,
    help="The lab's public key, ed25519:<base64>, or a file holding it (obtained out of band).",
)


@head_command.command("export")
@_LAB_KEY_OPTION
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON file to write: every stored head of this lab, each with the lab's signature.",
)
def head_export_command(lab_key: str, out: Path) -> None:
    """Write every head of this lab in the store, for another auditor or the lab to check."""
    heads = _store_heads(lab_key)
    count = heads.export(out)
    click.echo(f"wrote {out}: {count} signed heads of lab key {heads.lab_key_id}")


@head_command.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_LAB_KEY_OPTION
def head_import_command(file: Path, lab_key: str) -> None:
    """Check every signature in another auditor's export FILE, then merge it.

    A head of a size we hold with another root is a split view: exit 4 with both heads.
    Heads of other sizes are merged; `auditor head check` then has the lab link them.
    """
    heads = _store_heads(lab_key)
    try:
        result = heads.import_heads(read_export(file))
    except SplitViewError as exc:
        _split_view(exc)
        return
    click.echo(
        f"imported {file}: {result.added} new heads, {result.known} already held; every "
        "signature checked. Run `auditor head check` to have the lab prove its log extends them"
    )


@head_command.command("check")
@with_client
def head_check_command(client: AuditorClient) -> None:
    """Prove with the lab that its newest head extends every head in the store.

    Fetches one consistency proof per group of stored heads not yet linked to the lab's
    newest head. Exit 4 with both heads if the lab cannot: it cut back or forked its log.
    """
    try:
        result = client.check_heads()
    except SplitViewError as exc:
        _split_view(exc)
        return
    click.echo(
        f"consistent: all {result.heads} stored heads are prefixes of the lab's head of size "
        f"{result.current.tree_size} (root {result.current.root_hash.hex()}); "
        f"{result.proofs} consistency proofs fetched and verified"
    )


@head_command.command("proof")
@click.option(
    "--report",
    "report_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The report whose final ledger head the lab's current head must extend.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to save the proof, for `auditor verify --newer-head`.",
)
@with_client
def head_proof_command(client: AuditorClient, report_path: Path, out: Path) -> None:
    """Fetch and verify a proof that the lab's log still extends the report's final head.

    The proof (a signed GetConsistencyProof exchange from the report's final tree size to
    the lab's current one) is verified here, together with the whole report, before it is
    saved; ``auditor verify --newer-head`` checks it again offline. ``--key`` must be the
    report's auditor's key.
    """
    report = load_json(report_path, what="report")
    final_size = _final_size(report)
    lab_key = encode_public_key(client.lab_public_key)
    if client.keypair.public_text != report.get("auditor", {}).get("public_key"):
        raise click.UsageError(
            "--key is not the key of the report's auditor; the proof must be signed "
            "for the same auditor so a regulator can check it with the report"
        )
    verified = client.consistency_proof(final_size)
    newer = {
        "format": NEWER_HEAD_FORMAT,
        "from_size": final_size,
        "exchange": Exchange.of(verified).to_json(),
    }
    summary = verify_report_data(report, lab_public_key=lab_key, newer_head=newer)
    write_json_atomic(out, newer)
    click.echo(
        f"wrote {out}: the lab's head of size {summary.newer_tree_size} is consistent with "
        f"the report's final head of size {final_size}"
    )


def _final_size(report: dict[str, Any]) -> int:
    """The final head's size, read from its (later verified) exchange."""
    try:
        exchange = Exchange.from_json(report["ledger"]["final_head"])
        body = pb.ResponseBody.FromString(exchange.signed_response().body)
    except Exception as exc:
        raise ReportVerificationError(
            "ledger.final_head", "missing or unreadable: no head to extend"
        ) from exc
    size: int = body.tree_head.tree_head.tree_size
    return size
