"""Signing and verifying the protocol's envelopes: requests, responses and tree heads.

The auditor signs every request (:func:`sign_request`); the lab signs every answer
(:func:`sign_response`) and every ledger tree head (:func:`sign_tree_head`). The bytes each
signature covers come from :mod:`auditor_client.wire.digests` and nowhere else, so both sides
agree byte for byte. Verification raises (a subclass of
:class:`~auditor_client.wire.errors.WireVerificationError`) instead of returning a flag, so
an unverified answer can never be used by accident.

Pure functions: no IO, no gRPC. The lab's server imports this module as the protocol's
reference implementation.
"""

from __future__ import annotations

import hmac
import secrets
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError

from auditor_client.wire import digests
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.errors import BindingError, MalformedResponseError, SignatureError

SIGNATURE_SIZE = 64
"""Bytes in an Ed25519 signature."""


def sign_request(
    *,
    private_key: Ed25519PrivateKey,
    auditor_id: str,
    method: str,
    body: bytes,
    timestamp_ms: int | None = None,
    nonce: bytes | None = None,
) -> pb.SignedRequest:
    """Wrap a serialized inner request in a signed envelope.

    Every call gets a fresh random nonce and the current time unless given, so two envelopes
    are never identical and a retry is never mistaken for a replay.

    Args:
        private_key: the auditor's registered signing key.
        auditor_id: the id the lab's policy registers for that key.
        method: short RPC name, e.g. ``"Attribute"``; the server checks it against the RPC
            actually called, so a signed body cannot be sent to another method.
        body: the serialized inner request (e.g. ``AttributeRequest``).
        timestamp_ms: Unix milliseconds; defaults to now. Given explicitly only in tests.
        nonce: 16 bytes; defaults to fresh ``secrets.token_bytes``. Given only in tests.

    Returns:
        The signed envelope.

    Raises:
        ValueError: ``nonce`` is not 16 bytes (the server would refuse it).
    """
    if timestamp_ms is None:
        timestamp_ms = time.time_ns() // 1_000_000
    if nonce is None:
        nonce = secrets.token_bytes(digests.NONCE_SIZE)
    elif len(nonce) != digests.NONCE_SIZE:
        raise ValueError(f"nonce must be {digests.NONCE_SIZE} bytes, got {len(nonce)}")
    kid = digests.key_id(private_key.public_key())
    digest = digests.request_digest(
        auditor_id=auditor_id,
        key_id=kid,
        method=method,
        timestamp_ms=timestamp_ms,
        nonce=nonce,
        body=body,
    )
    return pb.SignedRequest(
        auditor_id=auditor_id,
        key_id=kid,
        method=method,
        timestamp_ms=timestamp_ms,
        nonce=nonce,
        body=body,
        signature=private_key.sign(digest),
    )


def signed_request_digest(env: pb.SignedRequest) -> bytes:
    """The digest an envelope's signature covers, recomputed from its fields.

    The client keeps it to check that an answer is bound to this request; the server puts
    it into the response body and the ledger.
    """
    return digests.request_digest(
        auditor_id=env.auditor_id,
        key_id=env.key_id,
        method=env.method,
        timestamp_ms=env.timestamp_ms,
        nonce=env.nonce,
        body=env.body,
    )


def sign_response(*, private_key: Ed25519PrivateKey, body: pb.ResponseBody) -> pb.SignedResponse:
    """Serialize and sign a response body; the server fills ``receipt`` afterwards.

    The body is serialized once, deterministically, and those exact bytes travel in the
    envelope: the auditor verifies the bytes it received, never a re-serialization.

    Args:
        private_key: the lab's signing key.
        body: the complete answer, already bound to the request (``request_digest``).

    Returns:
        A ``SignedResponse`` without a receipt.
    """
    raw = body.SerializeToString(deterministic=True)
    return pb.SignedResponse(
        body=raw,
        signature=private_key.sign(digests.response_digest(raw)),
        lab_key_id=digests.key_id(private_key.public_key()),
    )


