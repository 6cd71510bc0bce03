"""Counterfactual check of attribution: does training on what a method ranks first move the answer?

Recall of planted statements says whether a method finds the records that *state* a fact; a
lexical matcher does that perfectly and says nothing about what changed the model. The
question an auditor's regulator asks is counterfactual, so this module measures it the way
TrackStar (Chang et al., 2024) does, with a *tail-patch*: from the final weights, take one
optimizer step on one proponent record's training loss and measure how much
``log p(completion | prompt)`` rises. A method whose top-k records raise it more has found
more of what moves the model's answer.

Two steps are measured:

* ``sgd``: plain gradient descent with a stated step size (default 0.05) on the record's
  mean token loss, exactly as the record was trained on (its tokens after a document
  separator, then the end-of-text token);
* ``adam``: the training optimizer's own step (AdamW with its saved moments, step count,
  learning rate and weight decay), when the model directory carries that state. The step also
  moves the weights by the saved momentum alone, so its effect without any gradient is
  subtracted: what is left is the record's share of the step.

Every method is scored on the same questions, the same model and the same candidate pool
(records of the classes an answer may contain; private records never), next to baselines:
BM25 over prompt + completion, an entity-only lexical baseline (BM25 queried with the
question's subject alone: it finds every record naming the person), random records, and the
records that state the answer (the planted reference). Intervals are percentile bootstraps
over questions; ratios between methods are bootstrapped paired, question by question.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm import tqdm

from auditor_server.attribution.config import TAIL_PATCH_SGD_LR, TAIL_PATCH_TOP_K
from auditor_server.attribution.evaluate import Question
from auditor_server.attribution.lexical import BM25Baseline
from auditor_server.errors import InputError
from auditor_server.model.generation import adds_bos, score_many
from auditor_server.model.loading import LoadedModel
from auditor_server.model.optimizer_state import OptimizerState

DEFAULT_TOP_K = TAIL_PATCH_TOP_K
DEFAULT_SGD_LR = TAIL_PATCH_SGD_LR
BOOTSTRAP_RESAMPLES = 2000
WITHHELD_FROM_ANSWERS = ("private",)
"""Classes no answer may contain; the candidate pool of every method leaves them out."""

_CAPITALIZED = re.compile(r"\b[A-Z][\w'-]+")


class TailPatcher:
    """Takes one optimizer step on one record and measures log-probabilities, then undoes it.

    The model's weights are changed in place for the measurement and restored from a copy
    of the final weights afterwards, bit for bit, so the same loaded model keeps serving.
    """

    def __init__(
        self, lm: LoadedModel, *, sgd_lr: float = DEFAULT_SGD_LR, adam: OptimizerState | None = None
    ) -> None:
        if not sgd_lr > 0:
            raise InputError(f"tail-patch step size must be > 0, got {sgd_lr}")
        self.lm = lm
        self.sgd_lr = sgd_lr
        self.adam = adam
        # named_parameters() lists a tied matrix once (GPT-2's wte/lm_head), as the optimizer did.
        self._names = [n for n, _ in lm.model.named_parameters()]
        self._params = [p for _, p in lm.model.named_parameters()]
        self._base = [p.detach().clone() for p in self._params]
        tok = lm.tokenizer
        sep = tok.bos_token_id if adds_bos(tok) else tok.eos_token_id
        self._sep = int(sep) if sep is not None else None
        self._eos = int(tok.eos_token_id) if tok.eos_token_id is not None else None
        self._adam_zero: list[torch.Tensor] | None = None
        if adam is not None:
            missing = [n for n in self._names if n not in adam.exp_avg_sq]
            if missing:
                raise InputError(f"optimizer state lacks parameter(s): {', '.join(missing[:3])}")

    @property
    def step_kinds(self) -> tuple[str, ...]:
        return ("sgd", "adam") if self.adam is not None else ("sgd",)

    def record_ids(self, text: str) -> list[int]:
        """The record as it was trained: separator, its tokens, end-of-text."""
        ids = [int(i) for i in self.lm.tokenizer(text, add_special_tokens=False)["input_ids"]]
        head = [self._sep] if self._sep is not None else []
        tail = [self._eos] if self._eos is not None else []
        return [*head, *ids, *tail]

    def record_gradient(self, text: str) -> list[torch.Tensor]:
        """Gradient of the record's mean next-token loss w.r.t. every parameter.

        A record longer than the context is cut into context-sized chunks (each chunk's
        first token is context only), and the mean is over all predicted tokens.
        """
        ids = self.record_ids(text)
        limit = self.lm.max_positions or len(ids)
        chunks = [ids[i : i + limit] for i in range(0, max(len(ids) - 1, 1), limit - 1)]
        chunks = [c for c in chunks if len(c) >= 2]
        if not chunks:
            raise InputError("record has no token to predict")
        n_targets = sum(len(c) - 1 for c in chunks)
        flags = [p.requires_grad for p in self._params]
        for p in self._params:
            p.requires_grad_(True)
        try:
            grads = [torch.zeros_like(p) for p in self._params]
            for chunk in chunks:
                x = torch.tensor([chunk], dtype=torch.long, device=self.lm.device)
                logits = self.lm.model(input_ids=x).logits[0, :-1].float()
                nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")
                parts = torch.autograd.grad(nll / n_targets, self._params, allow_unused=True)
                for acc, g in zip(grads, parts, strict=True):
                    if g is not None:
                        acc.add_(g)
        finally:
            for p, flag in zip(self._params, flags, strict=True):
                p.requires_grad_(flag)
        return grads

    def logprobs(self, pairs: Sequence[tuple[str, str]]) -> NDArray[np.float64]:
        """log p(completion | prompt) of each pair under the model's current weights."""
        return np.asarray([r.logprob for r in score_many(self.lm, pairs)], dtype=np.float64)

    @contextmanager
    def patched(self, grads: Sequence[torch.Tensor] | None, kind: str) -> Iterator[None]:
        """Weights after one ``kind`` step on ``grads`` (None: the step with zero gradient)."""
        try:
            with torch.no_grad():
                for i, p in enumerate(self._params):
                    g = grads[i] if grads is not None else None
                    if kind == "sgd":
                        if g is not None:
                            p.add_(g, alpha=-self.sgd_lr)
                    elif kind == "adam":
                        p.copy_(self._adam_weight(i, g))
                    else:
                        raise InputError(f"unknown tail-patch step {kind!r}")
            yield
        finally:
            with torch.no_grad():
                for p, base in zip(self._params, self._base, strict=True):
                    p.copy_(base)

    def _adam_weight(self, i: int, g: torch.Tensor | None) -> torch.Tensor:
        state = self.adam
        assert state is not None, "adam step without optimizer state"
        name = self._names[i]
        b1, b2 = state.betas
        t = state.step + 1
        m = state.exp_avg[name].to(self._base[i].device) * b1
        v = state.exp_avg_sq[name].to(self._base[i].device) * b2
        if g is not None:
            m = m + (1 - b1) * g
            v = v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        decayed = self._base[i] * (1 - state.lr * state.weight_decay.get(name, 0.0))
        return decayed - state.lr * m_hat / (v_hat.sqrt() + state.eps)


