"""The campaign runner against a real lab: checkpoints, resume after SIGKILL, quota stops,
policy refusals (signed by the lab, and verified in the report), and the ledger consistency
proofs that close a run.

The suites here are small fakes (one RPC per probe) so each test controls exactly which
calls reach the lab and can count the lab's ledger leaves around a resume.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from auditor_client.campaign import runner
from auditor_client.campaign.commands import campaign_group
from auditor_client.campaign.model import Campaign, CampaignFiles
from auditor_client.campaign.runner import run_campaign
from auditor_client.campaign.types import JSON, Call, Exchange, ProbeRecord, ProbeSpec
from auditor_client.errors import CampaignError, CampaignStopped
from auditor_client.report.build import write_report
from auditor_client.report.errors import ReportVerificationError
from auditor_client.report.verify import verify_report_data
from auditor_client.wire import merkle
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.errors import SignatureError
from tests.integration.lab_server import REPO, Lab, build_lab, env, policy_text


class _Fake:
    """One RPC per probe; ``inputs.sleep`` slows probes down for the crash test."""

    name = ""

    def plan(
        self, config: Mapping[str, Any], *, files: CampaignFiles, seed: int
    ) -> list[ProbeSpec]:
        return [
            ProbeSpec(self.name, f"{self.name}/{i:02d}", {"i": i, "sleep": config.get("sleep", 0)})
            for i in range(int(config["n"]))
        ]

    def call(self, spec: ProbeSpec) -> Call:
        raise NotImplementedError

    def next_call(self, spec: ProbeSpec, answers: Sequence[pb.ResponseBody]) -> Call | None:
        if answers:
            return None
        # Slows the run down for the crash test (verification never runs there).
        time.sleep(float(spec.inputs["sleep"]))
        return self.call(spec)

    def findings(self, spec: ProbeSpec, answers: Sequence[pb.ResponseBody]) -> JSON:
        return {"method": answers[0].method}

    def summarize(self, records: Sequence[ProbeRecord]) -> JSON:
        return {
            "probes": len(records),
            "refused": sum(1 for r in records if "refused" in r.findings),
        }


class AttributeFake(_Fake):
    name = "copyright"

    def call(self, spec: ProbeSpec) -> Call:
        request = pb.AttributeRequest(
            prompt="The", completion=f" fox number {spec.inputs['i']}", top_k=2
        )
        return Call("Attribute", request)


class WhoAmIFake(_Fake):
    name = "bias"

    def call(self, spec: ProbeSpec) -> Call:
        return Call("WhoAmI", pb.WhoAmIRequest())


class GenerateFake(_Fake):
    name = "toxicity"

    def call(self, spec: ProbeSpec) -> Call:
        return Call("Generate", pb.GenerateRequest(prompt="The", max_new_tokens=2))


FAKES = {"copyright": AttributeFake(), "bias": WhoAmIFake(), "toxicity": GenerateFake()}

# Runs `auditor campaign ...` with the fake suites in place of the shipped ones (and no
# report: the report is tested on its own). Uses the `auditor` entry point once the
# campaign group is registered there, the group itself until then.
ENTRY = """
import sys
import auditor_client.campaign.suites as shipped
from auditor_client.campaign import runner
from tests.integration.test_campaign_runner import FAKES
shipped.SUITES.clear()
shipped.SUITES.update(FAKES)
runner._write_report = lambda *a, **k: False
from auditor_client.cli import main
args = sys.argv[1:]
if "campaign" not in main.commands:
    from auditor_client.campaign.commands import campaign_group as main
    args = args[1:]
main(args, prog_name="auditor")
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """A validated lab: its GetPolicy answers carry a real evaluation certificate."""
    return build_lab(tmp_path_factory.mktemp("campaign-lab"), validate=True)


@pytest.fixture()
def lab(built: Lab, tmp_path: Path) -> Any:
    """The built lab with its own state and policy files, served for one test."""
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    shutil.copy(built.policy, policy_dir / "policy.yaml")
    shutil.copy(built.root / "auditors.yaml", policy_dir / "auditors.yaml")
    fresh = dataclasses.replace(
        built,
        state=tmp_path / "state",
        policy=policy_dir / "policy.yaml",
        process=None,
        stderr_lines=[],
    )
    fresh.start()
    yield fresh
    if fresh.process is not None:
        fresh.stop()


