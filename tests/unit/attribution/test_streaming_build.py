"""The pieces of the bounded-memory, multi-process build, each against its in-memory twin."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from auditor_server.attribution.build import model_dtype
from auditor_server.attribution.config import IndexConfig
from auditor_server.attribution.distributed import Topology, rank_device
from auditor_server.attribution.index import build_faiss_index, search, training_rows
from auditor_server.attribution.precondition import Preconditioner, SecondMoments
from auditor_server.attribution.spans import RowTable
from auditor_server.errors import ConfigError


def _features(n: int = 300, modules: int = 3, dims: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.array([1.0, 1e-3, 30.0])[:modules, None]
    return (rng.standard_normal((n, modules, dims)) * scales).astype(np.float32)


def test_moments_folded_shard_by_shard_fit_the_same_preconditioner() -> None:
    feats = _features()
    whole = Preconditioner.fit(feats, IndexConfig())
    moments = SecondMoments(3, 8)
    for start in range(0, len(feats), 64):  # shards of 64 rows, the last one short
        moments.add(feats[start : start + 64])
    assert moments.count == len(feats)
    streamed = Preconditioner.from_moments(moments, IndexConfig())
    np.testing.assert_allclose(streamed.transforms, whole.transforms, rtol=1e-5, atol=1e-6)
    # Two ranks' sums added together are the one-process sums (what all_reduce does).
    a, b = SecondMoments(3, 8), SecondMoments(3, 8)
    a.add(feats[:100])
    b.add(feats[100:])
    np.testing.assert_allclose(a.sums + b.sums, moments.sums, rtol=1e-10)


def test_moments_refuse_features_of_another_shape() -> None:
    with pytest.raises(ValueError, match="do not match"):
        SecondMoments(3, 8).add(_features(modules=2))


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("n_items", [0, 1, 4, 11])
def test_rank_shares_cover_every_record_once_in_order(world: int, n_items: int) -> None:
    shares = [Topology(rank=r, world_size=world).share(n_items) for r in range(world)]
    assert [i for share in shares for i in share] == list(range(n_items))
    assert max(len(s) for s in shares) - min(len(s) for s in shares) <= 1


def test_a_single_process_collective_is_the_identity() -> None:
    topo = Topology()
    block = np.arange(10, dtype=np.int64).reshape(2, 5)
    assert topo.all_gather_rows(block) is block
    sums = np.ones(4)
    assert topo.all_reduce_sum(sums) is sums


def test_row_table_round_trips_through_the_collective_matrix() -> None:
    rows = RowTable(*(np.arange(i, i + 4, dtype=np.int64) for i in range(5)))
    back = RowTable.from_matrix(rows.to_matrix())
    assert back.equals(rows)
    assert np.array_equal(rows.shifted(10).record, rows.record + 10)


def test_each_torchrun_rank_takes_its_own_gpu() -> None:
    assert rank_device("cuda", local_rank=3, world_size=8) == "cuda:3"
    assert rank_device("cuda:1", local_rank=0, world_size=1) == "cuda:1"
    assert rank_device("cpu", local_rank=3, world_size=8) == "cpu"
    with pytest.raises(ConfigError, match="every rank on one GPU"):
        rank_device("cuda:0", local_rank=1, world_size=2)


def test_auto_dtype_follows_the_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    assert model_dtype("auto", tmp_path) is torch.bfloat16
    (tmp_path / "config.json").write_text(json.dumps({"dtype": "float16"}))
    assert model_dtype("auto", tmp_path) is torch.float16
    (tmp_path / "config.json").write_text(json.dumps({}))
    assert model_dtype("auto", tmp_path) is torch.float32
    assert model_dtype("bfloat16", tmp_path) is torch.bfloat16
    with pytest.raises(ConfigError, match="unknown dtype"):
        model_dtype("int8", tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        model_dtype("auto", tmp_path)


def test_quantizers_train_on_a_seeded_sample_of_allowed_rows_only() -> None:
    mask = np.zeros(1000, dtype=bool)
    mask[::3] = True
    assert np.array_equal(training_rows(1000, mask), np.flatnonzero(mask))  # few: all of them
    sample = training_rows(1000, mask, limit=50)
    assert sample.size == 50 and np.all(np.diff(sample) > 0) and mask[sample].all()
    assert np.array_equal(sample, training_rows(1000, mask, limit=50))  # seeded
    assert np.array_equal(training_rows(5, None), np.arange(5))


@pytest.mark.parametrize("kind", ["exact", "ivf-sq", "pq-fs"])
def test_an_index_filled_chunk_by_chunk_from_the_fp16_store_matches_the_in_memory_one(
    tmp_path: Path, kind: str
) -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors.astype(np.float16).astype(np.float32)
    path = tmp_path / "vectors.npy"
    np.save(path, vectors.astype(np.float16))
    mapped = np.load(path, mmap_mode="r")
    config = IndexConfig(index=kind)  # type: ignore[arg-type]
    whole = build_faiss_index(vectors, config, chunk_rows=len(vectors))
    chunked = build_faiss_index(mapped, config, chunk_rows=300)
    assert chunked.ntotal == whole.ntotal == 2000
    queries = vectors[:20] + 0.01
    a = search(whole, queries, 10, selector=None, nprobe=16)
    b = search(chunked, queries, 10, selector=None, nprobe=16)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)
