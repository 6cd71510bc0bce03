"""The exact bytes each side hashes and signs. Pure functions; both sides import them.

Every digest is SHA-256 over a domain tag and length-prefixed fields, so bytes meant for one
purpose (a request, a response, a tree head, a ledger leaf) can never be replayed as
another, and no field boundary is ambiguous. Changing anything here is a protocol version
change.
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

DIGEST_SIZE = 32
NONCE_SIZE = 16

REQUEST_DOMAIN = b"auditor-sandbox/v1/request\x00"
RESPONSE_DOMAIN = b"auditor-sandbox/v1/response\x00"
TREE_HEAD_DOMAIN = b"auditor-sandbox/v1/tree-head\x00"
LEDGER_LEAF_DOMAIN = b"auditor-sandbox/v1/ledger-leaf\x00"


def _field(data: bytes) -> bytes:
    """A 4-byte big-endian length, then the bytes."""
    return struct.pack(">I", len(data)) + data


def key_id(public_key: Ed25519PublicKey) -> str:
    """Hex of the first 16 bytes of SHA-256 over the raw 32-byte Ed25519 public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:16].hex()


def request_digest(
    *,
    auditor_id: str,
    key_id: str,
    method: str,
    timestamp_ms: int,
    nonce: bytes,
    body: bytes,
) -> bytes:
    """What an auditor signs: every envelope field, with the body by its SHA-256."""
    return hashlib.sha256(
        REQUEST_DOMAIN
        + _field(auditor_id.encode("utf-8"))
        + _field(key_id.encode("utf-8"))
        + _field(method.encode("utf-8"))
        + struct.pack(">q", timestamp_ms)
        + _field(nonce)
        + hashlib.sha256(body).digest()
    ).digest()


def response_digest(body: bytes) -> bytes:
    """What the lab signs for a response: the serialized ``ResponseBody``."""
    return hashlib.sha256(RESPONSE_DOMAIN + _field(body)).digest()


def tree_head_digest(*, tree_size: int, root_hash: bytes, timestamp_ms: int) -> bytes:
    """What the lab signs for a ledger tree head."""
    return hashlib.sha256(
        TREE_HEAD_DOMAIN
        + struct.pack(">Q", tree_size)
        + _field(root_hash)
        + struct.pack(">q", timestamp_ms)
    ).digest()


def ledger_leaf_data(*, request_digest: bytes, response_digest: bytes, status: int) -> bytes:
    """The ledger entry for one handled request (RFC 9162 hashes it as a leaf).

    ``status`` is the gRPC status code number (0 for OK). For a rejected request,
    ``request_digest`` is SHA-256 of the envelope bytes as received (they may not parse, so
    there may be no signed digest) and ``response_digest`` is that of the error text.
    """
    if len(request_digest) != DIGEST_SIZE or len(response_digest) != DIGEST_SIZE:
        raise ValueError("ledger digests must be 32 bytes")
    return (
        LEDGER_LEAF_DOMAIN + request_digest + response_digest + struct.pack(">I", status)
    )
