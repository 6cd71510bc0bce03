"""Leave-k-out retraining: remove what each method ranks first, retrain, and see the answer fall.

Why: recall of the planted statements says whether a method finds records that *state* a
fact, and the tail-patch check (``auditor-server validate``) approximates what one record
does to the trained model with one optimizer step. The ground truth both stand in for is the
counterfactual itself: the model that never saw those records. This benchmark measures it
directly, at the cost of one training run per method.

For N questions (seeded sample; the ``heldout`` split when the question file has one), each
method ranks its top k records per question, as in ``auditor-server validate`` (the same
candidate pool: every record an answer may contain, private ones never):

* ``engine``: the gradient attribution index (``AttributionEngine.attribute_many``);
* ``bm25``: BM25 over record texts, queried with prompt + completion;
* ``entity``: BM25 queried with the question's subject alone (optional);
* ``random``: k records drawn uniformly, seeded per question;
* ``planted``: the records the question file lists as stating the answer.

The union of a method's top-k over all N questions is removed from the corpus and a model is
retrained from scratch on the rest: same preset, epochs, seed and torch threads as the
original (read from its ``training_summary.json`` unless given) and the original model's
tokenizer (so the remaining records are tokenized as before). By default the removed records
are *withheld in place* (``train_model(withheld_ids=...)``): the run packs and shuffles the
full corpus exactly as the original did and blanks the removed records' tokens, so every
other record is seen in the same block, batch and step, and the difference between the runs
is what the removed records did (and whatever chaos it set off), not also a new data order
and a shorter schedule. ``--removal delete`` trains on a corpus file without them instead,
which reshuffles every epoch and takes fewer steps. The figure per method is the mean over
questions of ``log p(completion | prompt)`` under the full-corpus model minus the
same under the retrained one (natural log; positive = the answer became less likely), with a
percentile-bootstrap 95% interval over questions, and its ratio to the ``planted`` removal's
drop (paired bootstrap). The full-corpus reference is the full corpus retrained the same way;
when that reproduces the original weights bit for bit (it should on the same machine and
thread count) the JSON says so, and ``--reference original`` skips that run.

Cost: one training run per method plus the reference run. The ``tiny`` preset on the tiny
demo corpus takes seconds per run; the ``demo`` preset on the demo corpus ~7-25 min per run
on 2 shared cores.

    PYTHONPATH=. .venv/bin/python bench/leave_k_out.py --index runs/cf-demo/index \\
        --corpus runs/cf-demo/corpus.jsonl --question-file runs/cf-demo/corpus.questions.jsonl \\
        --questions 20 --k 10 --out runs/bench/results/leave_k_out-cf-demo.json
    # quick check of the machinery (tiny demo corpus, tiny model and index, ~2-4 min):
    PYTHONPATH=. .venv/bin/python bench/leave_k_out.py --make-tiny runs/bench/lko-tiny
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auditor_server.attribution.counterfactual import (
    WITHHELD_FROM_ANSWERS,
    EngineRanker,
    LexicalRanker,
    PlantedRanker,
    Pool,
    RandomRanker,
    Ranker,
    bootstrap_mean,
    bootstrap_ratio,
    choose_questions,
    entity_query,
    questions_digest,
    recall_at_k,
)
from auditor_server.attribution.engine import AttributionEngine
from auditor_server.attribution.evaluate import Question, read_questions
from auditor_server.corpus.records import Record, read_corpus
from auditor_server.model.generation import score_many
from auditor_server.model.loading import hash_model_files, load_model
from auditor_server.model.train import SUMMARY_FILE, train_model
from bench._common import (
    add_omp_argument,
    apply_omp_wait_policy,
    machine,
    print_table,
)

METHODS = ("engine", "bm25", "entity", "random", "planted")
DEFAULT_METHODS = ("engine", "bm25", "random", "planted")


def _question_flags(path: Path) -> list[dict[str, Any]]:
    """The raw JSON of each non-blank line, in the order ``read_questions`` returns them."""
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def select(
    questions: Sequence[Question],
    flags: Sequence[dict[str, Any]],
    *,
    kind: str,
    fair: str,
) -> list[Question]:
    """Questions of ``kind`` (``all``: any) and fairness ``fair`` (``only``, ``none``, ``any``)."""
    out = []
    for q, raw in zip(questions, flags, strict=True):
        if kind != "all" and q.kind != kind:
            continue
        is_fair = bool(raw.get("fair", False))
        if (fair == "only" and not is_fair) or (fair == "none" and is_fair):
            continue
        out.append(q)
    return out


def choose_controls(
    questions: Sequence[Question],
    chosen: Sequence[Question],
    n: int,
    *,
    seed: int,
    fits: Any,
) -> list[Question]:
    """Up to ``n`` other questions (same kind, any split), seeded: the removal's side effects.

    Removing records also shortens training (fewer tokens, fewer steps) and so lowers the
    log-probability of answers whose records all stay. A control question whose planted
    records a method did not remove measures that side effect for the method's run.
    """
    taken = {(q.prompt, q.completion) for q in chosen}
    pool = [q for q in questions if (q.prompt, q.completion) not in taken and fits(q)]
    rng = random.Random(f"leave-k-out-controls:{seed}")
    return pool if len(pool) <= n else rng.sample(pool, n)


def net_drop(
    drop: np.ndarray, control: np.ndarray, *, seed: int, resamples: int = 2000
) -> dict[str, Any]:
    """Mean drop minus mean control drop, with a 95% interval (both resampled independently)."""
    if drop.size == 0 or control.size == 0:
        return {"mean": None, "ci95": None}
    rng = np.random.default_rng(seed)
    a = drop[rng.integers(0, drop.size, size=(resamples, drop.size))].mean(axis=1)
    b = control[rng.integers(0, control.size, size=(resamples, control.size))].mean(axis=1)
    lo, hi = np.percentile(a - b, [2.5, 97.5])
    return {"mean": float(drop.mean() - control.mean()), "ci95": [float(lo), float(hi)]}


def paired_difference(a: np.ndarray, b: np.ndarray, *, seed: int) -> dict[str, Any]:
    """Mean of ``a - b`` per question with its bootstrap interval, and how often ``a > b``."""
    out = bootstrap_mean(a - b, seed=seed)
    out["wins"] = int(np.sum(a > b))
    return out


def pool_results(results: Sequence[dict[str, Any]], *, seed: int = 0) -> dict[str, Any]:
    """Per-question drops of several runs in one comparison.

    Runs on different question samples add questions; runs of the same questions (another
    training seed) are averaged per question first, so a question counts once and the
    interval is over questions, as in a single run. Only methods every run measured count.
    """
    methods = [m for m in results[0]["methods"] if all(m in r["methods"] for r in results)]
    per_q: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in results:
        for q in r["per_question"]:
            per_q.setdefault((q["prompt"], q["completion"]), []).append(q["drop"])
    drops = {m: np.array([np.mean([d[m] for d in ds]) for ds in per_q.values()]) for m in methods}
    out: dict[str, Any] = {
        "runs": len(results),
        "questions": len(per_q),
        "removal": sorted({r.get("removal", "delete") for r in results}),
        "drop": {m: bootstrap_mean(drops[m], seed=seed) for m in methods},
    }
    if "engine" in drops:
        out["engine_minus"] = {
            m: paired_difference(drops["engine"], drops[m], seed=seed)
            for m in methods
            if m != "engine"
        }
    return out


def write_corpus(records: Sequence[Record], removed: set[str], path: Path) -> int:
    """Write ``records`` without the ``removed`` ids (order kept); returns records written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = [r for r in records if r.id not in removed]
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for r in kept:
            fh.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
    return len(kept)


