"""Shared helpers for the ledger tests: a deterministic lab key and entry digests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auditor_client.wire import digests, merkle
from auditor_server.ledger.log import AppendResult, Ledger

LAB_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))


@dataclass(frozen=True)
class KeySigner:
    """The smallest :class:`~auditor_server.ledger.log.TreeHeadSigner`: a raw Ed25519 key."""

    private_key: Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return digests.key_id(self.private_key.public_key())

    def sign(self, digest: bytes) -> bytes:
        return self.private_key.sign(digest)


def entry(i: int) -> tuple[bytes, bytes, int]:
    """Request digest, response digest and status of a distinct, deterministic entry."""
    status = 0 if i % 3 else 8
    return (
        hashlib.sha256(b"request %d" % i).digest(),
        hashlib.sha256(b"response %d" % i).digest(),
        status,
    )


def append(ledger: Ledger, i: int) -> AppendResult:
    """Append :func:`entry` ``i``."""
    request, response, status = entry(i)
    return ledger.append(request_digest=request, response_digest=response, status=status)


def leaf_of(i: int) -> bytes:
    """The leaf hash a client recomputes for :func:`entry` ``i``."""
    request, response, status = entry(i)
    return merkle.leaf_hash(
        digests.ledger_leaf_data(request_digest=request, response_digest=response, status=status)
    )
