"""On-disk gradient store: resumable shards of fp16 features with checksums.

A shard holds the features of a fixed, contiguous range of rows, so the work is the same
however many processes share it and whenever it is interrupted. A shard counts as done only
when its data file *and* its sidecar (row range + sha256) are in place and agree; both are
written atomically, the sidecar last. A run killed at any point therefore leaves only
complete shards and stray temporaries, and a rerun computes exactly the missing ones.

Features are stored per row and per module as a unit vector in fp16 plus its float32 norm:
module blocks differ by orders of magnitude in scale, and fp16 alone would flush small
blocks to zero.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from auditor_server.errors import IntegrityError
from auditor_server.fsutil import atomic_write, atomic_write_json, sha256_file

SHARD_DIR = "shards"


@dataclass(frozen=True)
class ShardSpec:
    """Which rows a shard covers: ``[start, stop)``."""

    index: int
    start: int
    stop: int

    @property
    def stem(self) -> str:
        return f"shard-{self.index:05d}"


def plan_shards(n_rows: int, shard_rows: int) -> list[ShardSpec]:
    """Split ``n_rows`` rows into consecutive shards of ``shard_rows`` (the last may be short)."""
    return [
        ShardSpec(index=i, start=start, stop=min(start + shard_rows, n_rows))
        for i, start in enumerate(range(0, n_rows, shard_rows))
    ]


def encode_features(raw: NDArray[np.float32]) -> tuple[NDArray[np.float16], NDArray[np.float32]]:
    """Split ``(n, modules, dims)`` features into fp16 unit blocks and float32 block norms."""
    norms = np.linalg.norm(raw, axis=2).astype(np.float32)
    safe = np.where(norms > 0, norms, 1.0)[..., None]
    return (raw / safe).astype(np.float16), norms


def decode_features(units: NDArray[np.float16], norms: NDArray[np.float32]) -> NDArray[np.float32]:
    """Inverse of :func:`encode_features` (up to fp16 rounding of the unit blocks)."""
    return units.astype(np.float32) * norms[..., None]


class ShardStore:
    """Reads and writes the shards of one index directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / SHARD_DIR

    def data_path(self, spec: ShardSpec) -> Path:
        return self.dir / f"{spec.stem}.npz"

    def sidecar_path(self, spec: ShardSpec) -> Path:
        return self.dir / f"{spec.stem}.json"

    def write(self, spec: ShardSpec, raw: NDArray[np.float32]) -> str:
        """Persist the raw features of ``spec``'s rows; returns the data file's checksum."""
        if raw.shape[0] != spec.stop - spec.start:
            raise ValueError(
                f"{spec.stem}: got {raw.shape[0]} rows for range {spec.start}:{spec.stop}"
            )
        units, norms = encode_features(raw)
        return self.write_encoded(spec, units, norms)

    def write_encoded(
        self, spec: ShardSpec, units: NDArray[np.float16], norms: NDArray[np.float32]
    ) -> str:
        """Persist rows already in stored form (a takedown moves rows between shards without
        re-rounding them); returns the data file's checksum."""
        if units.shape[0] != spec.stop - spec.start or norms.shape[0] != units.shape[0]:
            raise ValueError(
                f"{spec.stem}: got {units.shape[0]} rows for range {spec.start}:{spec.stop}"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        data = self.data_path(spec)
        atomic_write(data, lambda fh: np.savez(fh, units=units, norms=norms))
        checksum = sha256_file(data)
        atomic_write_json(
            self.sidecar_path(spec),
            {"start": spec.start, "stop": spec.stop, "sha256": checksum},
        )
        return checksum

    def is_done(self, spec: ShardSpec) -> bool:
        """True when the shard is complete and matches its sidecar (checksum included)."""
        sidecar, data = self.sidecar_path(spec), self.data_path(spec)
        if not (sidecar.exists() and data.exists()):
            return False
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            return False
        return bool(
            meta.get("start") == spec.start
            and meta.get("stop") == spec.stop
            and meta.get("sha256") == sha256_file(data)
        )

    def checksum(self, spec: ShardSpec) -> str:
        """The recorded checksum of a finished shard."""
        return str(json.loads(self.sidecar_path(spec).read_text())["sha256"])

    def read(self, spec: ShardSpec, *, verify: bool = True) -> NDArray[np.float32]:
        """Raw float32 features of a shard's rows.

        Raises:
            IntegrityError: if the shard is missing, truncated or fails its checksum.
        """
        return decode_features(*self.read_encoded(spec, verify=verify))

    def read_encoded(
        self, spec: ShardSpec, *, verify: bool = True
    ) -> tuple[NDArray[np.float16], NDArray[np.float32]]:
        """A shard's rows in stored form: fp16 unit blocks and float32 block norms.

        Raises:
            IntegrityError: if the shard is missing, truncated or fails its checksum.
        """
        data = self.data_path(spec)
        if verify and not self.is_done(spec):
            raise IntegrityError(f"{data}: shard missing or failed its checksum; rerun the build")
        try:
            with np.load(data) as npz:
                units, norms = npz["units"], npz["norms"]
        except (OSError, ValueError, KeyError) as exc:
            raise IntegrityError(f"{data}: unreadable shard ({exc})") from exc
        if units.shape[0] != spec.stop - spec.start or norms.shape[0] != units.shape[0]:
            raise IntegrityError(
                f"{data}: holds {units.shape[0]} rows, expected {spec.stop - spec.start}"
            )
        return units, norms

    def read_all(self, specs: list[ShardSpec]) -> NDArray[np.float32]:
        """All rows, in row order, as one ``(n, modules, dims)`` array."""
        return np.concatenate([self.read(s) for s in specs], axis=0)

    def remove_stale_temporaries(self) -> int:
        """Delete temp files left by a killed writer; returns how many were removed."""
        if not self.dir.exists():
            return 0
        stale = list(self.dir.glob(".*.tmp"))
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)
