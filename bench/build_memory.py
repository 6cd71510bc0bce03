"""Peak memory of the build's fit-and-write stage at 10^5, 10^6 and 10^7 rows.

Why: before issue 10 the build gathered every shard into one process (float32, a float64
block copy, the preconditioned float32 rows, their fp16 copy) and added them to FAISS in one
call, so its memory grew with the corpus: ~1 TB at 6·10^7 rows. The streaming build folds
each shard into per-module second moments, writes each shard's preconditioned rows straight
to the vector file, trains the quantizers on a sample and fills the index chunk by chunk. Its
memory should grow with the shard and the index's own codes, not with the rows.

**Store.** Real features of the demo index (``runs/demo/index``; its first ``--modules``
tracked modules, 256 dims each) replicated to N rows with 5% Gaussian noise, written as
ordinary shards of ``--shard-rows`` rows, with a catalog of N/3 records in the demo's class
proportions (private and proprietary 4% each). ``--modules 2`` keeps 10^7 rows at 10 GB of
shards plus 10 GB of vectors on this machine's disk; the figures scale with the row width.

**Measured, each in a fresh child process:** the product's ``fit_and_write`` (what ``build``
and ``reindex`` run after featurizing) and, as the same-run baseline, the pre-issue
algorithm (``read_all`` -> ``Preconditioner.fit`` -> ``apply`` -> fp16 copy ->
``build_faiss_index``) up to ``--baseline-max`` rows (its peak at 10^7 rows would not fit in
24 GiB). Peak anonymous memory is sampled every 50 ms from ``/proc/self/status`` (RssAnon:
what the process really holds; the vector file's page cache is the kernel's to drop), and
the kernel's peak RSS (VmHWM) is reported beside it. Index kind ``pq-fs`` by default: the
kind for large stores, whose codes are dims/8 bytes a row (``exact`` holds 2 bytes a dim,
i.e. as much as the vectors themselves).

    PYTHONPATH=. .venv/bin/python bench/build_memory.py --rows 100000,1000000
    PYTHONPATH=. .venv/bin/python bench/build_memory.py --rows 10000000 --baseline-max 0
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from auditor_server.attribution import layout
from auditor_server.attribution.config import FeatureConfig, IndexConfig
from auditor_server.attribution.distributed import Topology
from auditor_server.attribution.store import ShardStore, plan_shards
from auditor_server.corpus.catalog import Catalog
from auditor_server.corpus.records import Record, Source
from bench._common import (
    add_omp_argument,
    apply_omp_wait_policy,
    fmt_bytes,
    machine,
    print_table,
)

PRIVATE_EVERY = 25  # 4% of records private, 4% proprietary: about the demo's shares
NOISE = 0.05


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class PeakSampler:
    """Highest RssAnon seen, sampled on a thread while the measured work runs."""

    def __init__(self, every_s: float = 0.05) -> None:
        self.peak = _status("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.peak = max(self.peak, _status("RssAnon"))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status("RssAnon"))


def _records(n_records: int) -> Iterator[Record]:
    for i in range(n_records):
        data_class = (
            "private"
            if i % PRIVATE_EVERY == 0
            else "proprietary"
            if i % PRIVATE_EVERY == 1
            else "public"
        )
        yield Record(
            id=f"r{i}",
            text=f"record {i}",
            source=Source(
                title=f"t{i}",
                publisher="p",
                url="https://x",
                license="l",
                data_class=data_class,  # type: ignore[arg-type]
            ),
        )


def make_store(source_index: Path, out: Path, n_rows: int, modules: int, shard_rows: int) -> None:
    """A finished-featurization directory of ``n_rows`` rows (see the module docstring)."""
    plan = json.loads((source_index / layout.PLAN).read_text())
    src_config = FeatureConfig.from_dict(plan["feature_config"])
    src_store = ShardStore(source_index)
    src = np.concatenate(
        [
            src_store.read(s)[:, :modules, :]
            for s in plan_shards(plan["n_rows"], src_config.shard_rows)
        ]
    )
    scale = NOISE * src.std(axis=0, keepdims=True)
    out.mkdir(parents=True)
    n_records = (n_rows + 2) // 3
    Catalog.create(out / layout.CATALOG, _records(n_records)).close()
    record = np.arange(n_rows, dtype=np.int64) // 3
    zeros = np.zeros(n_rows, dtype=np.int64)
    np.savez(
        out / layout.ROWS,
        record=record,
        tok_start=zeros,
        tok_end=zeros + 1,
        char_start=zeros,
        char_end=zeros + 1,
    )
    config = FeatureConfig(proj_in=16, proj_out=16, shard_rows=shard_rows)
    (out / layout.PLAN).write_text(
        json.dumps(
            {
                "modules": plan["modules"][:modules],
                "feature_config": config.to_dict(),
                "n_rows": n_rows,
            }
        )
    )
    store = ShardStore(out)
    rng = np.random.default_rng(0)
    for spec in plan_shards(n_rows, shard_rows):
        idx = np.arange(spec.start, spec.stop) % len(src)
        noise = rng.standard_normal((len(idx), modules, src.shape[2])).astype(np.float32)
        store.write(spec, src[idx] + noise * scale)


def child(mode: str, directory: Path, index_kind: str) -> dict[str, Any]:
    """Run one measured stage in this (fresh) process and report its peaks."""
    from auditor_server.attribution.build import fit_and_write
    from auditor_server.attribution.index import build_faiss_index, write_index
    from auditor_server.attribution.precondition import Preconditioner
    from auditor_server.attribution.spans import RowTable

    plan = json.loads((directory / layout.PLAN).read_text())
    config = IndexConfig(index=index_kind)  # type: ignore[arg-type]
    shard_rows = FeatureConfig.from_dict(plan["feature_config"]).shard_rows
    with np.load(directory / layout.ROWS) as npz:
        rows = RowTable.from_arrays(dict(npz))
    store = ShardStore(directory)
    shards = plan_shards(len(rows), shard_rows)
    t0 = time.perf_counter()
    with Catalog.open(directory / layout.CATALOG) as catalog, PeakSampler() as sampler:
        if mode == "streaming":
            fit_and_write(Topology(), directory, catalog, rows, store, shards, config, plan)
        else:  # the build before issue 10, step by step
            classes = np.asarray(catalog.data_classes())
            mask = classes[rows.record] != "private"
            raw = store.read_all(shards)
            precond = Preconditioner.fit(raw[mask], config)
            vectors = precond.apply(raw)
            del raw
            np.save(directory / "baseline-vectors.npy", vectors.astype(np.float16))
            index = build_faiss_index(vectors, config, train_mask=mask, chunk_rows=len(vectors))
            write_index(index, directory / "baseline-index.faiss")
    return {
        "mode": mode,
        "rows": len(rows),
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_anon_bytes": sampler.peak,
        "peak_rss_bytes": _status("VmHWM"),
    }


def run_child(mode: str, directory: Path, index_kind: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--dir", str(directory), "--index", index_kind],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} child failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="100000,1000000", help="comma-separated row counts")
    parser.add_argument(
        "--modules", type=int, default=2, help="tracked modules kept (256 dims each)"
    )
    parser.add_argument("--shard-rows", type=int, default=8192)
    parser.add_argument("--index", default="pq-fs", choices=["exact", "pq-fs", "ivf-sq", "ivf-pq"])
    parser.add_argument(
        "--baseline-max",
        type=int,
        default=1_000_000,
        help="largest N the in-memory baseline runs at",
    )
    parser.add_argument("--source-index", default="runs/demo/index")
    parser.add_argument("--work", help="scratch directory (default: a temporary one, removed)")
    parser.add_argument("--out", help="write the result JSON here")
    parser.add_argument("--child", choices=["streaming", "in-memory"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    add_omp_argument(parser)
    args = parser.parse_args()
    apply_omp_wait_policy(args.omp_wait_policy)
    if args.child:
        print(json.dumps(child(args.child, Path(args.dir), args.index)))
        return
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="build-memory-"))
    results = []
    try:
        for n in (int(x) for x in args.rows.split(",")):
            directory = work / f"rows-{n}"
            if directory.exists():
                shutil.rmtree(directory)
            t0 = time.perf_counter()
            make_store(Path(args.source_index), directory, n, args.modules, args.shard_rows)
            print(f"{n:,} rows: store written in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
            results.append(run_child("streaming", directory, args.index))
            if n <= args.baseline_max:
                results.append(run_child("in-memory", directory, args.index))
            shutil.rmtree(directory)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    dim = args.modules * 256
    summary = {
        "benchmark": "build_memory",
        "machine": machine(),
        "dim": dim,
        "shard_rows": args.shard_rows,
        "index": args.index,
        "shard_bytes_float32": args.shard_rows * dim * 4,
        "results": results,
    }
    print(
        f"dim {dim}, shards of {args.shard_rows:,} rows "
        f"({fmt_bytes(args.shard_rows * dim * 4)} as float32), index {args.index}; "
        f"{summary['machine']}"
    )
    print_table(
        ["rows", "build", "peak anon", "peak RSS", "seconds"],
        [
            [
                f"{r['rows']:,}",
                r["mode"],
                fmt_bytes(r["peak_anon_bytes"]),
                fmt_bytes(r["peak_rss_bytes"]),
                f"{r['seconds']}",
            ]
            for r in results
        ],
    )
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
