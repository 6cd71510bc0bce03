"""Row windows, shard encoding and crash-safe shard bookkeeping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from auditor_server.attribution.config import FeatureConfig, IndexConfig
from auditor_server.attribution.precondition import Preconditioner
from auditor_server.attribution.spans import cut_rows, window_starts
from auditor_server.attribution.store import ShardStore, encode_features, plan_shards
from auditor_server.errors import ConfigError, IntegrityError


@pytest.mark.parametrize(
    ("n", "span", "stride", "expected"),
    [
        (5, 8, 4, [0]),
        (8, 8, 4, [0]),
        (9, 8, 4, [0, 1]),
        (20, 8, 4, [0, 4, 8, 12]),
        (21, 8, 4, [0, 4, 8, 12, 13]),
    ],
)
def test_windows_cover_every_token(n: int, span: int, stride: int, expected: list[int]) -> None:
    starts = window_starts(n, span, stride)
    assert starts == expected
    covered = set().union(*(range(s, min(s + span, n)) for s in starts))
    assert covered == set(range(n))


def test_cut_rows_records_char_spans() -> None:
    offsets = [[(0, 3), (3, 7), (7, 10)], [], [(0, 2)] * 1 + [(2, 5), (5, 9), (9, 12), (12, 20)]]
    rows = cut_rows(offsets, span=3, stride=2)
    assert rows.record.tolist() == [0, 2, 2]
    assert rows.tok_start.tolist() == [0, 0, 2]
    assert rows.tok_end.tolist() == [3, 3, 5]
    assert rows.char_start.tolist() == [0, 0, 5]
    assert rows.char_end.tolist() == [10, 9, 20]


def test_feature_config_rejects_inconsistent_values() -> None:
    with pytest.raises(ConfigError, match="span_stride"):
        FeatureConfig(span_tokens=8, span_stride=9)
    with pytest.raises(ConfigError, match="proj_in must be >= 1"):
        FeatureConfig(proj_in=0)
    with pytest.raises(ConfigError, match="unknown option"):
        FeatureConfig.from_dict({"proj_in": 4, "bogus": 1})
    with pytest.raises(ConfigError, match="unknown preconditioner"):
        IndexConfig(preconditioner="kfac")  # type: ignore[arg-type]


def test_config_defaults_are_pinned() -> None:
    # Changing a default changes every index's snapshot id: make it a deliberate decision.
    assert FeatureConfig().to_dict() == {
        "proj_in": 16,
        "proj_out": 16,
        "seed": 0,
        "include": ["*"],
        "exclude": [],
        "input_embeddings": False,
        "span_tokens": 32,
        "span_stride": 16,
        "batch_size": 32,
        "shard_rows": 1024,
    }
    assert IndexConfig().to_dict() == {
        "preconditioner": "empirical_fisher",
        "damping": 0.1,
        "normalization": "cosine",
        "index": "exact",
        "nlist": 0,
        "nprobe": 16,
        "pq_m": 0,
        "rerank": 10,
        "record_score": "mean",
        "lexical_candidates": 100,
        "lexical_fusion": 10,
        "exclude_private_from_fit": True,
        "fit_exclude_classes": [],
    }
    assert FeatureConfig.from_dict(FeatureConfig().to_dict()) == FeatureConfig()
    assert IndexConfig.from_dict(IndexConfig().to_dict()) == IndexConfig()
    # An index written before record_score / lexical_candidates keeps its old ranking rule.
    legacy = IndexConfig().to_dict()
    del legacy["record_score"], legacy["lexical_candidates"], legacy["lexical_fusion"]
    legacy["preconditioner"] = "gn"
    old = IndexConfig.from_dict(legacy)
    assert (old.record_score, old.lexical_candidates, old.preconditioner) == ("max", 0, "gn")
    assert old.lexical_fusion == 0
    # One built with lexical candidates but before the fusion keeps the gradient order.
    before_fusion = IndexConfig().to_dict()
    del before_fusion["lexical_fusion"]
    assert IndexConfig.from_dict(before_fusion).lexical_fusion == 0
    with pytest.raises(ConfigError, match="lexical_fusion"):
        IndexConfig(lexical_fusion=-1)


def test_fp16_encoding_keeps_small_blocks() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(4, 3, 16)).astype(np.float32)
    raw[:, 1] *= 1e-9  # far below fp16's smallest normal number
    units, norms = encode_features(raw)
    decoded = units.astype(np.float32) * norms[..., None]
    np.testing.assert_allclose(decoded, raw, rtol=2e-3, atol=0)


def test_shards_are_atomic_and_checksummed(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    specs = plan_shards(10, 4)
    assert [(s.start, s.stop) for s in specs] == [(0, 4), (4, 8), (8, 10)]
    feats = np.random.default_rng(1).normal(size=(4, 2, 8)).astype(np.float32)
    assert not store.is_done(specs[0])
    store.write(specs[0], feats)
    assert store.is_done(specs[0])
    np.testing.assert_allclose(store.read(specs[0]), feats, rtol=2e-3, atol=1e-6)
    # A flipped byte is detected, and the shard no longer counts as done.
    data = store.data_path(specs[0])
    blob = bytearray(data.read_bytes())
    blob[-10] ^= 0xFF
    data.write_bytes(bytes(blob))
    assert not store.is_done(specs[0])
    with pytest.raises(IntegrityError, match="checksum"):
        store.read(specs[0])
    with pytest.raises(ValueError, match="got 4 rows"):
        store.write(specs[2], feats)


def test_stale_temporaries_are_removed(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    store.dir.mkdir(parents=True)
    (store.dir / ".shard-00000.npz.abc.tmp").write_bytes(b"half")
    assert store.remove_stale_temporaries() == 1
    assert not list(store.dir.iterdir())


def test_gn_preconditioner_downweights_common_directions() -> None:
    rng = np.random.default_rng(0)
    n, d = 2000, 8
    common = np.zeros(d, dtype=np.float32)
    common[0] = 1.0
    feats = rng.normal(size=(n, 1, d)).astype(np.float32) * 0.1
    feats[:, 0, :] += 5.0 * common  # every example shares direction 0
    cfg = IndexConfig(preconditioner="gn", normalization="dot", damping=1e-3)
    pre = Preconditioner.fit(feats, cfg)
    a = np.zeros((1, 1, d), np.float32)
    a[0, 0, 0] = 1.0
    b = np.zeros((1, 1, d), np.float32)
    b[0, 0, 1] = 1.0
    # Equal raw norms, but the shared direction is shrunk far more than a rare one.
    assert np.linalg.norm(pre.apply(a)) < 0.1 * np.linalg.norm(pre.apply(b))
    ident = Preconditioner.fit(feats, IndexConfig(preconditioner="identity"))
    out = ident.apply(feats[:3])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_preconditioner_round_trip(tmp_path: Path) -> None:
    feats = np.random.default_rng(2).normal(size=(50, 2, 4)).astype(np.float32)
    pre = Preconditioner.fit(feats, IndexConfig())
    pre.save(tmp_path / "p.npz")
    again = Preconditioner.load(tmp_path / "p.npz")
    np.testing.assert_array_equal(pre.apply(feats), again.apply(feats))
