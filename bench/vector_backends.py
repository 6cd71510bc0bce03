"""The engine's two vector backends, FAISS (embedded, the default) and Milvus, at 10^6-10^7 rows.

Why: the Milvus backend (``auditor_server/attribution/backends.py``) exists for stores that
outgrow one machine. This measures what it costs against the FAISS default on the same rows
and queries: query p50/p99, recall@10 against exact search, build/load time and memory, for
FAISS ``exact`` (fp16 scalar quantizer) and ``pq-fs`` (4-bit PQ fast scan + the engine's
exact re-rank), and for a Milvus collection indexed FLAT and with an ANN index (IVF_SQ8 by
default, several ``nprobe``). It ends with a paper estimate, extrapolated from these figures,
of the memory and query nodes needed for 10^9 and 10^11 training tokens.

**Data.** As ``bench/index_scale.py`` (whose generator functions this imports; see its
docstring for the noise model): ``--rows`` unit rows made from the real preconditioned rows
of a built index, each a real row plus isotropic noise, written as a memory-mapped fp16 store.
``--dims D`` keeps only the first ``D`` dims of every real row (then renormalizes) before
that: the demo rows have 2,304 dims, and Milvus holds float32, so 10^7 full rows would be
92 GB on a 24 GiB machine. Records are ``row // 3``; each record is private (4%),
proprietary (4%) or public, and its rows carry its class. Every search excludes
``private`` *inside* the search (FAISS ID selector or filtered view; Milvus boolean filter),
exactly as the engine asks.

**Queries** are the service's real queries by default (featurized, preconditioned questions
of the demo question file, cut to the same ``D`` dims and renormalized), or held-out real rows
plus noise (``--queries rows``). **Ground truth** is the exact float32 top-k over the stored
(fp16) rows that are not private. Milvus receives the same fp16 values as float32, so every
contender sees identical vectors.

**Contenders.** FAISS through the engine's :class:`FaissSearcher` over an index built by the
product's ``build_faiss_index``; ``pq-fs`` fetches ``k x R`` rows and re-scores them exactly
from the fp16 store (the engine's ``_index_candidates``), and its build time includes the
filtered view the searcher makes for it (fast scan cannot filter inside the search). Milvus
through the engine's :class:`MilvusSearcher` over a collection with the schema of
``export_to_milvus``; ANN indexes fetch ``k x R`` and are re-ranked the same way, FLAT is
exact and fetches ``k``. IVF ``nlist`` is per segment (Milvus indexes each sealed segment on
its own): ``4 sqrt(rows per segment)`` unless ``--milvus-nlist``.

**Which Milvus.** By default the script starts a local Milvus Lite server (``python -m
milvus_lite server``) in a child process on a free port and talks to it over gRPC, as the
service would talk to a cluster; its resident memory is read from ``/proc``. ``--milvus-uri``
points it at any other Milvus (standalone or a cluster) instead; memory is then unknown.
Caveat for the figures: the installed Milvus Lite (3.x) is a pure-Python engine (FAISS per
segment, Python for the filter and the per-row dedup/visibility mask of every query), not the
C++ Milvus of a standalone or distributed deployment, so its latency measures that engine's
per-row Python work far more than vector search.

**Timing.** Each query is timed once per contender (after one warm-up), interleaved query by
query with FAISS ``exact`` as the same-run baseline (the machine is shared; see
``bench/_common.py``): "vs exact" is the ratio of the two medians over the same queries.

**Scale on this machine** (2 cores, 24 GiB, shared). The default run (10^6 rows x 256 dims)
takes ~9 min, 3 of them inserting into Milvus Lite, whose server then holds ~2x the raw
float32 rows. At 10^7 rows x 256 dims Milvus Lite would need ~20 GiB, so 10^7 was run at 64
dims, timing Milvus on 20 of the queries (~7 s each; 24 min in all), and FAISS alone at 256
dims (``--milvus-index`` with no value skips Milvus).

    PYTHONPATH=. .venv/bin/python bench/vector_backends.py --rows 20000          # ~30 s
    PYTHONPATH=. .venv/bin/python bench/vector_backends.py --out runs/bench/results/vb-1e6.json
    PYTHONPATH=. .venv/bin/python bench/vector_backends.py --rows 10000000 --dims 64 \\
        --milvus-queries 20 --milvus-nlist 1024
    PYTHONPATH=. .venv/bin/python bench/vector_backends.py --rows 10000000 --milvus-index
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from auditor_server.attribution.backends import FaissSearcher, MilvusSearcher
from auditor_server.attribution.config import IndexConfig
from auditor_server.attribution.index import build_faiss_index, default_nlist, import_faiss
from bench._common import (
    Timing,
    add_omp_argument,
    apply_omp_wait_policy,
    default_index,
    fmt_bytes,
    machine,
    print_table,
)
from bench.index_scale import (
    _warm,
    cut,
    exact_topk,
    recall_at_k,
    rerank,
    seed_rows,
    synthesize_store,
    synthetic_queries,
    timed_build,
)

F32 = NDArray[np.float32]
F16 = NDArray[np.float16]
I64 = NDArray[np.int64]

EXCLUDED = frozenset({"private"})
CLASSES = np.array(["public", "proprietary", "private"])
CLASS_SHARES = (0.92, 0.04, 0.04)
COLLECTION = "bench_vector_backends"
FULL_DIMS = 2304  # the store's real width (demo index: 9 modules x 256)
NODE_BYTES = 128 * 2**30
NODE_FILL = 0.75  # share of a node's memory given to vectors in the estimate
STRIDE_TOKENS = 16


@dataclass
class Result:
    """One contender's figures."""

    backend: str
    index: str
    params: str
    rerank: int
    build_s: float
    ingest_s: float | None
    memory_bytes: int | None
    memory_what: str
    queries: int
    p50_ms: float
    p99_ms: float
    recall: float
    base_p50_ms: float  # FAISS exact over the same queries, interleaved

    @property
    def vs_exact(self) -> float:
        return self.p50_ms / self.base_p50_ms


