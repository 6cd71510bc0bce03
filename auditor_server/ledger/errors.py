"""Errors of the ledger package, split by who is at fault.

Asking for a tree size, leaf index or proof the log cannot give is the caller's mistake
(:class:`LedgerError`, an :class:`~auditor_server.errors.InputError`; the service maps it to
``OUT_OF_RANGE``). Stored rows that no longer agree with each other or with the lab's
signatures are tampering or corruption (:class:`LedgerIntegrityError`, an
:class:`~auditor_server.errors.IntegrityError`; the CLI exits 4): that includes a database
that no longer extends a head recorded in the head journal. A second process opening a
ledger that is already open is the lab's set-up (:class:`LedgerInUseError`, a
:class:`~auditor_server.errors.ConfigError`).
"""

from __future__ import annotations

from auditor_server.errors import ConfigError, InputError, IntegrityError

__all__ = ["LedgerError", "LedgerInUseError", "LedgerIntegrityError"]


class LedgerError(InputError):
    """A requested size, index or proof is outside the log, or an entry is malformed."""


class LedgerIntegrityError(IntegrityError):
    """The stored log fails a check; the message names the first bad leaf index or head."""


class LedgerInUseError(ConfigError):
    """Another process has the ledger open for writing; two writers would fork the log."""
