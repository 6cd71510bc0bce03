"""Pooling leave-k-out runs: new question samples add questions, new seeds average per question.

The closing figures of the counterfactual benchmark come from this pooling, so a question
counted twice (two seeds of the same sample) would narrow the interval falsely.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bench.leave_k_out import paired_difference, pool_results


def _run(questions: list[str], engine: list[float], bm25: list[float]) -> dict[str, Any]:
    return {
        "removal": "withhold",
        "methods": {"engine": {}, "bm25": {}},
        "per_question": [
            {"prompt": q, "completion": " x", "drop": {"engine": e, "bm25": b}}
            for q, e, b in zip(questions, engine, bm25, strict=True)
        ],
    }


def test_other_samples_add_questions_and_other_seeds_average_them() -> None:
    seed0 = _run(["a", "b"], [3.0, 1.0], [1.0, 1.0])
    seed1 = _run(["a", "b"], [1.0, 3.0], [1.0, 2.0])
    sample1 = _run(["c", "d"], [2.0, 0.0], [0.0, 1.0])
    pooled = pool_results([seed0, seed1, sample1])
    assert pooled["runs"] == 3 and pooled["questions"] == 4
    # a: (3+1)/2 - 1 = 1; b: (1+3)/2 - 1.5 = 0.5; c: 2; d: -1
    diff = pooled["engine_minus"]["bm25"]
    assert diff["n"] == 4 and diff["mean"] == pytest.approx((1 + 0.5 + 2 - 1) / 4)
    assert diff["wins"] == 3
    assert pooled["drop"]["engine"]["mean"] == pytest.approx((2 + 2 + 2 + 0) / 4)
    lo, hi = diff["ci95"]
    assert lo < diff["mean"] < hi


def test_only_methods_every_run_measured_are_pooled() -> None:
    a = _run(["a"], [1.0], [0.0])
    b = _run(["b"], [2.0], [0.5])
    del b["methods"]["bm25"]
    pooled = pool_results([a, b])
    assert list(pooled["drop"]) == ["engine"] and pooled["engine_minus"] == {}


def test_paired_difference_counts_strict_wins() -> None:
    out = paired_difference(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 4.0]), seed=0)
    assert out["wins"] == 1 and out["mean"] == pytest.approx(0.0)