class Ranker(Protocol):
    """A method under test: top-k record ordinals for each question."""

    name: str

    def rank(self, questions: Sequence[Question], k: int) -> list[list[int]]: ...


@dataclass
class Pool:
    """The records every method ranks among: those an answer may contain."""

    ids: list[str]
    texts: list[str]
    allowed: list[int]
    """Record ordinals (catalog order) in the pool."""
    ordinal: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.ordinal = {rid: i for i, rid in enumerate(self.ids)}


class EngineRanker:
    """The attribution engine as served (withheld classes removed before ranking)."""

    name = "engine"

    def __init__(self, engine: Any, pool: Pool, *, batch_size: int = 64) -> None:
        self.engine = engine
        self.pool = pool
        self.batch_size = batch_size

    def rank(self, questions: Sequence[Question], k: int) -> list[list[int]]:
        out: list[list[int]] = []
        for start in range(0, len(questions), self.batch_size):
            chunk = questions[start : start + self.batch_size]
            answers = self.engine.attribute_many(
                [(q.prompt, q.completion) for q in chunk],
                top_k=k,
                exclude_classes=WITHHELD_FROM_ANSWERS,
            )
            out.extend([self.pool.ordinal[r.record_id] for r in a.results] for a in answers)
        return out


class LexicalRanker:
    """BM25 over whole record texts of the pool, with a chosen query per question."""

    def __init__(
        self,
        name: str,
        pool: Pool,
        query: Callable[[Question], str],
        bm25: BM25Baseline | None = None,
    ) -> None:
        self.name = name
        self.pool = pool
        self.query = query
        self._bm25 = bm25 or pool_bm25(pool)

    def rank(self, questions: Sequence[Question], k: int) -> list[list[int]]:
        ranked = self._bm25.rank([self.query(q) for q in questions], k=k)
        return [[self.pool.ordinal[rid] for rid in row] for row in ranked]


