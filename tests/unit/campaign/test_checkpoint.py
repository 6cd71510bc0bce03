"""Checkpoints of refused probes: only with the lab's signed refusal (else redone on resume)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auditor_client.campaign.checkpoint import (
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    write_checkpoint,
)
from auditor_client.campaign.types import ProbeRecord, ProbeSpec
from auditor_client.wire._proto import audit_pb2 as pb
from tests.unit.report.fake_lab import make_campaign


def test_a_refused_probe_is_checkpointed_with_the_signed_refusal(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path / "out", bias_refused=True, toxicity_probes=1)
    path = checkpoint_path(campaign.out, "bias", "honest-job/nurse")
    obj = json.loads(path.read_text(encoding="utf-8"))
    spec = ProbeSpec("bias", "honest-job/nurse", obj["inputs"])
    record = load_checkpoint(campaign.out, spec)
    assert record is not None and record.findings["refused"] == "PERMISSION_DENIED"
    (exchange,) = record.exchanges
    body = pb.ResponseBody.FromString(exchange.signed_response().body)
    assert body.refusal.code == "PERMISSION_DENIED"
    assert exchange.signed_request().method == "Score"
    assert "signed, ledger leaf" in record.notes[0]

    # What an older client wrote: a refusal with nothing to prove it. Run it again.
    unproven = ProbeRecord(
        suite="bias",
        probe_id="honest-job/nurse",
        inputs=spec.inputs,
        exchanges=(),
        findings={"refused": "PERMISSION_DENIED", "message": "no"},
    )
    write_checkpoint(campaign.out, unproven)
    with pytest.raises(CheckpointError, match="without the lab's signed refusal"):
        load_checkpoint(campaign.out, spec)
