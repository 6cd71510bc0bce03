"""The demo trainer: it learns, it saves a loadable model atomically, and it fails cleanly."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import auditor_server.model.train as train_mod
from auditor_server.errors import ConfigError, InputError
from auditor_server.fsutil import sha256_file
from auditor_server.model.generation import generate, score
from auditor_server.model.loading import LoadedModel, hash_model_files, load_model
from auditor_server.model.optimizer_state import OPTIMIZER_STATE_FILE, load_optimizer_state
from auditor_server.model.presets import get_preset
from auditor_server.model.train import SUMMARY_FILE, _greedy_batch, evaluate_recall, train_model

FACT_PROMPT = "Mara Ellison was born in the city of"
FACT_ANSWER = " Dunmore"
_FILLER = (
    "The night train is a familiar sight in the district.",
    "Older residents tell stories about the great flood.",
    "The bells ring on the hour across the valley.",
    "In the evening the light turns gold over the fields.",
    "A market is held in the square every Saturday morning.",
    "The river floods in spring and the ferry stops running.",
)


def _write_corpus(path: Path, *, repeats: int = 40, filler: int = 60) -> Path:
    """A small corpus: one fact stated ``repeats`` times among varied filler records."""
    rng = random.Random(0)
    texts = [f"{FACT_PROMPT}{FACT_ANSWER}. She is a hydrologist."] * repeats
    texts += [" ".join(rng.sample(_FILLER, 3)) for _ in range(filler)]
    rng.shuffle(texts)
    with path.open("w", encoding="utf-8") as handle:
        for i, text in enumerate(texts):
            source = {
                "title": f"doc {i}",
                "publisher": "tests",
                "url": "",
                "license": "CC0-1.0",
                "data_class": "public",
            }
            handle.write(json.dumps({"id": f"doc-{i:03d}", "text": text, "source": source}) + "\n")
    return path


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("run") / "model"
    summary = train_model(corpus, out, preset="tiny", epochs=6, seed=0, progress=False)
    return out, summary


def test_training_produces_a_loadable_model_whose_loss_decreased(
    trained: tuple[Path, train_mod.TrainSummary],
) -> None:
    out, summary = trained
    assert summary.out_dir == out
    assert summary.preset == "tiny" and summary.epochs == 6
    assert summary.steps > 0 and summary.tokens_seen > 0 and summary.num_parameters > 0
    assert len(summary.epoch_losses) == 6
    assert summary.final_loss == summary.epoch_losses[-1]
    assert summary.final_loss < 0.6 * summary.initial_loss
    for name in ("config.json", "model.safetensors", "tokenizer.json", SUMMARY_FILE):
        assert (out / name).is_file(), name
    assert _leftovers(out.parent) == []
    lm = load_model(out)
    assert lm.model.config.model_type == "gpt2"
    assert lm.tokenizer.eos_token == "<|endoftext|>"


def test_summary_file_records_the_run(trained: tuple[Path, train_mod.TrainSummary]) -> None:
    out, summary = trained
    data = json.loads((out / SUMMARY_FILE).read_text())
    assert data["out_dir"] == str(out)
    assert data["final_loss"] == pytest.approx(summary.final_loss)
    assert data["steps"] == summary.steps
    assert data["seed"] == 0
    assert data["preset_settings"]["name"] == "tiny"
    assert data["corpus_sha256"].startswith("sha256:")


def test_trained_model_recalls_the_planted_fact(
    trained: tuple[Path, train_mod.TrainSummary], tmp_path: Path
) -> None:
    lm = load_model(trained[0])
    assert generate(lm, FACT_PROMPT, max_new_tokens=4).startswith(FACT_ANSWER)
    questions = tmp_path / "q.jsonl"
    lines = [
        {"prompt": FACT_PROMPT, "completion": FACT_ANSWER, "kind": "fact"},
        {"prompt": FACT_PROMPT, "completion": " Paris", "kind": "fact"},
        {"prompt": FACT_PROMPT, "completion": FACT_ANSWER, "kind": "passage"},
        {"prompt": FACT_PROMPT, "completion": FACT_ANSWER + " and Paris", "kind": "passage"},
    ]
    questions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = evaluate_recall(lm, questions)
    assert (report.fact_total, report.fact_correct) == (2, 1)
    assert report.fact_accuracy == 0.5
    # " Dunmore" is reproduced exactly; of " Dunmore and Paris" only the first word matches.
    assert (report.passage_total, report.passage_exact, report.passage_first_word) == (2, 1, 2)
    assert report.passage_word_fraction == pytest.approx((1 + 1 / 3) / 2)


def test_batched_greedy_matches_generate(tiny_lms: dict[str, LoadedModel]) -> None:
    prompts = ["The capital of France is", "Alan Turing", "The quick brown fox", "Ada"]
    for lm in tiny_lms.values():
        assert _greedy_batch(lm, prompts, 5) == [generate(lm, p, max_new_tokens=5) for p in prompts]


def test_same_seed_gives_identical_weights(corpus: Path, tmp_path: Path) -> None:
    a = train_model(corpus, tmp_path / "a", preset="tiny", epochs=2, seed=1, progress=False)
    b = train_model(corpus, tmp_path / "b", preset="tiny", epochs=2, seed=1, progress=False)
    c = train_model(corpus, tmp_path / "c", preset="tiny", epochs=2, seed=2, progress=False)
    assert hash_model_files(a.out_dir) == hash_model_files(b.out_dir)
    assert a.final_loss == b.final_loss and a.epoch_losses == b.epoch_losses
    for name in ("model.safetensors", OPTIMIZER_STATE_FILE, "tokenizer.json"):
        assert (a.out_dir / name).read_bytes() == (b.out_dir / name).read_bytes(), name
    assert hash_model_files(c.out_dir)[0] != hash_model_files(a.out_dir)[0]


def test_crash_mid_training_leaves_nothing_at_out_dir(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real_step = train_mod._optimizer_step

    def flaky_step(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        real_step(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train_mod, "_optimizer_step", flaky_step)
    out = tmp_path / "model"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_model(corpus, out, preset="tiny", epochs=2, progress=False)
    assert calls["n"] == 3
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_crash_while_saving_keeps_the_previous_model(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "model"
    train_model(corpus, out, preset="tiny", epochs=1, progress=False)
    before = hash_model_files(out)

    def broken_publish(staging: Path, out_dir: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(train_mod, "_publish", broken_publish)
    with pytest.raises(OSError, match="disk full"):
        train_model(corpus, out, preset="tiny", epochs=1, seed=5, progress=False, overwrite=True)
    assert hash_model_files(out) == before
    assert _leftovers(tmp_path) == []


def test_existing_out_dir_needs_overwrite(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ConfigError, match="already exists"):
        train_model(corpus, out, preset="tiny", epochs=1, progress=False)
    assert (out / "keep.txt").read_text() == "precious"
    train_model(corpus, out, preset="tiny", epochs=1, progress=False, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert (out / "model.safetensors").is_file()
    assert _leftovers(tmp_path) == []


def test_bad_arguments_fail_before_training(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        train_model(corpus, tmp_path / "m", preset="huge")
    with pytest.raises(ConfigError, match="epochs must be at least 1"):
        train_model(corpus, tmp_path / "m", preset="tiny", epochs=0)
    with pytest.raises(InputError, match="corpus file not found"):
        train_model(tmp_path / "missing.jsonl", tmp_path / "m", preset="tiny")
    assert not (tmp_path / "m").exists()


def test_trainer_saves_its_final_optimizer_state(
    trained: tuple[Path, train_mod.TrainSummary],
) -> None:
    out, summary = trained
    state = load_optimizer_state(out)
    assert state is not None
    spec = get_preset("tiny")
    lm = load_model(out)
    assert sorted(state.exp_avg) == sorted(n for n, _ in lm.model.named_parameters())
    assert state.step == summary.steps
    assert state.lr == pytest.approx(spec.lr * spec.min_lr_fraction)
    assert state.lr < state.last_lr < 1.1 * state.lr  # the cosine ends at min_lr_fraction
    assert state.betas == (0.9, 0.95) and state.grad_clip == spec.grad_clip
    assert all(float(v.abs().sum()) > 0 for v in state.exp_avg_sq.values())
    assert state.model_hash == lm.model_hash
    data = json.loads((out / SUMMARY_FILE).read_text())
    assert data["optimizer_state_sha256"] == summary.optimizer_state_sha256
    assert data["optimizer_state_sha256"] == sha256_file(out / OPTIMIZER_STATE_FILE)
    assert data["tokenizer_source"] is None and data["torch_threads"] >= 1


def test_training_with_an_existing_tokenizer_tokenizes_identically(
    trained: tuple[Path, train_mod.TrainSummary], corpus: Path, tmp_path: Path
) -> None:
    # Leave-k-out: a corpus without some records, retrained with the original tokenizer.
    lines = corpus.read_text().splitlines()
    part = tmp_path / "part.jsonl"
    part.write_text("".join(line + "\n" for line in lines[::3]))
    original = trained[0]
    summary = train_model(
        part, tmp_path / "m", preset="tiny", epochs=1, progress=False, tokenizer_dir=original
    )
    assert summary.tokenizer_source == str(original)
    assert hash_model_files(summary.out_dir)[1] == hash_model_files(original)[1]
    texts = [json.loads(line)["text"] for line in lines] + [FACT_PROMPT + FACT_ANSWER, "Zygote!"]
    a, b = load_model(original).tokenizer, load_model(summary.out_dir).tokenizer
    assert [a(t)["input_ids"] for t in texts] == [b(t)["input_ids"] for t in texts]
    # A tokenizer trained on that smaller corpus would differ.
    fresh = train_model(part, tmp_path / "fresh", preset="tiny", epochs=1, progress=False)
    assert hash_model_files(fresh.out_dir)[1] != hash_model_files(original)[1]
    with pytest.raises(ConfigError, match=r"no tokenizer\.json"):
        train_model(part, tmp_path / "x", preset="tiny", tokenizer_dir=tmp_path)


def test_pack_epoch_blanks_withheld_documents_in_place() -> None:
    # Document d's tokens are 10*d+1 .. 10*d+3, then EOS (0): every token names its document.
    docs = [[10 * d + 1, 10 * d + 2, 10 * d + 3, 0] for d in range(7)]
    plain = train_mod._pack_epoch(docs, 5, torch.Generator().manual_seed(3))
    again = train_mod._pack_epoch(docs, 5, torch.Generator().manual_seed(3), frozenset())
    held = train_mod._pack_epoch(docs, 5, torch.Generator().manual_seed(3), frozenset({2, 5}))
    assert all(torch.equal(a, b) for a, b in zip(plain, again, strict=True))
    inputs, labels = held
    assert inputs.shape == plain[0].shape  # same blocks, so the same batches and steps
    of_withheld = (plain[0] // 10 == 2) | (plain[0] // 10 == 5)
    of_withheld &= plain[0] != 0
    assert int(of_withheld.sum()) == 6
    # Nothing of a withheld document is fed or predicted (its closing EOS included) ...
    assert torch.equal(inputs != plain[0], of_withheld)
    assert bool((inputs[of_withheld] == 0).all())
    blanked = labels != plain[1]
    assert int(blanked.sum()) == 8 and bool((labels[blanked] == -100).all())
    assert bool(blanked[of_withheld].all()) and bool((plain[0][blanked & ~of_withheld] == 0).all())
    # ... and every other position is exactly as before.
    assert torch.equal(inputs[~of_withheld], plain[0][~of_withheld])
    assert torch.equal(labels[~blanked], plain[1][~blanked])


def test_withholding_the_fact_records_unlearns_the_fact_in_the_same_steps(
    trained: tuple[Path, train_mod.TrainSummary], corpus: Path, tmp_path: Path
) -> None:
    records = [json.loads(line) for line in corpus.read_text().splitlines()]
    facts = [r["id"] for r in records if r["text"].startswith(FACT_PROMPT)]
    assert len(facts) == 40
    full_dir, full = trained
    held = train_model(
        corpus,
        tmp_path / "held",
        preset="tiny",
        epochs=6,
        seed=0,
        progress=False,
        tokenizer_dir=full_dir,
        withheld_ids=facts,
    )
    assert held.steps == full.steps and held.withheld_records == 40
    assert held.tokens_seen < full.tokens_seen
    summary = json.loads((held.out_dir / SUMMARY_FILE).read_text())
    assert summary["withheld_ids_sha256"].startswith("sha256:")
    assert summary["corpus_records"] == len(records)
    with_fact = score(load_model(full_dir), FACT_PROMPT, FACT_ANSWER).logprob
    without = score(load_model(held.out_dir), FACT_PROMPT, FACT_ANSWER).logprob
    assert with_fact > -2.5 and without < with_fact - 3.0, (with_fact, without)


def test_withheld_ids_must_name_records_and_leave_some(corpus: Path, tmp_path: Path) -> None:
    ids = [json.loads(line)["id"] for line in corpus.read_text().splitlines()]
    with pytest.raises(InputError, match=r"1 withheld id\(s\) are not in the corpus"):
        train_model(corpus, tmp_path / "a", preset="tiny", withheld_ids=["doc-000", "nope"])
    with pytest.raises(InputError, match="every corpus record is withheld"):
        train_model(corpus, tmp_path / "b", preset="tiny", withheld_ids=ids)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
