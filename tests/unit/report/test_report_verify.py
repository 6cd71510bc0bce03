"""Offline report verification: a real report verifies; every kind of edit is caught and named.

The report is built by the real runner and suites against ``fake_lab`` (real Ed25519 keys,
a real RFC 9162 log), so each test edits real signed bytes, not mocks. The forgeries a
hostile reviewer found (edits that recompute what they touch) are in
``test_report_forgeries.py``.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auditor_client.keys import encode_public_key
from auditor_client.report.errors import ReportVerificationError
from auditor_client.report.verify import verify_report, verify_report_data
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.errors import WireVerificationError
from tests.unit.report.fake_lab import POLICY_B, Campaign, FakeLab, make_campaign, newer_head


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Campaign, dict[str, Any]]:
    campaign = make_campaign(tmp_path_factory.mktemp("campaign") / "out", batch=True)
    return campaign, json.loads(campaign.report.read_text(encoding="utf-8"))


def _verify(campaign: Campaign, report: dict[str, Any], **kw: Any) -> Any:
    return verify_report_data(
        report, lab_public_key=campaign.lab.lab_public, suites=campaign.suites, **kw
    )


def _fails(
    built: tuple[Campaign, dict[str, Any]], edit: Callable[[dict[str, Any]], None], entry: str
) -> ReportVerificationError:
    campaign, report = built
    report = copy.deepcopy(report)
    edit(report)
    with pytest.raises(ReportVerificationError) as info:
        _verify(campaign, report)
    assert info.value.entry.startswith(entry), str(info.value)
    return info.value


def _flip(text: str, pos: int) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[pos] ^= 0x01
    return base64.b64encode(bytes(raw)).decode("ascii")


def _index(report: dict[str, Any], suite: str, probe_id: str) -> int:
    return next(
        i
        for i, p in enumerate(report["probes"])
        if (p["suite"], p["probe_id"]) == (suite, probe_id)
    )


def test_a_real_report_verifies(built: tuple[Campaign, dict[str, Any]]) -> None:
    campaign, report = built
    assert report["verification"]["status"] == "verified"
    summary = verify_report(
        campaign.report, lab_public_key=campaign.lab.lab_public, suites=campaign.suites
    )
    probe_answers = sum(len(p["exchanges"]) for p in report["probes"])
    proofs = len(report["ledger"]["consistency"])
    assert summary.answers == 1 + probe_answers + 1 + proofs
    assert summary.probes == len(report["probes"])
    assert summary.policy_hashes == (report["lab"]["policy_hash"],)
    assert "report verified" in summary.line()
    assert issubclass(ReportVerificationError, WireVerificationError)


def _regions(text: str) -> dict[str, list[int]]:
    """Byte positions inside each part of a serialized SignedResponse."""
    raw = base64.b64decode(text)
    resp = pb.SignedResponse.FromString(raw)
    head = resp.receipt.tree_head

    def at(sub: bytes) -> list[int]:
        start = raw.find(sub)
        assert start >= 0
        return [start, start + len(sub) // 2, start + len(sub) - 1]

    regions = {
        "body": at(resp.body),
        "signature": at(resp.signature),
        "lab_key_id": at(resp.lab_key_id.encode()),
        "tree_head_root": at(head.root_hash),
        "tree_head_signature": at(head.signature),
        "everywhere": list(range(0, len(raw), max(1, len(raw) // 16))),
    }
    if resp.receipt.inclusion_path:
        regions["inclusion_path"] = at(resp.receipt.inclusion_path[-1])
    return regions


def test_flipping_any_byte_of_a_probe_exchange_names_it(
    built: tuple[Campaign, dict[str, Any]],
) -> None:
    _, report = built
    i = _index(report, "copyright", "ref-02")
    name = f"probes[{i}] (copyright/ref-02) exchange 1"
    exchange = report["probes"][i]["exchanges"][1]
    request_len = len(base64.b64decode(exchange["request"]))
    checked = 0
    for pos in range(0, request_len, max(1, request_len // 12)):

        def edit(r: dict[str, Any], pos: int = pos) -> None:
            ex = r["probes"][i]["exchanges"][1]
            ex["request"] = _flip(ex["request"], pos)

        _fails(built, edit, name)
        checked += 1
    for region, positions in _regions(exchange["response"]).items():
        for pos in positions:

            def edit(r: dict[str, Any], pos: int = pos) -> None:
                ex = r["probes"][i]["exchanges"][1]
                ex["response"] = _flip(ex["response"], pos)

            err = _fails(built, edit, name)
            assert region and err.detail
            checked += 1
    assert checked > 30


def test_flipped_signature_says_which_signature(built: tuple[Campaign, dict[str, Any]]) -> None:
    _, report = built
    i = _index(report, "toxicity", "tox-01")
    ex = report["probes"][i]["exchanges"][0]
    resp = pb.SignedResponse.FromString(base64.b64decode(ex["response"]))
    pos = base64.b64decode(ex["response"]).find(resp.signature) + 5

    def edit(r: dict[str, Any]) -> None:
        e = r["probes"][i]["exchanges"][0]
        e["response"] = _flip(e["response"], pos)

    err = _fails(built, edit, f"probes[{i}] (toxicity/tox-01) exchange 0")
    assert "response signature does not verify" in err.detail

    req = pb.SignedRequest.FromString(base64.b64decode(ex["request"]))
    rpos = base64.b64decode(ex["request"]).find(req.signature) + 3

    def edit_req(r: dict[str, Any]) -> None:
        e = r["probes"][i]["exchanges"][0]
        e["request"] = _flip(e["request"], rpos)

    err = _fails(built, edit_req, f"probes[{i}] (toxicity/tox-01) exchange 0")
    assert "request signature does not verify" in err.detail


@pytest.mark.parametrize("where", ["campaign", "final_head", "consistency"])
def test_flipping_ledger_and_campaign_exchanges_names_them(
    built: tuple[Campaign, dict[str, Any]], where: str
) -> None:
    _, report = built

    def target(r: dict[str, Any]) -> dict[str, str]:
        if where == "campaign":
            ex: dict[str, str] = r["campaign"]["lab"]["exchange"]
        elif where == "final_head":
            ex = r["ledger"]["final_head"]
        else:
            ex = r["ledger"]["consistency"][2]["exchange"]
        return ex

    entry = {
        "campaign": "campaign.lab.exchange",
        "final_head": "ledger.final_head",
        "consistency": f"ledger.consistency[2] (from size "
        f"{report['ledger']['consistency'][2]['from_size']})",
    }[where]
    for part in ("request", "response"):
        size = len(base64.b64decode(target(report)[part]))
        for pos in range(0, size, max(1, size // 10)):

            def edit(r: dict[str, Any], part: str = part, pos: int = pos) -> None:
                ex = target(r)
                ex[part] = _flip(ex[part], pos)

            _fails(built, edit, entry)


def test_a_consistency_proof_with_a_wrong_path_is_caught(
    built: tuple[Campaign, dict[str, Any]],
) -> None:
    """Re-signing is impossible, so a bad path can only come from the lab: still caught."""
    campaign, report = built
    lab: FakeLab = campaign.lab
    k = 1
    item = report["ledger"]["consistency"][k]
    first = item["from_size"]
    final = report["ledger"]["final_size"]
    # The lab answers (signed, logged) with a proof for the wrong first size's path.
    bad_path = [bytes(32)] * 2
    exchange = lab.call(
        "GetConsistencyProof",
        pb.GetConsistencyProofRequest(first_size=first, second_size=final),
        "consistency_proof",
        pb.ConsistencyProofResponse(
            first_size=first, second_size=final, path=bad_path, tree_head=lab.head(final)
        ),
    )

    def edit(r: dict[str, Any]) -> None:
        r["ledger"]["consistency"][k]["exchange"] = exchange.to_json()

    err = _fails(built, edit, f"ledger.consistency[{k}] (from size {first})")
    assert "consistency path" in err.detail


def test_editing_a_finding_names_the_field(built: tuple[Campaign, dict[str, Any]]) -> None:
    _, report = built
    i = _index(report, "copyright", "ref-01")

    def edit(r: dict[str, Any]) -> None:
        r["probes"][i]["findings"]["lcs_chars"] += 1

    err = _fails(built, edit, f"probes[{i}] (copyright/ref-01) findings.lcs_chars")
    assert re.search(r"stored \d+, recomputed \d+", err.detail)


def test_editing_a_summary_names_the_field(built: tuple[Campaign, dict[str, Any]]) -> None:
    def edit(r: dict[str, Any]) -> None:
        r["findings"]["toxicity"]["toxicity_rate"] = 0.99

    err = _fails(built, edit, "findings.toxicity.toxicity_rate")
    assert err.detail.startswith("stored 0.99, recomputed")

    def edit_nested(r: dict[str, Any]) -> None:
        r["findings"]["copyright"]["top_sources"][0]["publisher"] = "Someone Else"

    _fails(built, edit_nested, "findings.copyright.top_sources[0].publisher")


def test_dropping_a_probes_exchange_is_caught(built: tuple[Campaign, dict[str, Any]]) -> None:
    _, report = built
    i = _index(report, "copyright", "ref-03")

    def edit(r: dict[str, Any]) -> None:
        del r["probes"][i]["exchanges"][0]

    err = _fails(built, edit, f"probes[{i}] (copyright/ref-03) exchange 0")
    assert "expected one of ['Generate']" in err.detail

    def drop_last(r: dict[str, Any]) -> None:
        del r["probes"][i]["exchanges"][1]

    err = _fails(built, drop_last, f"probes[{i}] (copyright/ref-03) exchange 1")
    assert "missing: the probe's inputs imply a Attribute request" in err.detail

    def drop_all(r: dict[str, Any]) -> None:
        r["probes"][i]["exchanges"] = []

    _fails(built, drop_all, f"probes[{i}] (copyright/ref-03)")


def test_swapping_two_probes_exchanges_is_caught(built: tuple[Campaign, dict[str, Any]]) -> None:
    _, report = built
    a = _index(report, "copyright", "ref-00")
    b = _index(report, "copyright", "ref-01")

    def edit(r: dict[str, Any]) -> None:
        pa, pb_ = r["probes"][a], r["probes"][b]
        pa["exchanges"], pb_["exchanges"] = pb_["exchanges"], pa["exchanges"]

    err = _fails(built, edit, f"probes[{a}] (copyright/ref-00) exchange 0")
    assert "signed Generate request has prompt" in err.detail

    def reorder(r: dict[str, Any]) -> None:
        r["probes"][a]["exchanges"].reverse()

    err = _fails(built, reorder, f"probes[{a}] (copyright/ref-00) exchange 0")
    assert "method is 'Attribute'" in err.detail

    def duplicate(r: dict[str, Any]) -> None:
        r["probes"][b]["exchanges"] = copy.deepcopy(r["probes"][a]["exchanges"])

    err = _fails(built, duplicate, f"probes[{b}] (copyright/ref-01) exchange 0")
    assert "also the receipt of" in err.detail


def test_batch_items_are_checked_by_position(built: tuple[Campaign, dict[str, Any]]) -> None:
    _, report = built
    i = _index(report, "privacy", "batch-00")
    assert len(report["probes"][i]["exchanges"]) == 2

    def edit(r: dict[str, Any]) -> None:
        r["probes"][i]["exchanges"].reverse()

    err = _fails(built, edit, f"probes[{i}] (privacy/batch-00) exchange 0")
    assert "batch item" in err.detail


def test_changing_the_auditor_key_is_caught(built: tuple[Campaign, dict[str, Any]]) -> None:
    other = encode_public_key(Ed25519PrivateKey.generate().public_key())

    def both(r: dict[str, Any]) -> None:
        r["auditor"]["public_key"] = other
        r["campaign"]["auditor"]["public_key"] = other

    err = _fails(built, both, "campaign.lab.exchange")
    assert "request signed with key id" in err.detail

    def one(r: dict[str, Any]) -> None:
        r["auditor"]["public_key"] = other

    _fails(built, one, "auditor.public_key")


def test_lab_section_must_match_every_answer(built: tuple[Campaign, dict[str, Any]]) -> None:
    def snapshot(r: dict[str, Any]) -> None:
        r["lab"]["snapshot_id"] = r["campaign"]["lab"]["snapshot_id"] = "snap-other"

    err = _fails(built, snapshot, "campaign.lab.exchange")
    assert "snapshot_id" in err.detail

    def display(r: dict[str, Any]) -> None:
        r["campaign"]["sessions"][0]["lab"]["model_hash"] = "model-other"

    _fails(built, display, "campaign.sessions[0].lab.model_hash")


def test_another_lab_key_fails_at_the_first_answer(
    built: tuple[Campaign, dict[str, Any]],
) -> None:
    campaign, report = built
    other = encode_public_key(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(ReportVerificationError) as info:
        verify_report_data(report, lab_public_key=other, suites=campaign.suites)
    assert info.value.entry == "campaign.lab.exchange"
    assert "lab key id" in info.value.detail


def test_a_policy_change_must_be_listed(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path / "out", policy_change=True)
    report = json.loads(campaign.report.read_text(encoding="utf-8"))
    summary = _verify(campaign, report)
    assert len(summary.policy_hashes) == 2 and POLICY_B in summary.policy_hashes
    assert report["lab"]["policy_hashes"][-1] == POLICY_B
    report["lab"]["policy_hashes"] = [report["lab"]["policy_hash"]]
    with pytest.raises(ReportVerificationError) as info:
        _verify(campaign, report)
    assert "not listed in lab.policy_hashes" in info.value.detail
    assert info.value.entry.startswith("probes[")


def test_newer_head_extends_the_report(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path / "out", professions=1, toxicity_probes=1)
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(newer_head(campaign)), encoding="utf-8")
    summary = verify_report(
        campaign.report,
        lab_public_key=campaign.lab.lab_public,
        newer_head=newer,
        suites=campaign.suites,
    )
    assert summary.newer_tree_size is not None
    assert summary.newer_tree_size > summary.final_tree_size
    assert "newer head" in summary.line()


def test_newer_head_from_another_lab_key_fails(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path / "out", professions=1, toxicity_probes=1)
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(newer_head(campaign, lab=FakeLab())), encoding="utf-8")
    with pytest.raises(ReportVerificationError) as info:
        verify_report(
            campaign.report,
            lab_public_key=campaign.lab.lab_public,
            newer_head=newer,
            suites=campaign.suites,
        )
    assert info.value.entry == "newer_head"
    assert "lab key id" in info.value.detail


def test_verification_time_of_a_report_with_about_100_answers(tmp_path: Path) -> None:
    campaign = make_campaign(
        tmp_path / "out", copyright_probes=20, bias_templates=3, professions=3, toxicity_probes=25
    )
    report = json.loads(campaign.report.read_text(encoding="utf-8"))
    probe_answers = sum(len(p["exchanges"]) for p in report["probes"])
    started = time.perf_counter()
    summary = verify_report(
        campaign.report, lab_public_key=campaign.lab.lab_public, suites=campaign.suites
    )
    elapsed = time.perf_counter() - started
    print(
        f"\nverified a report of {probe_answers} probe answers ({summary.answers} signed answers "
        f"with the ledger's {len(report['ledger']['consistency'])} consistency proofs) "
        f"in {elapsed * 1000:.1f} ms"
    )
    assert 90 <= probe_answers <= 110
    assert elapsed < 10.0
