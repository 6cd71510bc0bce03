"""``auditor-server validate``: the counterfactual check of an index, and its printed table.

``build --questions`` runs the same check after a build, so every index that is given
questions ships with a measured answer to "do the records it ranks first move the model?"
(``validation.json``, which the service signs and serves as the index's evaluation
certificate).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from auditor_server.attribution import layout
from auditor_server.attribution.config import TAIL_PATCH_SGD_LR as DEFAULT_SGD_LR
from auditor_server.attribution.config import TAIL_PATCH_TOP_K as DEFAULT_TOP_K

__all__ = ["run_validation", "validate_command"]

VALIDATION_FILE = layout.VALIDATION
"""Kept under this name for the commands that print where the result went."""
BUILD_QUESTIONS = 16
"""Questions the check after a build uses, with the plain-SGD step only: enough for intervals
that separate the engine from random and lexical retrieval on the demo, at a fraction of the
build's time (bench/README.md). ``validate`` asks more and adds the optimizer's own step."""


def run_validation(
    index_dir: Path,
    questions_path: Path,
    *,
    n_questions: int,
    top_k: int = DEFAULT_TOP_K,
    sgd_lr: float = DEFAULT_SGD_LR,
    seed: int = 0,
    optimizer_step: bool = True,
    device: str = "cpu",
    progress: bool = True,
    verify: bool = True,
) -> dict[str, Any]:
    """Tail-patch the index's engine and baselines; write ``INDEX_DIR/validation.json``.

    ``optimizer_step`` adds the training optimizer's own step where the model directory
    holds its state (it roughly doubles the cost)."""
    from auditor_server.attribution.counterfactual import validate
    from auditor_server.attribution.engine import AttributionEngine
    from auditor_server.attribution.evaluate import read_questions
    from auditor_server.fsutil import atomic_write_json
    from auditor_server.model.optimizer_state import load_optimizer_state

    questions = read_questions(questions_path)
    # ``verify=False`` right after a build that has just written and checksummed the files.
    with AttributionEngine.open(index_dir, device=device, verify=verify) as engine:
        result = validate(
            engine,
            questions,
            n_questions=n_questions,
            top_k=top_k,
            sgd_lr=sgd_lr,
            adam=load_optimizer_state(engine.lm.model_dir) if optimizer_step else None,
            seed=seed,
            progress=progress,
        )
    result["questions_file"] = questions_path.name
    atomic_write_json(index_dir / VALIDATION_FILE, result)
    return result


def format_validation(result: dict[str, Any]) -> str:
    """The table a person reads: each method's mean tail-patch with its 95% interval."""
    kinds = list(result["steps"])
    head = f"{'method':<9}" + "".join(f" {'tail-patch ' + k:>30}" for k in kinds) + "  recall@k"
    lines = [
        f"tail-patch on {result['n_questions']} {result['split']} questions "
        f"(top {result['top_k']}; sgd lr {result['steps']['sgd']['lr']}; "
        f"{result['n_known']} known by the model at p >= 1/2), snapshot "
        f"{result['snapshot_id'][:19]}…",
        head,
    ]
    for name, block in result["methods"].items():
        cells = []
        for k in kinds:
            m = block[k]
            cells.append(
                f" {m['mean']:>+9.4f} [{m['ci95'][0]:+.4f}, {m['ci95'][1]:+.4f}]"
                if m["mean"] is not None
                else f" {'n/a':>30}"
            )
        lines.append(f"{name:<9}" + "".join(cells) + f"  {block['recall@k']:>8.3f}")
    for pair, per_kind in result["ratios"].items():
        for k in kinds:
            r = per_kind[k]
            d = r["difference"]
            if d["mean"] is None:
                continue
            ratio = (
                f"ratio {r['ratio']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"
                if r["ratio"] is not None
                else "ratio n/a (baseline <= 0)"
            )
            lines.append(
                f"{pair:<16} {k:<4} {ratio:<28} difference {d['mean']:+.4f} "
                f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"
            )
    lines.append(f"({result['seconds']:.1f} s)")
    return "\n".join(lines)


@click.command("validate")
@click.option(
    "--index",
    "index_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option(
    "--questions", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--n-questions",
    type=click.IntRange(1, 100_000),
    default=100,
    show_default=True,
    help="Questions to draw (seeded; from the held-out split when the file marks one).",
)
@click.option("--top-k", type=click.IntRange(1, 100), default=DEFAULT_TOP_K, show_default=True)
@click.option(
    "--lr",
    "sgd_lr",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_SGD_LR,
    show_default=True,
    help="Step size of the plain-SGD tail-patch.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--optimizer-step/--no-optimizer-step",
    default=True,
    show_default=True,
    help="Also measure the training optimizer's own step (when the model directory holds "
    "its state; about doubles the time).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--no-progress", is_flag=True)
def validate_command(
    index_dir: Path,
    questions: Path,
    n_questions: int,
    top_k: int,
    sgd_lr: float,
    seed: int,
    optimizer_step: bool,
    as_json: bool,
    device: str,
    no_progress: bool,
) -> None:
    """Counterfactual check: does one training step on a method's top records raise
    log p(completion | prompt)? The engine against BM25, an entity-only lexical baseline,
    random records and the records that state the answer."""
    result = run_validation(
        index_dir,
        questions,
        n_questions=n_questions,
        top_k=top_k,
        sgd_lr=sgd_lr,
        seed=seed,
        optimizer_step=optimizer_step,
        device=device,
        progress=not no_progress,
    )
    click.echo(json.dumps(result, indent=2) if as_json else format_validation(result))
    if not as_json:
        click.echo(f"saved to {index_dir / VALIDATION_FILE}")