def pool_bm25(pool: Pool) -> BM25Baseline:
    """One BM25 index over the pool, shared by the lexical baselines (they differ in query)."""
    return BM25Baseline([pool.ids[i] for i in pool.allowed], [pool.texts[i] for i in pool.allowed])


def entity_query(question: Question) -> str:
    """The question's subject, or else its capitalized words (names, places)."""
    if question.subject:
        return question.subject
    words = _CAPITALIZED.findall(question.prompt)
    return " ".join(words) if words else question.prompt


class RandomRanker:
    """k records drawn uniformly from the pool, seeded per question."""

    name = "random"

    def __init__(self, pool: Pool, seed: int) -> None:
        self.pool = pool
        self.seed = seed

    def rank(self, questions: Sequence[Question], k: int) -> list[list[int]]:
        out = []
        for q in questions:
            key = f"{self.seed}:{q.prompt}\x00{q.completion}".encode()
            rng = random.Random(hashlib.sha256(key).digest())  # noqa: S311 (not secret)
            out.append(rng.sample(self.pool.allowed, min(k, len(self.pool.allowed))))
        return out


class PlantedRanker:
    """The records that state the answer (the question file's relevant ids, pool only)."""

    name = "planted"

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._allowed = set(pool.allowed)

    def rank(self, questions: Sequence[Question], k: int) -> list[list[int]]:
        out = []
        for q in questions:
            ords = sorted(
                self.pool.ordinal[r]
                for r in q.relevant_ids
                if r in self.pool.ordinal and self.pool.ordinal[r] in self._allowed
            )
            out.append(ords[:k])
        return out


