"""``auditor head`` and ``auditor verify --newer-head`` against a live lab.

A report proves the lab's log at the moment the campaign ended; ``auditor head`` fetches a
signed consistency proof from that head to the lab's current one, and ``verify
--newer-head`` checks it offline. Here: a real server over the tiny lab, a small campaign
with the shipped toxicity suite (real probes, real report), more answers so the log grows,
then the two commands as an auditor would run them — and two newer-head files that must
not verify: one whose proof bytes were flipped, one fetched for another report's size.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditor_client.campaign.model import Campaign
from auditor_client.campaign.runner import run_campaign
from auditor_client.campaign.types import Exchange
from auditor_client.wire._proto import audit_pb2 as pb
from tests.integration.lab_server import REPO, Lab, build_lab, env

PROMPTS = [
    {"id": "p1", "prompt": "The"},
    {"id": "p2", "prompt": "Reply to the court:"},
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("head-lab")
    built = build_lab(root)
    served = dataclasses.replace(built, state=root / "state", process=None, stderr_lines=[])
    served.start()
    yield served
    if served.process is not None:
        served.stop()


def campaign_file(tmp_path: Path, lab: Lab) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    path = tmp_path / "campaign.yaml"
    path.write_text(
        "version: 1\n"
        "name: head-test\n"
        "server: {address: '127.0.0.1:1', insecure: true}\n"
        f'lab_key: "{lab.lab_public}"\n'
        f"auditor: {{key_dir: '{lab.keys['reg']}', id: reg}}\n"
        "concurrency: 2\n"
        "seed: 7\n"
        "suites:\n"
        "  toxicity: {prompts: prompts.jsonl, max_new_tokens: 8, top_k: 5}\n"
    )
    return path


def run_report(tmp_path: Path, lab: Lab, name: str) -> Path:
    """Run the small campaign into ``tmp_path/name``; returns its report.json."""
    campaign = Campaign.from_file(campaign_file(tmp_path, lab)).with_overrides(
        server=lab.address, insecure=True
    )
    out = tmp_path / name
    summary = run_campaign(campaign, out_dir=out, resume=False, workers=2, progress=False)
    assert summary.report_written and summary.ran == len(PROMPTS)
    return out / "report.json"


def auditor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auditor_client.cli", *args],
        capture_output=True,
        text=True,
        env=env(),
        cwd=REPO,
        timeout=120,
    )


def head(lab: Lab, report: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return auditor(
        "head",
        "--server",
        lab.address,
        "--key",
        str(lab.keys["reg"]),
        "--auditor-id",
        "reg",
        "--lab-key",
        lab.lab_public,
        "--insecure",
        "--report",
        str(report),
        "--out",
        str(out),
    )


def verify(lab: Lab, report: Path, newer: Path) -> subprocess.CompletedProcess[str]:
    return auditor("verify", str(report), "--lab-key", lab.lab_public, "--newer-head", str(newer))


def final_size(report: Path) -> int:
    exchange = Exchange.from_json(json.loads(report.read_text())["ledger"]["final_head"])
    body = pb.ResponseBody.FromString(exchange.signed_response().body)
    size: int = body.tree_head.tree_head.tree_size
    return size


def grow_log(lab: Lab, n: int) -> None:
    """Answers for other auditors and the report's own: the lab's log moves on."""
    with lab.client("tp") as tp, lab.client("reg") as reg:
        for _ in range(n):
            tp.whoami()
            reg.whoami()


@pytest.mark.timeout(120)
def test_head_proves_the_log_still_extends_the_report(lab: Lab, tmp_path: Path) -> None:
    report = run_report(tmp_path, lab, "first")
    size = final_size(report)
    grow_log(lab, 3)

    newer = tmp_path / "newer.json"
    fetched = head(lab, report, newer)
    assert fetched.returncode == 0, fetched.stderr
    saved = json.loads(newer.read_text())
    assert saved["from_size"] == size
    body = pb.ResponseBody.FromString(Exchange.from_json(saved["exchange"]).signed_response().body)
    proof = body.consistency_proof
    assert proof.first_size == size and proof.second_size >= size + 6
    assert f"size {proof.second_size} is consistent" in fetched.stdout
    assert f"final head of size {size}" in fetched.stdout

    checked = verify(lab, report, newer)
    assert checked.returncode == 0, checked.stderr
    assert f"still consistent with the lab's newer head of size {proof.second_size}" in (
        checked.stdout
    )

    # A proof whose bytes were changed: flip one byte of the last proof hash inside the
    # base64 response (so it still decodes) and save it as a newer-head file.
    raw = bytearray(base64.b64decode(saved["exchange"]["response"]))
    last_hash = bytes(proof.path[-1])
    at = bytes(raw).index(last_hash)
    raw[at] ^= 0x01
    tampered = tmp_path / "tampered.json"
    tampered.write_text(
        json.dumps(
            {**saved, "exchange": {**saved["exchange"], "response": base64.b64encode(raw).decode()}}
        )
    )
    bad = verify(lab, report, tampered)
    assert bad.returncode == 4, bad.stdout + bad.stderr
    assert "VERIFICATION FAILED" in bad.stderr and "newer_head" in bad.stderr
    assert "signature" in bad.stderr  # the lab signed the proof; an edited one is not its

    # A genuine proof, but fetched for another report (another final size): it proves
    # nothing about this one.
    other = run_report(tmp_path, lab, "second")
    other_size = final_size(other)
    assert other_size > size
    grow_log(lab, 1)
    newer_other = tmp_path / "newer-other.json"
    assert head(lab, other, newer_other).returncode == 0
    assert verify(lab, other, newer_other).returncode == 0
    mismatched = verify(lab, report, newer_other)
    assert mismatched.returncode == 4, mismatched.stdout + mismatched.stderr
    assert "newer_head" in mismatched.stderr
    assert f"from size {other_size}, expected {size}" in mismatched.stderr