def logprobs(model_dir: Path, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """``log p(completion | prompt)`` of each pair under the model in ``model_dir``."""
    lm = load_model(model_dir)
    out = np.array([r.logprob for r in score_many(lm, pairs)], dtype=np.float64)
    del lm
    return out


def retrain(
    corpus: Path,
    out: Path,
    *,
    settings: dict[str, Any],
    tokenizer_dir: Path,
    withheld: Collection[str] = (),
) -> dict[str, Any]:
    """Train on ``corpus`` with the original's settings and tokenizer; returns run facts."""
    summary = train_model(
        corpus,
        out,
        withheld_ids=withheld,
        preset=settings["preset"],
        epochs=settings["epochs"],
        seed=settings["seed"],
        progress=settings["progress"],
        overwrite=True,
        tokenizer_dir=tokenizer_dir,
    )
    return {
        "train_seconds": round(summary.seconds, 1),
        "steps": summary.steps,
        "final_loss": summary.final_loss,
        "model_hash": hash_model_files(out)[0],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    index_dir = Path(args.index)
    corpus_path = Path(args.corpus)
    question_path = Path(args.question_file)
    records = read_corpus(corpus_path)

    with AttributionEngine.open(index_dir) as engine:
        model_dir = Path(args.model) if args.model else engine.lm.model_dir
        original = json.loads((model_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
        settings = {
            "preset": args.preset or original["preset"],
            "epochs": args.epochs or original["epochs"],
            "seed": original["seed"] if args.train_seed is None else args.train_seed,
            "threads": args.threads or original.get("torch_threads") or torch.get_num_threads(),
            "progress": args.progress,
        }
        torch.set_num_threads(settings["threads"])
        catalog = list(engine.catalog)
        if {r.id for r in catalog} != {r.id for r in records}:
            raise SystemExit(f"{corpus_path} is not the corpus the index {index_dir} was built on")
        pool = Pool(
            ids=[r.id for r in catalog],
            texts=[r.text for r in catalog],
            allowed=[
                i for i, r in enumerate(catalog) if r.source.data_class not in WITHHELD_FROM_ANSWERS
            ],
        )
        questions = read_questions(question_path)
        candidates = select(
            questions, _question_flags(question_path), kind=args.kind, fair=args.fair
        )
        if not candidates:
            raise SystemExit("no question matches --kind/--fair")
        chosen, split = choose_questions(
            candidates,
            args.questions,
            seed=args.sample_seed,
            fits=lambda q: bool(engine.featurizer.fits(q.prompt, q.completion)),
        )
        controls = choose_controls(
            select(questions, _question_flags(question_path), kind=args.kind, fair="any"),
            chosen,
            args.controls,
            seed=args.sample_seed,
            fits=lambda q: bool(engine.featurizer.fits(q.prompt, q.completion)),
        )
        available: dict[str, Ranker] = {
            "engine": EngineRanker(engine, pool),
            "bm25": LexicalRanker("bm25", pool, lambda q: q.prompt + q.completion),
            "entity": LexicalRanker("entity", pool, entity_query),
            "random": RandomRanker(pool, args.sample_seed),
            "planted": PlantedRanker(pool),
        }
        t0 = time.perf_counter()
        rankings = {m: available[m].rank(chosen, args.k) for m in args.methods}
        rank_seconds = time.perf_counter() - t0
        snapshot = engine.snapshot_id
        original_hash = engine.lm.model_hash

    n = len(chosen)
    pairs = [(q.prompt, q.completion) for q in [*chosen, *controls]]
    planted_ids = {rid for q in chosen for rid in q.relevant_ids}
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="leave-k-out-"))
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, Any] = {}
    try:
        original_lp = logprobs(model_dir, pairs)
        reference: dict[str, Any] = {"source": "original", "model_hash": original_hash}
        reference_lp = original_lp
        if args.reference == "retrain":
            full = work / "full"
            write_corpus(records, set(), full / "corpus.jsonl")
            facts = retrain(
                full / "corpus.jsonl", full / "model", settings=settings, tokenizer_dir=model_dir
            )
            identical = facts["model_hash"] == original_hash
            full_lp = logprobs(full / "model", pairs)
            reference = {
                "source": "original" if identical else "full-corpus retrain",
                "retrain": facts,
                "bit_identical_to_original": identical,
                "model_hash": facts["model_hash"],
                "max_abs_logprob_difference_vs_original": float(
                    np.max(np.abs(full_lp - original_lp))
                ),
            }
            reference_lp = full_lp
            print(
                f"full-corpus retrain: {facts['train_seconds']:.0f}s, "
                f"{'bit-identical to' if identical else 'differs from'} the original model",
                file=sys.stderr,
            )
        drops: dict[str, np.ndarray] = {}
        for method in args.methods:
            removed = {pool.ids[i] for row in rankings[method] for i in row}
            run_dir = work / method
            if args.removal == "withhold":  # the full corpus, the removed records blanked
                # The id list `auditor-server train --withhold` takes, for a rerun by hand.
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "withheld.txt").write_text(
                    "".join(f"{rid}\n" for rid in sorted(removed)), encoding="utf-8"
                )
                corpus, withheld = corpus_path, removed
            else:
                corpus, withheld = run_dir / "corpus.jsonl", set()
                write_corpus(records, removed, corpus)
            kept = len(records) - len(removed)
            facts = retrain(
                corpus,
                run_dir / "model",
                settings=settings,
                tokenizer_dir=model_dir,
                withheld=withheld,
            )
            lp = logprobs(run_dir / "model", pairs)
            drops[method] = (reference_lp - lp)[:n]
            untouched = [not (set(q.relevant_ids) & removed) for q in controls]
            control = (reference_lp - lp)[n:][np.array(untouched, dtype=bool)]
            per_q_removed = [
                len(set(q.relevant_ids) & removed) / len(q.relevant_ids) for q in chosen
            ]
            runs[method] = {
                "records_removed": len(removed),
                "records_kept": kept,
                "planted_removed": len(removed & planted_ids),
                "planted_total": len(planted_ids),
                "mean_fraction_of_own_planted_removed": float(np.mean(per_q_removed)),
                "recall@k": recall_at_k(chosen, rankings[method], pool),
                "logprob_drop": bootstrap_mean(drops[method], seed=args.sample_seed),
                "control_drop": bootstrap_mean(control, seed=args.sample_seed),
                "net_drop": net_drop(drops[method], control, seed=args.sample_seed),
                "mean_logprob_after": float(lp[:n].mean()),
                **facts,
            }
            print(
                f"{method}: removed {len(removed)} records, retrained in "
                f"{facts['train_seconds']:.0f}s, mean drop {drops[method].mean():+.3f} nats",
                file=sys.stderr,
            )
            if not args.keep_models:
                shutil.rmtree(run_dir / "model", ignore_errors=True)
        if "engine" in drops:
            for method in args.methods:
                if method != "engine":
                    runs["engine"][f"minus_{method}"] = paired_difference(
                        drops["engine"], drops[method], seed=args.sample_seed
                    )
        if "planted" in drops:
            for method in args.methods:
                if method != "planted":
                    runs[method]["ratio_to_planted"] = bootstrap_ratio(
                        drops[method], drops["planted"], seed=args.sample_seed
                    )
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    return {
        "benchmark": "leave_k_out",
        "machine": machine(),
        "index": str(index_dir),
        "snapshot_id": snapshot,
        "corpus": str(corpus_path),
        "corpus_records": len(records),
        "question_file": str(question_path),
        "questions_sha256": questions_digest(chosen),
        "split": split,
        "kind": args.kind,
        "fair": args.fair,
        "n_questions": len(chosen),
        "k": args.k,
        "sample_seed": args.sample_seed,
        "training": {k: v for k, v in settings.items() if k != "progress"},
        "removal": args.removal,
        "original_model": {"dir": str(model_dir), "model_hash": original_hash},
        "reference": reference,
        "reference_mean_logprob": float(reference_lp[:n].mean()),
        "n_known": int(np.sum(reference_lp[:n] >= math.log(0.5))),
        "n_controls": len(controls),
        "controls_sha256": questions_digest(controls),
        "rank_seconds": round(rank_seconds, 1),
        "methods": runs,
        "per_question": [
            {
                "prompt": q.prompt,
                "completion": q.completion,
                "subject": q.subject,
                "reference_logprob": float(reference_lp[i]),
                "drop": {m: float(drops[m][i]) for m in drops},
            }
            for i, q in enumerate(chosen)
        ],
        "seconds": round(time.perf_counter() - started, 1),
    }


