"""Where the engine's candidate rows come from: the embedded FAISS index or a Milvus cluster.

The engine asks one question of a vector backend: "the best ``k`` rows for this query among
the rows of the classes not excluded". Everything else (record aggregation, the exact
re-score from the stored vectors, BM25 proposals, rank fusion, policy) stays in the engine,
so both backends give the same answers up to the backend's own approximation.

* :class:`FaissSearcher`: the index file built with the snapshot, memory-mapped in the
  serving process (the default; one machine).
* :class:`MilvusSearcher`: a Milvus collection holding the snapshot's rows, for stores that
  outgrow one machine. Milvus shards a collection across query nodes and searches them in
  parallel; the same client code talks to Milvus Lite (an embedded, single-file instance,
  used by the tests) and to a cluster. Excluded classes are removed by a boolean filter on
  the row's ``data_class`` evaluated *inside* the search, before ranking (Milvus builds a
  bitset from the filter and searches only the rows it admits), so a withheld row takes no
  rank and displaces nothing, as with FAISS's ID selector.

Why Milvus (docs/scale.md): it does filtered ANN search across machines, it speaks one client
API from a laptop to a cluster, and it is widely deployed. What was traded: another service
to run, float32 storage in the collection (twice the fp16 store), and a network hop per
query. The tests run against Milvus Lite, whose 3.x releases are a pure-Python engine behind
the same gRPC API: they prove the contract (filter inside the search, same answers as FAISS),
not the production engine's speed (bench/vector_backends.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from auditor_server.attribution import layout
from auditor_server.attribution.index import RowSelector, search, takes_selector
from auditor_server.corpus.catalog import Catalog
from auditor_server.corpus.records import DATA_CLASSES
from auditor_server.errors import ConfigError

log = logging.getLogger(__name__)

MILVUS_INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "DISKANN", "AUTOINDEX")
MILVUS_MAX_K = 16_384
"""Milvus's largest ``limit`` per search."""
EXPORT_BATCH = 2048


class RowSearcher(Protocol):
    """Best rows for a query among the rows whose class is not excluded."""

    name: str
    max_k: int

    def search(self, query: NDArray[np.float32], k: int, excluded: frozenset[str]) -> list[int]:
        """Row ids, best first (at most ``k``; fewer when fewer rows are allowed)."""
        ...

    def close(self) -> None: ...


class FaissSearcher:
    """The snapshot's own FAISS index, filtered by an ID-selector bitmap inside the search."""

    name = "faiss"
    max_k = 1 << 30

    def __init__(
        self, index: Any, vectors: NDArray[np.float16], row_class: NDArray[Any], nprobe: int
    ) -> None:
        self.index = index
        self.vectors = vectors
        self.nprobe = nprobe
        self._row_class = row_class
        self._selectors: dict[frozenset[str], RowSelector | None] = {}

    def selector(self, excluded: frozenset[str]) -> RowSelector | None:
        """The cached selector admitting the rows not of ``excluded`` (None: all rows)."""
        if excluded not in self._selectors:
            if not excluded:
                self._selectors[excluded] = None
            else:
                allowed = ~np.isin(self._row_class, sorted(excluded))
                self._selectors[excluded] = RowSelector(allowed)
        return self._selectors[excluded]

    def search(self, query: NDArray[np.float32], k: int, excluded: frozenset[str]) -> list[int]:
        selector = self.selector(excluded)
        index = self.index
        if selector is not None and not takes_selector(index):
            index = selector.view(index, self.vectors)
        _, ids = search(index, query[None, :], max(k, 1), selector=selector, nprobe=self.nprobe)
        return [int(i) for i in ids[0] if i >= 0]

    def close(self) -> None:
        self._selectors.clear()


def collection_name(snapshot_id: str) -> str:
    """The Milvus collection of a snapshot: one per snapshot, so a takedown's new snapshot
    never shares a collection with rows it removed."""
    digest = snapshot_id.removeprefix("sha256:")
    if not digest.isalnum():
        raise ConfigError(f"malformed snapshot id {snapshot_id!r}")
    return f"auditor_{digest[:40]}"


def class_filter(excluded: frozenset[str]) -> str:
    """The Milvus boolean expression admitting every class not excluded (an allow-list of
    the known class names: nothing from a request is ever pasted into it)."""
    unknown = excluded - set(DATA_CLASSES)
    if unknown:
        raise ConfigError(f"unknown data class(es) {sorted(unknown)}")
    allowed = [c for c in DATA_CLASSES if c not in excluded]
    return "data_class in [" + ", ".join(json.dumps(c) for c in allowed) + "]"


def connect(uri: str, token: str | None = None) -> Any:
    """A Milvus client: ``uri`` is a Milvus Lite file (``*.db``) or a server address."""
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "the Milvus backend needs pymilvus: pip install 'auditor-sandbox[milvus]'"
        ) from exc
    kwargs: dict[str, Any] = {"token": token} if token else {}
    try:
        return MilvusClient(uri, **kwargs)
    except Exception as exc:
        raise ConfigError(f"cannot connect to Milvus at {uri}: {exc}") from exc


