"""The forgeries a hostile review found (issue 8): each must fail, naming the first bad entry.

Every test takes a real report (the real runner and suites against ``fake_lab``), shows that
it verifies as it is, then applies one forgery *and recomputes everything the forger can*:
findings and summaries (the suites' code is public), the ``plan`` counts, the SHA-256 of an
edited carried file and the campaign hash. What the forger cannot redo is anything signed:
the auditor's request envelopes and the lab's answers and refusals. The verifier binds every
probe to those: it plans the campaign again from the carried inputs, checks each signed
request body against what the planned inputs imply, and requires the lab's signature on
every refusal.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from auditor_client.campaign import model
from auditor_client.campaign.runner import plan_campaign
from auditor_client.campaign.types import Exchange
from auditor_client.report.build import write_report
from auditor_client.report.errors import ReportVerificationError
from auditor_client.report.verify import VerifySummary, verify_report_data
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.evaluation import certificate_from_result
from tests.fixtures.validation import sample_validation
from tests.unit.report.fake_lab import (
    DENIED,
    SNAPSHOT,
    Campaign,
    make_campaign,
    refind,
    rehash,
    resummarize,
)

Report = dict[str, Any]


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[Campaign, Report]:
    """25 bias probes, 12 of them stereotyped (rate 0.48); 6 references, 3 of them copied
    verbatim (flagged); 4 toxicity prompts, 2 answered with abuse."""
    campaign = make_campaign(
        tmp_path_factory.mktemp("forgeries") / "out",
        copyright_probes=6,
        bias_templates=5,
        professions=5,
        stereotyped=12,
        toxicity_probes=4,
    )
    report = json.loads(campaign.report.read_text(encoding="utf-8"))
    assert report["findings"]["bias"]["stereotype_rate"] == 0.48
    assert report["findings"]["copyright"]["flagged"] == 3
    return campaign, report


def _verify(campaign: Campaign, report: Report) -> VerifySummary:
    return verify_report_data(
        report, lab_public_key=campaign.lab.lab_public, suites=campaign.suites
    )


def _forged(
    real: tuple[Campaign, Report], forge: Callable[[Report], None]
) -> tuple[Report, ReportVerificationError]:
    """The un-forged report verifies; the forged one fails: return it and the failure."""
    campaign, report = real
    _verify(campaign, copy.deepcopy(report))
    forged = copy.deepcopy(report)
    forge(forged)
    with pytest.raises(ReportVerificationError) as info:
        _verify(campaign, forged)
    return forged, info.value


def _index(report: Report, suite: str, probe_id: str) -> int:
    return next(
        i
        for i, p in enumerate(report["probes"])
        if (p["suite"], p["probe_id"]) == (suite, probe_id)
    )


def _bodies(probe: dict[str, Any]) -> list[pb.ResponseBody]:
    return [
        pb.ResponseBody.FromString(Exchange.from_json(e).signed_response().body)
        for e in probe["exchanges"]
    ]


# --- (a) remove the damning probes and recompute the summary ---------------------------------


def test_a_removing_damning_probes_names_the_first_gap(real: tuple[Campaign, Report]) -> None:
    campaign, report = real
    first = _index(report, "copyright", "ref-00")

    def forge(r: Report) -> None:
        r["probes"] = [p for p in r["probes"] if not p["findings"].get("flagged")]
        resummarize(r, campaign.suites)
        assert r["findings"]["copyright"]["flag_rate"] == 0.0  # what the forger wanted

    _, err = _forged(real, forge)
    assert err.entry == f"probes[{first}] (copyright/ref-01)"
    assert "the plan's probe" in err.detail and "copyright/ref-00" in err.detail

    # Dropping the tail instead (the toxic prompts come last) is caught too: the campaign
    # says it completed, so it must hold every planned probe.
    def forge_tail(r: Report) -> None:
        r["probes"] = [p for p in r["probes"] if p["suite"] != "toxicity"]
        resummarize(r, campaign.suites)

    forged, err = _forged(real, forge_tail)
    assert err.entry == f"probes[{len(forged['probes'])}]"
    assert "campaign.status says the campaign is complete" in err.detail


# --- (b) mark answered probes as refused by the lab ------------------------------------------


def test_b_answered_probes_marked_refused_name_the_probe(real: tuple[Campaign, Report]) -> None:
    campaign, report = real
    i = _index(report, "bias", "honest-job/nurse")
    assert report["probes"][i]["findings"]["stereotyped"] is True

    def keep_exchanges(r: Report) -> None:
        for p in r["probes"]:
            if p["suite"] == "bias" and p["findings"]["stereotyped"]:
                p["findings"] = {"refused": "PERMISSION_DENIED", "message": DENIED}
        resummarize(r, campaign.suites)
        assert r["findings"]["bias"]["stereotype_rate"] == 0.0

    _, err = _forged(real, keep_exchanges)
    assert err.entry == f"probes[{i}] (bias/honest-job/nurse) findings.refused"
    assert "no exchange holds the lab's signed refusal" in err.detail

    # As an older report would have it: no exchanges at all.
    def drop_exchanges(r: Report) -> None:
        keep_exchanges(r)
        for p in r["probes"]:
            if "refused" in p["findings"]:
                p["exchanges"] = []

    _, err = _forged(real, drop_exchanges)
    assert err.entry == f"probes[{i}] (bias/honest-job/nurse) exchange 0"
    assert "missing: the probe's inputs imply a Score request" in err.detail


# --- (c) swap the group labels in bias probes' inputs and recompute --------------------------


def test_c_swapped_group_labels_name_the_relabelled_input(real: tuple[Campaign, Report]) -> None:
    campaign, report = real
    i = _index(report, "bias", "honest-job/nurse")

    def forge(r: Report) -> None:
        for k, p in enumerate(r["probes"]):
            if p["suite"] == "bias" and p["findings"]["stereotyped"]:
                inputs = p["inputs"]
                a, b = inputs["groups"]
                inputs["groups"] = [b, a]
                inputs["completions"] = {b: inputs["completions"][b], a: inputs["completions"][a]}
                inputs["completions"][a], inputs["completions"][b] = (
                    inputs["completions"][b],
                    inputs["completions"][a],
                )
                refind(r, k, campaign.suites)
        resummarize(r, campaign.suites)
        assert r["findings"]["bias"]["stereotype_rate"] == 0.0  # 0.48 -> 0.0

    _, err = _forged(real, forge)
    assert err.entry == f"probes[{i}] (bias/honest-job/nurse) inputs.completions.female"
    assert err.detail == 'stored " man\'s job.", recomputed " woman\'s job."'


def test_c_relabelling_the_carried_templates_breaks_the_signed_requests(
    real: tuple[Campaign, Report],
) -> None:
    """The forger edits the templates file itself (the nurse is now a man's job), recomputes
    every hash, takes the inputs the new plan gives and recomputes every finding: the
    stereotyped completion the plan now implies is not the one the auditor had attributed."""
    campaign, report = real
    i = _index(report, "bias", "honest-job/nurse")

    def forge(r: Report) -> None:
        entry = r["campaign"]["files"]["templates.yaml"]
        entry["text"] = entry["text"].replace("nurse: female", "nurse: male")
        rehash(r, campaign.suites)
        _adopt_plan(r, campaign)
        resummarize(r, campaign.suites)
        assert r["findings"]["bias"]["stereotype_rate"] != 0.48

    _, err = _forged(real, forge)
    assert err.entry == f"probes[{i}] (bias/honest-job/nurse) exchange 2"
    assert 'signed Attribute request has completion " woman\'s job."' in err.detail
    assert 'imply " man\'s job."' in err.detail


# --- (d) swap exchanges between two probes ---------------------------------------------------


def test_d_swapped_exchanges_name_the_first_probe(real: tuple[Campaign, Report]) -> None:
    campaign, report = real
    a = _index(report, "bias", "honest-job/nurse")
    b = _index(report, "bias", "honest-job/surgeon")

    def forge(r: Report) -> None:
        pa, pb_ = r["probes"][a], r["probes"][b]
        pa["exchanges"], pb_["exchanges"] = pb_["exchanges"], pa["exchanges"]
        refind(r, a, campaign.suites)
        refind(r, b, campaign.suites)
        resummarize(r, campaign.suites)

    _, err = _forged(real, forge)
    assert err.entry == f"probes[{a}] (bias/honest-job/nurse) exchange 0"
    assert "signed Score request has prompt" in err.detail and "surgeon" in err.detail

    # Swapping the inputs along with the exchanges is a probe that is not the plan's.
    def forge_both(r: Report) -> None:
        pa, pb_ = r["probes"][a], r["probes"][b]
        for key in ("inputs", "exchanges", "findings"):
            pa[key], pb_[key] = pb_[key], pa[key]
        resummarize(r, campaign.suites)

    _, err = _forged(real, forge_both)
    assert err.entry.startswith(f"probes[{a}] (bias/honest-job/nurse) inputs.")


# --- (e) replace a reference text -------------------------------------------------------------


def test_e_replaced_reference_text_is_caught_whatever_is_recomputed(
    real: tuple[Campaign, Report],
) -> None:
    """Replace the continuation of a copied reference so the copy no longer matches; each
    further step the forger takes to cover it is caught at the next binding."""
    campaign, report = real
    i = _index(report, "copyright", "ref-00")
    assert report["probes"][i]["findings"]["flagged"] is True
    refs = 'campaign.files["refs.jsonl"]'

    def replace_text(r: Report) -> None:
        entry = r["campaign"]["files"]["refs.jsonl"]
        row = json.loads(entry["text"].splitlines()[0])
        lines = entry["text"].splitlines(keepends=True)
        row["continuation"] = " and then nothing in particular happened to anyone at all."
        lines[0] = json.dumps(row) + "\n"
        entry["text"] = "".join(lines)

    _, err = _forged(real, replace_text)
    assert err.entry == refs and "SHA-256" in err.detail

    def and_its_hash(r: Report) -> None:
        replace_text(r)
        entry = r["campaign"]["files"]["refs.jsonl"]
        entry["sha256"] = hashlib.sha256(entry["text"].encode()).hexdigest()

    _, err = _forged(real, and_its_hash)
    assert err.entry == "campaign.campaign_hash"

    def and_the_campaign_hash(r: Report) -> None:
        replace_text(r)
        rehash(r, campaign.suites)

    _, err = _forged(real, and_the_campaign_hash)
    assert err.entry == f"probes[{i}] (copyright/ref-00) inputs.continuation"

    def and_the_inputs_and_findings(r: Report) -> None:
        and_the_campaign_hash(r)
        _adopt_plan(r, campaign)
        resummarize(r, campaign.suites)
        assert r["findings"]["copyright"]["flagged"] == 2  # the copy is hidden

    _, err = _forged(real, and_the_inputs_and_findings)
    # The Generate seed commits the signed request to every input, the continuation too.
    assert err.entry == f"probes[{i}] (copyright/ref-00) exchange 0"
    assert re.search(r"signed Generate request has seed \d+, but the probe's planned", err.detail)


# --- (f) change the campaign hash -------------------------------------------------------------


def test_f_changed_campaign_hash_names_it(real: tuple[Campaign, Report]) -> None:
    campaign, _ = real

    def forge(r: Report) -> None:
        r["campaign"]["campaign_hash"] = hashlib.sha256(b"the campaign we agreed on").hexdigest()

    _, err = _forged(real, forge)
    assert err.entry == "campaign.campaign_hash"
    assert err.detail.startswith(
        f'stored "{hashlib.sha256(b"the campaign we agreed on").hexdigest()}"'
    )

    # Claiming another campaign (here: another seed) by editing the carried campaign file
    # and recomputing every hash changes the plan, which the probes no longer match.
    def forge_file(r: Report) -> None:
        block = r["campaign"]
        block["campaign_file_text"] = block["campaign_file_text"].replace("seed: 7", "seed: 8")
        block["seed"] = 8
        rehash(r, campaign.suites)

    _, err = _forged(real, forge_file)
    assert err.entry == "probes[0] (bias/honest-job/nurse) inputs.bootstrap_seed"


# --- (g) flatter the lab's evaluation certificate ---------------------------------------------


def test_g_edited_evaluation_numbers_name_the_entry(real: tuple[Campaign, Report]) -> None:
    """The report's evaluation section is a view of the certificate in the lab's signed
    check-in answer; a reader trusting the section is trusting the lab's signature."""
    campaign, report = real
    section = report["evaluation"]
    assert section["available"] is True and section["source"] == "campaign.lab.exchange"
    engine = section["methods"][0]
    assert (engine["method"], engine["step"]) == ("engine", "sgd")
    summary = _verify(campaign, copy.deepcopy(report))  # untouched: verifies
    assert summary.answers > 0

    def better_mean(r: Report) -> None:
        r["evaluation"]["methods"][0]["mean"] = 1.9

    _, err = _forged(real, better_mean)
    assert err.entry == "evaluation.methods[0].mean"
    assert err.detail == "stored 1.9, recomputed 0.975360894203186"

    def narrower_interval(r: Report) -> None:
        r["evaluation"]["methods"][0]["ci95"][0] = 0.9

    _, err = _forged(real, narrower_interval)
    assert err.entry == "evaluation.methods[0].ci95[0]"

    def weaker_baseline(r: Report) -> None:  # the ratio that says "better than BM25"
        row = next(x for x in r["evaluation"]["ratios"] if x["pair"] == "engine/bm25")
        row["ci95"] = [1.5, 1.9]

    _, err = _forged(real, weaker_baseline)
    assert err.entry == "evaluation.ratios[0].ci95[0]"

    def more_questions(r: Report) -> None:
        r["evaluation"]["n_questions"] = 4000

    _, err = _forged(real, more_questions)
    assert err.entry == "evaluation.n_questions"

    def dropped_baseline(r: Report) -> None:  # hide the random baseline that nearly matches
        r["evaluation"]["methods"] = [
            m for m in r["evaluation"]["methods"] if m["method"] != "random"
        ]

    _, err = _forged(real, dropped_baseline)
    assert err.entry == "evaluation.methods[5]" and "(absent)" in err.detail


def test_g_hiding_the_certificate_is_caught(real: tuple[Campaign, Report]) -> None:
    def deleted(r: Report) -> None:
        del r["evaluation"]

    _, err = _forged(real, deleted)
    assert err.entry == "evaluation"
    assert "campaign.lab.exchange carries the lab's signed evaluation certificate" in err.detail

    def unavailable(r: Report) -> None:
        r["evaluation"] = {"available": False, "reason": "the lab served none"}

    _, err = _forged(real, unavailable)
    assert err.entry == "evaluation.available"


def test_g_a_report_without_a_certificate_says_why_and_binds_that_too(tmp_path: Path) -> None:
    """No certificate (a lab whose index has none; a role that checks in with WhoAmI): the
    section says so, and claiming one anyway (copied from another report) is caught."""
    none_served = make_campaign(tmp_path / "none", evaluation=False, copyright_probes=1,
                                bias_templates=0, toxicity_probes=0)  # fmt: skip
    report = json.loads(none_served.report.read_text(encoding="utf-8"))
    assert report["evaluation"] == {
        "available": False,
        "reason": "the lab served no evaluation certificate with its signed policy "
        "(snapshot snap-abababababababab)",
    }
    _verify(none_served, report)
    # A report from before certificates (no section at all) still verifies, as its lab had
    # none to show.
    older = copy.deepcopy(report)
    del older["evaluation"]
    _verify(none_served, older)

    whoami = make_campaign(tmp_path / "whoami", policy_refused=True, copyright_probes=1,
                           bias_templates=0, toxicity_probes=0)  # fmt: skip
    other = json.loads(whoami.report.read_text(encoding="utf-8"))
    assert other["campaign"]["lab"]["method"] == "WhoAmI"
    assert other["evaluation"]["available"] is False
    assert "checked in with WhoAmI" in other["evaluation"]["reason"]
    _verify(whoami, other)

    def borrowed(r: Report) -> None:
        certified = make_campaign(tmp_path / "certified", copyright_probes=1,
                                  bias_templates=0, toxicity_probes=0)  # fmt: skip
        r["evaluation"] = json.loads(certified.report.read_text(encoding="utf-8"))["evaluation"]
        r["evaluation"]["snapshot_id"] = r["lab"]["snapshot_id"]

    _, err = _forged((whoami, other), borrowed)
    assert err.entry == "evaluation.available"


def test_g_a_certificate_that_fails_the_clients_checks_fails_the_report(tmp_path: Path) -> None:
    """A lab that signed a certificate whose typed numbers its own JSON does not say: the
    real client refuses the answer; a report holding it names the check-in exchange."""
    bad = certificate_from_result(sample_validation(SNAPSHOT))
    bad.headlines[0].mean = 3.0
    campaign = make_campaign(tmp_path / "out", evaluation=bad, copyright_probes=1,
                             bias_templates=0, toxicity_probes=0)  # fmt: skip
    report = json.loads(campaign.report.read_text(encoding="utf-8"))
    assert report["verification"]["status"] == "failed"
    assert report["evaluation"]["available"] is False
    assert "fails verification" in report["evaluation"]["reason"]
    with pytest.raises(ReportVerificationError) as info:
        _verify(campaign, report)
    assert info.value.entry == "campaign.lab.exchange"
    assert "headlines[0] says" in info.value.detail


# --- signed refusals --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> tuple[Campaign, Report]:
    """A role the lab refuses Score and tree heads (both refusals signed)."""
    campaign = make_campaign(
        tmp_path_factory.mktemp("refused") / "out", bias_refused=True, tree_heads_refused=True
    )
    return campaign, json.loads(campaign.report.read_text(encoding="utf-8"))


def test_signed_refusals_verify_and_are_checked_like_answers(
    refused: tuple[Campaign, Report],
) -> None:
    campaign, report = refused
    summary = _verify(campaign, report)
    assert summary.refused_probes == 3 and summary.ledger_refused == "PERMISSION_DENIED"
    assert "WARNING: the lab refused tree heads" in summary.line()
    for probe in report["probes"][:3]:
        (body,) = _bodies(probe)
        assert body.refusal.code == "PERMISSION_DENIED" and body.method == "Score"

    def code(r: Report) -> None:
        r["probes"][0]["findings"]["refused"] = "INVALID_ARGUMENT"

    _, err = _forged(refused, code)
    assert err.entry == "probes[0] (bias/honest-job/nurse) findings.refused"
    assert err.detail == 'stored "INVALID_ARGUMENT", recomputed "PERMISSION_DENIED"'

    def swapped(r: Report) -> None:  # another probe's (genuine) refusal
        r["probes"][0]["exchanges"] = r["probes"][1]["exchanges"]

    _, err = _forged(refused, swapped)
    assert err.entry == "probes[0] (bias/honest-job/nurse) exchange 0"
    assert "signed Score request has prompt" in err.detail

    def unproven_ledger(r: Report) -> None:
        del r["ledger"]["refused"]["exchange"]

    _, err = _forged(refused, unproven_ledger)
    assert err.entry == "ledger.refused.exchange" and err.detail.startswith("missing")


def test_a_refusal_without_the_labs_signature_stops_the_run(tmp_path: Path) -> None:
    """Nothing proves the lab said it: not recorded as "refused by the lab"; the probe stays
    unfinished, the run stops, and a report of it is the (empty) finished prefix."""
    campaign = make_campaign(tmp_path / "out", bias_refused=True, signed_refusals=False)
    assert campaign.stopped is not None and "without a signed refusal" in str(campaign.stopped)
    state = json.loads((campaign.out / "campaign.json").read_text(encoding="utf-8"))
    assert state["status"] == "stopped" and state["stop"]["reason"] == "unproven_refusal"
    assert not list((campaign.out / "probes").glob("bias/*.json"))
    write_report(campaign.out, lab_public_key=campaign.lab.lab_public, suites=campaign.suites)
    report = json.loads(campaign.report.read_text(encoding="utf-8"))
    assert report["plan"]["reported"] == 0 and report["verification"]["status"] == "verified"


def test_a_partial_report_may_only_miss_the_tail_of_the_plan(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path / "out", quota=16)
    write_report(campaign.out, lab_public_key=campaign.lab.lab_public, suites=campaign.suites)
    report = json.loads(campaign.report.read_text(encoding="utf-8"))
    summary = _verify(campaign, report)
    assert 3 < summary.probes < summary.planned == 10
    assert "PARTIAL" in summary.line()

    def hole(r: Report) -> None:
        del r["probes"][1]
        resummarize(r, campaign.suites)

    _, err = _forged((campaign, report), hole)
    assert err.entry.startswith("probes[1] (") and "the plan's probe 1" in err.detail

    def claims_complete(r: Report) -> None:
        r["campaign"]["status"] = "complete"

    _, err = _forged((campaign, report), claims_complete)
    assert err.entry == f"probes[{summary.probes}]" and "complete" in err.detail


# --- helpers ----------------------------------------------------------------------------------


def _adopt_plan(r: Report, campaign: Campaign) -> None:
    """Give every probe the inputs the (forged) carried files plan, then recompute its
    findings: the most a forger can do without the auditor's and the lab's keys."""
    block = r["campaign"]
    texts = {name: entry["text"] for name, entry in block["files"].items()}
    plan = plan_campaign(
        model.Campaign.from_yaml(block["campaign_file_text"]),
        suites=campaign.suites,
        files=model.CampaignFiles.from_report(texts, where="campaign.files"),
    )
    for k, (probe, spec) in enumerate(zip(r["probes"], plan.specs, strict=True)):
        if probe["inputs"] != spec.inputs:
            probe["inputs"] = spec.inputs
            refind(r, k, campaign.suites)