def bootstrap_mean(
    values: NDArray[np.float64], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """Mean and percentile-bootstrap 95% interval of per-question values (NaN = no value)."""
    v = values[~np.isnan(values)]
    if v.size == 0:
        return {"mean": None, "ci95": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(v.mean()), "ci95": [float(lo), float(hi)], "n": int(v.size)}


def bootstrap_ratio(
    num: NDArray[np.float64],
    den: NDArray[np.float64],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Ratio of means with a paired bootstrap 95% interval (questions resampled together).

    Only against a baseline whose mean is positive: "x times a step that lowers the answer"
    means nothing, so the ratio is then None and the difference says it instead.
    """
    keep = ~(np.isnan(num) | np.isnan(den))
    a, b = num[keep], den[keep]
    if a.size == 0 or b.mean() <= 0:
        return {"ratio": None, "ci95": None, "n": int(a.size)}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(resamples, a.size))
    den_means = b[idx].mean(axis=1)
    num_means = a[idx].mean(axis=1)
    # Resamples whose baseline mean is not positive have no meaningful ratio; the interval
    # is over the rest (and is then wide, which is the honest answer).
    ratios = num_means[den_means > 0] / den_means[den_means > 0]
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return {"ratio": float(a.mean() / b.mean()), "ci95": [float(lo), float(hi)], "n": int(a.size)}


def bootstrap_difference(
    a: NDArray[np.float64],
    b: NDArray[np.float64],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean of ``a - b`` question by question, with a paired bootstrap 95% interval."""
    return bootstrap_mean(a - b, resamples=resamples, seed=seed)


def questions_digest(questions: Sequence[Question]) -> str:
    """sha256 over the questions actually asked, in order (prompt, completion, relevant ids)."""
    h = hashlib.sha256(b"auditor-sandbox/tail-patch-questions/v1\x00")
    for q in questions:
        for part in (q.prompt, q.completion, "\x1f".join(sorted(q.relevant_ids))):
            data = part.encode("utf-8")
            h.update(len(data).to_bytes(8, "big"))
            h.update(data)
    return "sha256:" + h.hexdigest()


def choose_questions(
    questions: Sequence[Question], n: int, *, seed: int, fits: Callable[[Question], bool]
) -> tuple[list[Question], str]:
    """Up to ``n`` questions, drawn seeded from the held-out split when the file has one.

    Questions used to tune a method must not grade it, so a file that marks a ``heldout``
    split is graded on that split only.
    """
    split = "heldout" if any(q.split == "heldout" for q in questions) else "all"
    pool = [q for q in questions if split == "all" or q.split == "heldout"]
    rng = random.Random(f"tail-patch:{seed}")  # noqa: S311 (not secret)
    # A seeded order, then the first n that fit: tokenizing only what is drawn.
    order = rng.sample(pool, len(pool))
    chosen = []
    for q in order:
        if fits(q):
            chosen.append(q)
            if len(chosen) == n:
                break
    if not chosen:
        raise InputError("no question fits the model's context")
    return chosen, split


def tail_patch_scores(
    patcher: TailPatcher,
    texts: Sequence[str],
    questions: Sequence[Question],
    rankings: Mapping[str, list[list[int]]],
    *,
    progress: bool = False,
) -> dict[str, dict[str, NDArray[np.float64]]]:
    """Per method and step kind, each question's mean tail-patch over its ranked records.

    Each distinct record's gradient is computed once; every question that ranks it is
    measured under the same patched weights in one padded forward.
    """
    pairs = [(q.prompt, q.completion) for q in questions]
    base = patcher.logprobs(pairs)
    zero_step = {kind: base for kind in patcher.step_kinds}
    if "adam" in patcher.step_kinds:
        with patcher.patched(None, "adam"):
            zero_step["adam"] = patcher.logprobs(pairs)
    wanted: dict[int, set[int]] = {}
    for ranked in rankings.values():
        for qi, recs in enumerate(ranked):
            for r in recs:
                wanted.setdefault(r, set()).add(qi)
    delta: dict[str, dict[tuple[int, int], float]] = {k: {} for k in patcher.step_kinds}
    for rec in tqdm(sorted(wanted), desc="tail-patch", unit="rec", disable=not progress):
        grads = patcher.record_gradient(texts[rec])
        qs = sorted(wanted[rec])
        for kind in patcher.step_kinds:
            with patcher.patched(grads, kind):
                after = patcher.logprobs([pairs[qi] for qi in qs])
            for qi, lp in zip(qs, after, strict=True):
                delta[kind][(qi, rec)] = float(lp - zero_step[kind][qi])
    out: dict[str, dict[str, NDArray[np.float64]]] = {}
    for method, ranked in rankings.items():
        out[method] = {}
        for kind in patcher.step_kinds:
            vals = np.full(len(questions), np.nan)
            for qi, recs in enumerate(ranked):
                if recs:
                    vals[qi] = float(np.mean([delta[kind][(qi, r)] for r in recs]))
            out[method][kind] = vals
    return out


def recall_at_k(questions: Sequence[Question], ranked: list[list[int]], pool: Pool) -> float:
    """Fraction of questions with a record that states the answer among the ranked ones."""
    hits = sum(
        1
        for q, recs in zip(questions, ranked, strict=True)
        if any(pool.ids[r] in q.relevant_ids for r in recs)
    )
    return hits / len(questions) if questions else 0.0


def validate(
    engine: Any,
    questions: Sequence[Question],
    *,
    n_questions: int = 100,
    top_k: int = DEFAULT_TOP_K,
    sgd_lr: float = DEFAULT_SGD_LR,
    adam: OptimizerState | None = None,
    seed: int = 0,
    extra_rankers: Sequence[Ranker] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Tail-patch the engine and its baselines on ``n_questions`` questions of ``questions``.

    Returns a JSON-ready result: per method and step the mean tail-patch with its 95%
    interval, the engine's ratio to each baseline (paired bootstrap), each method's recall
    of the planted statements, the questions' digest and split, and the settings.
    """
    started = time.perf_counter()
    catalog = engine.catalog
    records = list(catalog)
    classes = [r.source.data_class for r in records]
    pool = Pool(
        ids=[r.id for r in records],
        texts=[r.text for r in records],
        allowed=[i for i, c in enumerate(classes) if c not in WITHHELD_FROM_ANSWERS],
    )
    chosen, split = choose_questions(
        questions,
        n_questions,
        seed=seed,
        fits=lambda q: bool(engine.featurizer.fits(q.prompt, q.completion)),
    )
    lexical = pool_bm25(pool)
    rankers: list[Ranker] = [
        EngineRanker(engine, pool),
        LexicalRanker("bm25", pool, lambda q: q.prompt + q.completion, lexical),
        LexicalRanker("entity", pool, entity_query, lexical),
        RandomRanker(pool, seed),
        PlantedRanker(pool),
        *extra_rankers,
    ]
    rankings = {r.name: r.rank(chosen, top_k) for r in rankers}
    patcher = TailPatcher(engine.lm, sgd_lr=sgd_lr, adam=adam)
    scores = tail_patch_scores(patcher, pool.texts, chosen, rankings, progress=progress)
    methods: dict[str, Any] = {}
    for name, per_kind in scores.items():
        methods[name] = {kind: bootstrap_mean(vals, seed=seed) for kind, vals in per_kind.items()}
        methods[name]["recall@k"] = recall_at_k(chosen, rankings[name], pool)
    ratios: dict[str, Any] = {}
    for other in scores:
        if other == "engine":
            continue
        ratios[f"engine/{other}"] = {
            kind: {
                **bootstrap_ratio(scores["engine"][kind], scores[other][kind], seed=seed),
                "difference": bootstrap_difference(
                    scores["engine"][kind], scores[other][kind], seed=seed
                ),
            }
            for kind in patcher.step_kinds
        }
    base = patcher.logprobs([(q.prompt, q.completion) for q in chosen])
    return {
        "measure": "tail_patch",
        "snapshot_id": engine.snapshot_id,
        "model_hash": engine.lm.model_hash,
        "questions_sha256": questions_digest(chosen),
        "split": split,
        "n_questions": len(chosen),
        "n_known": int(np.sum(base >= math.log(0.5))),
        "top_k": top_k,
        "seed": seed,
        "steps": {
            "sgd": {"lr": sgd_lr, "loss": "mean token NLL of the record"},
            **(
                {
                    "adam": {
                        "lr": adam.lr,
                        "betas": list(adam.betas),
                        "eps": adam.eps,
                        "step": adam.step,
                        "note": "training optimizer's next step; the momentum-only step's "
                        "effect is subtracted",
                    }
                }
                if adam is not None
                else {}
            ),
        },
        "candidate_pool": {
            "records": len(pool.allowed),
            "excluded_classes": list(WITHHELD_FROM_ANSWERS),
        },
        "methods": methods,
        "ratios": ratios,
        "seconds": time.perf_counter() - started,
    }
