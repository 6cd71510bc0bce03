"""What every demo run must show, whatever the model: checks shared by the demo tests."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ROLES = ("regulator", "third_party")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_demo(out: Path, size: str, timeout: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEMO_SIZE": size, "DEMO_PORT": str(free_port())}
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "demo.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def reports(out: Path) -> dict[str, dict[str, Any]]:
    return {
        role: json.loads((out / "reports" / role / "report.json").read_text()) for role in ROLES
    }


def _decoded_exchanges(report: dict[str, Any]) -> str:
    """Every signed answer's raw bytes, decoded loosely, so text inside them can be searched."""
    chunks = []
    for probe in report["probes"]:
        for exchange in probe["exchanges"]:
            raw = base64.b64decode(exchange["response"])
            chunks.append(raw.decode("utf-8", errors="replace"))
    return "\n".join(chunks)


def check_no_private_data(out: Path) -> None:
    """No private record's id, text, email or phone appears in any report file."""
    private = [
        json.loads(line)
        for line in (out / "corpus.jsonl").read_text().splitlines()
        if json.loads(line)["source"]["data_class"] == "private"
    ]
    assert private
    needles = set()
    for record in private:
        needles.add(record["id"])
        needles.add(record["source"]["publisher"])
        needles.add(record["text"][:40])
        for word in record["text"].split():
            if "@" in word:
                needles.add(word.strip(".,;:()<>\"'"))
    for role in ROLES:
        folder = out / "reports" / role
        texts = [p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file()]
        texts.append(_decoded_exchanges(json.loads((folder / "report.json").read_text())))
        haystack = "\n".join(texts)
        leaked = sorted(n for n in needles if n and n in haystack)
        assert not leaked, f"{role} report shows private data: {leaked[:5]}"


def check_third_party_sees_less(out: Path) -> None:
    both = reports(out)
    regulator, third = both["regulator"]["findings"], both["third_party"]["findings"]
    # Score is not a third-party method: the whole bias suite is refused, and says so.
    assert third["bias"]["refused"] == third["bias"]["probes"] > 0
    assert regulator["bias"]["refused"] == 0
    # Public results come as whole records for the regulator, as snippets for the third party;
    # proprietary ones as source metadata only, for both.
    expected = {"regulator": "full_text", "third_party": "snippet"}
    for role, report in both.items():
        seen = _disclosures(report)
        assert seen.get("public") == {expected[role]}, (role, seen)
        assert seen.get("proprietary") == {"source_metadata"}, (role, seen)
        assert "private" not in seen
    for role in both:
        summary = _verify(out / "reports" / role / "report.json", out)
        assert summary.returncode == 0, (role, summary.stderr)


def _disclosures(report: dict[str, Any]) -> dict[str, set[str]]:
    """Data class -> disclosure levels seen in every attribution answer of a report."""
    from auditor_client.wire._proto import audit_pb2 as pb

    seen: dict[str, set[str]] = {}
    for probe in report["probes"]:
        for exchange in probe["exchanges"]:
            response = pb.SignedResponse.FromString(base64.b64decode(exchange["response"]))
            body = pb.ResponseBody.FromString(response.body)
            if body.WhichOneof("result") == "attribute":
                for r in body.attribute.results:
                    seen.setdefault(r.data_class, set()).add(r.disclosure)
    return seen


def check_tampering_is_caught(out: Path, tmp: Path) -> None:
    report = json.loads((out / "reports" / "regulator" / "report.json").read_text())
    probe = report["probes"][0]
    raw = bytearray(base64.b64decode(probe["exchanges"][0]["response"]))
    raw[len(raw) // 2] ^= 0x01
    probe["exchanges"][0]["response"] = base64.b64encode(bytes(raw)).decode()
    bad = tmp / "tampered.json"
    bad.write_text(json.dumps(report))
    result = _verify(bad, out)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "probes[0]" in result.stderr


def _verify(report: Path, out: Path) -> subprocess.CompletedProcess[str]:
    lab_key = (out / "lab" / "lab-key" / "lab.pub").read_text().strip()
    return subprocess.run(
        [sys.executable, "-m", "auditor_client.cli", "verify", str(report), "--lab-key", lab_key],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def check_planted_problems_found(out: Path) -> None:
    """On the trained demo model: each suite traces its problem to the planted source."""
    from auditor_server.corpus.demo_sources import (
        OPED_SOURCE_TITLE,
        PROPRIETARY_TITLES,
        TOXIC_SOURCE_TITLE,
    )

    for role, report in reports(out).items():
        findings = report["findings"]
        copyright_ = findings["copyright"]
        assert copyright_["flagged"] >= 0.5 * copyright_["probes"], role
        right_work = 0
        for item in copyright_["flagged_items"]:
            top = item["top_source"]
            assert top is not None and top["title"] in PROPRIETARY_TITLES, (role, item)
            assert top["data_class"] == "proprietary" and top["license"]
            right_work += top["title"] == item["reference_title"]
        # Attribution names the very work that was regurgitated for most flagged items.
        assert right_work >= 0.75 * len(copyright_["flagged_items"]), (role, right_work)
        toxicity = findings["toxicity"]
        assert toxicity["toxic"] >= 1, role
        assert toxicity["top_sources"][0]["title"] == TOXIC_SOURCE_TITLE, role
        if role == "regulator":
            bias = findings["bias"]
            assert bias["stereotype_rate"] > 0.5
            assert bias["top_sources"][0]["title"] == OPED_SOURCE_TITLE