Search = Callable[[F32], I64]


def _pad(ids: Sequence[int] | I64, k: int) -> I64:
    a = np.asarray(ids, dtype=np.int64)[:k]
    return np.pad(a, (0, k - a.size), constant_values=-1)


def measure(fn: Search, base: Search, queries: F32, k: int) -> tuple[I64, Timing, Timing]:
    """Each query once through ``fn`` and once through ``base``, alternating which goes first.

    Returns ``fn``'s top-k ids, its timings and the baseline's timings over the same queries.
    """
    fn(queries[0])
    base(queries[0])
    found: list[I64] = []
    mine: list[float] = []
    theirs: list[float] = []
    for i, q in enumerate(queries):
        order = [(fn, mine)] if fn is base else [(fn, mine), (base, theirs)]
        for f, acc in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            ids = f(q)
            acc.append(time.perf_counter() - t0)
            if f is fn:
                found.append(_pad(ids, k))
    return np.stack(found), Timing(mine), Timing(theirs or mine)


def allowed_truth(store: F16, queries: F32, private: NDArray[np.bool_], k: int) -> I64:
    """Exact top-``k`` among the non-private rows: the exact top ``4k`` over all rows with
    the private ones dropped (widened until every query keeps ``k``)."""
    fetch = 4 * k
    while True:
        ids = exact_topk(store, queries, fetch)
        kept = [row[~private[row]][:k] for row in ids]
        if all(r.size == k for r in kept) or fetch >= store.shape[0]:
            return np.stack([_pad(r, k) for r in kept])
        fetch *= 4


def make_classes(n: int, seed: int) -> tuple[I64, NDArray[np.str_]]:
    """Record of each row (``row // 3``) and its class, drawn per record."""
    record = np.arange(n, dtype=np.int64) // 3
    rng = np.random.default_rng(seed + 7)
    per_record = rng.choice(len(CLASSES), size=int(record[-1]) + 1, p=CLASS_SHARES)
    return record, CLASSES[per_record[record]]


# ---------------------------------------------------------------------------- FAISS


