"""What moves the counterfactual figure: ranking variants scored by a real tail-patch.

Why: ``auditor-server validate`` measures the served engine; choosing *how* the engine
ranks (preconditioner, normalization, how a record's windows combine, where candidates come
from) needs the same measure over many variants. One tail-patch per (question, record) pair
is computed once and cached, so every variant whose top 10 reuses pairs is scored for free.

For N seeded questions (the file's ``heldout`` split when it has one) this script ranks, from
the index's stored raw features (no re-featurization):

* every combination of preconditioner (``identity`` / ``empirical_fisher`` at two dampings),
  normalization (``dot`` / ``cosine``) and record score (``max`` / ``mean`` of windows), over
  the whole gradient index and as a re-ranker of BM25's top 100;
* ``bm25`` (prompt + completion) and the ``planted`` statements;
* the *first-order oracle*: the exact inner product of the full (unprojected) parameter
  gradients, ``lr · ∇NLL(question) · ∇L(record)``, the step's first-order effect, over every
  candidate record (one backward per record: ~10 min on the demo, cached in ``--cache``).

Each variant's figure is the mean over questions of the mean SGD tail-patch (lr 0.05) of its
top 10, exactly as ``validate`` computes it (``counterfactual.TailPatcher``).

    PYTHONPATH=. .venv/bin/python bench/attribution_variants.py --index runs/cf-demo/index \\
        --questions runs/cf-demo/corpus.questions.jsonl --n 40 --cache runs/bench/tp-cache.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from auditor_server.attribution import counterfactual as cf
from auditor_server.attribution.config import IndexConfig
from auditor_server.attribution.engine import AttributionEngine
from auditor_server.attribution.evaluate import read_questions
from auditor_server.attribution.lexical import BM25Baseline
from auditor_server.attribution.precondition import Preconditioner
from auditor_server.attribution.store import ShardStore, plan_shards
from auditor_server.model.generation import encode_pair

TOP = 10
LEXICAL = 100


def _record_scores(
    scores: NDArray[np.float32], rowrec: NDArray[np.int64], n_records: int, how: str
) -> NDArray[np.float64]:
    out = np.full(n_records, -np.inf)
    if how == "max":
        np.maximum.at(out, rowrec, scores)
        return out
    total = np.zeros(n_records)
    np.add.at(total, rowrec, scores)
    return total / np.maximum(np.bincount(rowrec, minlength=n_records), 1)


def _first_order(
    patcher: cf.TailPatcher,
    engine: AttributionEngine,
    questions: list[Any],
    records: list[int],
    texts: list[str],
) -> NDArray[np.float64]:
    """(questions, records) matrix of lr · ∇NLL(q) · ∇L(r) over all parameters."""
    params = list(engine.lm.model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    rows = []
    for q in questions:
        ids, start = encode_pair(engine.lm.tokenizer, q.prompt, q.completion)
        x = torch.tensor([ids])
        logits = engine.lm.model(input_ids=x).logits[0, start - 1 : -1].float()
        nll = torch.nn.functional.cross_entropy(logits, x[0, start:], reduction="sum")
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(nll, params)]))
    for p, flag in zip(params, flags, strict=True):
        p.requires_grad_(flag)
    query_grads = torch.stack(rows)
    out = np.zeros((len(questions), len(texts)))
    for r in records:
        g = torch.cat([t.reshape(-1) for t in patcher.record_gradient(texts[r])])
        out[:, r] = (query_grads @ g).numpy() * patcher.sgd_lr
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--questions", required=True)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache", help="JSON of tail-patch values and the oracle, reused across runs"
    )
    parser.add_argument("--no-oracle", action="store_true", help="skip the first-order oracle")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    cache_path = Path(args.cache) if args.cache else None
    cache: dict[str, Any] = (
        json.loads(cache_path.read_text()) if cache_path and cache_path.exists() else {}
    )
    engine = AttributionEngine.open(args.index)
    records = list(engine.catalog)
    texts = [r.text for r in records]
    private = np.array([r.source.data_class in cf.WITHHELD_FROM_ANSWERS for r in records])
    allowed = [i for i in range(len(records)) if not private[i]]
    chosen, split = cf.choose_questions(
        read_questions(Path(args.questions)),
        args.n,
        seed=args.seed,
        fits=lambda q: engine.featurizer.fits(q.prompt, q.completion),
    )
    key = cf.questions_digest(chosen) + engine.snapshot_id
    if cache.get("key") != key:
        cache = {"key": key, "delta": {}}
    delta: dict[tuple[int, int], float] = {
        (int(k.split(":")[0]), int(k.split(":")[1])): v for k, v in cache["delta"].items()
    }
    rows = engine.rows
    rowrec = rows.record
    raw = ShardStore(Path(args.index)).read_all(
        plan_shards(len(rows), engine.featurizer.config.shard_rows)
    )
    qraw, _ = engine.featurizer.featurize_queries([(q.prompt, q.completion) for q in chosen])
    bm25 = BM25Baseline([str(i) for i in allowed], [texts[i] for i in allowed])
    lexical = [
        np.array([int(i) for i in row])
        for row in bm25.rank([q.prompt + q.completion for q in chosen], k=LEXICAL)
    ]
    variants: dict[str, list[NDArray[np.int64]]] = {
        "bm25": [c[:TOP] for c in lexical],
        "planted": [
            np.array(
                [i for i, r in enumerate(records) if r.id in q.relevant_ids and not private[i]]
            )
            for q in chosen
        ],
    }
    for pre, damping in (("identity", 0.1), ("empirical_fisher", 0.1), ("empirical_fisher", 1.0)):
        config = IndexConfig(preconditioner=pre, damping=damping, normalization="dot")  # type: ignore[arg-type]
        precond = Preconditioner.fit(raw[~private[rowrec]], config)
        vectors, queries = precond.apply(raw), precond.apply(qraw)
        for norm in ("dot", "cosine"):
            rv = (
                vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
                if norm == "cosine"
                else vectors
            )
            scores = queries @ rv.T
            for how in ("max", "mean"):
                per_q = [
                    _record_scores(scores[i], rowrec, len(records), how) for i in range(len(chosen))
                ]
                for s in per_q:
                    s[private] = -np.inf
                name = f"{pre}-{damping}-{norm}-{how}"
                variants[name] = [np.argsort(-s)[:TOP] for s in per_q]
                variants[name + f" | bm25@{LEXICAL}"] = [
                    c[np.argsort(-s[c])][:TOP] for c, s in zip(lexical, per_q, strict=True)
                ]
    patcher = cf.TailPatcher(engine.lm)
    if not args.no_oracle:
        if "oracle" not in cache:
            cache["oracle"] = _first_order(patcher, engine, chosen, allowed, texts).tolist()
        oracle = np.asarray(cache["oracle"], dtype=np.float64)
        oracle[:, private] = -np.inf
        variants["first-order oracle"] = [np.argsort(-o)[:TOP] for o in oracle]
    need: dict[int, set[int]] = {}
    for tops in variants.values():
        for qi, top in enumerate(tops):
            for r in top.tolist():
                if (qi, r) not in delta:
                    need.setdefault(r, set()).add(qi)
    pairs = [(q.prompt, q.completion) for q in chosen]
    base = patcher.logprobs(pairs)
    for r, qs in sorted(need.items()):
        grads = patcher.record_gradient(texts[r])
        order = sorted(qs)
        with patcher.patched(grads, "sgd"):
            after = patcher.logprobs([pairs[qi] for qi in order])
        for qi, lp in zip(order, after, strict=True):
            delta[(qi, r)] = float(lp - base[qi])
    if cache_path:
        cache["delta"] = {f"{qi}:{r}": v for (qi, r), v in delta.items()}
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_text(json.dumps(cache))
    figures = {}
    for name, tops in variants.items():
        per_q = np.array(
            [np.mean([delta[(qi, r)] for r in top.tolist()]) for qi, top in enumerate(tops)]
        )
        figures[name] = cf.bootstrap_mean(per_q, seed=args.seed)
    print(f"{len(chosen)} {split} questions, SGD tail-patch (lr {patcher.sgd_lr}) of the top {TOP}")
    for name, fig in sorted(figures.items(), key=lambda kv: -kv[1]["mean"]):
        lo, hi = fig["ci95"]
        print(f"  {name:<44} {fig['mean']:+.4f}  [{lo:+.4f}, {hi:+.4f}]")
    print(f"({time.perf_counter() - started:.0f} s; {len(need)} records patched this run)")
    if args.out:
        Path(args.out).write_text(
            json.dumps({"split": split, "n": len(chosen), "figures": figures}, indent=2)
        )


if __name__ == "__main__":
    main()
