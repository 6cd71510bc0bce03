"""``auditor-server build``: catalog → guard, verbatim → rows → shards → preconditioner → index.

Every step is idempotent and every file is written atomically, so the same command rerun
after a crash (or ``kill -9``) skips what is complete and finishes with exactly one row per
window. A build plan recorded at the start pins the model, tokenizer, corpus and feature
config; resuming with anything different is refused instead of silently mixing features.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm import tqdm

from auditor_server.attribution import layout
from auditor_server.attribution.config import FeatureConfig, IndexConfig
from auditor_server.attribution.distributed import Topology, distributed_topology
from auditor_server.attribution.featurize import Featurizer
from auditor_server.attribution.index import build_faiss_index, write_index
from auditor_server.attribution.precondition import Preconditioner, SecondMoments
from auditor_server.attribution.snapshots import append_snapshot
from auditor_server.attribution.spans import ROW_FIELDS, RowTable
from auditor_server.attribution.store import ShardSpec, ShardStore, plan_shards
from auditor_server.attribution.verbatim import MANIFEST_FILE as VERBATIM_MANIFEST
from auditor_server.attribution.verbatim import VerbatimIndex
from auditor_server.corpus.catalog import Catalog
from auditor_server.corpus.records import corpus_manifest_hash, iter_corpus
from auditor_server.errors import ConfigError, IndexMismatchError, IntegrityError
from auditor_server.fsutil import (
    atomic_path,
    atomic_write,
    atomic_write_json,
    fsync_dir,
    sha256_file,
    sha256_json,
)
from auditor_server.model.loading import LoadedModel, load_model
from auditor_server.policy.guard import (
    DEFAULT_BOILERPLATE_RECORDS,
    DEFAULT_SHINGLE_CHARS,
    MANIFEST_FILE,
    ShingleSets,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildResult:
    """What a finished build produced."""

    index_dir: Path
    snapshot_id: str
    n_records: int
    n_rows: int
    dim: int
    shards_computed: int
    shards_reused: int


def build_index(
    *,
    model_dir: Path,
    corpus_path: Path,
    out_dir: Path,
    feature_config: FeatureConfig | None = None,
    index_config: IndexConfig | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    progress: bool = True,
) -> BuildResult | None:
    """Build (or resume building) an attribution index.

    Under ``torchrun`` every rank tokenizes and featurizes its share of the shards, folds
    its shards into the preconditioner's second moments (all-reduced) and writes its rows of
    the vector store; rank 0 then builds the index and returns the result, other ranks
    return None. No process holds more than one shard of rows, plus (rank 0) the index.

    Raises:
        CorpusError: the corpus is invalid (nothing is written).
        IndexMismatchError: ``out_dir`` holds a build of another model/corpus/config.
    """
    feature_config = feature_config or FeatureConfig()
    index_config = index_config or IndexConfig()
    with distributed_topology(device) as topo:
        return _build(
            topo, model_dir, corpus_path, out_dir, feature_config, index_config, dtype, progress
        )


def _build(
    topo: Topology,
    model_dir: Path,
    corpus_path: Path,
    out_dir: Path,
    feature_config: FeatureConfig,
    index_config: IndexConfig,
    dtype: str,
    progress: bool,
) -> BuildResult | None:
    out_dir.mkdir(parents=True, exist_ok=True)
    catalog_path = out_dir / layout.CATALOG
    if topo.is_main:
        _ensure_catalog(corpus_path, catalog_path)
    topo.barrier()
    lm = load_model(model_dir, device=topo.device, dtype=model_dtype(dtype, model_dir))
    with Catalog.open(catalog_path) as catalog:
        featurizer = Featurizer(lm, feature_config)
        rows = row_table(topo, catalog, featurizer)
        plan = _plan(lm, catalog, featurizer, feature_config, len(rows))
        if topo.is_main:
            _ensure_plan(out_dir, plan, rows)
            ensure_guard(out_dir, catalog)
            ensure_verbatim(out_dir, catalog)
        topo.barrier()

        store = ShardStore(out_dir)
        if topo.is_main:
            store.remove_stale_temporaries()
        shards = plan_shards(len(rows), feature_config.shard_rows)
        mine = [s for s in shards if topo.owns(s.index)]
        todo = [s for s in mine if not store.is_done(s)]
        bar = tqdm(
            total=sum(s.stop - s.start for s in todo),
            desc=f"featurize[rank {topo.rank}]" if topo.world_size > 1 else "featurize",
            unit="row",
            disable=not progress,
            position=topo.rank,
        )
        with bar:
            for spec in todo:
                feats = featurizer.featurize_rows(
                    shard_tokens(featurizer, catalog, rows, spec),
                    rows,
                    range(spec.start, spec.stop),
                    on_batch=bar.update,
                )
                store.write(spec, feats)
        topo.barrier()
        fit_and_write(topo, out_dir, catalog, rows, store, shards, index_config, plan)
        if not topo.is_main:
            return None
        snapshot_id = write_manifest(
            out_dir, catalog, plan, index_config, store, shards, model_dir=lm.model_dir
        )
        return BuildResult(
            index_dir=out_dir,
            snapshot_id=snapshot_id,
            n_records=len(catalog),
            n_rows=len(rows),
            dim=featurizer.capture.dim,
            shards_computed=len(todo),
            shards_reused=len(mine) - len(todo),
        )


MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""Weight dtypes a build may load the model in (``auto``: the checkpoint's own)."""