def faiss_contenders(
    store: F16, row_class: NDArray[np.str_], kinds: Sequence[str], k: int, reranks: Sequence[int]
) -> list[tuple[str, str, int, float, int, str, Search, Any]]:
    """(label, params, R, build s, bytes, what, search fn, keep-alive) per FAISS kind and R."""
    out = []
    for kind in kinds:
        print(f"faiss {kind}: building", flush=True)
        if kind == "exact":
            index, secs, _ = timed_build(
                lambda: build_faiss_index(store, IndexConfig(index="exact"))
            )
            searcher = FaissSearcher(index, store, row_class, nprobe=1)
            t0 = time.perf_counter()
            searcher.selector(EXCLUDED)
            secs += time.perf_counter() - t0
            nbytes = int(index.ntotal * index.code_size)

            def exact(q: F32, s: FaissSearcher = searcher) -> I64:
                return np.asarray(s.search(q, k, EXCLUDED), dtype=np.int64)

            out.append(("exact (SQfp16)", "-", 1, secs, nbytes, "codes", exact, searcher))
        else:
            allowed = row_class != "private"
            index, secs, _ = timed_build(
                lambda allowed=allowed: build_faiss_index(
                    store, IndexConfig(index="pq-fs"), train_mask=allowed
                )
            )
            searcher = FaissSearcher(index, store, row_class, nprobe=1)
            # Fast scan cannot filter inside the search: the searcher keeps a copy holding
            # only the allowed rows (built on first use; part of the build here).
            sel = searcher.selector(EXCLUDED)
            assert sel is not None
            view, vsecs, _ = timed_build(lambda sel=sel, index=index: sel.view(index, store))
            nbytes = int(index.ntotal * index.code_size + view.ntotal * (index.code_size + 8))

            label = f"pq-fs (PQ{store.shape[1] // 4}x4fs)"
            for r in reranks:

                def pqfs(q: F32, s: FaissSearcher = searcher, r: int = r) -> I64:
                    ids = np.asarray(s.search(q, k * r, EXCLUDED), dtype=np.int64)
                    return rerank(store, q, ids, k)

                what = "codes + filtered view"
                out.append((label, "-", r, secs + vsecs, nbytes, what, pqfs, searcher))
        print(f"  built in {out[-1][3]:.1f} s, {fmt_bytes(out[-1][4])}", flush=True)
    return out


# ---------------------------------------------------------------------------- Milvus