@pytest.fixture()
def reports(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []

    def fake_report(out_dir: Path, campaign: Campaign, registry: object) -> bool:
        calls.append(out_dir)
        return True

    monkeypatch.setattr(runner, "_write_report", fake_report)
    # The command resolves the shipped registry; in-process tests swap in the fakes.
    monkeypatch.setattr(runner, "_default_suites", lambda: FAKES)
    return calls


def campaign_file(tmp_path: Path, lab: Lab, who: str, suites: str, concurrency: int = 2) -> Path:
    path = tmp_path / "campaign.yaml"
    path.write_text(
        "version: 1\n"
        "name: test-campaign\n"
        "server: {address: '127.0.0.1:1', insecure: true}\n"
        f'lab_key: "{lab.lab_public}"\n'
        f"auditor: {{key_dir: '{lab.keys[who]}', id: {who}}}\n"
        f"concurrency: {concurrency}\n"
        f"suites: {suites}\n"
    )
    return path


def load(path: Path, lab: Lab) -> Campaign:
    return Campaign.from_file(path).with_overrides(server=lab.address)


def leaves(lab: Lab) -> int:
    con = sqlite3.connect(f"file:{lab.state / 'ledger.db'}?mode=ro", uri=True)
    try:
        count: int = con.execute("SELECT COUNT(*) FROM leaves").fetchone()[0]
        return count
    finally:
        con.close()


def checkpoints(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "probes").glob("*/*.json"))
    }


def check_ledger_file(out: Path, lab: Lab) -> dict[str, Any]:
    """Re-verify ledger.json from its stored exchanges alone."""
    ledger: dict[str, Any] = json.loads((out / "ledger.json").read_text())
    final = pb.ResponseBody.FromString(
        Exchange.from_json(ledger["final_head"]).signed_response().body
    ).tree_head.tree_head
    assert final.tree_size == ledger["final_size"]
    for entry in ledger["consistency"]:
        body = pb.ResponseBody.FromString(
            Exchange.from_json(entry["exchange"]).signed_response().body
        )
        proof = body.consistency_proof
        assert (proof.first_size, proof.second_size) == (entry["from_size"], final.tree_size)
        merkle.verify_consistency(
            entry["from_size"],
            final.tree_size,
            bytes.fromhex(entry["from_root"]),
            final.root_hash,
            list(proof.path),
        )
    return ledger


def test_full_run_checkpoints_every_probe_and_proves_the_ledger(
    lab: Lab, tmp_path: Path, reports: list[Path]
) -> None:
    path = campaign_file(tmp_path, lab, "reg", "{copyright: {n: 5}, bias: {n: 2}}")
    out = tmp_path / "out"
    summary = run_campaign(
        load(path, lab), out_dir=out, resume=False, workers=None, progress=False, suites=FAKES
    )
    assert (summary.total, summary.ran, summary.skipped, summary.refused) == (7, 7, 0, 0)
    assert reports == [out]
    files = checkpoints(out)
    assert len(files) == 7
    assert any(k.startswith("probes/copyright/copyright_00~") for k in files)  # '/' sanitized
    for raw in files.values():
        record = ProbeRecord.from_json(json.loads(raw))
        assert len(record.exchanges) == 1 and record.findings["method"] in ("Attribute", "WhoAmI")

    state = json.loads((out / "campaign.json").read_text())
    assert state["status"] == "complete" and state["finished"]
    assert state["campaign_hash"] == summary.campaign_hash
    assert state["specs"] == {"bias": 2, "copyright": 5}
    assert state["lab"]["method"] == "GetPolicy"
    assert len(state["lab"]["policy_hash"]) == 64 and state["lab"]["snapshot_id"]
    assert state["auditor"]["id"] == "reg"
    assert state["auditor"]["public_key"] == (lab.keys["reg"] / "auditor.pub").read_text().strip()
    assert "PRIVATE" not in (out / "campaign.json").read_text()

    ledger = check_ledger_file(out, lab)
    assert summary.consistency_proofs == len(ledger["consistency"]) >= 1
    # The check-in carried the lab's real, signed measurement of its index; the report
    # shows it and verifies it.
    validation = json.loads((lab.index / "validation.json").read_text())
    write_report(out, lab_public_key=lab.lab_public, suites=FAKES)
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["status"] == "verified", report["verification"]
    section = report["evaluation"]
    assert section["available"] is True
    assert section["snapshot_id"] == validation["snapshot_id"] == state["lab"]["snapshot_id"]
    assert section["questions_sha256"] == validation["questions_sha256"]
    assert (section["split"], section["n_questions"]) == ("heldout", 8)
    engine = section["methods"][0]
    assert (engine["method"], engine["mean"]) == (
        "engine",
        validation["methods"]["engine"]["sgd"]["mean"],
    )
    assert {r["pair"] for r in section["ratios"]} >= {"engine/bm25", "engine/random"}
    assert "How trustworthy are these attributions" in (out / "index.html").read_text()
    # The auditor's head store now holds every head the run saw, each proven to be a prefix
    # of the final one: a later run (or another auditor) is checked against all of them.
    from auditor_client.headstore import HeadStore
    from auditor_client.keys import decode_public_key

    held = HeadStore.default().lab(decode_public_key(lab.lab_public))
    final_size = ledger["final_size"]
    for entry in ledger["consistency"]:
        assert held.linked(entry["from_size"], final_size), entry["from_size"]

    # Running again into the same directory needs --resume; resuming a finished run redoes
    # nothing; a damaged checkpoint is reported and redone.
    with pytest.raises(CampaignError, match="use --resume"):
        run_campaign(load(path, lab), out_dir=out, resume=False, workers=1, progress=False,
                     suites=FAKES)  # fmt: skip
    damaged = sorted((out / "probes" / "bias").glob("*.json"))[0]
    damaged.write_text('{"suite": "bias", "probe_id"')
    again = run_campaign(
        load(path, lab), out_dir=out, resume=True, workers=1, progress=False, suites=FAKES
    )
    assert (again.ran, again.skipped, again.redone) == (1, 6, ("bias/bias/00",))
    assert json.loads(damaged.read_text())["probe_id"] == "bias/00"
    after = checkpoints(out)
    assert {k: v for k, v in after.items() if "bias_00" not in k} == {
        k: v for k, v in files.items() if "bias_00" not in k
    }
    assert len(json.loads((out / "campaign.json").read_text())["sessions"]) == 2

    # A changed campaign is not resumed into the old directory.
    campaign_file(tmp_path, lab, "reg", "{copyright: {n: 6}, bias: {n: 2}}")
    with pytest.raises(CampaignError, match=f"records campaign {summary.campaign_hash}"):
        run_campaign(load(path, lab), out_dir=out, resume=True, workers=1, progress=False,
                     suites=FAKES)  # fmt: skip