def make_tiny(root: Path, progress: bool) -> tuple[Path, Path, Path]:
    """Tiny demo corpus, tiny model and index under ``root`` (reused when present)."""
    from auditor_server.attribution.build import build_index
    from auditor_server.corpus.demo import generate_demo_corpus

    corpus = root / "corpus.jsonl"
    if not corpus.is_file():
        generate_demo_corpus(corpus, size="tiny", seed=0)
    model = root / "model"
    if not (model / "config.json").is_file():
        train_model(corpus, model, preset="tiny", epochs=8, seed=0, progress=progress)
    index = root / "index"
    if not (index / "manifest.json").is_file():
        build_index(model_dir=model, corpus_path=corpus, out_dir=index, progress=progress)
    return index, corpus, corpus.with_suffix(".questions.jsonl")


def _fmt(block: dict[str, Any]) -> str:
    if block.get("mean") is None:
        return "-"
    lo, hi = block["ci95"]
    return f"{block['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def print_summary(result: dict[str, Any]) -> None:
    rows = []
    for method, r in result["methods"].items():
        d = r["logprob_drop"]
        ratio = r.get("ratio_to_planted")
        rows.append(
            [
                method,
                str(r["records_removed"]),
                f"{r['planted_removed']}/{r['planted_total']}",
                f"{r['recall@k']:.2f}",
                f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]",
                f"{_fmt(r['control_drop'])} n={r['control_drop']['n']}",
                _fmt(r["net_drop"]),
                ""
                if not ratio or ratio["ratio"] is None
                else f"{ratio['ratio']:.2f} [{ratio['ci95'][0]:.2f}, {ratio['ci95'][1]:.2f}]",
                f"{r['train_seconds']:.0f}",
            ]
        )
    print(
        f"\n{result['n_questions']} questions ({result['split']}, kind {result['kind']}, "
        f"fair {result['fair']}), k={result['k']}, reference: {result['reference']['source']} "
        f"(mean log p {result['reference_mean_logprob']:.3f}, {result['n_known']} known)"
    )
    print_table(
        [
            "method",
            "removed",
            "planted removed",
            "recall@k",
            "drop of log p (95% CI)",
            "controls' drop",
            "net drop",
            "/ planted",
            "train s",
        ],
        rows,
    )
    for other, diff in result["methods"].get("engine", {}).items():
        if other.startswith("minus_"):
            print(
                f"engine - {other[6:]}, paired: {_fmt(diff)} nats "
                f"(engine ahead on {diff['wins']} of {diff['n']} questions)"
            )
    print(f"\n{result['machine']}; {result['seconds']:.0f}s in all")


