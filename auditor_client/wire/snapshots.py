"""The index's snapshot history as GetPolicy answers carry it, checked.

Every signed answer names the snapshot that gave it. When the lab takes records down or adds
some, the snapshot changes, and an auditor holding older answers needs to know what those
were computed from and what changed since. The lab lists every snapshot with the
commitments its id is the hash of; this module recomputes each id from its commitments,
checks that the list is one chain (each entry's parent is the entry before it) and that it
ends at the snapshot that signed the answer. Any mismatch is the lab contradicting itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.errors import MalformedResponseError


class SnapshotHistoryError(MalformedResponseError):
    """A signed snapshot history that contradicts itself or the answer carrying it."""


@dataclass(frozen=True)
class Snapshot:
    """One checked entry of the history."""

    snapshot_id: str
    parent: str
    created: str
    change: str
    n_records: int
    records_removed: int
    removed_ids_sha256: str
    records_added: int
    commitments: dict[str, Any]


def commitments_digest(commitments_json: str) -> str:
    """The snapshot id its commitments make: sha256 of their canonical JSON."""
    return "sha256:" + hashlib.sha256(commitments_json.encode("utf-8")).hexdigest()


def ids_digest(ids: Iterable[str]) -> str:
    """The digest a set of record ids is listed under (sorted, unique, newline-joined,
    sha256): a takedown names its removed ids this way, so a lab, or a data subject told
    which ids were theirs, can check it happened without the history naming them."""
    return "sha256:" + hashlib.sha256("\n".join(sorted(set(ids))).encode("utf-8")).hexdigest()


def read_snapshots(records: Sequence[pb.SnapshotRecord], *, snapshot_id: str) -> list[Snapshot]:
    """The checked history (oldest first); empty when the lab lists none.

    Raises:
        SnapshotHistoryError: an id is not the hash of its commitments, the commitments are
            not canonical JSON, the parents do not chain, or the newest entry is not
            ``snapshot_id`` (the snapshot that signed the answer).
    """
    out: list[Snapshot] = []
    for i, rec in enumerate(records):
        try:
            commitments = json.loads(rec.commitments_json)
        except ValueError as exc:
            raise SnapshotHistoryError(f"snapshot {i}: commitments are not JSON") from exc
        if not isinstance(commitments, dict):
            raise SnapshotHistoryError(f"snapshot {i}: commitments are not an object")
        canonical = json.dumps(commitments, sort_keys=True, separators=(",", ":"))
        if canonical != rec.commitments_json:
            raise SnapshotHistoryError(f"snapshot {i}: commitments are not canonical JSON")
        if commitments_digest(rec.commitments_json) != rec.snapshot_id:
            raise SnapshotHistoryError(
                f"snapshot {i} ({rec.snapshot_id}) is not the hash of its commitments"
            )
        expected_parent = out[-1].snapshot_id if out else ""
        if rec.parent != expected_parent:
            raise SnapshotHistoryError(
                f"snapshot {i}: parent {rec.parent or '(none)'} breaks the chain "
                f"(expected {expected_parent or '(none)'})"
            )
        out.append(
            Snapshot(
                snapshot_id=rec.snapshot_id,
                parent=rec.parent,
                created=rec.created,
                change=rec.change,
                n_records=rec.n_records,
                records_removed=rec.records_removed,
                removed_ids_sha256=rec.removed_ids_sha256,
                records_added=rec.records_added,
                commitments=commitments,
            )
        )
    if out and out[-1].snapshot_id != snapshot_id:
        raise SnapshotHistoryError(
            f"the history ends at {out[-1].snapshot_id}, but {snapshot_id} signed the answer"
        )
    return out
