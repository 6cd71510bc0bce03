"""Crash-safe file writes: write a temporary file in the target's directory, fsync, rename.

``os.replace`` is atomic on POSIX within one file system, so a reader (or a resumed run after
``kill -9``) sees either the old file or the complete new one, never a torn write.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success fsync it and rename onto target.

    On an exception the temporary file is removed and ``target`` is untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(target: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Atomically create ``target`` with the bytes ``write`` puts into a binary file handle."""
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        write(fh)


def atomic_write_json(target: Path, data: Any) -> None:
    """Atomically write ``data`` as indented, key-sorted JSON."""
    payload = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    atomic_write(target, lambda fh: fh.write(payload))


def fsync_dir(directory: Path) -> None:
    """Persist a rename: fsync the directory entry (best effort where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: Path, *, chunk: int = 1 << 20) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def sha256_json(data: Any) -> str:
    """``sha256:<hex>`` of the canonical (sorted, compact) JSON encoding of ``data``."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return f"sha256:{hashlib.sha256(blob).hexdigest()}"
