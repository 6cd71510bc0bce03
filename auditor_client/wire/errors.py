"""Failures to verify what the lab sent: an answer, a tree head or a ledger proof.

Every check in :mod:`auditor_client.wire` raises a subclass of
:class:`WireVerificationError`, so a caller can refuse any unprovable answer with one
``except`` and still tell the failures apart. These are never retried: the lab, or something
between it and the auditor, sent something it cannot prove.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from auditor_client.wire._proto.audit_pb2 import SignedTreeHead


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


class SplitViewError(WireVerificationError):
    """Two heads the lab signed cannot both belong to one append-only log.

    Either the same tree size with two roots, or a newer head the lab cannot prove extends
    an older one (its consistency proof fails, or its log is now smaller). Each head carries
    the lab's signature, so the pair is evidence anyone holding the lab's public key can
    check: the lab showed different histories to different people, or rewrote its own.

    Attributes:
        held: the head recorded earlier (from the auditor's head store or an import).
        other: the head that conflicts with it.
        reason: how they conflict.
    """

    def __init__(self, held: SignedTreeHead, other: SignedTreeHead, reason: str) -> None:
        super().__init__(
            f"split view: {reason}; held head: {_describe(held)}; conflicting head: "
            f"{_describe(other)}"
        )
        self.held = held
        self.other = other
        self.reason = reason


def _describe(head: SignedTreeHead) -> str:
    return (
        f"size {head.tree_size}, root {head.root_hash.hex()}, signed at {head.timestamp_ms} ms "
        f"(signature {head.signature.hex()[:16]}…)"
    )