def model_dtype(name: str, model_dir: Path) -> torch.dtype:
    """The dtype to load the model's weights in.

    ``auto`` reads ``torch_dtype`` (or ``dtype``) from the checkpoint's ``config.json``, so a
    model trained and saved in bf16 is featurized in bf16 without doubling its memory;
    gradients are projected and stored in float32 either way.
    """
    if name != "auto":
        if name not in MODEL_DTYPES:
            raise ConfigError(f"unknown dtype {name!r}; use auto, {', '.join(MODEL_DTYPES)}")
        return MODEL_DTYPES[name]
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {model_dir / 'config.json'}: {exc}") from exc
    saved = config.get("torch_dtype") or config.get("dtype") or "float32"
    return MODEL_DTYPES.get(str(saved), torch.float32)


TOKENIZE_RECORDS = 4096
"""Records tokenized at a time while cutting the row table."""


def row_table(topo: Topology, catalog: Catalog, featurizer: Featurizer) -> RowTable:
    """Every row of the corpus, each rank tokenizing only its own contiguous share.

    Token ids are dropped once the windows are cut (a shard re-tokenizes its few records
    when it is featurized), so a rank holds one batch of texts at a time plus the row table
    itself (five integers a row); the parts are all-gathered in record order.
    """
    share = topo.share(len(catalog))
    parts = []
    for start in range(share.start, share.stop, TOKENIZE_RECORDS):
        stop = min(start + TOKENIZE_RECORDS, share.stop)
        _, rows = featurizer.tokenize_records(catalog.texts(start, stop))
        parts.append(rows.shifted(start).to_matrix())
    mine = np.concatenate(parts, axis=0) if parts else np.zeros((0, len(ROW_FIELDS)), np.int64)
    return RowTable.from_matrix(topo.all_gather_rows(mine))


def shard_tokens(
    featurizer: Featurizer, catalog: Catalog, rows: RowTable, spec: ShardSpec
) -> dict[int, list[int]]:
    """Token ids of the records ``spec``'s rows come from, keyed by record ordinal."""
    first = int(rows.record[spec.start])
    last = int(rows.record[spec.stop - 1])
    ids, _ = featurizer.tokenize_records(catalog.texts(first, last + 1))
    return {first + i: tokens for i, tokens in enumerate(ids)}


def _ensure_catalog(corpus_path: Path, catalog_path: Path) -> None:
    """Ingest the corpus (streamed), or check that an existing catalog holds exactly it."""
    if catalog_path.exists():
        with Catalog.open(catalog_path) as existing:
            if existing.manifest_hash != corpus_manifest_hash(iter_corpus(corpus_path)):
                raise IndexMismatchError(
                    f"{catalog_path.parent} was built from a different corpus; "
                    "use a new --out directory"
                )
        return
    Catalog.create(catalog_path, iter_corpus(corpus_path)).close()


GUARD_KEY_BYTES = 32


def build_guard(
    index_dir: Path,
    catalog: Catalog,
    *,
    shingle_chars: int | None = None,
    boilerplate_records: int | None = None,
) -> ShingleSets:
    """(Re)build the withheld-text guard of ``index_dir`` from every record of ``catalog``.

    A fresh random hash key is made each time (it only has to be secret, not stable: the
    guard is rebuilt whole, never extended). Takes well under a second for the demo corpus.
    ``boilerplate_records`` (default ``DEFAULT_BOILERPLATE_RECORDS``; 0 keeps all) is the
    number of private records a digit-free shingle must occur in to count as template text
    and not be withheld (see ``auditor_server.policy.guard``).
    """
    sets = ShingleSets.build(
        ((r.source.data_class, r.text) for r in catalog),
        key=secrets.token_bytes(GUARD_KEY_BYTES),
        shingle_chars=shingle_chars or DEFAULT_SHINGLE_CHARS,
        corpus_id=catalog.manifest_hash,
        boilerplate_records=(
            DEFAULT_BOILERPLATE_RECORDS if boilerplate_records is None else boilerplate_records
        ),
    )
    sets.save(index_dir / layout.GUARD)
    log.info(
        "withheld-text guard: %s; boilerplate (digit-free, in >= %d records): %s",
        ", ".join(f"{c} {sets.count(c):,} shingles" for c in sets.classes),
        sets.boilerplate_records,
        ", ".join(f"{c} {sets.boilerplate_count(c):,}" for c in sets.classes) or "none",
    )
    return sets


