"""Assemble a campaign's output directory into one verifiable report, and render it.

``report.json`` is the evidence: the campaign header with the campaign file and every file
it names, every probe record with its signed exchanges, the suite summaries and the ledger
proofs, in one file a regulator re-verifies offline (:mod:`auditor_client.report.verify`).
``index.html`` and ``report.md`` are views of it for people; they are regenerated from
``report.json`` alone, so they can never say something the evidence does not.

Format ``auditor-sandbox-report/v2``::

    {
      "format": "auditor-sandbox-report/v2",
      "campaign": {...campaign.json as the runner wrote it, including
                   "campaign_file_text": the campaign file, verbatim,
                   "files": {name: {"sha256", "text"}} every file its suites read...},
      "lab": {"snapshot_id", "policy_hash", "model_hash",
              "policy_hashes": [every policy hash the answers carry, first seen first]},
      "auditor": {"id", "public_key"},
      "evaluation": {"available": true, "source": "campaign.lab.exchange", the lab's signed
                     evaluation certificate as headlines, ratios and its question set}
                    | {"available": false, "reason": why there is none},
      "plan": {"probes": planned, "reported": in this report, "complete": bool},
      "probes": [ProbeRecord.to_json(), in plan order: a prefix of the plan],
      "findings": {suite: Suite.summarize(that suite's records, in plan order)},
      "ledger": {...ledger.json: final_head exchange and consistency proofs...},
      "verification": {"status": "verified" | "not_checked" | "failed", ...},
      "generated_ms": Unix ms
    }

Probes follow the campaign's plan, which the builder computes again from the carried inputs
with the runner's own planning code (so does the verifier). A run that stopped early reports
the longest finished prefix of the plan: probes finished after an unfinished one (they ran
concurrently) wait in their checkpoints for ``--resume``, so a partial report can only ever
be missing the tail of the plan, and ``plan.complete`` says so.

``verification`` is the builder's own check at build time, shown in the rendered header;
``auditor verify`` never trusts it and recomputes everything.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from auditor_client.campaign.checkpoint import atomic_write_bytes
from auditor_client.campaign.model import Campaign, CampaignFiles
from auditor_client.campaign.runner import Plan, plan_campaign
from auditor_client.campaign.types import JSON, ProbeRecord, Suite
from auditor_client.errors import CampaignError
from auditor_client.keys import KeyFileError, decode_public_key
from auditor_client.report.errors import ReportVerificationError
from auditor_client.report.evaluation import evaluation_section
from auditor_client.report.render import render_html, render_markdown
from auditor_client.report.verify import (
    REPORT_FORMAT,
    campaign_exchanges,
    default_suites,
    group_by_suite,
    plan_summary,
    verify_report_data,
)
from auditor_client.wire import digests
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.errors import WireVerificationError

CAMPAIGN_FILE = "campaign.json"
LEDGER_FILE = "ledger.json"
PROBES_DIR = "probes"
REPORT_FILE = "report.json"
HTML_FILE = "index.html"
MARKDOWN_FILE = "report.md"
PLOTS_DIR = "plots"


def write_report(
    out_dir: Path,
    *,
    lab_public_key: str | None = None,
    suites: Mapping[str, Suite] | None = None,
) -> Path:
    """Build ``OUT/report.json`` from a campaign directory, then render its HTML and Markdown.

    The report is written atomically (a reader never sees half a report) and verified
    before rendering when a lab key is known, so the header's status line is a check that
    was actually made, not a claim.

    Args:
        out_dir: the campaign output directory (``campaign.json``, ``probes/``,
            ``ledger.json``).
        lab_public_key: the lab's key, ``ed25519:<base64>``; defaults to
            ``campaign.lab.public_key`` when the runner recorded it. Without one the report
            is built but marked as not checked.
        suites: the suites that summarize and re-verify findings (default: the registered
            ones; tests pass their own).

    Returns:
        The path of ``report.json``.

    Raises:
        CampaignError: the directory lacks ``campaign.json`` (or it carries no campaign
            inputs: an older client's run), the campaign does not plan, or a probe record
            is unreadable or not a probe of the plan.
    """
    suites = suites if suites is not None else default_suites()
    report = build_report(out_dir, suites=suites)
    key = lab_public_key or _campaign_lab_key(report["campaign"])
    report["verification"] = _check(report, lab_public_key=key, suites=suites)
    path = out_dir / REPORT_FILE
    write_json_atomic(path, report)
    render_report(report, out_dir)
    return path


def render_report(report: Mapping[str, Any], out_dir: Path) -> None:
    """Write ``index.html``, ``report.md`` and ``plots/*.svg`` for a built report."""
    from auditor_client.report.plots import render_plots

    plots = render_plots(report)
    plots_dir = out_dir / PLOTS_DIR
    if plots.svgs:
        plots_dir.mkdir(exist_ok=True)
    for name, svg in plots.svgs.items():
        _write_text_atomic(plots_dir / f"{name}.svg", svg)
    _write_text_atomic(out_dir / HTML_FILE, render_html(report, plots))
    _write_text_atomic(out_dir / MARKDOWN_FILE, render_markdown(report, plots, PLOTS_DIR))


def build_report(out_dir: Path, *, suites: Mapping[str, Suite]) -> JSON:
    """The report as data (without ``verification``), from the campaign directory.

    Raises:
        CampaignError: see :func:`write_report`.
    """
    campaign = _read_object(out_dir / CAMPAIGN_FILE, required=True)
    assert campaign is not None  # required=True never returns None
    plan = _plan(out_dir / CAMPAIGN_FILE, campaign, suites)
    records = _in_plan_order(plan, _read_probes(out_dir / PROBES_DIR), out_dir / PROBES_DIR)
    findings: JSON = {}
    for suite, suite_records in group_by_suite(records).items():
        code = suites.get(suite)
        if code is None:
            raise CampaignError(
                f"{out_dir / PROBES_DIR / suite}: no registered suite {suite!r} to summarize it"
            )
        findings[suite] = json.loads(json.dumps(code.summarize(suite_records)))
    ledger = _read_object(out_dir / LEDGER_FILE, required=False)
    lab = _mapping(campaign.get("lab"))
    auditor = _mapping(campaign.get("auditor"))
    return {
        "format": REPORT_FORMAT,
        "campaign": campaign,
        "lab": {
            "snapshot_id": lab.get("snapshot_id", ""),
            "policy_hash": lab.get("policy_hash", ""),
            "model_hash": lab.get("model_hash", ""),
            "policy_hashes": _policy_hashes(campaign, records, ledger),
        },
        "auditor": {"id": auditor.get("id", ""), "public_key": auditor.get("public_key", "")},
        "evaluation": _evaluation(lab),
        "plan": plan_summary(planned=len(plan.specs), reported=len(records)),
        "probes": [r.to_json() for r in records],
        "findings": findings,
        "ledger": ledger,
        "generated_ms": time.time_ns() // 1_000_000,
    }


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so that ``path`` holds either the old file or the whole new one."""
    _write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=False, allow_nan=True) + "\n")


def _write_text_atomic(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _check(
    report: Mapping[str, Any], *, lab_public_key: str | None, suites: Mapping[str, Suite]
) -> JSON:
    """The build-time verification result recorded in (and shown from) the report."""
    if not lab_public_key:
        return {
            "status": "not_checked",
            "reason": "no lab public key given; run `auditor verify` with the lab's key",
        }
    try:
        summary = verify_report_data(report, lab_public_key=lab_public_key, suites=suites)
        key_id = digests.key_id(decode_public_key(lab_public_key))
    except (ReportVerificationError, KeyFileError) as exc:
        return {"status": "failed", "error": str(exc)}
    return {
        "status": "verified",
        "lab_key_id": key_id,
        "checked_ms": time.time_ns() // 1_000_000,
        **summary.to_json(),
    }


def _campaign_lab_key(campaign: Mapping[str, Any]) -> str | None:
    key = _mapping(campaign.get("lab")).get("public_key")
    return key if isinstance(key, str) and key else None


def _read_object(path: Path, *, required: bool) -> JSON | None:
    if not path.exists() and not required:
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CampaignError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(obj, dict):
        raise CampaignError(f"{path}: not a JSON object")
    return obj


def _plan(path: Path, campaign: Mapping[str, Any], suites: Mapping[str, Suite]) -> Plan:
    """The campaign's plan, from the inputs ``campaign.json`` carries (as the verifier does).

    Raises:
        CampaignError: no carried inputs (an older client's run), or they do not plan.
    """
    text, files = campaign.get("campaign_file_text"), campaign.get("files")
    if not isinstance(text, str) or not isinstance(files, Mapping):
        raise CampaignError(
            f"{path}: carries no campaign inputs (written by an older client?); run the "
            "campaign again with this client to get a verifiable report"
        )
    texts = {str(k): str(_mapping(v).get("text", "")) for k, v in files.items()}
    return plan_campaign(
        Campaign.from_yaml(text, source=f"{path}: campaign_file_text"),
        suites=suites,
        files=CampaignFiles.from_report(texts, where=f"{path}: files"),
        where=str(path),
    )


def _in_plan_order(plan: Plan, records: list[ProbeRecord], probes_dir: Path) -> list[ProbeRecord]:
    """The longest prefix of the plan whose probes all finished, in plan order.

    Raises:
        CampaignError: a record is not a probe of the plan.
    """
    by_key = {(r.suite, r.probe_id): r for r in records}
    planned = {(s.suite, s.probe_id) for s in plan.specs}
    for suite, probe_id in sorted(set(by_key) - planned):
        raise CampaignError(
            f"{probes_dir / suite}: {probe_id!r} is not a probe of this campaign's plan"
        )
    ordered: list[ProbeRecord] = []
    for spec in plan.specs:
        record = by_key.get((spec.suite, spec.probe_id))
        if record is None:
            break
        ordered.append(record)
    return ordered


def _read_probes(probes_dir: Path) -> list[ProbeRecord]:
    records: list[ProbeRecord] = []
    for path in sorted(probes_dir.glob("*/*.json")) if probes_dir.is_dir() else []:
        obj = _read_object(path, required=True)
        try:
            records.append(ProbeRecord.from_json(obj or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise CampaignError(f"{path}: not a probe record ({exc!r})") from exc
    records.sort(key=lambda r: (r.suite, r.probe_id))
    return records


def _policy_hashes(
    campaign: Mapping[str, Any], records: list[ProbeRecord], ledger: Mapping[str, Any] | None
) -> list[str]:
    """Every policy hash the answers carry, by the server time it was first seen.

    Read without verifying (verification comes after and checks this list against what it
    verified); an exchange that does not parse is skipped here and caught there.
    """
    exchanges: list[Any] = [e for _, e, _ in campaign_exchanges(campaign)]
    exchanges += [e.to_json() for r in records for e in r.exchanges]
    if ledger is not None:
        exchanges.append(ledger.get("final_head"))
        exchanges.append(_mapping(ledger.get("refused")).get("exchange"))
        exchanges += [_mapping(c).get("exchange") for c in ledger.get("consistency") or ()]
    first_seen: dict[str, int] = {}
    for exchange in exchanges:
        body = _peek_body(exchange)
        if body is not None and body.policy_hash:
            seen = first_seen.get(body.policy_hash)
            if seen is None or body.server_time_ms < seen:
                first_seen[body.policy_hash] = body.server_time_ms
    return sorted(first_seen, key=lambda h: (first_seen[h], h))


def _evaluation(lab: Mapping[str, Any]) -> JSON:
    """The evaluation section from the campaign's check-in, read without verifying it
    (verification comes after, recomputes the section and fails on a bad certificate)."""
    body = _peek_body(lab.get("exchange"))
    if body is None:
        return {"available": False, "reason": "the campaign has no readable check-in exchange"}
    try:
        return evaluation_section(body)
    except WireVerificationError as exc:
        return {"available": False, "reason": f"the lab's certificate fails verification: {exc}"}


def _peek_body(exchange: Any) -> pb.ResponseBody | None:
    if not isinstance(exchange, Mapping) or not isinstance(exchange.get("response"), str):
        return None
    try:
        response = pb.SignedResponse.FromString(base64.b64decode(exchange["response"]))
        body: pb.ResponseBody = pb.ResponseBody.FromString(response.body)
    except (binascii.Error, ValueError, DecodeError):
        return None
    return body


def _mapping(obj: Any) -> Mapping[str, Any]:
    return obj if isinstance(obj, Mapping) else {}
