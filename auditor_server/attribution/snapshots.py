"""The index's snapshot history: every snapshot it has served, with its commitments.

Why: a signed answer names the snapshot that gave it. After a takedown or an addition the
index has a new snapshot id, and an auditor holding last month's answers must still be able
to say which corpus, model and settings those answers came from, and what changed since.
Each entry lists the *commitments* the snapshot id is the hash of (so anyone can recompute
the id), when it was made, its parent and the change (build, reindex, removal, addition,
with the count and a digest of the removed ids, never the ids themselves). GetPolicy answers
carry the list, signed.

The file (``INDEX_DIR/snapshots.json``) only grows: entries are appended, never edited, and
it is rewritten atomically, so a crash leaves the old or the new list, never a torn one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.snapshots import ids_digest
from auditor_server.attribution import layout
from auditor_server.errors import IntegrityError
from auditor_server.fsutil import atomic_write_json, sha256_json

HISTORY_FORMAT = "auditor-sandbox-snapshots/v1"

IDENTITY_FIELDS = (
    "model_hash",
    "tokenizer_hash",
    "corpus_manifest_hash",
    "feature_config",
    "modules",
    "index_config",
    "preconditioner_sha256",
)
"""The manifest fields the snapshot id is the sha256 of (canonical JSON)."""

__all__ = ["append_snapshot", "as_wire", "ids_digest", "read_history", "snapshot_identity"]

CHANGES = ("build", "reindex", "remove", "add")


def snapshot_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """The commitments of a manifest's snapshot: ``sha256_json`` of this is its id."""
    return {name: manifest[name] for name in IDENTITY_FIELDS}


def as_wire(entries: Iterable[dict[str, Any]]) -> list[pb.SnapshotRecord]:
    """The entries as GetPolicy carries them (commitments as canonical JSON)."""
    return [
        pb.SnapshotRecord(
            snapshot_id=e["snapshot_id"],
            parent=e["parent"],
            created=e["created"],
            change=e["change"],
            n_records=e["n_records"],
            records_removed=e["records_removed"],
            removed_ids_sha256=e["removed_ids_sha256"],
            records_added=e["records_added"],
            commitments_json=json.dumps(e["commitments"], sort_keys=True, separators=(",", ":")),
        )
        for e in entries
    ]


def read_history(index_dir: Path) -> list[dict[str, Any]]:
    """The snapshot entries, oldest first (empty for an index built before the history).

    Raises:
        IntegrityError: the file is unreadable, of another format, or an entry's id is
            not the hash of its commitments.
    """
    path = index_dir / layout.SNAPSHOTS
    if not path.exists():
        return []
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{path}: unreadable snapshot history ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != HISTORY_FORMAT:
        raise IntegrityError(f"{path}: not a snapshot history of format {HISTORY_FORMAT}")
    entries = doc.get("snapshots")
    if not isinstance(entries, list):
        raise IntegrityError(f"{path}: 'snapshots' is not a list")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("commitments"), dict):
            raise IntegrityError(f"{path}: malformed entry")
        if sha256_json(entry["commitments"]) != entry.get("snapshot_id"):
            raise IntegrityError(
                f"{path}: snapshot {entry.get('snapshot_id')} does not hash to its commitments"
            )
    return entries


def append_snapshot(
    index_dir: Path,
    manifest: dict[str, Any],
    *,
    change: str,
    records_removed: int = 0,
    removed_ids_sha256: str = "",
    records_added: int = 0,
) -> dict[str, Any]:
    """Record the manifest's snapshot as the newest entry (no-op if it already is).

    Returns:
        The newest entry.
    """
    if change not in CHANGES:
        raise ValueError(f"unknown change {change!r}")
    entries = read_history(index_dir)
    if entries and entries[-1]["snapshot_id"] == manifest["snapshot_id"]:
        return entries[-1]
    entry = {
        "snapshot_id": manifest["snapshot_id"],
        "parent": entries[-1]["snapshot_id"] if entries else "",
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "change": change,
        "n_records": manifest["n_records"],
        "n_rows": manifest["n_rows"],
        "records_removed": records_removed,
        "removed_ids_sha256": removed_ids_sha256,
        "records_added": records_added,
        "commitments": snapshot_identity(manifest),
    }
    atomic_write_json(
        index_dir / layout.SNAPSHOTS,
        {"format": HISTORY_FORMAT, "snapshots": [*entries, entry]},
    )
    return entry
