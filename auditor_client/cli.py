"""``auditor``: the auditor's command line (thin: no torch, no faiss).

Every command that talks to a lab verifies each answer (lab signature, request binding,
ledger receipt) before printing anything; a failed check is an error (exit 4), a refusal by
the service is exit 3, bad local input (keys, options) exit 2.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click
from google.protobuf.json_format import MessageToDict

from auditor_client import __version__
from auditor_client.client import AUDITOR_ID_FILE, AuditorClient, Verified
from auditor_client.cliutil import AuditorGroup, with_client
from auditor_client.keys import generate_keypair
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.evaluation import Evaluation


@click.group(cls=AuditorGroup)
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


def _as_dict(verified: Verified) -> dict[str, Any]:
    """The verified body plus its receipt, as JSON-friendly data."""
    return {
        "body": MessageToDict(verified.body, preserving_proto_field_name=True),
        "receipt": MessageToDict(verified.response.receipt, preserving_proto_field_name=True),
    }


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the verified body and receipt.")
@with_client
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
@click.option("--prompt", required=True)
@click.option("--completion", required=True, help="The output whose training sources you ask.")
@click.option("--top-k", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the verified body and receipt.")
@with_client
def attribute(
    client: AuditorClient, prompt: str, completion: str, top_k: int, as_json: bool
) -> None:
    """Which training examples most influenced COMPLETION after PROMPT?"""
    verified = client.attribute(prompt, completion, top_k=top_k)
    if as_json:
        click.echo(json.dumps(_as_dict(verified), indent=2))
        return
    answer = verified.body.attribute
    if answer.HasField("logprob"):
        click.echo(f"log p(completion | prompt) = {answer.logprob:.3f}")
    elif answer.logprob_withheld:
        click.echo("log p(completion | prompt): withheld (the text touches withheld training data)")
    else:
        click.echo("log p(completion | prompt): not given (your role may not Score)")
    for r in answer.results:
        click.echo(f"{r.rank:>3}. {r.score:+.4f}  [{r.data_class}/{r.disclosure}] {_label(r)}")
        if r.text:
            click.echo(f"       {r.span_text or r.text}"[:200])
    _print_provenance(verified)


@main.command()
@click.option(
    "--json", "as_json", is_flag=True, help="Print the typed certificate and the lab's result."
)
@with_client
def evaluation(client: AuditorClient, as_json: bool) -> None:
    """How right are the lab's attributions? Its signed evaluation certificate.

    The lab's own counterfactual check of the index it serves (one training step on each
    method's top records, and how far that raises the model's answer), carried in its
    signed GetPolicy answer and checked against that answer's snapshot before printing.
    """
    verified = client.get_policy()
    found = verified.evaluation()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "evaluation": None if found is None else _evaluation_dict(found),
                    **_as_dict(verified),
                },
                indent=2,
            )
        )
        return
    if found is None:
        click.echo(
            f"the lab serves no evaluation certificate for snapshot {verified.body.snapshot_id}"
        )
    else:
        for line in evaluation_lines(found):
            click.echo(line)
    _print_provenance(verified)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checked history as JSON.")
@with_client
def snapshots(client: AuditorClient, as_json: bool) -> None:
    """Every snapshot of the lab's index, oldest first: what each was made of, what changed.

    Each id is recomputed from the commitments the lab lists for it (model, tokenizer and
    corpus hashes, configs, preconditioner checksum), so an answer signed under an old
    snapshot can be traced after a takedown. Checked before printing.
    """
    verified = client.get_policy()
    history = verified.snapshots()
    if as_json:
        click.echo(
            json.dumps(
                {"snapshots": [dataclasses.asdict(s) for s in history], **_as_dict(verified)},
                indent=2,
            )
        )
        return
    if not history:
        click.echo(f"the lab lists no snapshot history (serving {verified.body.snapshot_id})")
    for s in history:
        change = s.change
        if s.records_removed:
            change += f", {s.records_removed:,} records taken down ({s.removed_ids_sha256})"
        if s.records_added:
            change += f", {s.records_added:,} records added"
        corpus = s.commitments.get("corpus_manifest_hash", "?")
        click.echo(
            f"{s.created}  {s.snapshot_id}\n    {change}; {s.n_records:,} records; corpus {corpus}"
        )
    _print_provenance(verified)


def _evaluation_dict(found: Evaluation) -> dict[str, Any]:
    return {
        "snapshot_id": found.snapshot_id,
        "measure": found.measure,
        "questions_sha256": found.questions_sha256,
        "n_questions": found.n_questions,
        "split": found.split,
        "top_k": found.top_k,
        "headlines": [vars(h) for h in found.headlines],
        "result": found.result,
    }


def evaluation_lines(found: Evaluation) -> list[str]:
    """A person's view of a certificate: each method's mean with its interval, the ratios."""
    lines = [
        f"{found.measure} on {found.n_questions} {found.split} questions (top {found.top_k}); "
        f"questions {found.questions_sha256}",
        f"{'method':<9} {'step':<5} {'mean':>9}  {'95% interval':<21} {'n':>4}  recall@k",
    ]
    for h in found.headlines:
        interval = (
            f"[{h.ci_low:+.4f}, {h.ci_high:+.4f}]"
            if h.ci_low is not None and h.ci_high is not None
            else "–"
        )
        mean = f"{h.mean:+.4f}" if h.mean is not None else "n/a"
        recall = f"{h.recall_at_k:.3f}" if h.recall_at_k is not None else "–"
        lines.append(f"{h.name:<9} {h.step:<5} {mean:>9}  {interval:<21} {h.n:>4}  {recall:>8}")
    for r in found.ratios:
        if r.ratio is None:
            continue
        interval = (
            f" [{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
            if r.ci_low is not None and r.ci_high is not None
            else ""
        )
        lines.append(f"{r.pair:<16} {r.step:<5} ratio {r.ratio:+.2f}{interval}")
    return lines


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