def ensure_guard(
    index_dir: Path,
    catalog: Catalog,
    *,
    shingle_chars: int | None = None,
    boilerplate_records: int | None = None,
) -> ShingleSets:
    """The index's guard if it is complete, intact, of the current format and made from
    this catalog (and, when ``shingle_chars`` or ``boilerplate_records`` is given, with that
    value); else build it anew.

    Lets a resumed or repeated ``build`` (and ``reindex`` of an index built before the guard
    existed) skip the guard when it is already right. A guard of an older format (v1, which
    withheld template text too) fails to load and is rebuilt here with the defaults.
    """
    guard_dir = index_dir / layout.GUARD
    if (guard_dir / MANIFEST_FILE).exists():
        try:
            sets = ShingleSets.load(guard_dir)
        except (ConfigError, IntegrityError) as exc:
            log.warning("rebuilding the withheld-text guard: %s", exc)
        else:
            if (
                sets.corpus_id == catalog.manifest_hash
                and shingle_chars in (None, sets.shingle_chars)
                and boilerplate_records in (None, sets.boilerplate_records)
            ):
                return sets
    return build_guard(
        index_dir, catalog, shingle_chars=shingle_chars, boilerplate_records=boilerplate_records
    )


def build_verbatim(index_dir: Path, catalog: Catalog) -> VerbatimIndex:
    """(Re)build the verbatim index of ``index_dir`` from ``catalog`` and open it.

    One suffix array per disclosable data class (private text is never indexed; see
    :mod:`auditor_server.attribution.verbatim`). The demo corpus (1 MB) takes well under a
    second.
    """
    index = VerbatimIndex.build(
        ((i, r.source.data_class, r.text) for i, r in enumerate(catalog)),
        index_dir / layout.VERBATIM,
        corpus_id=catalog.manifest_hash,
    )
    log.info(
        "verbatim index: %s",
        ", ".join(f"{c} {index.suffixes(c):,} suffixes" for c in index.classes) or "empty",
    )
    return index


def ensure_verbatim(index_dir: Path, catalog: Catalog) -> None:
    """Keep the index's verbatim index if it is complete, intact, of the current format and
    made from this catalog; else build it anew (as :func:`ensure_guard` does for the guard).

    Lets a resumed or repeated ``build``, and ``reindex`` of an index built before verbatim
    evidence existed, skip it when it is already right.
    """
    directory = index_dir / layout.VERBATIM
    if (directory / VERBATIM_MANIFEST).exists():
        try:
            existing = VerbatimIndex.open(directory)
        except (ConfigError, IntegrityError) as exc:
            log.warning("rebuilding the verbatim index: %s", exc)
        else:
            with existing:
                if existing.corpus_id == catalog.manifest_hash:
                    return
    build_verbatim(index_dir, catalog).close()


def _plan(
    lm: LoadedModel, catalog: Catalog, featurizer: Featurizer, config: FeatureConfig, n_rows: int
) -> dict[str, Any]:
    return {
        "format_version": layout.FORMAT_VERSION,
        "model_hash": lm.model_hash,
        "tokenizer_hash": lm.tokenizer_hash,
        "corpus_manifest_hash": catalog.manifest_hash,
        "feature_config": config.to_dict(),
        "modules": featurizer.module_names,
        "n_rows": n_rows,
    }


def _ensure_plan(out_dir: Path, plan: dict[str, Any], rows: RowTable) -> None:
    """Record the plan and row table, or check a resumed build matches them exactly."""
    plan_path, rows_path = out_dir / layout.PLAN, out_dir / layout.ROWS
    if plan_path.exists():
        existing = json.loads(plan_path.read_text())
        # A plan written before a feature option existed means that option's default.
        existing["feature_config"] = FeatureConfig.from_dict(existing["feature_config"]).to_dict()
        if existing != plan:
            diff = sorted(k for k in plan if existing.get(k) != plan[k])
            raise IndexMismatchError(
                f"{out_dir} holds a build with a different {', '.join(diff)}; "
                "use a new --out directory (or delete it) to start over"
            )
        with np.load(rows_path) as npz:
            if not RowTable.from_arrays(dict(npz)).equals(rows):
                raise IntegrityError(f"{rows_path}: stored row table differs from the corpus")
        return
    arrays: dict[str, Any] = dict(rows.to_arrays())
    atomic_write(rows_path, lambda fh: np.savez(fh, **arrays))
    atomic_write_json(plan_path, plan)