class MilvusSearcher:
    """A Milvus collection of the snapshot's rows, filtered by class inside the search."""

    name = "milvus"
    max_k = MILVUS_MAX_K

    def __init__(self, client: Any, collection: str, search_params: dict[str, Any]) -> None:
        self.client = client
        self.collection = collection
        self.search_params = {"metric_type": "IP", "params": search_params}

    @classmethod
    def open(
        cls, uri: str, manifest: dict[str, Any], *, token: str | None = None
    ) -> MilvusSearcher:
        """Attach to the snapshot's collection, checking it holds every row.

        Raises:
            ConfigError: no collection for this snapshot, or an incomplete one (run
                ``auditor-server milvus-export``), or Milvus unreachable.
        """
        client = connect(uri, token)
        name = collection_name(manifest["snapshot_id"])
        if not client.has_collection(name):
            raise ConfigError(
                f"Milvus at {uri} has no collection for snapshot {manifest['snapshot_id']}; "
                "run `auditor-server milvus-export` first"
            )
        rows = _row_count(client, name)
        if rows != manifest["n_rows"]:
            raise ConfigError(
                f"Milvus collection {name} holds {rows} rows, the index {manifest['n_rows']}; "
                "rerun `auditor-server milvus-export`"
            )
        client.load_collection(name)
        info = client.describe_index(name, "vector") or {}
        params = {"ef": 256} if info.get("index_type") == "HNSW" else {}
        if str(info.get("index_type", "")).startswith("IVF"):
            params = {"nprobe": 64}
        return cls(client, name, params)

    def search(self, query: NDArray[np.float32], k: int, excluded: frozenset[str]) -> list[int]:
        k = max(1, min(k, self.max_k))
        hits = self.client.search(
            self.collection,
            data=[np.asarray(query, dtype=np.float32).tolist()],
            limit=k,
            filter=class_filter(excluded),
            search_params=self.search_params,
        )
        return [int(h["row"]) for h in hits[0]]

    def close(self) -> None:
        self.client.close()


def _row_count(client: Any, name: str) -> int:
    client.flush(name)
    return int(client.get_collection_stats(name).get("row_count", 0))


def export_to_milvus(
    index_dir: Path,
    uri: str,
    *,
    index_type: str = "FLAT",
    token: str | None = None,
    drop_previous: bool = True,
) -> tuple[str, int]:
    """Load a finished index's rows into a Milvus collection of its own.

    Each row goes in with its row id (primary key), record ordinal and data class; vectors
    are read chunk by chunk from the memory-mapped store. Rerunning finishes or redoes an
    incomplete export. With ``drop_previous``, the collections of the index's earlier
    snapshots (its snapshot history) are dropped: after a takedown they hold removed rows.

    Returns:
        The collection name and the rows it holds.
    """
    if index_type not in MILVUS_INDEX_TYPES:
        raise ConfigError(f"unknown Milvus index type {index_type!r}")
    from pymilvus import DataType

    manifest = json.loads((index_dir / layout.MANIFEST).read_text())
    client = connect(uri, token)
    try:
        name = collection_name(manifest["snapshot_id"])
        if client.has_collection(name):
            if _row_count(client, name) == manifest["n_rows"]:
                return name, manifest["n_rows"]
            client.drop_collection(name)  # a half-finished export
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field("record", DataType.INT64)
        schema.add_field("data_class", DataType.VARCHAR, max_length=16)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=manifest["dim"])
        params = client.prepare_index_params()
        params.add_index(field_name="vector", index_type=index_type, metric_type="IP")
        client.create_collection(name, schema=schema, index_params=params)
        vectors = np.load(index_dir / layout.VECTORS, mmap_mode="r")
        with np.load(index_dir / layout.ROWS) as npz:
            record = np.asarray(npz["record"])
        with Catalog.open(index_dir / layout.CATALOG) as catalog:
            classes = np.asarray(catalog.data_classes())
        for start in range(0, len(record), EXPORT_BATCH):
            stop = min(start + EXPORT_BATCH, len(record))
            block = np.asarray(vectors[start:stop], dtype=np.float32)
            client.insert(
                name,
                [
                    {
                        "row": start + i,
                        "record": int(record[start + i]),
                        "data_class": str(classes[record[start + i]]),
                        "vector": block[i],
                    }
                    for i in range(stop - start)
                ],
            )
        held = _row_count(client, name)
        if held != manifest["n_rows"]:
            raise ConfigError(f"Milvus collection {name} holds {held} of {manifest['n_rows']} rows")
        if drop_previous:
            _drop_previous(client, index_dir, keep=name)
        return name, held
    finally:
        client.close()


def _drop_previous(client: Any, index_dir: Path, *, keep: str) -> None:
    from auditor_server.attribution.snapshots import read_history

    for entry in read_history(index_dir):
        old = collection_name(entry["snapshot_id"])
        if old != keep and client.has_collection(old):
            client.drop_collection(old)
            log.warning("dropped Milvus collection %s of superseded snapshot", old)