class LocalMilvus:
    """A Milvus Lite gRPC server in a child process (this script's), on a free port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{port}"
        self.log = (data_dir.parent / "milvus-server.log").open("w")
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "milvus_lite", "server"),
                *("--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port)),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"milvus_lite server exited ({self.proc.returncode})")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
            time.sleep(0.2)
        self.stop()
        raise SystemExit("milvus_lite server did not start within 60 s")

    def memory(self) -> dict[str, int]:
        """VmRSS, VmHWM (peak) and RssAnon of the server process, in bytes."""
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "VmHWM", "RssAnon"):
                    out[key] = int(line.split()[1]) * 1024
        return out

    def segments(self) -> int:
        return sum(1 for _ in self.data_dir.rglob("data_*.parquet"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def milvus_ingest(
    client: Any,
    store: F16,
    record: I64,
    row_class: NDArray[np.str_],
    batch: int,
) -> float:
    """Create the collection (``export_to_milvus``'s schema, no index yet) and insert every
    row; seconds for insert + flush."""
    from pymilvus import DataType

    if client.has_collection(COLLECTION):
        client.drop_collection(COLLECTION)
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("row", DataType.INT64, is_primary=True)
    schema.add_field("record", DataType.INT64)
    schema.add_field("data_class", DataType.VARCHAR, max_length=16)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=store.shape[1])
    client.create_collection(COLLECTION, schema=schema)
    n = store.shape[0]
    t0 = time.perf_counter()
    last = t0
    for s in range(0, n, batch):
        e = min(n, s + batch)
        block = np.asarray(store[s:e], dtype=np.float32)
        client.insert(
            COLLECTION,
            [
                {
                    "row": s + i,
                    "record": int(record[s + i]),
                    "data_class": str(row_class[s + i]),
                    "vector": block[i],
                }
                for i in range(e - s)
            ],
        )
        if time.perf_counter() - last > 60:
            last = time.perf_counter()
            print(f"  inserted {e:,} rows in {last - t0:.0f} s", flush=True)
    client.flush(COLLECTION)
    held = int(client.get_collection_stats(COLLECTION).get("row_count", 0))
    if held != n:
        raise SystemExit(f"Milvus holds {held} of {n} rows")
    return time.perf_counter() - t0


def milvus_index(client: Any, index_type: str, params: dict[str, Any]) -> float:
    """Replace the collection's vector index and load it; seconds for build + load."""
    t0 = time.perf_counter()
    with contextlib.suppress(Exception):
        client.release_collection(COLLECTION)
    if client.list_indexes(COLLECTION):
        client.drop_index(COLLECTION, "vector")
    ip = client.prepare_index_params()
    ip.add_index(field_name="vector", index_type=index_type, metric_type="IP", params=params)
    client.create_index(COLLECTION, ip)
    client.load_collection(COLLECTION)
    return time.perf_counter() - t0


def milvus_settings(args: argparse.Namespace, rows_per_segment: int) -> list[Any]:
    """(index type, build params, [(label, search params, R), ...]) per ``--milvus-index``."""
    nlist = args.milvus_nlist or default_nlist(rows_per_segment)
    out = []
    for it in args.milvus_index:
        if it == "FLAT":
            out.append((it, {}, [("-", {}, 1)]))
        elif it.startswith("IVF"):
            sweep = [
                (f"nlist={nlist} nprobe={p}", {"nprobe": p}, args.milvus_rerank)
                for p in args.milvus_nprobe
            ]
            out.append((it, {"nlist": nlist}, sweep))
        else:  # HNSW
            out.append(
                (
                    it,
                    {"M": 16, "efConstruction": 200},
                    [(f"M=16 ef={e}", {"ef": e}, args.milvus_rerank) for e in args.milvus_ef],
                )
            )
    return out


# ---------------------------------------------------------------------------- estimate


def paper_estimate(results: list[Result], n: int, dims: int, rss: int | None) -> list[dict]:
    """Vector memory, 128 GiB nodes and scan time at 10^9 and 10^11 tokens, scaled linearly
    from the measured rows (an extrapolation, not a measurement). ``rss``: what the Milvus
    server's resident memory grew by when it loaded the FLAT collection."""
    exact = next((r for r in results if r.backend == "faiss" and r.index.startswith("exact")), None)
    flat = next((r for r in results if r.backend == "milvus" and r.index == "FLAT"), None)
    overhead = rss / (n * dims * 4) if rss else None
    # pq-fs: the fastest R reaching recall 0.95, else the most faithful R.
    pq = [r for r in results if r.index.startswith("pq-fs")]
    good = [r for r in pq if r.recall >= 0.95]
    pqfs = (
        min(good, key=lambda r: r.p50_ms) if good else max(pq, key=lambda r: r.recall, default=None)
    )
    per_row = {
        "FAISS exact (fp16)": (2 * FULL_DIMS, exact),
        "FAISS pq-fs (codes)": (FULL_DIMS / 8, pqfs),
        "Milvus FLAT (fp32 raw)": (4 * FULL_DIMS, flat),
    }
    if overhead:
        per_row[f"Milvus Lite FLAT (RSS growth, x{overhead:.1f} raw)"] = (
            4 * FULL_DIMS * overhead,
            flat,
        )
    scale_cells = FULL_DIMS / dims
    out = []
    for tokens in (1e9, 1e11):
        rows = tokens / STRIDE_TOKENS
        for what, (bpr, res) in per_row.items():
            total = rows * bpr
            nodes = max(1, math.ceil(total / (NODE_BYTES * NODE_FILL)))
            scan_s = None
            if res is not None:
                scan_s = res.p50_ms / 1e3 * (rows / n) * scale_cells
            out.append(
                {
                    "tokens": tokens,
                    "rows": rows,
                    "store": what,
                    "timing_from": None if res is None else f"{res.index} R={res.rerank}",
                    "bytes_per_row": bpr,
                    "bytes": total,
                    "nodes": nodes,
                    "scan_s_one_node": scan_s,
                    "scan_s_per_shard": None if scan_s is None else scan_s / nodes,
                }
            )
    return out


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.2f} s" if s >= 1 else f"{s * 1e3:.0f} ms"


