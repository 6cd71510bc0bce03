"""Durable files of a campaign run: atomic JSON writes and per-probe checkpoints.

A run may be killed at any instant (SIGKILL, power loss), and ``--resume`` must then
neither redo nor lose a finished probe. So every file is written whole or not at all: to a
temporary file in the same directory, fsynced, then ``os.replace``-d over the target and the
directory fsynced. A checkpoint that exists is therefore complete, and one that does not
parse was damaged after the fact (it is reported and redone, never trusted).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Final

from auditor_client.campaign.types import ProbeRecord, ProbeSpec
from auditor_client.durable import fsync_dir
from auditor_client.wire._proto import audit_pb2 as pb

__all__ = [
    "PROBES_DIR",
    "CheckpointError",
    "atomic_write_bytes",
    "atomic_write_json",
    "checkpoint_name",
    "checkpoint_path",
    "load_checkpoint",
    "read_json",
    "write_checkpoint",
]

PROBES_DIR: Final = "probes"
"""Checkpoints live in ``OUT/probes/<suite>/``."""

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_MAX_STEM: Final = 96


class CheckpointError(Exception):
    """A checkpoint exists but cannot be used (unparseable, or for another probe)."""


def atomic_write_json(path: Path, obj: object) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path``, whole or not at all.

    Sorted keys and a fixed layout make the bytes a function of the value, so a file
    rewritten with the same content is byte-identical.

    Raises:
        OSError: The directory cannot be written.
        TypeError, ValueError: ``obj`` is not JSON-encodable.
    """
    data = (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` durably: whole or not at all, even across a crash.

    Raises:
        OSError: The directory cannot be written.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)



def read_json(path: Path) -> Any:
    """Parse a JSON file.

    Raises:
        CheckpointError: Unreadable, not UTF-8 or not JSON.
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def checkpoint_name(probe_id: str) -> str:
    """A file name for ``probe_id`` that is safe on any file system and never collides.

    Ids made only of ``A-Za-z0-9._-`` (and short) are used as they are, so files are easy
    to find by id; anything else is replaced and suffixed with a hash of the exact id, so
    two ids that sanitize alike still get different files. The record inside always holds
    the exact id, so no separate mapping is needed.
    """
    stem = _SAFE.sub("_", probe_id)[:_MAX_STEM]
    if stem.startswith("."):  # no hidden files, no "." or ".."
        stem = "_" + stem[1:]
    if stem != probe_id or not stem:
        digest = hashlib.sha256(probe_id.encode("utf-8")).hexdigest()[:16]
        stem = f"{stem}~{digest}"
    return stem + ".json"


def checkpoint_path(out_dir: Path, suite: str, probe_id: str) -> Path:
    """``OUT/probes/<suite>/<sanitized probe id>.json``."""
    return out_dir / PROBES_DIR / suite / checkpoint_name(probe_id)


def write_checkpoint(out_dir: Path, record: ProbeRecord) -> Path:
    """Atomically write a finished probe's record; returns its path."""
    path = checkpoint_path(out_dir, record.suite, record.probe_id)
    atomic_write_json(path, record.to_json())
    return path


def load_checkpoint(out_dir: Path, spec: ProbeSpec) -> ProbeRecord | None:
    """The finished record of ``spec``, or ``None`` if it has no checkpoint yet.

    Raises:
        CheckpointError: A checkpoint exists but does not parse, records another probe or
            other inputs, or records a refusal without the lab's signed refusal (what an
            older client wrote); the caller reports it and runs the probe again.
    """
    path = checkpoint_path(out_dir, spec.suite, spec.probe_id)
    if not path.exists():
        return None
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    try:
        record = ProbeRecord.from_json(obj)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a probe record ({exc!r})") from None
    last: pb.ResponseBody | None = None
    for n, exchange in enumerate(record.exchanges):
        try:
            exchange.signed_request()
            last = pb.ResponseBody.FromString(exchange.signed_response().body)
        except Exception as exc:  # base64 or protobuf decoding; both mean a damaged file
            raise CheckpointError(f"{path}: exchanges[{n}] does not decode ({exc})") from None
    if "refused" in record.findings and (last is None or not last.HasField("refusal")):
        raise CheckpointError(f"{path}: records a refusal without the lab's signed refusal")
    if (record.suite, record.probe_id) != (spec.suite, spec.probe_id):
        raise CheckpointError(
            f"{path}: records probe {record.suite}/{record.probe_id}, "
            f"expected {spec.suite}/{spec.probe_id}"
        )
    if json.dumps(record.inputs, sort_keys=True) != json.dumps(spec.inputs, sort_keys=True):
        raise CheckpointError(f"{path}: recorded inputs differ from the planned probe's")
    return record
