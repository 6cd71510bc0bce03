"""Time to take 1% of an index's records down, against rebuilding the index without them.

Why: an erasure request or a withdrawn licence must not cost a featurization of the whole
corpus. ``auditor-server remove`` reuses every other record's stored gradients (moved
between shards bit for bit) and refits the preconditioner and the index; the baseline is
what a lab without it would do: ``build`` the corpus minus those records from scratch with
the same model and settings. Both results are compared (same corpus hash, row count, and
vectors within fp16 rounding) so the faster path is shown to give the same index.

    PYTHONPATH=. .venv/bin/python bench/takedown.py                  # demo index, 1%
    PYTHONPATH=. .venv/bin/python bench/takedown.py --fraction 0.05 --index runs/cf-demo/index
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from auditor_server.attribution import layout
from auditor_server.attribution.build import build_index
from auditor_server.attribution.changes import remove_records
from auditor_server.attribution.config import FeatureConfig, IndexConfig
from auditor_server.corpus.catalog import Catalog
from bench._common import (
    add_omp_argument,
    apply_omp_wait_policy,
    default_index,
    machine,
    print_table,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", help="a finished index (default: the demo's)")
    parser.add_argument("--fraction", type=float, default=0.01, help="share of records removed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the result JSON here")
    add_omp_argument(parser)
    args = parser.parse_args()
    apply_omp_wait_policy(args.omp_wait_policy)
    source = Path(args.index) if args.index else default_index()
    manifest = json.loads((source / layout.MANIFEST).read_text())
    work = Path(tempfile.mkdtemp(prefix="takedown-"))
    try:
        index = work / "index"
        shutil.copytree(source, index)
        with Catalog.open(index / layout.CATALOG) as catalog:
            records = list(catalog)
        rng = random.Random(args.seed)
        victims = {r.id for r in rng.sample(records, max(1, int(len(records) * args.fraction)))}

        t0 = time.perf_counter()
        result = remove_records(index, victims)
        remove_s = time.perf_counter() - t0

        corpus = work / "corpus.jsonl"
        with corpus.open("w", encoding="utf-8") as fh:
            for r in records:
                if r.id not in victims:
                    fh.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
        t0 = time.perf_counter()
        rebuilt = build_index(
            model_dir=Path(manifest["model_dir"]),
            corpus_path=corpus,
            out_dir=work / "rebuilt",
            feature_config=FeatureConfig.from_dict(manifest["feature_config"]),
            index_config=IndexConfig.from_dict(manifest["index_config"]),
            progress=False,
        )
        rebuild_s = time.perf_counter() - t0
        assert rebuilt is not None
        after = json.loads((index / layout.MANIFEST).read_text())
        fresh = json.loads((work / "rebuilt" / layout.MANIFEST).read_text())
        same_corpus = after["corpus_manifest_hash"] == fresh["corpus_manifest_hash"]
        diff = float(
            np.max(
                np.abs(
                    np.load(index / layout.VECTORS).astype(np.float32)
                    - np.load(work / "rebuilt" / layout.VECTORS).astype(np.float32)
                )
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        "benchmark": "takedown",
        "machine": machine(),
        "index": str(source),
        "records": len(records),
        "records_removed": result.records_removed,
        "rows_removed": result.rows_removed,
        "rows": result.n_rows,
        "remove_seconds": round(remove_s, 1),
        "rebuild_seconds": round(rebuild_s, 1),
        "same_corpus_hash": same_corpus,
        "same_rows": after["n_rows"] == fresh["n_rows"],
        "max_abs_vector_difference": diff,
    }
    print(summary["machine"])
    print_table(
        ["index", "records removed", "remove", "full rebuild", "speed-up", "same index"],
        [
            [
                f"{source} ({len(records):,} records, "
                f"{result.n_rows + result.rows_removed:,} rows)",
                f"{result.records_removed:,} ({result.rows_removed:,} rows)",
                f"{remove_s:.1f} s",
                f"{rebuild_s:.1f} s",
                f"{rebuild_s / remove_s:.1f}x",
                f"corpus hash {'=' if same_corpus else '!='}, rows "
                f"{'=' if summary['same_rows'] else '!='}, max |Δ vector| {diff:.1e}",
            ]
        ],
    )
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
