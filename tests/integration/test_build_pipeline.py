"""Building an index for real: resumption after kill -9, torchrun sharding, engine answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from auditor_server.attribution import layout
from auditor_server.attribution.build import PARTIAL_VECTORS, build_index, reindex
from auditor_server.attribution.config import FeatureConfig, IndexConfig
from auditor_server.attribution.engine import AttributionEngine
from auditor_server.attribution.precondition import Preconditioner
from auditor_server.attribution.store import ShardStore, plan_shards
from auditor_server.corpus.demo import generate_demo_corpus
from auditor_server.errors import ConfigError, IndexMismatchError, InputError
from tests.fixtures.tiny_models import make_tiny_model_dir

REPO = Path(__file__).resolve().parents[2]
FEATURES = FeatureConfig(proj_in=4, proj_out=4, span_tokens=24, span_stride=12, shard_rows=64)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "auditor_server.cli", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _build_args(model: Path, corpus: Path, out: Path) -> list[str]:
    return [
        "build",
        "--model",
        str(model),
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--proj-in",
        "4",
        "--proj-out",
        "4",
        "--span-tokens",
        "24",
        "--span-stride",
        "12",
        "--shard-rows",
        "64",
        "--no-progress",
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    summary = generate_demo_corpus(root / "corpus.jsonl", size="tiny", seed=3)
    model = make_tiny_model_dir(root, "gpt2")
    reference = root / "reference"
    result = build_index(
        model_dir=model,
        corpus_path=summary.corpus_path,
        out_dir=reference,
        feature_config=FEATURES,
        progress=False,
    )
    assert result is not None
    return {
        "root": root,
        "corpus": summary.corpus_path,
        "questions": summary.questions_path,
        "model": model,
        "reference": reference,
    }


def _vectors(index_dir: Path) -> np.ndarray:
    return np.load(index_dir / layout.VECTORS).astype(np.float32)


def test_kill_9_then_rerun_finishes_with_one_row_per_window(setup: dict[str, Path]) -> None:
    out = setup["root"] / "killed"
    args = _cli(*_build_args(setup["model"], setup["corpus"], out))
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    shard_dir = out / "shards"
    while time.monotonic() < deadline:
        if len(list(shard_dir.glob("*.json"))) >= 2 or proc.poll() is not None:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "build finished before it could be killed; shrink --shard-rows"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / layout.MANIFEST).exists()
    done_before = len(list(shard_dir.glob("*.json")))

    rerun = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "reused" in rerun.stdout
    manifest = json.loads((out / layout.MANIFEST).read_text())
    ref = json.loads((setup["reference"] / layout.MANIFEST).read_text())
    assert manifest["n_rows"] == ref["n_rows"]
    assert manifest["snapshot_id"] == ref["snapshot_id"]
    assert len(manifest["shards"]) == len(ref["shards"]) >= done_before
    assert not list(shard_dir.glob(".*.tmp"))
    np.testing.assert_array_equal(_vectors(out), _vectors(setup["reference"]))


def test_torchrun_two_ranks_gives_the_same_features(setup: dict[str, Path]) -> None:
    out = setup["root"] / "torchrun"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--nproc_per_node=2",
        "--master_port=29533",
        "-m",
        "auditor_server.cli",
        *_build_args(setup["model"], setup["corpus"], out),
    ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / layout.MANIFEST).read_text())
    ref = json.loads((setup["reference"] / layout.MANIFEST).read_text())
    assert manifest["n_rows"] == ref["n_rows"]
    # Each rank tokenized half the corpus; the gathered row table is the one-process one.
    with np.load(out / layout.ROWS) as got, np.load(setup["reference"] / layout.ROWS) as want:
        for name in want.files:
            np.testing.assert_array_equal(got[name], want[name])
    # Moments summed over ranks: the same preconditioner up to float rounding.
    with (
        np.load(out / layout.PRECONDITIONER) as got,
        np.load(setup["reference"] / layout.PRECONDITIONER) as want,
    ):
        np.testing.assert_allclose(got["transforms"], want["transforms"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_vectors(out), _vectors(setup["reference"]), atol=2e-3)
    assert not (out / PARTIAL_VECTORS).exists()


def test_bf16_weights_give_nearly_the_float32_rows(setup: dict[str, Path]) -> None:
    out = setup["root"] / "bf16"
    proc = subprocess.run(
        _cli(*_build_args(setup["model"], setup["corpus"], out), "--dtype", "bfloat16"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = _vectors(out), _vectors(setup["reference"])
    cosine = np.sum(got * want, axis=1)  # both unit rows
    assert np.median(cosine) > 0.95, np.median(cosine)
    assert not np.array_equal(got, want)  # bf16 really was used


def test_a_class_the_policy_hides_is_kept_out_of_the_fit(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    index = tmp_path / "index"
    shutil.copytree(setup["reference"], index)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        (REPO / "policy" / "default.yaml")
        .read_text()
        .replace("auditor_registry: auditors.example.yaml", "auditor_registry: auditors.yaml")
        .replace(
            "      public: snippet          # public data as short snippets, not whole records",
            "      public: snippet\n      proprietary: none",
        )
    )
    shutil.copy(REPO / "policy" / "auditors.example.yaml", tmp_path / "auditors.yaml")
    proc = subprocess.run(
        _cli("reindex", "--index", str(index), "--policy", str(policy), "--no-progress"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((index / layout.MANIFEST).read_text())
    assert manifest["index_config"]["fit_exclude_classes"] == ["proprietary"]
    # The preconditioner is exactly the one fitted on the public rows alone.
    with AttributionEngine.open(index) as engine:
        classes = np.asarray(engine.catalog.data_classes())
    rows = np.load(index / layout.ROWS)["record"]
    store = ShardStore(index)
    plan = json.loads((index / layout.PLAN).read_text())
    raw = store.read_all(
        plan_shards(len(rows), FeatureConfig.from_dict(plan["feature_config"]).shard_rows)
    )
    public = classes[rows] == "public"
    assert 0 < public.sum() < (classes[rows] != "private").sum()
    expected = Preconditioner.fit(raw[public], IndexConfig())
    got = Preconditioner.load(index / layout.PRECONDITIONER)
    np.testing.assert_allclose(got.transforms, expected.transforms, rtol=1e-4, atol=1e-6)


def test_engine_answers_with_spans_and_module_shares(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    q = json.loads(setup["questions"].read_text().splitlines()[0])
    # The same index ordered by gradient score alone: the reported scores are the same
    # gradient scores, only the order differs (fused with BM25's ranks by default).
    unfused = tmp_path / "unfused"
    shutil.copytree(setup["reference"], unfused)
    reindex(unfused, IndexConfig(lexical_fusion=0))
    with AttributionEngine.open(unfused) as engine:
        plain = engine.attribute(q["prompt"], q["completion"], top_k=100)
    plain_scores = [r.score for r in plain.results]
    assert plain_scores == sorted(plain_scores, reverse=True)
    by_id = {r.record_id: r.score for r in plain.results}
    with AttributionEngine.open(setup["reference"]) as engine:
        assert engine.index_config.lexical_fusion > 0
        answer = engine.attribute(q["prompt"], q["completion"], top_k=5)
        assert len(answer.results) == 5
        assert [r.rank for r in answer.results] == [1, 2, 3, 4, 5]
        for r in answer.results:
            assert r.score == pytest.approx(by_id[r.record_id], abs=1e-6)
        assert len({r.record_id for r in answer.results}) == 5  # one entry per record
        for r in answer.results:
            text = engine.catalog.get(r.record_id).text
            assert 0 <= r.span.char_start < r.span.char_end <= len(text)
            assert sum(r.module_shares.values()) == pytest.approx(1.0, abs=1e-4)
        assert answer.completion_logprob == pytest.approx(
            engine.score(q["prompt"], q["completion"]).logprob, rel=1e-5
        )
        with pytest.raises(InputError, match="top_k"):
            engine.attribute("a", " b", top_k=0)
        with pytest.raises(InputError, match="completion"):
            engine.attribute("a", "", top_k=3)
        with pytest.raises(InputError, match="unknown data class"):
            engine.attribute("a", " b", exclude_classes={"secret"})


def test_private_rows_are_excluded_before_ranking(setup: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    # The gradient index alone (no lexical candidates, best window): excluding a class is a
    # filter inside the FAISS search, so the other results keep their scores and order.
    copy = tmp_path / "index"
    shutil.copytree(setup["reference"], copy)
    reindex(copy, IndexConfig(lexical_candidates=0, record_score="max"))
    for index_dir in (copy, setup["reference"]):
        with AttributionEngine.open(index_dir) as engine:
            private = [r for r in engine.catalog if r.source.data_class == "private"]
            assert private
            # Ask about a private record's own text: unfiltered it is among the results.
            rec = private[0]
            prompt, completion = rec.text[:40], rec.text[40:80]
            full = engine.attribute(prompt, completion, top_k=10)
            assert rec.id in [r.record_id for r in full.results]
            filtered = engine.attribute(prompt, completion, top_k=10, exclude_classes={"private"})
            assert all(r.data_class != "private" for r in filtered.results)
            if index_dir == copy:
                assert full.results[0].data_class == "private"
                kept = [(r.record_id, r.score) for r in full.results if r.data_class != "private"]
                assert [(r.record_id, r.score) for r in filtered.results][: len(kept)] == kept


def test_reindex_changes_snapshot_and_opening_with_another_model_fails(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(setup["reference"], copy)
    before = json.loads((copy / layout.MANIFEST).read_text())["snapshot_id"]
    after = reindex(copy, IndexConfig(preconditioner="identity", normalization="dot"))
    assert after != before
    with AttributionEngine.open(copy) as engine:
        assert engine.snapshot_id == after
        assert engine.attribute("a", " b", top_k=3).results
    other = make_tiny_model_dir(tmp_path, "gpt2", seed=7)
    with pytest.raises(IndexMismatchError, match="not the model this index was built with"):
        AttributionEngine.open(copy, model_dir=other)
    with pytest.raises(ConfigError, match="not a finished index"):
        AttributionEngine.open(tmp_path)


def test_resuming_with_another_config_is_refused(setup: dict[str, Path]) -> None:
    with pytest.raises(IndexMismatchError, match="feature_config"):
        build_index(
            model_dir=setup["model"],
            corpus_path=setup["corpus"],
            out_dir=setup["reference"],
            feature_config=FeatureConfig(
                proj_in=2, proj_out=2, span_tokens=24, span_stride=12, shard_rows=64
            ),
            progress=False,
        )


def test_cli_attribute_json_and_evaluate(setup: dict[str, Path]) -> None:
    q = json.loads(setup["questions"].read_text().splitlines()[0])
    out = subprocess.run(
        _cli(
            "attribute",
            "--index",
            str(setup["reference"]),
            "--prompt",
            q["prompt"],
            "--completion",
            q["completion"],
            "--top-k",
            "3",
            "--json",
        ),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert len(payload["results"]) == 3 and payload["snapshot_id"].startswith("sha256:")
    ev = subprocess.run(
        _cli(
            "evaluate",
            "--index",
            str(setup["reference"]),
            "--questions",
            str(setup["questions"]),
            "--json",
            "--no-progress",
        ),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    for method in ("gradient", "bm25"):
        m = result["overall"][method]
        assert 0.0 <= m["recall@1"] <= m["recall@10"] <= 1.0
    assert result["overall"]["bm25"]["recall@10"] > 0.5  # the baseline itself works
    assert (setup["reference"] / layout.EVALUATION).exists()
    bad = subprocess.run(
        _cli("attribute", "--index", str(setup["root"]), "--prompt", "a", "--completion", " b"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 3 and "not a finished index" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_pq_fastscan_index_matches_exact_and_excludes_private(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(setup["reference"], copy)
    reindex(copy, IndexConfig(index="pq-fs", rerank=50))
    with (
        AttributionEngine.open(setup["reference"]) as exact,
        AttributionEngine.open(copy) as fast,
    ):
        private = [r for r in exact.catalog if r.source.data_class == "private"]
        rec = private[0]
        prompt, completion = rec.text[:40], rec.text[40:80]
        for excluded in (set(), {"private"}):
            want = exact.attribute(prompt, completion, top_k=5, exclude_classes=excluded)
            got = fast.attribute(prompt, completion, top_k=5, exclude_classes=excluded)
            # Tiny store: top_k*8*rerank candidates cover it, so re-ranking makes it exact.
            assert [r.record_id for r in got.results] == [r.record_id for r in want.results]
            assert [r.score for r in got.results] == pytest.approx(
                [r.score for r in want.results], abs=1e-6
            )
        filtered = fast.attribute(prompt, completion, top_k=10, exclude_classes={"private"})
        assert all(r.data_class != "private" for r in filtered.results)
