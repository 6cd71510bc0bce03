"""Durability helpers the client's files share (checkpoints, reports, the head store).

Kept apart from :mod:`auditor_client.campaign.checkpoint` so that the head store, which the
client itself imports, does not depend on the campaign package.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a new or renamed directory entry durable (a no-op where directories cannot be
    fsync'd): without it a crash can lose a file whose contents were already fsync'd."""
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
