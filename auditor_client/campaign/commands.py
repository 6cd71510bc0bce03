"""``auditor campaign``: plan and run audit campaigns from the command line.

Exit codes say who is at fault and what to do next: 0 done; 2 bad campaign or local input
(fix the file, key or options); 3 the lab refused the campaign as a whole; 4 an answer
failed verification (the lab sent something unprovable: nothing unverified was written);
5 stopped early (quota, lab unreachable): run again with ``--resume``.
"""

from __future__ import annotations

from pathlib import Path

import click

from auditor_client.campaign.model import MAX_CONCURRENCY, Campaign
from auditor_client.campaign.runner import plan_campaign, run_campaign
from auditor_client.cliutil import AuditorGroup
from auditor_client.errors import CampaignError

__all__ = ["campaign_group"]


@click.group(name="campaign", cls=AuditorGroup)
def campaign_group() -> None:
    """Plan and run audit campaigns (copyright, bias, toxicity probe suites)."""


_CAMPAIGN_ARG = click.argument(
    "campaign_file", metavar="CAMPAIGN.yaml", type=click.Path(dir_okay=False, path_type=Path)
)


@campaign_group.command()
@_CAMPAIGN_ARG
def plan(campaign_file: Path) -> None:
    """Validate CAMPAIGN.yaml and print its probes per suite and its hash (no network)."""
    campaign = Campaign.from_file(campaign_file)
    planned = plan_campaign(campaign)
    click.echo(f"campaign: {campaign.name}")
    for suite, count in planned.per_suite.items():
        click.echo(f"  {suite}: {count} probes")
    click.echo(f"total: {len(planned.specs)} probes")
    click.echo(f"campaign hash: {planned.campaign_hash}")


@campaign_group.command()
@_CAMPAIGN_ARG
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory (default: the campaign's output:).",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out, skipping finished probes.")
@click.option(
    "--workers",
    type=click.IntRange(1, MAX_CONCURRENCY),
    help="Probes in flight (default: the campaign's concurrency:).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--server", help="host:port replacing server.address.")
@click.option("--lab-key", help="Lab public key (ed25519:...) or a file holding it.")
@click.option(
    "--key", "key_dir", type=click.Path(file_okay=False, path_type=Path), help="Key directory."
)
@click.option("--auditor-id", help="Auditor id (default: the campaign's, else the key's).")
@click.option("--tls-ca", type=click.Path(dir_okay=False, path_type=Path), help="Server CA.")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), help="mTLS cert.")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="mTLS key.")
@click.option("--insecure", is_flag=True, help="Plain-text gRPC (local tests only).")
def run(
    campaign_file: Path,
    out: Path | None,
    resume: bool,
    workers: int | None,
    no_progress: bool,
    server: str | None,
    lab_key: str | None,
    key_dir: Path | None,
    auditor_id: str | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure: bool,
) -> None:
    """Run CAMPAIGN.yaml against the lab; every answer is verified and checkpointed."""
    campaign = Campaign.from_file(campaign_file).with_overrides(
        server=server,
        lab_key=lab_key,
        key_dir=key_dir,
        auditor_id=auditor_id,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        insecure=insecure,
    )
    out_dir = out or campaign.output
    if out_dir is None:
        raise CampaignError(f"{campaign_file}: no output: in the file; pass --out DIR")
    summary = run_campaign(
        campaign, out_dir=out_dir, resume=resume, workers=workers, progress=not no_progress
    )
    click.echo(
        f"campaign {campaign.name}: {summary.total} probes done "
        f"({summary.ran} run now, {summary.skipped} from checkpoints, "
        f"{summary.refused} refused by the lab's policy)"
    )
    for name in summary.redone:
        click.echo(f"  redone (damaged checkpoint): {name}")
    click.echo(
        f"ledger: {summary.consistency_proofs} consistency proofs verified; "
        f"campaign hash {summary.campaign_hash}"
    )
    click.echo(f"output: {summary.out_dir}" + ("" if summary.report_written else " (no report)"))
