"""Takedowns: removed records leave every file of the index, the rest is moved, not recomputed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from auditor_server.attribution import changes as takedown
from auditor_server.attribution import layout
from auditor_server.attribution.build import build_index
from auditor_server.attribution.config import FeatureConfig
from auditor_server.attribution.engine import AttributionEngine
from auditor_server.attribution.snapshots import ids_digest, read_history
from auditor_server.attribution.store import ShardStore, plan_shards
from auditor_server.corpus.catalog import Catalog
from auditor_server.corpus.records import read_corpus
from auditor_server.errors import InputError
from auditor_server.fsutil import sha256_json
from tests.fixtures.tiny_index import TINY_FEATURES, build_tiny_index

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_tiny_index(tmp_path_factory.mktemp("takedown"), seed=5)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``auditor-server ARGS`` as a lab would, and insist it succeeds."""
    proc = subprocess.run(
        [sys.executable, "-m", "auditor_server.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _copy(built: dict[str, Path], tmp_path: Path) -> Path:
    index = tmp_path / "index"
    shutil.copytree(built["index"], index)
    return index


def _victims(corpus: Path) -> tuple[list[str], bytes]:
    """One public and one private record, and a phrase only the public one contains."""
    records = read_corpus(corpus)
    public = next(r for r in records if r.source.data_class == "public" and len(r.text) > 80)
    private = next(r for r in records if r.source.data_class == "private")
    phrase = public.text[10:60]
    assert sum(phrase in r.text for r in records) == 1
    return [public.id, private.id], phrase.encode("utf-8")


def _files_holding(directory: Path, needle: bytes) -> list[str]:
    return sorted(
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.is_file() and needle in p.read_bytes()
    )


def _stored_rows(index: Path) -> tuple[np.ndarray, np.ndarray]:
    plan = json.loads((index / layout.PLAN).read_text())
    shards = plan_shards(plan["n_rows"], FeatureConfig.from_dict(plan["feature_config"]).shard_rows)
    parts = [ShardStore(index).read_encoded(s) for s in shards]
    return np.concatenate([u for u, _ in parts]), np.concatenate([n for _, n in parts])


def test_removed_records_leave_every_file_and_the_rest_is_moved_bit_for_bit(
    built: dict[str, Path], tmp_path: Path
) -> None:
    index = _copy(built, tmp_path)
    victims, phrase = _victims(built["corpus"])
    before = json.loads((index / layout.MANIFEST).read_text())
    with np.load(index / layout.ROWS) as npz:
        old_records = npz["record"]
    with Catalog.open(index / layout.CATALOG) as catalog:
        ids_before = catalog.ids()
    old_units, old_norms = _stored_rows(index)
    # Without the takedown the text is on disk (catalog, verbatim tokens) and answers cite it.
    assert _files_holding(index, phrase)
    (tmp_path / "ids.txt").write_text("# erasure request 42\n" + "\n".join(victims) + "\n\n")

    proc = _cli("remove", "--index", str(index), "--ids", str(tmp_path / "ids.txt"))
    assert "removed 2 records" in proc.stdout

    after = json.loads((index / layout.MANIFEST).read_text())
    assert after["snapshot_id"] != before["snapshot_id"]
    assert after["n_records"] == before["n_records"] - 2
    assert _files_holding(index, phrase) == []  # not hidden: gone
    assert not (index / layout.TAKEDOWN_STAGE).exists()
    # The catalog is exactly the corpus without the victims (same manifest hash).
    remaining = [r for r in read_corpus(built["corpus"]) if r.id not in victims]
    with Catalog.open(index / layout.CATALOG) as catalog:
        assert catalog.ids() == [r.id for r in remaining]
    # Kept rows are the old stored rows, bit for bit, in order; removed rows are gone.
    gone = [ids_before.index(v) for v in victims]
    keep = ~np.isin(old_records, gone)
    new_units, new_norms = _stored_rows(index)
    assert len(new_units) == int(keep.sum()) == after["n_rows"] < before["n_rows"]
    assert np.array_equal(new_units, old_units[keep])
    assert np.array_equal(new_norms, old_norms[keep])
    with AttributionEngine.open(index) as engine:
        text = remaining[0].text
        answer = engine.attribute(text[:40], text[40:120], top_k=50)
        assert not {r.record_id for r in answer.results} & set(victims)
        assert engine.snapshot_id == after["snapshot_id"]

    history = read_history(index)
    assert [e["snapshot_id"] for e in history] == [before["snapshot_id"], after["snapshot_id"]]
    assert history[1]["parent"] == before["snapshot_id"]
    assert history[1]["change"] == "remove" and history[1]["records_removed"] == 2
    assert history[1]["removed_ids_sha256"] == ids_digest(victims)
    for entry, manifest in zip(history, (before, after), strict=True):
        assert sha256_json(entry["commitments"]) == manifest["snapshot_id"]
        assert entry["commitments"]["corpus_manifest_hash"] == manifest["corpus_manifest_hash"]


def test_a_fresh_build_of_the_smaller_corpus_gives_the_same_index(
    built: dict[str, Path], tmp_path: Path
) -> None:
    index = _copy(built, tmp_path)
    victims, _ = _victims(built["corpus"])
    takedown.remove_records(index, victims)
    smaller = tmp_path / "smaller.jsonl"
    smaller.write_text(
        "".join(
            line + "\n"
            for line in built["corpus"].read_text().splitlines()
            if line.strip() and json.loads(line)["id"] not in victims
        )
    )
    fresh = tmp_path / "fresh"
    assert build_index(
        model_dir=built["model"], corpus_path=smaller, out_dir=fresh,
        feature_config=TINY_FEATURES, progress=False,
    )  # fmt: skip
    a = json.loads((index / layout.MANIFEST).read_text())
    b = json.loads((fresh / layout.MANIFEST).read_text())
    assert a["corpus_manifest_hash"] == b["corpus_manifest_hash"]
    assert a["n_rows"] == b["n_rows"]
    np.testing.assert_allclose(
        np.load(index / layout.VECTORS).astype(np.float32),
        np.load(fresh / layout.VECTORS).astype(np.float32),
        atol=2e-3,
    )


def test_unknown_ids_change_nothing(built: dict[str, Path], tmp_path: Path) -> None:
    index = _copy(built, tmp_path)
    manifest = (index / layout.MANIFEST).read_bytes()
    victims, _ = _victims(built["corpus"])
    with pytest.raises(InputError, match="1 id\\(s\\) are not in the index \\('nope'\\)"):
        takedown.remove_records(index, [victims[0], "nope"])
    with pytest.raises(InputError, match="no record id"):
        takedown.remove_records(index, [])
    with Catalog.open(index / layout.CATALOG) as catalog:
        every = catalog.ids()
    with pytest.raises(InputError, match="every record"):
        takedown.remove_records(index, every)
    assert (index / layout.MANIFEST).read_bytes() == manifest
    assert not (index / layout.TAKEDOWN_STAGE).exists()
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(InputError, match="names no record id"):
        takedown.read_ids(tmp_path / "empty.txt")


def test_a_crash_during_the_commit_is_finished_by_the_rerun(
    built: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = _copy(built, tmp_path)
    victims, phrase = _victims(built["corpus"])

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the process dies between switching files and refitting

    monkeypatch.setattr(takedown, "publish_from_shards", crash)
    with pytest.raises(KeyboardInterrupt):
        takedown.remove_records(index, victims)
    assert not (index / layout.MANIFEST).exists()  # not openable half-switched
    assert (index / layout.TAKEDOWN_STAGE / takedown.STAGED).exists()
    monkeypatch.undo()

    result = takedown.remove_records(index, victims)  # the same request, rerun
    assert result.records_removed == 2
    assert _files_holding(index, phrase) == []
    with AttributionEngine.open(index) as engine:
        assert engine.snapshot_id == result.snapshot_id
    assert [e["change"] for e in read_history(index)] == ["build", "remove"]


def test_a_crash_while_staging_leaves_the_index_untouched(
    built: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = _copy(built, tmp_path)
    victims, _ = _victims(built["corpus"])
    manifest = (index / layout.MANIFEST).read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(takedown, "_restage_shards", crash)
    with pytest.raises(KeyboardInterrupt):
        takedown.remove_records(index, victims)
    assert (index / layout.MANIFEST).read_bytes() == manifest
    with AttributionEngine.open(index) as engine:  # still serves the old snapshot
        assert engine.snapshot_id == json.loads(manifest)["snapshot_id"]
    monkeypatch.undo()
    result = takedown.remove_records(index, victims)  # the partial stage is discarded
    assert (
        result.records_removed == 2
        and result.parent_snapshot_id == json.loads(manifest)["snapshot_id"]
    )


def _split(corpus: Path, tmp_path: Path, n_new: int) -> tuple[Path, Path]:
    lines = [line for line in corpus.read_text().splitlines() if line.strip()]
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("\n".join(lines[:-n_new]) + "\n")
    second.write_text("\n".join(lines[-n_new:]) + "\n")
    return first, second


def test_added_records_are_the_only_rows_featurized(built: dict[str, Path], tmp_path: Path) -> None:
    first, second = _split(built["corpus"], tmp_path, 7)
    index = tmp_path / "grown"
    assert build_index(
        model_dir=built["model"], corpus_path=first, out_dir=index,
        feature_config=TINY_FEATURES, progress=False,
    )  # fmt: skip
    before = json.loads((index / layout.MANIFEST).read_text())
    assert before["n_rows"] % TINY_FEATURES.shard_rows  # the last shard is partial: it must grow
    full_shards = {
        p.name: p.read_bytes()
        for p in (index / "shards").glob("*.npz")
        if p.stem != f"shard-{len(before['shards']) - 1:05d}"
    }
    proc = _cli("add", "--index", str(index), "--corpus", str(second))
    assert "added 7 records" in proc.stdout
    after = json.loads((index / layout.MANIFEST).read_text())
    reference = json.loads((built["index"] / layout.MANIFEST).read_text())
    # The same corpus, rows and (up to float rounding) vectors as building it whole...
    assert after["corpus_manifest_hash"] == reference["corpus_manifest_hash"]
    assert after["n_rows"] == reference["n_rows"]
    np.testing.assert_allclose(
        np.load(index / layout.VECTORS).astype(np.float32),
        np.load(built["index"] / layout.VECTORS).astype(np.float32),
        atol=2e-3,
    )
    # ...but the full shards of the old store were not rewritten.
    for name, data in full_shards.items():
        assert (index / "shards" / name).read_bytes() == data
    history = read_history(index)
    assert [(e["change"], e["records_added"]) for e in history] == [("build", 0), ("add", 7)]
    with pytest.raises(InputError, match="already in the index"):
        takedown.add_records(index, second)  # the same ids again
    assert json.loads((index / layout.MANIFEST).read_text()) == after
