"""The lab CLI end to end on the tiny preset: clear errors for bad input, real artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "auditor_server.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


GOOD = {
    "id": "r1",
    "text": "Some text.",
    "source": {
        "title": "T",
        "publisher": "P",
        "url": "https://x.example/1",
        "license": "CC0-1.0",
        "data_class": "public",
    },
}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"{not json", "line 2: field 'record'"),
        (
            json.dumps(
                {**GOOD, "id": "r2", "source": {**GOOD["source"], "data_class": "secret"}}
            ).encode(),
            "line 2: field 'source.data_class': unknown data class 'secret'",
        ),
        (
            json.dumps({k: v for k, v in GOOD.items() if k != "text"}).encode(),
            "line 2: field 'text'",
        ),
        (json.dumps(GOOD).encode(), "line 2: field 'id': duplicate id 'r1'"),
        (json.dumps({**GOOD, "id": "r3", "text": "  "}).encode(), "line 2: field 'text'"),
        (b'{"id": "r4", "text": "\xff\xfe"}', "line 2: field 'record'"),
    ],
)
def test_ingest_rejects_bad_lines_and_leaves_no_catalog(
    tmp_path: Path, line: bytes, expected: str
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(json.dumps(GOOD).encode() + b"\n" + line + b"\n")
    catalog = tmp_path / "catalog.sqlite"
    proc = run_cli("ingest", "--corpus", str(corpus), "--catalog", str(catalog))
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr
    assert proc.stderr.startswith("error: corpus.jsonl: ")
    assert "Traceback" not in proc.stderr
    assert not catalog.exists()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_demo_corpus_train_build_attribute_on_the_tiny_preset(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    proc = run_cli("demo-corpus", "--out", str(corpus), "--size", "tiny", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    questions = tmp_path / "corpus.questions.jsonl"
    assert questions.exists()

    ok = run_cli("ingest", "--corpus", str(corpus), "--catalog", str(tmp_path / "c.sqlite"))
    assert ok.returncode == 0 and "ingested" in ok.stdout

    model = tmp_path / "model"
    proc = run_cli(
        "train", "--corpus", str(corpus), "--out", str(model), "--preset", "tiny", "--epochs", "1"
    )
    assert proc.returncode == 0, proc.stderr
    assert (model / "config.json").exists()

    index = tmp_path / "index"
    proc = run_cli(
        "build",
        "--model",
        str(model),
        "--corpus",
        str(corpus),
        "--out",
        str(index),
        "--questions",
        str(questions),
        "--proj-in",
        "4",
        "--proj-out",
        "4",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    assert "snapshot sha256:" in proc.stdout
    assert "tail-patch" in proc.stdout and "engine/bm25" in proc.stdout
    validation = json.loads((index / "validation.json").read_text())
    asked = [json.loads(line) for line in questions.read_text().splitlines()]
    held_out = sum(1 for q in asked if q["split"] == "heldout")
    assert validation["split"] == "heldout"
    assert validation["n_questions"] == min(16, held_out)
    assert validation["snapshot_id"][:19] in proc.stdout

    q = json.loads(questions.read_text().splitlines()[0])
    proc = run_cli(
        "attribute",
        "--index",
        str(index),
        "--prompt",
        q["prompt"],
        "--completion",
        q["completion"],
        "--top-k",
        "3",
        "--exclude-class",
        "private",
    )
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()[:2] in {"1.", "2.", "3."}]
    assert len(lines) == 3 and "[private]" not in proc.stdout

    gen = run_cli(
        "generate", "--index", str(index), "--prompt", q["prompt"], "--max-new-tokens", "4"
    )
    assert gen.returncode == 0, gen.stderr and gen.stdout.strip()


def test_build_refuses_a_missing_model_dir_cleanly(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps(GOOD) + "\n")
    (tmp_path / "empty").mkdir()
    proc = run_cli(
        "build",
        "--model",
        str(tmp_path / "empty"),
        "--corpus",
        str(corpus),
        "--out",
        str(tmp_path / "index"),
        "--no-progress",
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_train_withhold_trains_the_same_steps_without_the_named_records(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    assert run_cli("demo-corpus", "--out", str(corpus), "--size", "tiny").returncode == 0
    ids = [json.loads(line)["id"] for line in corpus.read_text().splitlines()]
    base = ("train", "--corpus", str(corpus), "--preset", "tiny", "--epochs", "1")
    unknown = tmp_path / "unknown.txt"
    unknown.write_text(f"# ids to withhold\n{ids[0]}\nno-such-record\n")
    proc = run_cli(*base, "--out", str(tmp_path / "bad"), "--withhold", str(unknown))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "1 withheld id(s) are not in the corpus, e.g. 'no-such-record'" in proc.stderr
    assert not (tmp_path / "bad").exists()

    full = run_cli(*base, "--out", str(tmp_path / "full"))
    some = tmp_path / "some.txt"
    some.write_text("\n".join(ids[:3]) + "\n")
    held = run_cli(*base, "--out", str(tmp_path / "held"), "--withhold", str(some))
    assert full.returncode == 0 and held.returncode == 0, held.stderr
    assert "3 records withheld" in held.stdout and "withheld" not in full.stdout
    summaries = [
        json.loads((tmp_path / d / "training_summary.json").read_text()) for d in ("full", "held")
    ]
    assert summaries[0]["steps"] == summaries[1]["steps"]
    assert summaries[1]["withheld_records"] == 3 and summaries[0]["withheld_records"] == 0
    assert summaries[1]["tokens_seen"] < summaries[0]["tokens_seen"]
