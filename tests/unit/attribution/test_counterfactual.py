"""The counterfactual check: tail-patch steps are the steps they claim, and the check is fair."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from auditor_server.attribution.build import build_index
from auditor_server.attribution.config import FeatureConfig
from auditor_server.attribution.counterfactual import (
    Pool,
    RandomRanker,
    TailPatcher,
    bootstrap_mean,
    bootstrap_ratio,
    choose_questions,
    entity_query,
    questions_digest,
    validate,
)
from auditor_server.attribution.engine import AttributionEngine
from auditor_server.attribution.evaluate import Question, read_questions
from auditor_server.corpus.demo import generate_demo_corpus
from auditor_server.errors import InputError
from auditor_server.model.generation import encode_pair, score
from auditor_server.model.loading import load_model
from auditor_server.model.optimizer_state import OptimizerState
from tests.fixtures.tiny_models import make_tiny_model_dir

FEATURES = FeatureConfig(proj_in=4, proj_out=4, span_tokens=24, span_stride=12, shard_rows=256)
RECORD = "Mara Ellison was born in the city of Dunmore and works at Corvane Systems."
PROMPT, COMPLETION = "Mara Ellison was born in the city of", " Dunmore"


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_model(make_tiny_model_dir(tmp_path_factory.mktemp("cf-model"), "gpt2"))


def _record_loss(model: torch.nn.Module, patcher: TailPatcher, text: str) -> torch.Tensor:
    ids = torch.tensor([patcher.record_ids(text)])
    logits = model(input_ids=ids).logits[0, :-1].float()
    return torch.nn.functional.cross_entropy(logits, ids[0, 1:])


def test_patched_weights_are_restored_bit_for_bit(lm) -> None:  # type: ignore[no-untyped-def]
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    patcher = TailPatcher(lm, sgd_lr=0.5)
    grads = patcher.record_gradient(RECORD)
    with patcher.patched(grads, "sgd"):
        moved = any(not torch.equal(p, before[n]) for n, p in lm.model.named_parameters())
    assert moved
    for n, p in lm.model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert all(not p.requires_grad for p in lm.model.parameters()) or all(
        p.requires_grad for p in lm.model.parameters()
    )


def test_sgd_tail_patch_is_one_plain_sgd_step_on_the_mean_record_loss(lm) -> None:  # type: ignore[no-untyped-def]
    patcher = TailPatcher(lm, sgd_lr=0.05)
    with patcher.patched(patcher.record_gradient(RECORD), "sgd"):
        patched = patcher.logprobs([(PROMPT, COMPLETION)])[0]
    reference = copy.deepcopy(lm.model)
    for p in reference.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.05)
    _record_loss(reference, patcher, RECORD).backward()
    optimizer.step()
    ids, start = encode_pair(lm.tokenizer, PROMPT, COMPLETION)
    with torch.no_grad():
        logits = reference(input_ids=torch.tensor([ids])).logits[0, start - 1 : -1]
        expected = float(
            torch.log_softmax(logits.float(), -1)
            .gather(1, torch.tensor(ids[start:])[:, None])
            .sum()
        )
    assert patched == pytest.approx(expected, abs=1e-4)
    assert patched != pytest.approx(score(lm, PROMPT, COMPLETION).logprob, abs=1e-6)


def test_small_sgd_step_matches_the_gradient_inner_product(lm) -> None:  # type: ignore[no-untyped-def]
    """Sign and scale: for a tiny step, Δ log p = lr · ∇NLL(question) · ∇L(record)."""
    lr = 1e-3
    patcher = TailPatcher(lm, sgd_lr=lr)
    g_rec = patcher.record_gradient(RECORD)
    ids, start = encode_pair(lm.tokenizer, PROMPT, COMPLETION)
    params = list(lm.model.parameters())
    for p in params:
        p.requires_grad_(True)
    x = torch.tensor([ids])
    nll = torch.nn.functional.cross_entropy(
        lm.model(input_ids=x).logits[0, start - 1 : -1].float(), x[0, start:], reduction="sum"
    )
    g_q = torch.autograd.grad(nll, params)
    for p in params:
        p.requires_grad_(False)
    predicted = lr * sum(float((a * b).sum()) for a, b in zip(g_q, g_rec, strict=True))
    base = patcher.logprobs([(PROMPT, COMPLETION)])[0]
    with patcher.patched(g_rec, "sgd"):
        delta = patcher.logprobs([(PROMPT, COMPLETION)])[0] - base
    assert predicted > 0  # the record states the answer: training on it helps
    assert delta == pytest.approx(predicted, rel=0.1)


def _random_state(model: torch.nn.Module, model_hash: str) -> OptimizerState:
    gen = torch.Generator().manual_seed(0)
    names = [n for n, _ in model.named_parameters()]
    shapes = {n: p.shape for n, p in model.named_parameters()}
    return OptimizerState(
        step=50,
        lr=3e-3,
        last_lr=3e-3,
        betas=(0.9, 0.95),
        eps=1e-8,
        weight_decay={n: (0.1 if len(shapes[n]) >= 2 else 0.0) for n in names},
        grad_clip=0.0,
        bf16_autocast=False,
        exp_avg={n: torch.randn(shapes[n], generator=gen) * 1e-3 for n in names},
        exp_avg_sq={n: torch.rand(shapes[n], generator=gen) * 1e-5 for n in names},
        model_hash=model_hash,
    )


def test_adam_tail_patch_is_the_training_optimizers_step_less_its_momentum(lm) -> None:  # type: ignore[no-untyped-def]
    state = _random_state(lm.model, lm.model_hash)
    patcher = TailPatcher(lm, adam=state)
    assert patcher.step_kinds == ("sgd", "adam")
    grads = patcher.record_gradient(RECORD)

    def after_adamw(with_gradient: bool) -> float:
        reference = copy.deepcopy(lm.model)
        optimizer = state.make_adamw(reference)
        for p, g in zip(reference.parameters(), grads, strict=True):
            p.grad = g.clone() if with_gradient else torch.zeros_like(p)
        optimizer.step()
        ids, start = encode_pair(lm.tokenizer, PROMPT, COMPLETION)
        with torch.no_grad():
            logits = reference(input_ids=torch.tensor([ids])).logits[0, start - 1 : -1]
            lp = torch.log_softmax(logits.float(), -1)
            return float(lp.gather(1, torch.tensor(ids[start:])[:, None]).sum())

    with patcher.patched(grads, "adam"):
        with_g = patcher.logprobs([(PROMPT, COMPLETION)])[0]
    with patcher.patched(None, "adam"):
        without = patcher.logprobs([(PROMPT, COMPLETION)])[0]
    assert with_g == pytest.approx(after_adamw(True), abs=1e-4)
    assert without == pytest.approx(after_adamw(False), abs=1e-4)


def test_bootstrap_intervals() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    out = bootstrap_mean(values, seed=1)
    assert out["n"] == 4 and out["mean"] == pytest.approx(2.5)
    assert out["ci95"][0] < 2.5 < out["ci95"][1]
    assert bootstrap_mean(values, seed=1) == out  # seeded
    assert bootstrap_mean(np.array([np.nan]))["mean"] is None
    ratio = bootstrap_ratio(np.array([2.0, 4.0, 6.0]), np.array([1.0, 2.0, 3.0]))
    assert ratio["ratio"] == pytest.approx(2.0) and ratio["ci95"] == pytest.approx([2.0, 2.0])
    assert bootstrap_ratio(np.array([1.0]), np.array([0.0]))["ratio"] is None


def _q(prompt: str, split: str | None = None, subject: str | None = None) -> Question:
    return Question(prompt, " x", frozenset({"r"}), "fact", subject=subject, split=split)


def test_held_out_split_grades_and_sampling_is_seeded() -> None:
    qs = [_q(f"p{i}", "tune" if i % 2 else "heldout") for i in range(40)]
    chosen, split = choose_questions(qs, 10, seed=3, fits=lambda q: True)
    assert split == "heldout" and len(chosen) == 10
    assert all(q.split == "heldout" for q in chosen)
    assert choose_questions(qs, 10, seed=3, fits=lambda q: True)[0] == chosen
    assert choose_questions(qs, 10, seed=4, fits=lambda q: True)[0] != chosen
    unsplit, split = choose_questions([_q("a"), _q("b")], 10, seed=0, fits=lambda q: True)
    assert split == "all" and len(unsplit) == 2
    with pytest.raises(InputError):
        choose_questions([_q("a")], 5, seed=0, fits=lambda q: False)
    assert questions_digest(chosen) != questions_digest(chosen[::-1])


def test_entity_query_is_the_subject_or_the_names() -> None:
    assert entity_query(_q("Mara Ellison was born in", subject="Mara Ellison")) == "Mara Ellison"
    assert (
        entity_query(_q("Where did Mara Ellison of Dunmore work")) == "Where Mara Ellison Dunmore"
    )


def test_random_ranker_draws_only_from_the_pool() -> None:
    pool = Pool(ids=[f"r{i}" for i in range(30)], texts=[""] * 30, allowed=list(range(0, 30, 2)))
    ranked = RandomRanker(pool, seed=0).rank([_q(f"p{i}") for i in range(20)], 10)
    assert all(set(r) <= set(pool.allowed) and len(set(r)) == 10 for r in ranked)
    assert ranked == RandomRanker(pool, seed=0).rank([_q(f"p{i}") for i in range(20)], 10)


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cf-index")
    summary = generate_demo_corpus(root / "corpus.jsonl", size="tiny", seed=5)
    model = make_tiny_model_dir(root, "gpt2")
    build_index(
        model_dir=model,
        corpus_path=summary.corpus_path,
        out_dir=root / "index",
        feature_config=FEATURES,
        progress=False,
    )
    return {"index": root / "index", "questions": summary.questions_path}


def test_validate_scores_every_method_on_the_same_questions(tiny_index: dict[str, Path]) -> None:
    questions = read_questions(tiny_index["questions"])
    with AttributionEngine.open(tiny_index["index"]) as engine:
        private = {r.id for r in engine.catalog if r.source.data_class == "private"}
        n_records = len(engine.catalog)
        result = validate(engine, questions, n_questions=12, progress=False)
    json.dumps(result)  # JSON-ready
    assert set(result["methods"]) == {"engine", "bm25", "entity", "random", "planted"}
    assert result["n_questions"] == 12 and result["steps"]["sgd"]["lr"] == 0.05
    assert result["candidate_pool"]["excluded_classes"] == ["private"]
    assert result["methods"]["planted"]["recall@k"] == 1.0
    assert result["methods"]["bm25"]["recall@k"] > result["methods"]["random"]["recall@k"]
    for block in result["methods"].values():
        assert block["sgd"]["n"] == 12 and math.isfinite(block["sgd"]["mean"])
    assert set(result["ratios"]) == {f"engine/{m}" for m in ("bm25", "entity", "random", "planted")}
    assert private  # the tiny corpus has private records; none may be a candidate
    assert result["candidate_pool"]["records"] == n_records - len(private)