def fit_and_write(
    topo: Topology,
    out_dir: Path,
    catalog: Catalog,
    rows: RowTable,
    store: ShardStore,
    shards: list[ShardSpec],
    index_config: IndexConfig,
    plan: dict[str, Any],
) -> None:
    """Fit the preconditioner, then write it, the vectors and the FAISS index.

    Streaming, in three passes over each rank's own shards: fold the allowed rows into the
    per-module second moments (summed over ranks), precondition and write each shard's rows
    into the shared vector file, then (rank 0) train the index on a sample and fill it chunk
    by chunk from the memory-mapped vectors.
    """
    mine = [s for s in shards if topo.owns(s.index)]
    missing = [s.stem for s in mine if not store.is_done(s)]
    if missing:
        raise IntegrityError(f"shards not finished: {', '.join(missing[:5])}")
    fit_mask = _fit_mask(catalog, rows, index_config)
    moments = SecondMoments(
        len(plan["modules"]), FeatureConfig.from_dict(plan["feature_config"]).dims_per_module
    )
    # Each shard's checksum was just verified (``is_done`` above); the two passes below read
    # it without hashing the whole store twice more.
    for spec in mine:
        moments.add(store.read(spec, verify=False)[fit_mask[spec.start : spec.stop]])
    summed = topo.all_reduce_sum(np.append(moments.sums.ravel(), float(moments.count)))
    moments.sums = summed[:-1].reshape(moments.sums.shape)
    moments.count = int(summed[-1])
    if moments.count == 0:
        raise ConfigError(
            "no rows to fit the preconditioner on (every record is of an excluded class: "
            f"{', '.join(sorted(index_config.fit_excluded))})"
        )
    precond_path = out_dir / layout.PRECONDITIONER
    if topo.is_main:
        Preconditioner.from_moments(moments, index_config).save(precond_path)
    topo.barrier()
    # Every rank applies the very maps rank 0 saved (not its own refit, which another
    # node's LAPACK could round differently).
    precond = Preconditioner.load(precond_path)
    _write_vectors(
        topo, out_dir, precond, store, shards, len(rows), moments.n_modules * moments.dims
    )
    if topo.is_main:
        vectors = np.load(out_dir / layout.VECTORS, mmap_mode="r")
        index = build_faiss_index(vectors, index_config, train_mask=fit_mask)
        with atomic_path(out_dir / layout.FAISS_INDEX) as tmp:
            write_index(index, tmp)
        del vectors
    topo.barrier()


PARTIAL_VECTORS = ".vectors.partial.npy"
"""Where the ranks write preconditioned rows before rank 0 renames the file into place."""


def _write_vectors(
    topo: Topology,
    out_dir: Path,
    precond: Preconditioner,
    store: ShardStore,
    shards: list[ShardSpec],
    n_rows: int,
    dim: int,
) -> None:
    """Each rank preconditions its own shards into one shared fp16 ``.npy`` file.

    The file is created whole (sparse) by rank 0 under a temporary name, filled in place by
    every rank, fsynced, and renamed into place by rank 0 only after every rank is done: a
    crash leaves at most a stale temporary, never a half-written store.
    """
    partial = out_dir / PARTIAL_VECTORS
    if topo.is_main:
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(n_rows, dim)).flush()
    topo.barrier()
    # Positioned writes rather than a writable memory map: the rows go straight to the
    # file and never count against this process's resident memory.
    offset = np.load(partial, mmap_mode="r").offset
    row_bytes = dim * np.dtype(np.float16).itemsize
    with partial.open("r+b") as fh:
        for spec in shards:
            if topo.owns(spec.index):
                block = precond.apply(store.read(spec, verify=False)).astype(np.float16)
                fh.seek(offset + spec.start * row_bytes)
                fh.write(np.ascontiguousarray(block).tobytes())
        fh.flush()
        os.fsync(fh.fileno())
    topo.barrier()
    if topo.is_main:
        os.replace(partial, out_dir / layout.VECTORS)
        fsync_dir(out_dir)
    topo.barrier()


