"""Writing key and certificate files: secrets 0600, never half-written, never clobbered.

Private to :mod:`auditor_server.security`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from auditor_server.fsutil import atomic_write, fsync_dir


def write_secret(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Create ``path`` with mode 0600 holding ``data``, atomically.

    The bytes go to a 0600 temporary file in the same directory (``mkstemp``), are fsynced,
    and are then *linked* into place when not overwriting, which fails if the target
    appeared meanwhile: an existing key is never replaced by a race, and a crash leaves
    either no file or the whole file.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
        os.chmod(path, 0o600)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_public(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Atomically write a non-secret file (public key, certificate).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    if path.exists() and not overwrite:
        raise FileExistsError(path)
    atomic_write(path, lambda fh: fh.write(data))
    os.chmod(path, 0o644)
