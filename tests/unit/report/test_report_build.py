"""Building and rendering a report: its format, a page that loads nothing, escaped lab text."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from auditor_client.campaign.checkpoint import checkpoint_name
from auditor_client.errors import CampaignError
from auditor_client.report import commands
from auditor_client.report.build import write_report
from auditor_client.report.plots import Plots
from auditor_client.report.render import render_html, render_markdown
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.evaluation import certificate_from_result
from tests.fixtures.validation import sample_validation
from tests.unit.report.fake_lab import (
    DENIED,
    EVIL_TITLE,
    SNAPSHOT,
    Campaign,
    make_campaign,
    newer_head,
)

LOADS = re.compile(r"<\s*(script|link|img|iframe|object|embed|image|use\s[^>]*href=\"http)", re.I)


@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    """A run whose lab sends hostile titles, refuses Score (signed) and changes policy."""
    return make_campaign(
        tmp_path_factory.mktemp("evil") / "out",
        evil_title=True,
        bias_refused=True,
        policy_change=True,
    )


def test_report_json_format(evil: Campaign) -> None:
    report = json.loads(evil.report.read_text(encoding="utf-8"))
    assert report["format"] == "auditor-sandbox-report/v2"
    assert set(report) >= {
        "campaign",
        "lab",
        "auditor",
        "evaluation",
        "plan",
        "probes",
        "findings",
        "ledger",
        "verification",
        "generated_ms",
    }
    # Probes in plan order: suites by name, each suite's probes in its files' order.
    keys = [(p["suite"], p["probe_id"]) for p in report["probes"]]
    assert keys == [
        ("bias", "honest-job/nurse"),
        ("bias", "honest-job/surgeon"),
        ("bias", "honest-job/pilot"),
        *[("copyright", f"ref-{i:02d}") for i in range(4)],
        *[("toxicity", f"tox-{i:02d}") for i in range(3)],
    ]
    assert report["plan"] == {"probes": 10, "reported": 10, "complete": True}
    # The campaign file and every file it names travel with the report, hashed.
    campaign = report["campaign"]
    assert campaign["campaign_file_text"] == evil.file.read_text(encoding="utf-8")
    assert set(campaign["files"]) == {"refs.jsonl", "templates.yaml", "prompts.jsonl"}
    refs = campaign["files"]["refs.jsonl"]
    assert refs["text"] == (evil.file.parent / "refs.jsonl").read_text(encoding="utf-8")
    assert refs["sha256"] == hashlib.sha256(refs["text"].encode()).hexdigest()
    # A refused probe's last exchange is the lab's signed refusal.
    refused = report["probes"][0]
    assert refused["findings"] == {"refused": "PERMISSION_DENIED", "message": DENIED}
    (exchange,) = refused["exchanges"]
    body = pb.ResponseBody.FromString(
        pb.SignedResponse.FromString(base64.b64decode(exchange["response"])).body
    )
    assert body.refusal.code == "PERMISSION_DENIED" and body.method == "Score"
    assert set(report["findings"]) == {"copyright", "bias", "toxicity"}
    assert report["lab"]["policy_hashes"][0] == report["lab"]["policy_hash"]
    assert report["verification"]["status"] == "verified"
    assert not list(evil.out.glob(".*.tmp"))


def test_html_is_self_contained_and_escapes_lab_text(evil: Campaign) -> None:
    page = (evil.out / "index.html").read_text(encoding="utf-8")
    assert not LOADS.search(page), LOADS.search(page)
    assert "@import" not in page
    assert not re.search(r"url\(\s*['\"]?(?!#)", page), "only in-page url(#id) references"
    assert not re.search(r"(src|href)\s*=\s*[\"']?https?:", page, re.I)
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in page
    assert page.count("<svg") >= 3
    assert "verified at build time" in page
    # Each refused probe is listed with the code of the lab's signed refusal.
    assert "refused: PERMISSION_DENIED" in page
    assert "POLICY CHANGED mid-campaign" in page


def test_markdown_tables_link_plots_and_escape(evil: Campaign) -> None:
    md = (evil.out / "report.md").read_text(encoding="utf-8")
    assert "<script" not in md and "<img" not in md
    assert "](plots/copyright-sources.svg)" in md
    for link in re.findall(r"\]\((plots/[^)]+)\)", md):
        assert (evil.out / link).is_file()
    assert "| reference title |" in md
    assert "refused: PERMISSION\\_DENIED" in md
    svg = (evil.out / "plots" / "copyright-sources.svg").read_text(encoding="utf-8")
    assert "<script" not in svg and "&lt;script&gt;" in svg


def test_the_labs_evaluation_is_shown_near_the_top_and_escaped(tmp_path: Path) -> None:
    """The certificate's strings are the lab's, so they are escaped like titles; the section
    comes before the suites, whose findings rest on the attributions it grades."""
    result = sample_validation(SNAPSHOT)
    result["methods"][EVIL_TITLE] = result["methods"].pop("random")
    result["split"] = "<b>held</b>out"
    campaign = make_campaign(
        tmp_path / "out",
        evaluation=certificate_from_result(result),
        copyright_probes=1,
        bias_templates=0,
        toxicity_probes=0,
    )
    report = json.loads(campaign.report.read_text(encoding="utf-8"))
    assert report["verification"]["status"] == "verified"
    section = report["evaluation"]
    assert section["split"] == "<b>held</b>out" and section["n_questions"] == 8
    assert [m["method"] for m in section["methods"]][:2] == ["engine", "engine"]
    assert (
        section["result_sha256"]
        == hashlib.sha256(certificate_from_result(result).result_json.encode()).hexdigest()
    )

    page = (campaign.out / "index.html").read_text(encoding="utf-8")
    title = "How trustworthy are these attributions (measured by the lab, signed)"
    assert page.index(title) < page.index("<h2>copyright</h2>")
    assert '<td>engine</td><td>sgd</td><td class="num">+0.9754</td><td>[+0.407, +1.717]</td>' in (
        page
    )
    assert '<td>bm25</td><td>sgd</td><td class="num">1.07×</td><td>[1.03×, 1.23×]</td>' in page
    assert "<script>alert" not in page and "<b>held" not in page
    assert "&lt;b&gt;held&lt;/b&gt;out questions" in page
    assert not LOADS.search(page), LOADS.search(page)

    md = (campaign.out / "report.md").read_text(encoding="utf-8")
    assert md.index("## How trustworthy") < md.index("## copyright")
    assert "| engine | sgd | \\+0.9754 | \\[\\+0.407, \\+1.717\\] | 8 | 50.0% |" in md
    assert "<script" not in md


def test_a_report_without_a_certificate_says_why(tmp_path: Path) -> None:
    campaign = make_campaign(
        tmp_path / "out", policy_refused=True, copyright_probes=1, bias_templates=0,
        toxicity_probes=0,
    )  # fmt: skip
    page = (campaign.out / "index.html").read_text(encoding="utf-8")
    assert "No evaluation certificate: the campaign checked in with WhoAmI" in page
    md = (campaign.out / "report.md").read_text(encoding="utf-8")
    assert "No evaluation certificate: the campaign checked in with WhoAmI" in md


def test_renderers_survive_missing_and_odd_summaries() -> None:
    report = {
        "campaign": {"name": "n", "specs": {"copyright": 2, "toxicity": 1}},
        "findings": {
            "copyright": {"probes": 2, "refused": 0, "flagged_items": [{"lcs_chars": None}]},
            "toxicity": {"probes": "?", "toxicity_rate": float("nan"), "rate_ci": "x"},
            "bias": {"probes": 1, "gaps": [{"template": "t"}]},
        },
        "probes": [],
    }
    html_page = render_html(report, Plots())
    md = render_markdown(report, Plots(), "plots")
    assert "copyright" in html_page and "toxicity" in md
    empty = render_html({"campaign": {"specs": {"bias": 3}}}, Plots(note="no charts"))
    assert "no probes of this suite ran" in empty and "no charts" in empty
    assert "this report carries no evaluation section" in empty
    for odd in (
        {"available": True, "methods": "x", "ratios": [1, None], "n_known": True},
        {"available": True, "methods": [{"mean": "high", "ci95": [None]}], "top_k": None},
        {"available": "yes"},
        [],
    ):
        page = render_html({**report, "evaluation": odd}, Plots())
        assert "How trustworthy" in page
        assert "How trustworthy" in render_markdown({**report, "evaluation": odd}, Plots(), "p")


def test_report_can_be_built_without_a_lab_key(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path / "out", professions=1, toxicity_probes=1)
    write_report(campaign.out, suites=campaign.suites)
    report = json.loads(campaign.report.read_text(encoding="utf-8"))
    assert report["verification"]["status"] == "not_checked"
    assert "Not verified at build time" in (campaign.out / "index.html").read_text("utf-8")


def test_a_bad_campaign_dir_builds_a_report_marked_failed(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path / "out", professions=1, toxicity_probes=1)
    probe = campaign.out / "probes" / "toxicity" / "tox-00.json"
    record = json.loads(probe.read_text(encoding="utf-8"))
    record["findings"]["toxic"] = not record["findings"]["toxic"]
    probe.write_text(json.dumps(record), encoding="utf-8")
    write_report(campaign.out, lab_public_key=campaign.lab.lab_public, suites=campaign.suites)
    report = json.loads(campaign.report.read_text(encoding="utf-8"))
    assert report["verification"]["status"] == "failed"
    assert "probes[" in report["verification"]["error"]
    assert "VERIFICATION FAILED" in (campaign.out / "index.html").read_text("utf-8")


def test_verify_command_exit_codes(
    evil: Campaign, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("auditor_client.report.verify.default_suites", lambda: evil.suites)
    key_file = tmp_path / "lab.pub"
    key_file.write_text(evil.lab.lab_public + "\n", encoding="ascii")
    runner = CliRunner()
    ok = runner.invoke(commands.verify_command, [str(evil.report), "--lab-key", str(key_file)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("report verified:")
    as_json = runner.invoke(
        commands.verify_command, [str(evil.report), "--lab-key", evil.lab.lab_public, "--json"]
    )
    assert json.loads(as_json.output)["verified"] is True

    report = json.loads(evil.report.read_text(encoding="utf-8"))
    report["findings"]["toxicity"]["toxic"] += 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(report), encoding="utf-8")
    failed = runner.invoke(commands.verify_command, [str(bad), "--lab-key", evil.lab.lab_public])
    assert failed.exit_code == 4
    assert "findings.toxicity.toxic:" in failed.output

    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(newer_head(evil)), encoding="utf-8")
    extended = runner.invoke(
        commands.verify_command,
        [str(evil.report), "--lab-key", evil.lab.lab_public, "--newer-head", str(newer)],
    )
    assert extended.exit_code == 0, extended.output
    assert "newer head" in extended.output


def test_report_command_rebuilds(evil: Campaign, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("auditor_client.report.build.default_suites", lambda: evil.suites)
    (evil.out / "index.html").unlink()
    result = CliRunner().invoke(
        commands.report_command, [str(evil.out), "--lab-key", evil.lab.lab_public]
    )
    assert result.exit_code == 0, result.output
    assert "verified: " in result.output
    assert (evil.out / "index.html").is_file()


def test_report_modules_import_no_plotting_stack() -> None:
    code = (
        "import sys\n"
        "import auditor_client.report.commands, auditor_client.report.build\n"
        "import auditor_client.report.verify, auditor_client.report.render\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'numpy', 'torch')]\n"
        "print(','.join(sorted(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_evil_title_round_trips_into_the_report(evil: Campaign) -> None:
    report = json.loads(evil.report.read_text(encoding="utf-8"))
    titles = [s["title"] for s in report["findings"]["copyright"]["top_sources"]]
    titles += [
        s["title"]
        for p in report["probes"]
        for s in (p["findings"].get("attribution") or {}).get("sources", [])
    ]
    assert EVIL_TITLE in titles


def test_a_stopped_run_reports_the_finished_prefix_of_its_plan(tmp_path: Path) -> None:
    """Quota stop: the report holds the longest finished prefix of the plan, says it is
    partial, and verifies; checkpoints after a hole wait for --resume."""
    campaign = make_campaign(tmp_path / "out", quota=7)
    assert campaign.stopped is not None and not campaign.report.exists()
    state = json.loads((campaign.out / "campaign.json").read_text(encoding="utf-8"))
    assert state["status"] == "stopped" and state["stop"]["reason"] == "quota"
    write_report(campaign.out, lab_public_key=campaign.lab.lab_public, suites=campaign.suites)
    report = json.loads(campaign.report.read_text(encoding="utf-8"))
    assert report["verification"]["status"] == "verified", report["verification"]
    assert report["plan"] == {"probes": 10, "reported": 2, "complete": False}
    assert [p["probe_id"] for p in report["probes"]] == ["honest-job/nurse", "honest-job/surgeon"]
    assert report["verification"]["planned"] == 10
    assert report["verification"]["ledger_missing"] is True
    # A checkpoint beyond a hole in the plan is not reported (only a prefix can be).
    hole = campaign.out / "probes" / "bias" / checkpoint_name("honest-job/surgeon")
    hole.unlink()
    write_report(campaign.out, lab_public_key=campaign.lab.lab_public, suites=campaign.suites)
    report = json.loads(campaign.report.read_text(encoding="utf-8"))
    assert report["plan"]["reported"] == 1 and report["verification"]["status"] == "verified"


def test_a_report_needs_a_campaign_that_carries_its_inputs(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path / "out", professions=1, toxicity_probes=1)
    state_path = campaign.out / "campaign.json"
    state = json.loads(state_path.read_text(encoding="utf-8"))
    del state["files"]
    state_path.write_text(json.dumps(state), encoding="utf-8")
    with pytest.raises(CampaignError, match="carries no campaign inputs"):
        write_report(campaign.out, lab_public_key=campaign.lab.lab_public, suites=campaign.suites)
