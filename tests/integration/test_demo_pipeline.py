"""The README's main command on the real demo preset: the accuracy target, and campaigns
that find the planted problems, end to end.

Slow (the whole demo pipeline: ~10-15 minutes on 2 cores); run with `scripts/test.sh -m slow`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.integration import demo_checks


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_demo_script_meets_the_fact_recall_target(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    start = time.monotonic()
    proc = demo_checks.run_demo(out, "demo", timeout=2400)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluation = json.loads((out / "index" / "evaluation.json").read_text())
    fact = evaluation["by_kind"]["fact"]
    print(f"demo pipeline {elapsed:.0f}s; fact gradient {fact['gradient']}; bm25 {fact['bm25']}")
    assert evaluation["n_questions"] >= 4000
    assert fact["gradient"]["recall@10"] >= 0.8
    demo_checks.check_planted_problems_found(out)
    demo_checks.check_no_private_data(out)
    demo_checks.check_third_party_sees_less(out)
