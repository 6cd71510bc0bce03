"""The auditor client stays thin: importing it never pulls in the lab's heavy stack."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "faiss", "numpy", "auditor_server")


def test_importing_the_client_loads_no_heavy_module() -> None:
    code = (
        "import sys\n"
        "import auditor_client, auditor_client.cli, auditor_client.client\n"
        "import auditor_client.wire.receipts, auditor_client.wire.merkle\n"
        f"heavy = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r}]\n"
        "print(','.join(sorted(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"client imported: {out.stdout.strip()}"
