"""Latency of one attribution query vs. one plain forward+backward of the same query.

Why this yardstick: an attribution answer needs the query's gradient, i.e. at least one
forward+backward of the model on ``prompt + completion``; everything else the engine does
(preconditioning, FAISS search, exact re-scoring, the logprob it reports, catalog look-ups)
is overhead on top of that floor. Target: p50 of ``engine.attribute(..., top_k=10)`` at most
2x the p50 of that forward+backward, measured on the same questions, interleaved, in one
process.

The second pass re-runs the engine's own steps one by one with timers around them (the same
calls ``attribute_many`` makes, in the same order) to say where the time goes.

    PYTHONPATH=. .venv/bin/python bench/query_latency.py --index runs/demo/index \\
        --questions runs/demo/corpus.questions.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from auditor_server.attribution.engine import AttributionEngine
from auditor_server.model.generation import encode_pair, score
from bench._common import (
    StageTimer,
    Timing,
    add_omp_argument,
    apply_omp_wait_policy,
    default_index,
    default_questions,
    machine,
    print_table,
)


def plain_fwd_bwd(engine: AttributionEngine, prompt: str, completion: str) -> None:
    """One training-style forward+backward of the query: same tokens, same measured span.

    Parameter gradients on, HF's causal-LM loss over the completion tokens only (prompt
    tokens labelled -100), as a trainer would compute it.
    """
    model = engine.lm.model
    ids, start = encode_pair(engine.lm.tokenizer, prompt, completion)
    input_ids = torch.tensor([ids], dtype=torch.long, device=engine.lm.device)
    labels = input_ids.clone()
    labels[:, :start] = -100
    for p in model.parameters():
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    model(input_ids=input_ids, labels=labels).loss.backward()
    model.zero_grad(set_to_none=True)


def staged_attribute(
    engine: AttributionEngine, prompt: str, completion: str, top_k: int, exclude: frozenset[str]
) -> dict[str, float]:
    """``attribute`` step by step (as ``attribute_many`` runs it), timing each step.

    ``rank`` is split into the FAISS search (the ``search`` call inside ``_rank``), result
    assembly (``_result``: catalog look-up and per-module shares of the answers) and the
    rest (candidate re-scoring from the memory-mapped fp16 vectors, best window per record).
    The completion's logprob comes from the featurizing forward pass (``featurize_queries``
    returns it); ``score()``, which used to run a second forward for it, is timed apart as
    a reference and not counted in ``total``.
    """
    timer = StageTimer()
    original_search = engine.searcher.search
    original_result = engine._result
    engine.searcher.search = timer.wrap("faiss search", original_search)  # type: ignore[method-assign]
    engine._result = timer.wrap("results (catalog, shares)", original_result)  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        excluded = frozenset(exclude)
        feats = timer.wrap("featurize (fwd+bwd+capture)", engine.featurizer.featurize_queries)(
            [(prompt, completion)]
        )
        raw = feats[0] if isinstance(feats, tuple) else feats
        queries = timer.wrap("precondition", engine.preconditioner.apply)(raw)
        timer.wrap("rank", engine._rank)(queries[0], top_k, excluded)
        total = time.perf_counter() - t0
    finally:
        engine.searcher.search = original_search  # type: ignore[method-assign]
        engine._result = original_result  # type: ignore[method-assign]
    out = dict(timer.seconds)
    rank = out.pop("rank")
    out["re-score + per-record best"] = (
        rank - out["faiss search"] - out["results (catalog, shares)"]
    )
    out["other (selector, glue)"] = total - sum(out.values())
    out["total"] = total
    t0 = time.perf_counter()
    score(engine.lm, prompt, completion)
    out["ref: score() no-grad fwd (not on path)"] = time.perf_counter() - t0
    return out


def load_questions(path: Path, n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (prompt, completion) pairs sampled without replacement (seeded)."""
    pairs = []
    with path.open() as fh:
        for line in fh:
            q = json.loads(line)
            pairs.append((str(q["prompt"]), str(q["completion"])))
    random.Random(seed).shuffle(pairs)
    return pairs[:n]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--index", type=Path, help="index dir (default: runs/demo/index, else runs/bench/index)"
    )
    parser.add_argument("--questions", type=Path, help="question JSONL (prompt, completion)")
    parser.add_argument("--n", type=int, default=100, help="questions to time")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument(
        "--exclude",
        action="append",
        default=None,
        help="data class excluded before ranking (repeatable; default: private, as the "
        "service's policy does; pass --exclude none for no filter)",
    )
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    add_omp_argument(parser)
    args = parser.parse_args(argv)
    apply_omp_wait_policy(args.omp_wait_policy)
    if args.threads:
        torch.set_num_threads(args.threads)
    index_dir = args.index or default_index()
    questions = args.questions or default_questions(index_dir)
    exclude = frozenset(
        c for c in (args.exclude if args.exclude is not None else ["private"]) if c != "none"
    )
    print(machine())
    with AttributionEngine.open(index_dir, verify=False) as engine:
        n_rows, dim = engine.vectors.shape
        print(
            f"index {index_dir}: {n_rows:,} rows x {dim} dims, kind "
            f"{engine.index_config.index}; {len(engine.featurizer.module_names)} modules; "
            f"questions {questions}; exclude {sorted(exclude) or 'nothing'}"
        )
        pairs = load_questions(questions, args.n + args.warmup, args.seed)
        warm, timed = pairs[: args.warmup], pairs[args.warmup :]
        for p, c in warm:
            engine.attribute(p, c, top_k=args.top_k, exclude_classes=exclude)
            plain_fwd_bwd(engine, p, c)
        attr_s: list[float] = []
        plain_s: list[float] = []
        for i, (p, c) in enumerate(timed):
            # Alternate which runs first, so neither always sees a cold cache.
            steps: list[tuple[list[float], Callable[[], object]]] = [
                (
                    attr_s,
                    lambda p=p, c=c: engine.attribute(
                        p, c, top_k=args.top_k, exclude_classes=exclude
                    ),
                ),
                (plain_s, lambda p=p, c=c: plain_fwd_bwd(engine, p, c)),
            ]
            for sink, fn in steps if i % 2 == 0 else steps[::-1]:
                t0 = time.perf_counter()
                fn()
                sink.append(time.perf_counter() - t0)
        stages: dict[str, list[float]] = {}
        for p, c in timed:
            for k, v in staged_attribute(engine, p, c, args.top_k, exclude).items():
                stages.setdefault(k, []).append(v)
    attr, plain = Timing(attr_s), Timing(plain_s)
    ratio = attr.median / plain.median
    print()
    print_table(
        ["measure", "p50 ms", "p90 ms"],
        [
            [f"engine.attribute(top_k={args.top_k})", _ms(attr.median), _ms(attr.quantile(0.9))],
            ["plain forward+backward", _ms(plain.median), _ms(plain.quantile(0.9))],
            ["ratio (p50)", f"{ratio:.2f}x", ""],
        ],
    )
    print(f"\nbreakdown (median over {len(timed)} queries, instrumented second pass):")
    total = float(np.median(stages["total"]))
    print_table(
        ["stage", "p50 ms", "mean ms", "share of mean"],
        [
            [
                k,
                _ms(float(np.median(v))),
                _ms(float(np.mean(v))),
                f"{np.mean(v) / np.mean(stages['total']):.0%}"
                if k != "total" and not k.startswith("ref")
                else "",
            ]
            for k, v in stages.items()
        ],
    )
    print(
        f"\np50 {_ms(attr.median)} ms vs plain {_ms(plain.median)} ms: {ratio:.2f}x "
        f"(target <= 2x: {'met' if ratio <= 2 else 'MISSED'}); staged total p50 {_ms(total)}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "index": str(index_dir),
                    "attribute_s": attr_s,
                    "plain_s": plain_s,
                    "stages_s": stages,
                },
                indent=2,
            )
        )
    return 0


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


if __name__ == "__main__":
    sys.exit(main())
