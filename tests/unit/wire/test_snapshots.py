"""The snapshot history a GetPolicy answer carries: checked, or refused, by the client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.snapshots import (
    SnapshotHistoryError,
    commitments_digest,
    ids_digest,
    read_snapshots,
)
from auditor_server.attribution.snapshots import append_snapshot, as_wire, read_history
from auditor_server.errors import IntegrityError
from auditor_server.fsutil import sha256_json


def _manifest(corpus: str, n_records: int) -> dict[str, Any]:
    identity = {
        "model_hash": "sha256:" + "aa" * 32,
        "tokenizer_hash": "sha256:" + "bb" * 32,
        "corpus_manifest_hash": corpus,
        "feature_config": {"proj_in": 4},
        "modules": ["h.0.attn.c_attn"],
        "index_config": {"index": "exact"},
        "preconditioner_sha256": "sha256:" + "cc" * 32,
    }
    return {**identity, "snapshot_id": sha256_json(identity), "n_records": n_records, "n_rows": 9}


def _history(tmp_path: Path) -> list[pb.SnapshotRecord]:
    first, second = _manifest("sha256:" + "01" * 32, 10), _manifest("sha256:" + "02" * 32, 8)
    append_snapshot(tmp_path, first, change="build")
    append_snapshot(tmp_path, first, change="build")  # the same snapshot again: no entry
    append_snapshot(
        tmp_path,
        second,
        change="remove",
        records_removed=2,
        removed_ids_sha256=ids_digest(["b", "a"]),
    )
    return as_wire(read_history(tmp_path))


def test_a_lab_history_checks_out_and_chains(tmp_path: Path) -> None:
    records = _history(tmp_path)
    history = read_snapshots(records, snapshot_id=records[-1].snapshot_id)
    assert [s.change for s in history] == ["build", "remove"]
    assert history[1].parent == history[0].snapshot_id
    assert history[1].removed_ids_sha256 == ids_digest(["a", "b", "a"])
    assert commitments_digest(records[0].commitments_json) == history[0].snapshot_id
    assert read_snapshots([], snapshot_id="sha256:x") == []


def _tampered(records: list[pb.SnapshotRecord], index: int, **changes: Any) -> list[Any]:
    out = [pb.SnapshotRecord() for _ in records]
    for o, r in zip(out, records, strict=True):
        o.CopyFrom(r)
    for name, value in changes.items():
        setattr(out[index], name, value)
    return out


def test_a_history_that_contradicts_itself_is_refused(tmp_path: Path) -> None:
    records = _history(tmp_path)
    last = records[-1].snapshot_id
    commitments = json.loads(records[0].commitments_json)
    commitments["corpus_manifest_hash"] = "sha256:" + "ff" * 32  # claim another corpus
    forged = json.dumps(commitments, sort_keys=True, separators=(",", ":"))
    cases = {
        "not the hash of its commitments": _tampered(records, 0, commitments_json=forged),
        "not canonical": _tampered(
            records, 0, commitments_json=json.dumps(json.loads(records[0].commitments_json))
        ),
        "breaks the chain": _tampered(records, 1, parent="sha256:" + "00" * 32),
        "not JSON": _tampered(records, 0, commitments_json="{"),
        "not an object": _tampered(records, 0, commitments_json="[]"),
    }
    for message, bad in cases.items():
        with pytest.raises(SnapshotHistoryError, match=message):
            read_snapshots(bad, snapshot_id=last)
    with pytest.raises(SnapshotHistoryError, match="signed the answer"):
        read_snapshots(records, snapshot_id=records[0].snapshot_id)  # a history cut short


def test_the_lab_refuses_its_own_damaged_history(tmp_path: Path) -> None:
    _history(tmp_path)
    path = tmp_path / "snapshots.json"
    doc = json.loads(path.read_text())
    doc["snapshots"][0]["commitments"]["modules"] = []
    path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="does not hash to its commitments"):
        read_history(tmp_path)
    path.write_text("[]")
    with pytest.raises(IntegrityError, match="not a snapshot history"):
        read_history(tmp_path)
    with pytest.raises(ValueError, match="unknown change"):
        append_snapshot(tmp_path / "new", _manifest("sha256:" + "03" * 32, 1), change="edit")
