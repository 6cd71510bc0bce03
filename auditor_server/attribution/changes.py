"""``auditor-server remove`` and ``add``: change a built index's records without a rebuild.

**Removal.**
A takedown (an erasure request, a withdrawn licence, an expired contract) must leave no
trace of the records in what the lab serves: their text leaves the catalog, the guard and
the verbatim index; their rows leave the gradient shards, the vector file and the FAISS
index; and the preconditioner and quantizers, which every row shaped, are refitted without
them. Only the *other* records' stored gradients are reused, moved between shards in their
stored form (bit for bit), so the cost is reading and writing the store once plus the
refit, not a featurization. The result has a new snapshot id; the old one stays in the
snapshot history (:mod:`auditor_server.attribution.snapshots`) with its commitments, so
answers signed under it still say what they were computed from.

What a takedown cannot undo: the model's weights were trained on the records and still
carry what they learned (retrain or unlearn for that); answers already given are in the
auditors' hands and in the ledger; backups and copies of the index made before are the
lab's to purge.

**Addition.** New records are appended after the existing ones (their ordinals follow), only
their rows are featurized (with the index's own model, checked by hash, and feature
config), and only the shards they touch are written: the last, partial shard of the old
store is completed from its stored rows plus new ones. The refit and the derived files then
follow as for a removal. The model is the one the index was built with; records it was not
trained on are attributed with the gradients of a model that never saw them, which the
answers cannot tell apart, so add what the model was trained on.

Crash safety (both): the next snapshot's catalog, row table, plan and new shards are written
to ``INDEX_DIR/.takedown/`` and marked complete (``staged.json``) before anything in the
index changes. The commit then removes the manifest (the index is not openable while it is
half-switched), moves the staged files into place, deletes the removed data and rebuilds the
derived files; rerunning ``remove`` or ``add`` after a crash at any point finishes that
commit first.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from auditor_server.attribution import layout
from auditor_server.attribution.build import finished_index, model_dtype, publish_from_shards
from auditor_server.attribution.config import FeatureConfig, IndexConfig
from auditor_server.attribution.featurize import Featurizer
from auditor_server.attribution.snapshots import ids_digest
from auditor_server.attribution.spans import RowTable
from auditor_server.attribution.store import (
    SHARD_DIR,
    ShardSpec,
    ShardStore,
    encode_features,
    plan_shards,
)
from auditor_server.corpus.catalog import Catalog
from auditor_server.corpus.records import Record, read_corpus
from auditor_server.errors import ConfigError, InputError
from auditor_server.fsutil import atomic_write, atomic_write_json, fsync_dir
from auditor_server.model.loading import load_model

log = logging.getLogger(__name__)

STAGED = "staged.json"
"""Written last into the stage: the staged snapshot is complete and may be committed."""
OLD_SHARDS = ".shards-removed"


@dataclass(frozen=True)
class ChangeResult:
    """What a removal or an addition did."""

    snapshot_id: str
    parent_snapshot_id: str
    removed_ids_sha256: str
    records_removed: int
    rows_removed: int
    n_records: int
    n_rows: int
    records_added: int = 0
    rows_added: int = 0
    added_ids_sha256: str = ""


def read_ids(path: Path) -> set[str]:
    """Record ids from a file, one per line (blank lines and ``#`` comments skipped).

    Raises:
        InputError: the file is missing, unreadable, or names no id.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"id file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read id file {path}: {exc}") from None
    ids = {s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")}
    if not ids:
        raise InputError(f"{path} names no record id")
    return ids


def remove_records(index_dir: Path, ids: Collection[str]) -> ChangeResult:
    """Remove the records ``ids`` from the finished index in ``index_dir``.

    Raises:
        ConfigError: ``index_dir`` is not a finished index.
        InputError: an id is not in the index, no id is given, or every record would go
            (nothing is changed).
    """
    wanted = set(ids)
    resumed = _finish_interrupted(index_dir)
    if resumed is not None and resumed.removed_ids_sha256 == ids_digest(wanted):
        return resumed  # this very removal was interrupted, and is now done
    manifest, plan = finished_index(index_dir)
    if not wanted:
        raise InputError("no record id to remove")
    stage = index_dir / layout.TAKEDOWN_STAGE
    with Catalog.open(index_dir / layout.CATALOG) as catalog:
        all_ids = catalog.ids()
        unknown = wanted - set(all_ids)
        if unknown:
            raise InputError(f"{_listed(unknown, 'not in the index')}; nothing was removed")
        if len(wanted) == len(all_ids):
            raise InputError("that would remove every record; build a new index instead")
        removed = np.array([o for o, rid in enumerate(all_ids) if rid in wanted], dtype=np.int64)
        stage.mkdir()
        new_catalog = Catalog.create(stage / layout.CATALOG, _kept(iter(catalog), wanted))
        corpus_hash = new_catalog.manifest_hash
        new_catalog.close()
    with np.load(index_dir / layout.ROWS) as npz:
        rows = RowTable.from_arrays(dict(npz))
    keep = ~np.isin(rows.record, removed)
    new_rows = _renumbered(rows, keep, removed)
    shard_rows = FeatureConfig.from_dict(plan["feature_config"]).shard_rows
    _restage_shards(
        ShardStore(index_dir),
        plan_shards(len(rows), shard_rows),
        keep,
        ShardStore(stage),
        shard_rows,
    )
    _mark_staged(
        stage,
        new_rows,
        {**plan, "n_rows": len(new_rows), "corpus_manifest_hash": corpus_hash},
        {
            "parent": manifest["snapshot_id"],
            "index_config": manifest["index_config"],
            "model_dir": manifest["model_dir"],
            "records_removed": len(wanted),
            "removed_ids_sha256": ids_digest(wanted),
            "rows_removed": int((~keep).sum()),
        },
    )
    return _commit(index_dir)


def add_records(
    index_dir: Path,
    corpus_path: Path,
    *,
    device: str = "cpu",
    dtype: str = "float32",
) -> ChangeResult:
    """Append the records of ``corpus_path`` to the finished index in ``index_dir``.

    Only the new records' rows are featurized, with the index's own model and feature
    config; existing shards are kept, except the last, partial one, completed from its
    stored rows.

    Raises:
        ConfigError: ``index_dir`` is not a finished index, or its model has changed.
        InputError, CorpusError: the new corpus is invalid or repeats an existing id
            (nothing is changed).
    """
    new_records = read_corpus(corpus_path)
    digest = ids_digest(r.id for r in new_records)
    resumed = _finish_interrupted(index_dir)
    if resumed is not None and resumed.added_ids_sha256 == digest:
        return resumed  # this very addition was interrupted, and is now done
    manifest, plan = finished_index(index_dir)
    with Catalog.open(index_dir / layout.CATALOG) as catalog:
        clash = {r.id for r in new_records} & set(catalog.ids())
    if clash:
        raise InputError(f"{_listed(clash, 'already in the index')}; nothing was added")
    feature_config = FeatureConfig.from_dict(plan["feature_config"])
    lm = load_model(
        Path(manifest["model_dir"]),
        device=device,
        dtype=model_dtype(dtype, Path(manifest["model_dir"])),
    )
    if (lm.model_hash, lm.tokenizer_hash) != (manifest["model_hash"], manifest["tokenizer_hash"]):
        raise ConfigError(
            f"the model in {manifest['model_dir']} is no longer the one {index_dir} was built "
            "with; rebuild the index"
        )
    featurizer = Featurizer(lm, feature_config)
    if featurizer.module_names != plan["modules"]:
        raise ConfigError("the model's tracked modules differ from the index's; rebuild it")
    stage = index_dir / layout.TAKEDOWN_STAGE
    with Catalog.open(index_dir / layout.CATALOG) as catalog:
        n_old = len(catalog)
        stage.mkdir()
        merged = Catalog.create(stage / layout.CATALOG, chain(iter(catalog), new_records))
        corpus_hash = merged.manifest_hash
        merged.close()
    with np.load(index_dir / layout.ROWS) as npz:
        old_rows = RowTable.from_arrays(dict(npz))
    token_ids, added = featurizer.tokenize_records([r.text for r in new_records])
    rows = RowTable.from_matrix(
        np.concatenate([old_rows.to_matrix(), added.shifted(n_old).to_matrix()])
    )
    tokens = {n_old + i: ids for i, ids in enumerate(token_ids)}
    old_store, staged = ShardStore(index_dir), ShardStore(stage)
    old_shards = plan_shards(len(old_rows), feature_config.shard_rows)
    for spec in plan_shards(len(rows), feature_config.shard_rows):
        if spec.stop <= len(old_rows):
            continue  # untouched: the stored shard stays as it is
        units, norms = encode_features(
            featurizer.featurize_rows(
                tokens, rows, range(max(spec.start, len(old_rows)), spec.stop)
            )
        )
        if spec.start < len(old_rows):  # the old, partial last shard: keep its rows
            kept_units, kept_norms = old_store.read_encoded(old_shards[spec.index])
            units = np.concatenate([kept_units, units])
            norms = np.concatenate([kept_norms, norms])
        staged.write_encoded(spec, units, norms)
    _mark_staged(
        stage,
        rows,
        {**plan, "n_rows": len(rows), "corpus_manifest_hash": corpus_hash},
        {
            "change": "add",
            "shards": "merge",
            "parent": manifest["snapshot_id"],
            "index_config": manifest["index_config"],
            "model_dir": manifest["model_dir"],
            "records_removed": 0,
            "removed_ids_sha256": "",
            "rows_removed": 0,
            "records_added": len(new_records),
            "added_ids_sha256": digest,
            "rows_added": len(added),
        },
    )
    return _commit(index_dir)


def _listed(ids: set[str], where: str) -> str:
    """``N id(s) are WHERE ('a', 'b', …)`` for an error message: the count, the first five."""
    shown = sorted(ids)
    more = ", …" if len(shown) > 5 else ""
    return f"{len(shown)} id(s) are {where} ({', '.join(repr(i) for i in shown[:5])}{more})"


def _mark_staged(stage: Path, rows: RowTable, plan: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write the staged row table and plan, then ``staged.json`` last: from then on the
    stage is complete and a rerun commits it."""
    arrays: dict[str, Any] = dict(rows.to_arrays())
    atomic_write(stage / layout.ROWS, lambda fh: np.savez(fh, **arrays))
    atomic_write_json(stage / layout.PLAN, plan)
    atomic_write_json(stage / STAGED, meta)


def _kept(records: Iterator[Record], removed: set[str]) -> Iterator[Record]:
    return (r for r in records if r.id not in removed)


def _renumbered(rows: RowTable, keep: NDArray[np.bool_], removed: NDArray[np.int64]) -> RowTable:
    """The kept rows, their record ordinals shifted down past the removed records."""
    record = rows.record[keep]
    shifted = record - np.searchsorted(removed, record)
    return RowTable(
        record=shifted,
        tok_start=rows.tok_start[keep],
        tok_end=rows.tok_end[keep],
        char_start=rows.char_start[keep],
        char_end=rows.char_end[keep],
    )


def _restage_shards(
    old: ShardStore,
    old_shards: list[ShardSpec],
    keep: NDArray[np.bool_],
    new: ShardStore,
    shard_rows: int,
) -> None:
    """Copy the kept rows, in order and in stored form, into shards of ``shard_rows``."""
    units: list[NDArray[np.float16]] = []
    norms: list[NDArray[np.float32]] = []
    buffered, written, index = 0, 0, 0

    def flush(n: int) -> None:
        nonlocal buffered, written, index, units, norms
        u, m = np.concatenate(units), np.concatenate(norms)
        new.write_encoded(ShardSpec(index, written, written + n), u[:n], m[:n])
        units, norms = [u[n:]], [m[n:]]
        buffered -= n
        written += n
        index += 1

    for spec in old_shards:
        u, m = old.read_encoded(spec)
        sel = keep[spec.start : spec.stop]
        units.append(u[sel])
        norms.append(m[sel])
        buffered += int(sel.sum())
        while buffered >= shard_rows:
            flush(shard_rows)
    if buffered:
        flush(buffered)


def _finish_interrupted(index_dir: Path) -> ChangeResult | None:
    """Finish a commit a crash interrupted; drop a stage that was never completed."""
    stage = index_dir / layout.TAKEDOWN_STAGE
    if (stage / STAGED).exists():
        log.warning("finishing an interrupted removal staged in %s", stage)
        return _commit(index_dir)
    if stage.exists():
        shutil.rmtree(stage)
    return None


def _commit(index_dir: Path) -> ChangeResult:
    """Switch the index to the staged snapshot; every step may be rerun after a crash."""
    stage = index_dir / layout.TAKEDOWN_STAGE
    meta = json.loads((stage / STAGED).read_text())
    (index_dir / layout.MANIFEST).unlink(missing_ok=True)
    fsync_dir(index_dir)
    for name in (layout.CATALOG, layout.ROWS, layout.PLAN):
        if (stage / name).exists():
            os.replace(stage / name, index_dir / name)
    old_shards = index_dir / OLD_SHARDS
    if meta.get("shards") == "merge" and (stage / SHARD_DIR).exists():
        # An addition: the staged shards replace or extend the store file by file, data
        # before sidecar (a shard counts only when both agree).
        for data in sorted((stage / SHARD_DIR).glob("*.npz")):
            os.replace(data, index_dir / SHARD_DIR / data.name)
            sidecar = data.with_suffix(".json")
            os.replace(sidecar, index_dir / SHARD_DIR / sidecar.name)
        shutil.rmtree(stage / SHARD_DIR)
    elif (stage / SHARD_DIR).exists():
        if (index_dir / SHARD_DIR).exists():
            if old_shards.exists():
                shutil.rmtree(old_shards)
            os.rename(index_dir / SHARD_DIR, old_shards)
        os.rename(stage / SHARD_DIR, index_dir / SHARD_DIR)
    shutil.rmtree(old_shards, ignore_errors=True)
    # Everything derived from the removed records' text or rows goes, and is rebuilt.
    for name in (layout.VECTORS, layout.FAISS_INDEX, layout.PRECONDITIONER):
        (index_dir / name).unlink(missing_ok=True)
    for name in (layout.GUARD, layout.VERBATIM):
        shutil.rmtree(index_dir / name, ignore_errors=True)
    fsync_dir(index_dir)

    snapshot_id = publish_from_shards(
        index_dir,
        IndexConfig.from_dict(meta["index_config"]),
        model_dir=Path(meta["model_dir"]),
        change={
            "change": meta.get("change", "remove"),
            "records_removed": meta["records_removed"],
            "removed_ids_sha256": meta["removed_ids_sha256"],
            "records_added": meta.get("records_added", 0),
        },
    )
    manifest, _ = finished_index(index_dir)
    shutil.rmtree(stage)
    return ChangeResult(
        snapshot_id=snapshot_id,
        parent_snapshot_id=meta["parent"],
        removed_ids_sha256=meta["removed_ids_sha256"],
        records_removed=meta["records_removed"],
        rows_removed=meta["rows_removed"],
        n_records=manifest["n_records"],
        n_rows=manifest["n_rows"],
        records_added=meta.get("records_added", 0),
        rows_added=meta.get("rows_added", 0),
        added_ids_sha256=meta.get("added_ids_sha256", ""),
    )
