"""The lab's tamper-evident ledger: an append-only RFC 9162 Merkle log with signed heads.

:class:`Ledger` appends one leaf per handled request and answers proof requests;
:func:`verify` re-checks a ledger file offline; ``commands.ledger_group`` is the
``auditor-server ledger`` command group. The Merkle algorithms themselves are the protocol's
reference implementation in :mod:`auditor_client.wire.merkle`, shared with auditors.
"""

from __future__ import annotations

from auditor_server.ledger.errors import LedgerError, LedgerIntegrityError
from auditor_server.ledger.log import AppendResult, Ledger, TreeHead, TreeHeadSigner
from auditor_server.ledger.verify import VerifyReport, verify

__all__ = [
    "AppendResult",
    "Ledger",
    "LedgerError",
    "LedgerIntegrityError",
    "TreeHead",
    "TreeHeadSigner",
    "VerifyReport",
    "verify",
]
