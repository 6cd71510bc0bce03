"""Reading the JSON manifest that marks an artefact directory (guard, verbatim index) finished.

Each such directory is written files first and manifest last, so a missing manifest means
"never finished" and is a configuration problem the operator fixes by rebuilding, while a
manifest that exists but does not parse means the directory was damaged after the fact. Both
readers used to spell this out separately; one function keeps the two cases, and the
message that names the rebuilding command, the same everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from auditor_server.errors import ConfigError, IntegrityError


def read_manifest(path: Path, *, fmt: str, what: str, rebuild: str) -> dict[str, Any]:
    """The JSON object at ``path``, which must declare ``"format": fmt``.

    Args:
        path: the manifest file.
        fmt: the format tag this reader understands.
        what: how the directory is named in messages ("guard", "verbatim index").
        rebuild: the command that writes a fresh one, quoted in the message.

    Raises:
        ConfigError: no manifest (the directory was never finished) or another format.
        IntegrityError: the manifest exists but cannot be read or parsed.
    """
    if not path.is_file():
        raise ConfigError(f"{path.parent} is not a finished {what} (no {path.name})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ConfigError(
            f"{path}: not a {fmt} manifest (found {found!r}); rebuild it with {rebuild}"
        )
    return manifest