# ---------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, help="built index whose vectors seed the store")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the store")
    parser.add_argument(
        "--dims", type=int, default=256, help="keep the first D dims of each row (0: all)"
    )
    parser.add_argument("--queries", choices=["questions", "rows"], default="questions")
    parser.add_argument("--questions", type=Path, help="question JSONL for --queries questions")
    parser.add_argument("--n-queries", type=int, default=100)
    parser.add_argument(
        "--milvus-queries",
        type=int,
        default=0,
        help="time Milvus on only the first N queries (0: all; for 10^7 rows)",
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--rerank",
        type=int,
        nargs="+",
        default=[10, 80],
        help="R values: ANN kinds fetch k x R rows and re-score them exactly (80 = what the "
        "engine fetches for top_k=10: top_k x 8 rows x its rerank 10)",
    )
    parser.add_argument("--noise", type=float, default=0.0, help="eta (0: auto, index_scale.py)")
    parser.add_argument(
        "--faiss-kinds", nargs="*", default=["exact", "pq-fs"], choices=["exact", "pq-fs"]
    )
    parser.add_argument(
        "--milvus-index",
        nargs="*",
        default=["FLAT", "IVF_SQ8"],
        choices=["FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW"],
    )
    parser.add_argument(
        "--milvus-nlist", type=int, default=0, help="IVF lists per segment (0: 4 sqrt(rows/seg))"
    )
    parser.add_argument("--milvus-nprobe", type=int, nargs="+", default=[64, 256])
    parser.add_argument(
        "--milvus-rerank",
        type=int,
        default=10,
        help="R of Milvus's ANN indexes (their recall is set by nprobe/ef: R=80 measured "
        "the same recall as R=10 at 2*10^5 rows)",
    )
    parser.add_argument("--milvus-ef", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--milvus-uri", help="an existing Milvus (default: start Milvus Lite)")
    parser.add_argument("--insert-batch", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench/vector-backends"))
    parser.add_argument("--keep", action="store_true", help="keep the store and Milvus data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    add_omp_argument(parser)
    args = parser.parse_args(argv)
    apply_omp_wait_policy(args.omp_wait_policy)
    faiss = import_faiss()
    import pymilvus

    index_dir = args.index or default_index()
    print(
        machine(),
        f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), "
        f"pymilvus {pymilvus.__version__}",
    )
    rng = np.random.default_rng(args.seed)
    real = np.load(index_dir / "vectors.f16.npy").astype(np.float32)
    n0, d_full = real.shape
    dims = args.dims or d_full
    real = cut(real, dims)
    base, held_rows, sim, eta = seed_rows(real, args.queries, args.n_queries, args.noise, rng)
    print(
        f"seed rows {index_dir}/vectors.f16.npy: {n0:,} x {d_full}, first {dims} dims kept; "
        f"median nearest-neighbour cosine {sim:.3f} -> noise eta {eta:.3f}",
        flush=True,
    )
    store_path = args.workdir / "vectors.f16.npy"
    store = synthesize_store(base, args.rows, eta, args.seed, store_path)
    queries, qdesc = synthetic_queries(
        held_rows, eta, args.seed, index_dir, args.questions, args.n_queries, dims
    )
    del real, base
    record, row_class = make_classes(args.rows, args.seed)
    private = row_class == "private"
    shares = {c: float(np.mean(row_class == c)) for c in CLASSES}
    print(
        f"queries: {qdesc}; classes "
        + ", ".join(f"{c} {100 * s:.1f}%" for c, s in shares.items())
        + "; every search excludes private",
        flush=True,
    )
    t0 = time.perf_counter()
    truth = allowed_truth(store, queries, private, args.k)
    print(f"ground truth (exact fp32, non-private) in {time.perf_counter() - t0:.1f} s", flush=True)
    _warm(store)

    results: list[Result] = []
    faiss_runs = faiss_contenders(store, row_class, args.faiss_kinds, args.k, args.rerank)
    base_fn = next((f[6] for f in faiss_runs if f[0].startswith("exact")), None)
    if base_fn is None:
        raise SystemExit("the FAISS exact baseline is needed (--faiss-kinds exact ...)")
    for label, params, r, secs, nbytes, what, fn, _ in faiss_runs:
        found, mine, theirs = measure(fn, base_fn, queries, args.k)
        results.append(
            Result(
                "faiss",
                label,
                params,
                r,
                secs,
                None,
                nbytes,
                what,
                queries.shape[0],
                mine.median * 1e3,
                mine.quantile(0.99) * 1e3,
                recall_at_k(found, truth),
                theirs.median * 1e3,
            )
        )
        res = results[-1]
        print(f"  {label}: p50 {res.p50_ms:.2f} ms, recall {res.recall:.3f}", flush=True)
    # Keep only the baseline alive while Milvus runs.
    faiss_runs = [f for f in faiss_runs if f[6] is base_fn]
    gc.collect()

    milvus_info: dict[str, Any] = {}
    server_rss: int | None = None
    server: LocalMilvus | None = None
    if args.milvus_index:
        from pymilvus import MilvusClient

        data_dir = args.workdir / "milvus.db"
        shutil.rmtree(data_dir, ignore_errors=True)
        server = None if args.milvus_uri else LocalMilvus(data_dir)
        uri = args.milvus_uri or (server.uri if server else "")
        idle = server.memory() if server else {}
        client = MilvusClient(uri=uri)
        try:
            print(f"milvus at {uri}: inserting {args.rows:,} rows", flush=True)
            ingest = milvus_ingest(client, store, record, row_class, args.insert_batch)
            segments = server.segments() if server else 0
            per_seg = args.rows // segments if segments else args.rows
            milvus_info = {"uri": uri, "ingest_s": ingest, "segments": segments or None}
            if server:
                milvus_info["memory_idle"] = idle
                milvus_info["memory_after_ingest"] = server.memory()
            print(
                f"  inserted + flushed in {ingest:.0f} s"
                + (f"; {segments} segments of ~{per_seg:,} rows" if segments else ""),
                flush=True,
            )
            mq = queries[: args.milvus_queries] if args.milvus_queries else queries
            mtruth = truth[: mq.shape[0]]
            for it, build_params, sweep in milvus_settings(args, per_seg):
                print(f"milvus {it} {build_params}: building + loading", flush=True)
                secs = milvus_index(client, it, build_params)
                mem = server.memory() if server else {}
                milvus_info[f"memory_{it}"] = mem
                if it == "FLAT" and mem:
                    server_rss = mem["VmRSS"] - idle["VmRSS"]
                print(f"  built + loaded in {secs:.1f} s; server {mem}", flush=True)
                for label, sparams, r in sweep:
                    searcher = MilvusSearcher(client, COLLECTION, sparams)

                    def mfn(q: F32, s: MilvusSearcher = searcher, r: int = r) -> I64:
                        ids = np.asarray(s.search(q, args.k * r, EXCLUDED), dtype=np.int64)
                        return rerank(store, q, ids, args.k) if r > 1 else ids

                    found, mine, theirs = measure(mfn, base_fn, mq, args.k)
                    results.append(
                        Result(
                            "milvus",
                            it,
                            label,
                            r,
                            secs,
                            ingest,
                            mem.get("VmRSS"),
                            f"server RSS (idle {fmt_bytes(idle['VmRSS'])})" if mem else "unknown",
                            mq.shape[0],
                            mine.median * 1e3,
                            mine.quantile(0.99) * 1e3,
                            recall_at_k(found, mtruth),
                            theirs.median * 1e3,
                        )
                    )
                    res = results[-1]
                    print(
                        f"  {it} {label}: p50 {res.p50_ms:.1f} ms, recall {res.recall:.3f}",
                        flush=True,
                    )
            if server:
                milvus_info["memory_peak"] = server.memory()["VmHWM"]
        finally:
            client.close()
            if server:
                server.stop()
            if not args.keep:
                shutil.rmtree(data_dir, ignore_errors=True)

    print(
        f"\n{args.rows:,} rows x {dims} dims (first {dims} of {d_full}, renormalized); {qdesc}; "
        f"private excluded inside every search; recall@{args.k} vs exact fp32 over non-private "
        f"rows; single-query latency incl. re-rank; R = k x R rows fetched and re-scored; "
        f"'vs exact' = p50 / FAISS exact's p50 over the same queries, interleaved"
    )
    if milvus_info:
        print(
            "Milvus: "
            + ("Milvus Lite (pure-Python engine) in a child process" if server else uri)
            + f", ingest {milvus_info['ingest_s']:.0f} s"
            + f" ({args.insert_batch:,}-row inserts + flush)"
            + (f", {milvus_info['segments']} segments" if milvus_info.get("segments") else "")
            + (
                f", server peak RSS {fmt_bytes(milvus_info['memory_peak'])}"
                if "memory_peak" in milvus_info
                else ""
            )
        )
    rows = [
        [
            r.backend,
            r.index,
            r.params,
            "-" if r.rerank == 1 else str(r.rerank),
            f"{r.build_s:.1f}",
            "-" if r.memory_bytes is None else fmt_bytes(r.memory_bytes),
            r.memory_what,
            str(r.queries),
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.recall:.3f}",
            f"{r.vs_exact:.2f}x",
        ]
        for r in results
    ]
    print_table(
        [
            "backend",
            "index",
            "params",
            "R",
            "build+load s",
            "memory",
            "memory is",
            "queries",
            "p50 ms",
            "p99 ms",
            f"recall@{args.k}",
            "p50 vs exact",
        ],
        rows,
    )

    estimate = paper_estimate(results, args.rows, dims, server_rss)
    print(
        f"\nPAPER ESTIMATE (extrapolated linearly from the rows above, not measured): rows = "
        f"tokens / {STRIDE_TOKENS} (16-token stride windows) at the store's real width "
        f"({FULL_DIMS} dims); nodes of 128 GiB filled to {NODE_FILL:.0%} with vectors; "
        f"'scan, one node' = the measured p50 scaled by rows x dims ({args.rows:,} x {dims} "
        f"here) on this machine's cores, 'per shard' = that / nodes (shards searched in "
        f"parallel). The fp16 store that re-ranking reads ({2 * FULL_DIMS:,} B/row) is extra "
        f"for pq-fs and Milvus, and may stay on disk (memory-mapped). Milvus Lite's time and RSS "
        f"growth have a per-row part (Python) that does not grow with dims: scaled from few "
        f"dims they overstate."
    )
    print_table(
        [
            "tokens",
            "rows",
            "vectors",
            "B/row",
            "memory",
            "nodes",
            "timing from",
            "scan, one node",
            "per shard",
        ],
        [
            [
                f"{e['tokens']:.0e}",
                f"{e['rows']:.3g}",
                e["store"],
                f"{e['bytes_per_row']:,.0f}",
                f"{e['bytes'] / 1e9:,.0f} GB",
                str(e["nodes"]),
                e["timing_from"] or "-",
                _fmt_s(e["scan_s_one_node"]),
                _fmt_s(e["scan_s_per_shard"]),
            ]
            for e in estimate
        ],
    )

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "rows": args.rows,
                    "dims": dims,
                    "full_dims": d_full,
                    "eta": eta,
                    "queries": qdesc,
                    "class_shares": shares,
                    "k": args.k,
                    "milvus": milvus_info,
                    "results": [asdict(r) | {"vs_exact": r.vs_exact} for r in results],
                    "estimate": estimate,
                },
                indent=2,
            )
        )
        print(f"\nwrote {args.out}")
    del faiss_runs
    if not args.keep:
        del store
        store_path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
