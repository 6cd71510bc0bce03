"""The README's main command end to end on the tiny preset (about a minute): corpus, model,
index, TLS server, both demo campaigns, both reports verified offline.

The tiny model is barely trained, so this checks the flow and the guarantees that hold for
any model (no private data anywhere, the third party sees less, tampering is caught); the
slow test in test_demo_pipeline.py checks that the demo model's campaigns find the planted
problems.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration import demo_checks


@pytest.mark.timeout(900)
def test_tiny_demo_runs_end_to_end_and_keeps_its_guarantees(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = demo_checks.run_demo(out, "tiny", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "report verified" in proc.stdout and "reports:" in proc.stdout
    for role in demo_checks.ROLES:
        folder = out / "reports" / role
        for name in ("report.json", "index.html", "report.md"):
            assert (folder / name).stat().st_size > 0, (role, name)
    demo_checks.check_no_private_data(out)
    demo_checks.check_third_party_sees_less(out)
    demo_checks.check_tampering_is_caught(out, tmp_path)