def test_policy_refusals_are_recorded_and_the_run_goes_on(
    lab: Lab, tmp_path: Path, reports: list[Path]
) -> None:
    # `limited` may call WhoAmI but not Generate, GetPolicy or the ledger proofs.
    path = campaign_file(tmp_path, lab, "limited", "{toxicity: {n: 2}, bias: {n: 2}}")
    out = tmp_path / "out"
    result = CliRunnerInvoke(
        ["run", str(path), "--out", str(out), "--server", lab.address, "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "2 refused by the lab's policy" in result.output
    for i in range(2):
        (refused,) = (out / "probes" / "toxicity").glob(f"toxicity_0{i}~*.json")
        record = ProbeRecord.from_json(json.loads(refused.read_text()))
        # The lab's signed, logged refusal of the Generate request is the probe's record.
        (exchange,) = record.exchanges
        assert exchange.signed_request().method == "Generate"
        body = pb.ResponseBody.FromString(exchange.signed_response().body)
        assert body.refusal.code == "PERMISSION_DENIED"
        assert record.findings == {
            "refused": "PERMISSION_DENIED",
            "message": body.refusal.message,
        }
    assert len(checkpoints(out)) == 4
    state = json.loads((out / "campaign.json").read_text())
    assert state["lab"]["method"] == "WhoAmI" and state["status"] == "complete"
    ledger = json.loads((out / "ledger.json").read_text())
    assert ledger["final_head"] is None and ledger["refused"]["code"] == "PERMISSION_DENIED"
    assert Exchange.from_json(ledger["refused"]["exchange"]).signed_request().method == (
        "GetTreeHead"
    )

    # The report verifies offline: every refusal is the lab's, bound to the request made.
    write_report(out, lab_public_key=lab.lab_public, suites=FAKES)
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["status"] == "verified", report["verification"]
    assert report["verification"]["refused_probes"] == 2
    assert report["verification"]["ledger_refused"] == "PERMISSION_DENIED"
    # The lab has a certificate, but this role's WhoAmI check-in cannot carry it.
    assert report["evaluation"]["available"] is False
    assert "checked in with WhoAmI" in report["evaluation"]["reason"]
    summary = verify_report_data(report, lab_public_key=lab.lab_public, suites=FAKES)
    assert summary.planned == summary.probes == 4
    # Marking an answered probe refused is caught: it holds no signed refusal.
    report["probes"][0]["findings"] = {"refused": "PERMISSION_DENIED", "message": "x"}
    with pytest.raises(ReportVerificationError, match=r"probes\[0\] \(bias/bias/00\)"):
        verify_report_data(report, lab_public_key=lab.lab_public, suites=FAKES)


def CliRunnerInvoke(args: list[str]) -> Any:
    from click.testing import CliRunner

    return CliRunner().invoke(campaign_group, args)


def test_quota_stop_then_resume_after_the_lab_raises_it(
    lab: Lab, tmp_path: Path, reports: list[Path]
) -> None:
    path = campaign_file(tmp_path, lab, "limited", "{copyright: {n: 6}}")
    out = tmp_path / "out"
    with pytest.raises(CampaignStopped, match="resume with --resume"):
        run_campaign(
            load(path, lab), out_dir=out, resume=False, workers=2, progress=False, suites=FAKES
        )
    first = checkpoints(out)
    assert len(first) == 3  # daily_queries: 3
    state = json.loads((out / "campaign.json").read_text())
    assert state["status"] == "stopped" and state["stop"]["reason"] == "quota"
    assert state["stop"]["code"] == "RESOURCE_EXHAUSTED"

    # Exit code 5 from the command while the quota is still used up.
    result = CliRunnerInvoke(
        ["run", str(path), "--out", str(out), "--resume", "--server", lab.address,
         "--no-progress"]
    )  # fmt: skip
    assert result.exit_code == 5, result.output
    assert "resume with --resume" in result.output
    assert checkpoints(out) == first

    with lab.client("limited") as client:
        old_hash = client.whoami().body.policy_hash
    lab.policy.write_text(policy_text(limited_quota=50))
    assert lab.process is not None
    lab.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    with lab.client("limited") as client:
        while client.whoami().body.policy_hash == old_hash:
            assert time.monotonic() < deadline, "policy was not reloaded"
            time.sleep(0.2)

    summary = run_campaign(
        load(path, lab), out_dir=out, resume=True, workers=2, progress=False, suites=FAKES
    )
    assert (summary.ran, summary.skipped) == (3, 3)
    final = checkpoints(out)
    assert len(final) == 6 and {k: final[k] for k in first} == first
    state = json.loads((out / "campaign.json").read_text())
    assert state["status"] == "complete" and state["stop"] is None
    policies = {s["lab"]["policy_hash"] for s in state["sessions"]}
    assert len(policies) == 2  # the resume recorded the new policy


def test_sigkill_then_resume_redoes_nothing(lab: Lab, tmp_path: Path) -> None:
    path = campaign_file(tmp_path, lab, "reg", "{copyright: {n: 12, sleep: 0.4}}")
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", ENTRY, "campaign", "run", str(path), "--out", str(out),
           "--server", lab.address, "--workers", "2", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(checkpoints(out) if (out / "probes").exists() else {}) < 3:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(1.0)  # let the lab finish answering what was in flight
    before = checkpoints(out)
    assert 3 <= len(before) < 12
    leaves_before = leaves(lab)

    done = subprocess.run(
        [*cmd, "--resume"], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    after = checkpoints(out)
    assert len(after) == 12
    assert {k: after[k] for k in before} == before  # not redone, byte for byte
    ledger = check_ledger_file(out, lab)
    remaining = 12 - len(before)
    # remaining probes + the resume's GetPolicy + GetTreeHead + one proof per tree size
    assert leaves(lab) - leaves_before == remaining + 2 + len(ledger["consistency"])
    state = json.loads((out / "campaign.json").read_text())
    assert [s["resume"] for s in state["sessions"]] == [False, True]
    assert state["sessions"][0]["status"] == "running"  # killed: never finished
    assert state["sessions"][1]["skipped"] == len(before)


class ForgedFake(AttributeFake):
    """Probe 1's answer 'fails verification' (as if the lab's signature did not check)."""

    name = "toxicity"

    def call(self, spec: ProbeSpec) -> Call:
        if spec.inputs["i"] == 1:
            return _Unverifiable("Attribute", super().call(spec).request)
        return super().call(spec)


class _Unverifiable(Call):
    def send(self, client: Any) -> list[Any]:
        raise SignatureError("lab signature does not verify")


def test_verification_failure_aborts_and_writes_no_success(
    lab: Lab, tmp_path: Path, reports: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "_default_suites", lambda: {"toxicity": ForgedFake()})
    path = campaign_file(tmp_path, lab, "reg", "{toxicity: {n: 6}}", concurrency=1)
    out = tmp_path / "out"
    result = CliRunnerInvoke(
        ["run", str(path), "--out", str(out), "--server", lab.address, "--no-progress"]
    )
    assert result.exit_code == 4, result.output
    assert "VERIFICATION FAILED" in result.output
    files = checkpoints(out)
    assert len(files) == 1 and all("toxicity_00~" in k for k in files)
    state = json.loads((out / "campaign.json").read_text())
    assert state["status"] == "failed" and state["stop"]["reason"] == "verification_failed"
    assert not (out / "ledger.json").exists() and reports == []
