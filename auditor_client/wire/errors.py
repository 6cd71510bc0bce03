"""Failures to verify what the lab sent: an answer, a tree head or a ledger proof.

Every check in :mod:`auditor_client.wire` raises a subclass of
:class:`WireVerificationError`, so a caller can refuse any unprovable answer with one
``except`` and still tell the failures apart. These are never retried: the lab, or something
between it and the auditor, sent something it cannot prove.
"""

from __future__ import annotations


class WireVerificationError(Exception):
    """Something the lab sent failed verification; the message says expected vs. actual."""


class SignatureError(WireVerificationError):
    """A lab signature is missing, malformed, by another key, or does not verify."""


class BindingError(WireVerificationError):
    """A correctly signed answer is not the answer to *this* request (digest, method, item)."""


class MalformedResponseError(WireVerificationError):
    """A signed response body does not parse as a ``ResponseBody``."""


class ProofError(WireVerificationError):
    """A Merkle inclusion or consistency proof does not lead to the signed root(s)."""