def print_pooled(pooled: dict[str, Any]) -> None:
    print(
        f"{pooled['runs']} runs, {pooled['questions']} distinct questions, "
        f"removal {'/'.join(pooled['removal'])}"
    )
    print_table(
        ["method", "mean drop of log p (95% CI)"],
        [[m, _fmt(d)] for m, d in pooled["drop"].items()],
    )
    for other, diff in pooled.get("engine_minus", {}).items():
        print(
            f"engine - {other}, paired: {_fmt(diff)} nats "
            f"(engine ahead on {diff['wins']} of {diff['n']} questions)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", help="index directory (AttributionEngine.open)")
    parser.add_argument("--corpus", help="the corpus JSONL the index was built on")
    parser.add_argument("--question-file", help="question JSONL (default: next to the corpus)")
    parser.add_argument("--model", help="original model directory (default: the index's)")
    parser.add_argument("--questions", type=int, default=20, help="questions sampled (20)")
    parser.add_argument("--k", type=int, default=10, help="records per question per method (10)")
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated, of {', '.join(METHODS)} (default {','.join(DEFAULT_METHODS)})",
    )
    parser.add_argument("--kind", default="fact", help="question kind to sample, or 'all'")
    parser.add_argument(
        "--fair",
        choices=["any", "only", "none"],
        default="any",
        help="sample only questions whose subject has distractor mentions, "
        "only those without, or either (default)",
    )
    parser.add_argument("--sample-seed", type=int, default=0, help="question sample seed")
    parser.add_argument(
        "--controls",
        type=int,
        default=50,
        help="other questions scored to measure what the removal does to answers whose "
        "records stay (default 50)",
    )
    parser.add_argument("--preset", help="training preset (default: the original's)")
    parser.add_argument("--epochs", type=int, help="epochs (default: the original's)")
    parser.add_argument("--train-seed", type=int, help="training seed (default: the original's)")
    parser.add_argument("--threads", type=int, help="torch threads (default: the original's)")
    parser.add_argument(
        "--reference",
        choices=["retrain", "original"],
        default="retrain",
        help="full-corpus reference: retrain it (and check it reproduces the "
        "original) or use the original model as is",
    )
    parser.add_argument(
        "--removal",
        choices=["withhold", "delete"],
        default="withhold",
        help="withhold: train on the full corpus with the removed records blanked in place, "
        "so every other record keeps its batch and step (default); delete: train on a "
        "corpus file without them, which reshuffles every epoch",
    )
    parser.add_argument(
        "--work-dir",
        help="keep each method's withheld ids (--removal delete: its corpus) and, with "
        "--keep-models, its model here",
    )
    parser.add_argument("--keep-models", action="store_true")
    parser.add_argument("--out", help="write the result JSON here")
    parser.add_argument(
        "--make-tiny",
        metavar="DIR",
        help="build (or reuse) a tiny demo corpus, model and index in DIR and run on them",
    )
    parser.add_argument("--progress", action="store_true", help="training progress bars")
    parser.add_argument(
        "--pool",
        nargs="+",
        metavar="RESULT_JSON",
        help="retrain nothing: pool earlier results (other question samples add questions, "
        "other training seeds are averaged per question) and print one paired comparison",
    )
    add_omp_argument(parser)
    args = parser.parse_args()
    if args.pool:
        results = [json.loads(Path(f).read_text(encoding="utf-8")) for f in args.pool]
        pooled = pool_results(results)
        print_pooled(pooled)
        if args.out:
            Path(args.out).write_text(json.dumps(pooled, indent=2) + "\n", encoding="utf-8")
        return
    apply_omp_wait_policy(args.omp_wait_policy)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or not args.methods:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if args.make_tiny:
        index, corpus, qfile = make_tiny(Path(args.make_tiny), args.progress)
        args.index = args.index or str(index)
        args.corpus = args.corpus or str(corpus)
        args.question_file = args.question_file or str(qfile)
    if not args.index or not args.corpus:
        parser.error("--index and --corpus are required (or --make-tiny DIR)")
    if not args.question_file:
        args.question_file = str(Path(args.corpus).with_suffix(".questions.jsonl"))
    result = run(args)
    print_summary(result)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
