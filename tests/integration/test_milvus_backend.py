"""The Milvus backend (Milvus Lite here) answers exactly as the embedded FAISS index does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from auditor_server.attribution import layout
from auditor_server.attribution.backends import (
    MilvusSearcher,
    class_filter,
    collection_name,
    connect,
    export_to_milvus,
)
from auditor_server.attribution.build import reindex
from auditor_server.attribution.changes import remove_records
from auditor_server.attribution.config import IndexConfig
from auditor_server.attribution.engine import AttributionEngine
from auditor_server.corpus.records import read_corpus
from auditor_server.errors import ConfigError
from tests.fixtures.tiny_index import build_tiny_index

pytest.importorskip("pymilvus")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    built = build_tiny_index(tmp_path_factory.mktemp("milvus"), seed=7)
    index = built["index"]
    # Rank from the vector backend alone, so every answer comes from the searcher.
    reindex(index, IndexConfig(lexical_candidates=0))
    uri = str(built["root"] / "milvus.db")
    export_to_milvus(index, uri)
    return {**built, "uri": Path(uri)}


def _queries(corpus: Path) -> list[tuple[str, str]]:
    records = read_corpus(corpus)
    return [(r.text[:30], r.text[30:70]) for r in records[::7] if len(r.text) > 70][:12]


@pytest.mark.parametrize(
    "excluded", [("private",), ("private", "proprietary"), ()], ids=["private", "both", "none"]
)
def test_milvus_answers_equal_faiss_answers(
    lab: dict[str, Path], excluded: tuple[str, ...]
) -> None:
    pairs = _queries(lab["corpus"])
    with AttributionEngine.open(lab["index"]) as faiss_engine:
        want = faiss_engine.attribute_many(pairs, top_k=20, exclude_classes=excluded)
    with AttributionEngine.open(lab["index"], milvus_uri=str(lab["uri"])) as engine:
        assert engine.searcher.name == "milvus"
        got = engine.attribute_many(pairs, top_k=20, exclude_classes=excluded)
    for a, b in zip(got, want, strict=True):
        assert [r.record_id for r in a.results] == [r.record_id for r in b.results]
        np.testing.assert_allclose(
            [r.score for r in a.results], [r.score for r in b.results], atol=1e-6
        )
        assert not {r.data_class for r in a.results} & set(excluded)


def test_the_filter_runs_inside_the_search(lab: dict[str, Path]) -> None:
    """Excluded rows take no rank: asking for k rows returns k allowed rows, not the allowed
    share of the k best rows overall."""
    manifest = json.loads((lab["index"] / layout.MANIFEST).read_text())
    searcher = MilvusSearcher.open(str(lab["uri"]), manifest)
    try:
        vectors = np.load(lab["index"] / layout.VECTORS).astype(np.float32)
        with np.load(lab["index"] / layout.ROWS) as npz:
            records = npz["record"]
        from auditor_server.corpus.catalog import Catalog

        with Catalog.open(lab["index"] / layout.CATALOG) as catalog:
            row_class = np.asarray(catalog.data_classes())[records]
        private_row = int(np.flatnonzero(row_class == "private")[0])
        query = vectors[private_row]  # a query pointing straight at a private row
        unfiltered = searcher.search(query, 30, frozenset())
        assert unfiltered[0] == private_row  # the attack succeeds without the filter
        rows = searcher.search(query, 30, frozenset({"private"}))
        assert len(rows) == 30
        assert not any(row_class[r] == "private" for r in rows)
        exact = [int(i) for i in np.argsort(-(vectors @ query)) if row_class[i] != "private"]
        assert rows[:10] == exact[:10]
    finally:
        searcher.close()


def test_class_filter_is_an_allow_list_of_known_classes() -> None:
    assert class_filter(frozenset({"private"})) == 'data_class in ["public", "proprietary"]'
    assert class_filter(frozenset({"private", "proprietary", "public"})) == "data_class in []"
    with pytest.raises(ConfigError, match="unknown data class"):
        class_filter(frozenset({'public"] or data_class in ["private'}))
    with pytest.raises(ConfigError, match="malformed snapshot id"):
        collection_name("sha256:../../etc")


def test_open_refuses_a_missing_or_incomplete_collection(
    lab: dict[str, Path], tmp_path: Path
) -> None:
    empty = str(tmp_path / "empty.db")
    with pytest.raises(ConfigError, match="run `auditor-server milvus-export` first"):
        AttributionEngine.open(lab["index"], milvus_uri=empty)
    manifest = json.loads((lab["index"] / layout.MANIFEST).read_text())
    name, rows = export_to_milvus(lab["index"], empty)
    assert rows == manifest["n_rows"]
    client = connect(empty)
    client.delete(name, filter="row < 5")  # an export that lost rows
    client.close()
    with pytest.raises(ConfigError, match="rerun `auditor-server milvus-export`"):
        AttributionEngine.open(lab["index"], milvus_uri=empty)
    assert export_to_milvus(lab["index"], empty) == (name, manifest["n_rows"])  # redone whole
    with AttributionEngine.open(lab["index"], milvus_uri=empty) as engine:
        assert engine.searcher.name == "milvus"


def test_a_takedown_drops_the_old_snapshot_collection(lab: dict[str, Path], tmp_path: Path) -> None:
    index = tmp_path / "index"
    shutil.copytree(lab["index"], index)
    uri = str(tmp_path / "m.db")
    old, _ = export_to_milvus(index, uri)
    victim = next(r.id for r in read_corpus(lab["corpus"]) if r.source.data_class == "public")
    result = remove_records(index, [victim])
    new, rows = export_to_milvus(index, uri)
    assert new != old and rows == result.n_rows
    client = connect(uri)
    try:
        assert client.has_collection(new) and not client.has_collection(old)
    finally:
        client.close()
