"""Child process for the crash test: append forever, printing each committed index.

Run as ``python -m tests.unit.ledger.append_child DB``; the parent kills it with SIGKILL.
An index is printed (and flushed) only after ``append`` returned, i.e. after its commit.
"""

from __future__ import annotations

import sys
from pathlib import Path

from auditor_server.ledger.log import Ledger
from tests.unit.ledger.ledger_fixtures import LAB_KEY, KeySigner, append


def main() -> None:
    ledger = Ledger.open(Path(sys.argv[1]), signer=KeySigner(LAB_KEY))
    i = ledger.size
    while True:
        result = append(ledger, i)
        print(result.index, flush=True)
        i += 1


if __name__ == "__main__":
    main()
