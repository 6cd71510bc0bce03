"""GetPolicy answers carry the index's snapshot history, signed; a damaged one is not served."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.unit.test_service_evaluation as lab_fixture
from auditor_client.wire.snapshots import read_snapshots
from auditor_server.attribution.snapshots import append_snapshot
from tests.unit.wire.test_snapshots import _manifest


@pytest.fixture
def opened() -> Iterator[list[lab_fixture.Lab]]:
    labs: list[lab_fixture.Lab] = []
    yield labs
    for lab in labs:
        lab.service.close()


def test_get_policy_carries_the_checked_history(
    opened: list[lab_fixture.Lab],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old, new = _manifest("sha256:" + "01" * 32, 3), _manifest("sha256:" + "02" * 32, 1)
    monkeypatch.setattr(lab_fixture, "SNAPSHOT", new["snapshot_id"])  # the index serving
    lab = lab_fixture._open(tmp_path)
    opened.append(lab)
    assert len(lab.get_policy().body.policy.snapshots) == 0  # an index with no history
    index = tmp_path / "index"
    append_snapshot(index, old, change="build")
    append_snapshot(index, new, change="remove", records_removed=2, removed_ids_sha256="sha256:x")
    lab.service.reload_policy()  # SIGHUP reads the history again
    answer = lab.get_policy()
    history = answer.body.policy.snapshots
    assert [s.snapshot_id for s in history] == [old["snapshot_id"], new["snapshot_id"]]
    assert [s.change for s in history] == ["build", "remove"]
    assert history[1].records_removed == 2
    checked = read_snapshots(history, snapshot_id=answer.body.snapshot_id)  # as the client does
    assert checked[0].commitments["corpus_manifest_hash"] == "sha256:" + "01" * 32

    # A history that does not end at the serving snapshot is not served (logged).
    append_snapshot(index, _manifest("sha256:" + "03" * 32, 1), change="remove")
    with caplog.at_level(logging.ERROR, logger="auditor_server.service"):
        lab.service.reload_policy()
    assert "ends at" in caplog.text
    assert len(lab.get_policy().body.policy.snapshots) == 0

    # Nor is a damaged one.
    path = index / "snapshots.json"
    doc = json.loads(path.read_text())
    doc["snapshots"] = doc["snapshots"][:2]
    doc["snapshots"][0]["commitments"]["modules"] = ["forged"]
    path.write_text(json.dumps(doc))
    with caplog.at_level(logging.ERROR, logger="auditor_server.service"):
        lab.service.reload_policy()
    assert "does not hash to its commitments" in caplog.text
    assert len(lab.get_policy().body.policy.snapshots) == 0
