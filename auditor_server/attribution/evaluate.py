"""Built-in accuracy check: does attribution find the records we know are responsible?

A question file lists prompts, completions and the ids of the records that state the
completion. We measure, for the gradient method and for a lexical BM25 baseline over the same
records, how often a responsible record is ranked first (recall@1), anywhere in the top 10
(recall@10), and the mean reciprocal rank of the first responsible record within the top 10
(MRR@10). "Recall@k" here is the usual fact-tracing hit rate: the fraction of questions with
at least one relevant record in the top k. BM25 is reported beside every gradient figure
because on fact statements a lexical match is a strong, honest baseline.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from auditor_server.attribution.engine import AttributionEngine
from auditor_server.attribution.lexical import BM25Baseline
from auditor_server.errors import InputError

CUTOFF = 10
KNOWN_LOGPROB = math.log(0.5)


@dataclass(frozen=True)
class Question:
    """One line of a question file."""

    prompt: str
    completion: str
    relevant_ids: frozenset[str]
    kind: str
    subject: str | None = None
    """The entity the question is about, when the file says (the entity-only baseline's
    query)."""
    split: str | None = None
    """``tune`` or ``heldout`` when the file marks it: held-out questions grade a method,
    tuning questions may have shaped it."""


def read_questions(path: Path) -> list[Question]:
    """Parse a question file, naming the line of any malformed entry.

    Raises:
        InputError: missing file, bad JSON, missing/ill-typed field, empty relevant_ids.
    """
    if not path.exists():
        raise InputError(f"{path}: no such question file")
    questions = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: line {lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise InputError(f"{path}: line {lineno}: expected a JSON object")
        for key in ("prompt", "completion"):
            if not isinstance(obj.get(key), str):
                raise InputError(f"{path}: line {lineno}: field '{key}' must be a string")
        rel = obj.get("relevant_ids")
        if not isinstance(rel, list) or not rel or not all(isinstance(r, str) for r in rel):
            raise InputError(
                f"{path}: line {lineno}: field 'relevant_ids' must be a non-empty list of ids"
            )
        if not obj["completion"]:
            raise InputError(f"{path}: line {lineno}: field 'completion' must not be empty")
        for key in ("subject", "split"):
            if key in obj and not isinstance(obj[key], str):
                raise InputError(f"{path}: line {lineno}: field '{key}' must be a string")
        questions.append(
            Question(
                obj["prompt"],
                obj["completion"],
                frozenset(rel),
                str(obj.get("kind", "all")),
                subject=obj.get("subject"),
                split=obj.get("split"),
            )
        )
    if not questions:
        raise InputError(f"{path}: no questions")
    return questions


def first_hit_rank(ranked_ids: Sequence[str], relevant: frozenset[str]) -> int | None:
    """1-based rank of the first relevant id, or None."""
    for rank, rid in enumerate(ranked_ids, start=1):
        if rid in relevant:
            return rank
    return None


def summarize(ranks: Sequence[int | None]) -> dict[str, float]:
    """recall@1, recall@10 and MRR@10 of first-hit ranks (None = not in the top 10)."""
    n = len(ranks)
    if n == 0:
        return {"n": 0, "recall@1": 0.0, "recall@10": 0.0, "mrr@10": 0.0}
    hits = [r for r in ranks if r is not None and r <= CUTOFF]
    return {
        "n": n,
        "recall@1": sum(1 for r in hits if r == 1) / n,
        "recall@10": len(hits) / n,
        "mrr@10": sum(1.0 / r for r in hits) / n,
    }


def evaluate(
    engine: AttributionEngine,
    questions: Sequence[Question],
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the gradient method and BM25 on ``questions``, overall and per question kind."""
    records = list(engine.catalog)
    bm25 = BM25Baseline([r.id for r in records], [r.text for r in records])
    grad_ranks: list[int | None] = [None] * len(questions)
    bm25_ranks: list[int | None] = [None] * len(questions)
    # A question longer than the model's context cannot be asked of the gradient method; it
    # counts as a miss for it (never silently dropped) and is reported.
    fits = [engine.featurizer.fits(q.prompt, q.completion) for q in questions]
    known = [False] * len(questions)
    bar = tqdm(total=len(questions), desc="evaluate", unit="q", disable=not progress)
    with bar:
        for start in range(0, len(questions), batch_size):
            idx = list(range(start, min(start + batch_size, len(questions))))
            asked = [i for i in idx if fits[i]]
            answers = engine.attribute_many(
                [(questions[i].prompt, questions[i].completion) for i in asked], top_k=CUTOFF
            )
            for i, ans in zip(asked, answers, strict=True):
                ranked = [r.record_id for r in ans.results]
                grad_ranks[i] = first_hit_rank(ranked, questions[i].relevant_ids)
                known[i] = ans.completion_logprob >= KNOWN_LOGPROB
            lexical = bm25.rank(
                [f"{questions[i].prompt}{questions[i].completion}" for i in idx], k=CUTOFF
            )
            for i, lex in zip(idx, lexical, strict=True):
                bm25_ranks[i] = first_hit_rank(lex, questions[i].relevant_ids)
            bar.update(len(idx))
    return {
        "snapshot_id": engine.snapshot_id,
        "n_questions": len(questions),
        "n_too_long_for_model": fits.count(False),
        "overall": _pair(grad_ranks, bm25_ranks),
        "by_kind": {
            kind: _pair([grad_ranks[i] for i in idx], [bm25_ranks[i] for i in idx])
            for kind, idx in sorted(_group(q.kind for q in questions).items())
        },
        # Attribution can only be as sharp as the model's knowledge: split by whether the
        # model gives the completion probability >= 1/2.
        "by_model_knowledge": {
            group: _pair([grad_ranks[i] for i in idx], [bm25_ranks[i] for i in idx])
            for group, idx in sorted(_group("known" if k else "not_known" for k in known).items())
        },
        "index_config": engine.index_config.to_dict(),
        "feature_config": engine.featurizer.config.to_dict(),
    }


def _pair(grad: Sequence[int | None], lexical: Sequence[int | None]) -> dict[str, Any]:
    return {"gradient": summarize(grad), "bm25": summarize(lexical)}


def _group(kinds: Iterable[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, kind in enumerate(kinds):
        groups[kind].append(i)
    return groups