def verify_response(
    resp: pb.SignedResponse,
    *,
    lab_public_key: Ed25519PublicKey,
    request_digest: bytes,
    method: str,
) -> pb.ResponseBody:
    """Check that ``resp`` is the lab's signed answer to the request with ``request_digest``.

    Order: the key id (cheap, and names the problem when the lab rotated its key), the
    signature over the exact body bytes, the parse, then the binding to this request. The
    receipt is checked separately (:mod:`auditor_client.wire.receipts`).

    Args:
        resp: the answer as received.
        lab_public_key: the lab key the auditor trusts (from out-of-band configuration).
        request_digest: :func:`signed_request_digest` of the envelope the auditor sent.
        method: the RPC called.

    Returns:
        The parsed, verified response body.

    Raises:
        SignatureError: another key id, a malformed signature, or one that does not verify.
        MalformedResponseError: the signed body does not parse.
        BindingError: the answer is for another request or another method.
    """
    _check_signature(
        what="response",
        lab_key_id=resp.lab_key_id,
        signature=resp.signature,
        digest=digests.response_digest(resp.body),
        lab_public_key=lab_public_key,
    )
    body = pb.ResponseBody()
    try:
        body.ParseFromString(resp.body)
    except DecodeError as exc:
        raise MalformedResponseError("signed response body does not parse as ResponseBody") from exc
    if not hmac.compare_digest(body.request_digest, request_digest):
        raise BindingError(
            "response is bound to request digest "
            f"{body.request_digest.hex() or '(empty)'}, expected {request_digest.hex()}"
        )
    if body.method != method:
        raise BindingError(f"response is for method {body.method!r}, expected {method!r}")
    return body


def sign_tree_head(
    *, private_key: Ed25519PrivateKey, tree_size: int, root_hash: bytes, timestamp_ms: int
) -> pb.SignedTreeHead:
    """Sign a ledger tree head (the lab's commitment to the log's size and root).

    Args:
        private_key: the lab's signing key.
        tree_size: number of leaves.
        root_hash: RFC 9162 Merkle tree hash of those leaves.
        timestamp_ms: when the head was produced, Unix milliseconds.
    """
    digest = digests.tree_head_digest(
        tree_size=tree_size, root_hash=root_hash, timestamp_ms=timestamp_ms
    )
    return pb.SignedTreeHead(
        tree_size=tree_size,
        root_hash=root_hash,
        timestamp_ms=timestamp_ms,
        lab_key_id=digests.key_id(private_key.public_key()),
        signature=private_key.sign(digest),
    )


def verify_tree_head(sth: pb.SignedTreeHead, *, lab_public_key: Ed25519PublicKey) -> None:
    """Check that a tree head was signed by the trusted lab key.

    Raises:
        SignatureError: another key id, a malformed signature, or one that does not verify.
    """
    _check_signature(
        what="tree head",
        lab_key_id=sth.lab_key_id,
        signature=sth.signature,
        digest=digests.tree_head_digest(
            tree_size=sth.tree_size, root_hash=sth.root_hash, timestamp_ms=sth.timestamp_ms
        ),
        lab_public_key=lab_public_key,
    )


def _check_signature(
    *,
    what: str,
    lab_key_id: str,
    signature: bytes,
    digest: bytes,
    lab_public_key: Ed25519PublicKey,
) -> None:
    """Key id, then signature length, then the Ed25519 check; raise SignatureError on any."""
    expected_id = digests.key_id(lab_public_key)
    if lab_key_id != expected_id:
        raise SignatureError(
            f"{what} signed by lab key id {lab_key_id!r}, expected {expected_id!r}"
        )
    if len(signature) != SIGNATURE_SIZE:
        raise SignatureError(
            f"{what} signature is {len(signature)} bytes, expected {SIGNATURE_SIZE}"
        )
    try:
        lab_public_key.verify(signature, digest)
    except InvalidSignature as exc:
        raise SignatureError(
            f"{what} signature does not verify under lab key {expected_id}"
        ) from exc
