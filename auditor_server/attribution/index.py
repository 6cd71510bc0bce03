"""FAISS inner-product index over preconditioned rows, with filtering before ranking.

The index answers "which rows are closest to this query" and nothing else; record-level
aggregation and policy live above it. Filtering uses a FAISS ID selector inside the search,
so excluded rows (private records) are never ranked, never counted and never displace an
allowed row from the candidate list: the answer over the allowed rows is the same as if the
excluded rows had never been stored.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from auditor_server.attribution.config import IndexConfig
from auditor_server.errors import ConfigError


def import_faiss() -> Any:
    """Import faiss lazily, with an install hint: the thin client never needs it."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "faiss is not installed; install the lab extras: pip install 'auditor-sandbox[server]'"
        ) from exc
    return faiss


def default_nlist(n_rows: int) -> int:
    """About 4·√N cells, at least 1, and few enough that each cell trains on ≥ 39 points."""
    return max(1, min(int(4 * math.sqrt(max(n_rows, 1))), max(1, n_rows // 39)))


TRAIN_SAMPLE_ROWS = 262_144
"""Most rows the quantizers of an approximate index are trained on (a seeded sample of the
allowed training rows when there are more): k-means and PQ training need tens of points per
centroid, not every row, and a sample keeps the build's memory independent of the store."""

ADD_CHUNK_ROWS = 65_536
"""Rows converted to float32 and added to the index at a time."""


def _float_rows(vectors: NDArray[Any], rows: NDArray[np.int64] | slice) -> NDArray[np.float32]:
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def training_rows(
    n_rows: int, train_mask: NDArray[np.bool_] | None, *, limit: int = TRAIN_SAMPLE_ROWS
) -> NDArray[np.int64]:
    """Sorted ids of the rows the quantizers train on: all allowed rows, or a seeded sample."""
    allowed = (
        np.arange(n_rows, dtype=np.int64)
        if train_mask is None
        else np.flatnonzero(train_mask).astype(np.int64)
    )
    if allowed.size <= limit:
        return allowed
    rng = np.random.default_rng(0)
    return np.sort(rng.choice(allowed, size=limit, replace=False))


def build_faiss_index(
    vectors: NDArray[Any],
    config: IndexConfig,
    *,
    train_mask: NDArray[np.bool_] | None = None,
    chunk_rows: int = ADD_CHUNK_ROWS,
) -> Any:
    """Build the configured index over ``vectors`` (row ``i`` gets id ``i``).

    ``vectors`` may be a read-only memory map of the fp16 store: rows are converted and
    added ``chunk_rows`` at a time, and approximate kinds train on a sample of at most
    :data:`TRAIN_SAMPLE_ROWS` rows, so the build holds one chunk plus the index's own codes.

    Args:
        vectors: ``(n, d)`` rows (float32 or float16, in memory or memory-mapped).
        config: index kind and IVF parameters.
        train_mask: rows the quantizers may be trained on (all when None); the lab trains
            them only on rows of classes no role is denied, so withheld data cannot shape
            answers about other data.
        chunk_rows: rows added per call.
    """
    faiss = import_faiss()
    n, d = vectors.shape
    metric = faiss.METRIC_INNER_PRODUCT
    if config.index == "exact":
        index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, metric)
    else:
        sample = training_rows(n, train_mask)
        train = _float_rows(vectors, sample)
        if config.index == "pq-fs":
            m = config.pq_m or max(1, d // 4)
            while d % m:
                m -= 1
            index = faiss.index_factory(d, f"PQ{m}x4fs", metric)
        else:
            n_allowed = n if train_mask is None else int(train_mask.sum())
            nlist = config.nlist or default_nlist(n_allowed)
            quantizer = faiss.IndexFlatIP(d)
            if config.index == "ivf-sq":
                index = faiss.IndexIVFScalarQuantizer(
                    quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, metric
                )
            else:
                m = config.pq_m or max(1, d // 8)
                while d % m:
                    m -= 1
                index = faiss.IndexIVFPQ(quantizer, d, nlist, m, 8, metric)
            index.nprobe = config.nprobe
        index.train(train)
        del train
    for start in range(0, n, chunk_rows):
        index.add(_float_rows(vectors, slice(start, min(start + chunk_rows, n))))
    return index


def write_index(index: Any, path: Path) -> None:
    """Serialize an index (callers wrap this in an atomic path)."""
    import_faiss().write_index(index, str(path))


def read_index(path: Path) -> Any:
    """Load an index memory-mapped where FAISS supports it for that kind."""
    faiss = import_faiss()
    for flag in (getattr(faiss, "IO_FLAG_MMAP_IFC", None), faiss.IO_FLAG_MMAP, 0):
        if flag is None:
            continue
        try:
            return faiss.read_index(str(path), flag)
        except RuntimeError:
            continue
    raise ConfigError(f"{path}: cannot read FAISS index")


def takes_selector(index: Any) -> bool:
    """Whether ``index`` filters with an ID selector inside its search (fast-scan cannot)."""
    return not isinstance(index, import_faiss().IndexFastScan)


class RowSelector:
    """A reusable FAISS selector that admits only rows where ``allowed`` is True."""

    def __init__(self, allowed: NDArray[np.bool_]) -> None:
        faiss = import_faiss()
        self.allowed = allowed
        self.count = int(allowed.sum())
        # The bitmap must outlive the selector, which only keeps a pointer to it.
        self._bits = np.packbits(allowed.astype(np.uint8), bitorder="little")
        self.selector = faiss.IDSelectorBitmap(allowed.shape[0], faiss.swig_ptr(self._bits))
        self._view: Any = None

    def view(self, index: Any, vectors: NDArray[Any], chunk: int = 65_536) -> Any:
        """A copy of ``index`` holding only the allowed rows, under their original ids.

        For index kinds that cannot filter inside the search (fast scan): the excluded rows
        are simply not in the copy, so they still take no rank and displace nothing. The
        copy reuses the trained quantizer (trained on non-private rows) and re-encodes the
        allowed rows from the stored vectors once; it is cached with this selector.
        """
        if self._view is None:
            faiss = import_faiss()
            empty = faiss.deserialize_index(faiss.serialize_index(index))
            empty.reset()
            view = faiss.IndexIDMap(empty)
            rows = np.flatnonzero(self.allowed).astype(np.int64)
            for s in range(0, rows.size, chunk):
                part = rows[s : s + chunk]
                view.add_with_ids(np.asarray(vectors[part], dtype=np.float32), part)
            self._view = view
        return self._view


def search(
    index: Any, queries: NDArray[np.float32], k: int, *, selector: RowSelector | None, nprobe: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Top-``k`` rows per query among the selected rows; ids of -1 mean "fewer than k"."""
    faiss = import_faiss()
    q = np.ascontiguousarray(queries, dtype=np.float32)
    sel = selector.selector if selector is not None else None
    if isinstance(index, faiss.IndexIDMap) or not takes_selector(index):
        # A view (IndexIDMap) already holds only the allowed rows; a bare fast-scan index
        # cannot filter, so it may only be searched unfiltered.
        if selector is not None and not isinstance(index, faiss.IndexIDMap):
            raise ValueError("this index kind cannot filter; search selector.view(...) instead")
        scores, ids = index.search(q, k)
        return scores, ids
    if isinstance(index, faiss.IndexIVF):
        params: Any = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
    else:
        params = faiss.SearchParameters(sel=sel)
    scores, ids = index.search(q, k, params=params)
    return scores, ids
