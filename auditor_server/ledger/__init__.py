"""The lab's tamper-evident ledger: an append-only RFC 9162 Merkle log with signed heads.

:class:`Ledger` appends one leaf per handled request and answers proof requests, and keeps
every head it signs in a head journal beside the database (:mod:`.journal`), so a truncated
or rewritten database is refused; :func:`verify` re-checks a ledger file offline, against
its journal and against heads auditors exported; ``commands.ledger_group`` is the
``auditor-server ledger`` command group. The Merkle algorithms themselves are the protocol's
reference implementation in :mod:`auditor_client.wire.merkle`, shared with auditors.
"""

from __future__ import annotations

from auditor_server.ledger.errors import LedgerError, LedgerIntegrityError, LedgerInUseError
from auditor_server.ledger.journal import HeadJournal, journal_path_for
from auditor_server.ledger.log import AppendResult, Ledger, TreeHead, TreeHeadSigner
from auditor_server.ledger.verify import VerifyReport, verify

__all__ = [
    "AppendResult",
    "HeadJournal",
    "Ledger",
    "LedgerError",
    "LedgerInUseError",
    "LedgerIntegrityError",
    "TreeHead",
    "TreeHeadSigner",
    "VerifyReport",
    "journal_path_for",
    "verify",
]