def _fit_mask(catalog: Catalog, rows: RowTable, config: IndexConfig) -> NDArray[np.bool_]:
    classes = np.asarray(catalog.data_classes())
    excluded = sorted(config.fit_excluded)
    if not excluded:
        return np.ones(len(rows), dtype=bool)
    return np.asarray(~np.isin(classes[rows.record], excluded))


def write_manifest(
    out_dir: Path,
    catalog: Catalog,
    plan: dict[str, Any],
    index_config: IndexConfig,
    store: ShardStore,
    shards: list[ShardSpec],
    *,
    model_dir: Path,
    change: dict[str, Any] | None = None,
) -> str:
    """Write the manifest that makes the index openable; returns the snapshot id.

    The snapshot is first appended to the snapshot history (``change``: the keyword
    arguments of :func:`append_snapshot`; default a build), so no served snapshot is ever
    missing from it.
    """
    feature_config = FeatureConfig.from_dict(plan["feature_config"])
    classes = catalog.data_classes()
    artifacts = {
        name: sha256_file(out_dir / name)
        for name in (layout.PRECONDITIONER, layout.VECTORS, layout.FAISS_INDEX, layout.ROWS)
    }
    identity = {
        "model_hash": plan["model_hash"],
        "tokenizer_hash": plan["tokenizer_hash"],
        "corpus_manifest_hash": plan["corpus_manifest_hash"],
        "feature_config": plan["feature_config"],
        "modules": plan["modules"],
        "index_config": index_config.to_dict(),
        "preconditioner_sha256": artifacts[layout.PRECONDITIONER],
    }
    snapshot_id = sha256_json(identity)
    manifest = {
        "format_version": layout.FORMAT_VERSION,
        "snapshot_id": snapshot_id,
        **identity,
        "model_dir": str(model_dir.resolve()),
        "n_records": len(catalog),
        "records_per_class": {c: classes.count(c) for c in sorted(set(classes))},
        "n_rows": plan["n_rows"],
        "dim": len(plan["modules"]) * feature_config.dims_per_module,
        "dims_per_module": feature_config.dims_per_module,
        "artifacts": artifacts,
        "shards": [
            {
                "file": store.data_path(s).name,
                "start": s.start,
                "stop": s.stop,
                "sha256": store.checksum(s),
            }
            for s in shards
        ],
    }
    append_snapshot(out_dir, manifest, **(change or {"change": "build"}))
    atomic_write_json(out_dir / layout.MANIFEST, manifest)
    return snapshot_id


def finished_index(index_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest and build plan of a finished index.

    Raises:
        ConfigError: ``index_dir`` is not a finished index.
    """
    manifest_path = index_dir / layout.MANIFEST
    if not manifest_path.exists():
        raise ConfigError(f"{index_dir} is not a finished index (no {layout.MANIFEST})")
    manifest = json.loads(manifest_path.read_text())
    return manifest, json.loads((index_dir / layout.PLAN).read_text())


def reindex(index_dir: Path, index_config: IndexConfig) -> str:
    """Refit preconditioner and FAISS index of a finished build from its stored shards.

    Gradients are not recomputed, so trying another preconditioner, normalization or index
    kind costs seconds. The snapshot id changes with the index config. The withheld-text
    guard and the verbatim index are built if the index has none (or a broken one) and kept
    otherwise.

    Raises:
        ConfigError: ``index_dir`` is not a finished index.
    """
    manifest, _ = finished_index(index_dir)
    return publish_from_shards(
        index_dir, index_config, model_dir=Path(manifest["model_dir"]), change={"change": "reindex"}
    )


def publish_from_shards(
    index_dir: Path, index_config: IndexConfig, *, model_dir: Path, change: dict[str, Any]
) -> str:
    """From the stored catalog, rows and shards: guard and verbatim index (kept when they
    are current), then preconditioner, vectors, FAISS index and manifest; the snapshot id.

    What ``reindex`` does, and what a takedown or an addition does once its new catalog,
    rows and shards are in place.
    """
    plan = json.loads((index_dir / layout.PLAN).read_text())
    feature_config = FeatureConfig.from_dict(plan["feature_config"])
    with (
        Catalog.open(index_dir / layout.CATALOG) as catalog,
        np.load(index_dir / layout.ROWS) as npz,
    ):
        rows = RowTable.from_arrays(dict(npz))
        ensure_guard(index_dir, catalog)
        ensure_verbatim(index_dir, catalog)
        store = ShardStore(index_dir)
        shards = plan_shards(len(rows), feature_config.shard_rows)
        fit_and_write(Topology(), index_dir, catalog, rows, store, shards, index_config, plan)
        return write_manifest(
            index_dir,
            catalog,
            plan,
            index_config,
            store,
            shards,
            model_dir=model_dir,
            change=change,
        )
