"""Verify one answer completely: signature, request binding and ledger receipt.

The receipt check recomputes the ledger leaf from what the client itself knows (the digest it
signed, the digest of the body it received, the status) rather than trusting a leaf hash
sent by the server, then checks the inclusion proof against a tree head the lab signed.
"""

from __future__ import annotations

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from auditor_client.wire import digests, merkle
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.envelope import verify_response, verify_tree_head
from auditor_client.wire.errors import BindingError


def answer_status(body: pb.ResponseBody) -> int:
    """The status the lab logged for this answer: 0, or the code of an in-band item error
    or of a signed refusal of the whole request."""
    kind = body.WhichOneof("result")
    if kind in ("error", "refusal"):
        code = body.error.code if kind == "error" else body.refusal.code
        try:
            value: int = grpc.StatusCode[code].value[0]
        except KeyError as exc:
            raise BindingError(f"unknown status name {code!r} in {kind}") from exc
        if value == 0:
            raise BindingError(f"a {kind} cannot carry status OK")
        return value
    return 0


def verify_receipt(
    response: pb.SignedResponse, body: pb.ResponseBody, *, lab_public_key: Ed25519PublicKey
) -> None:
    """Check that ``response`` is logged: its leaf is included under a signed tree head.

    Raises:
        WireVerificationError: bad tree head signature or inclusion proof.
    """
    receipt = response.receipt
    verify_tree_head(receipt.tree_head, lab_public_key=lab_public_key)
    leaf = merkle.leaf_hash(
        digests.ledger_leaf_data(
            request_digest=body.request_digest,
            response_digest=digests.response_digest(response.body),
            status=answer_status(body),
        )
    )
    merkle.verify_inclusion(
        leaf,
        receipt.leaf_index,
        receipt.tree_head.tree_size,
        list(receipt.inclusion_path),
        receipt.tree_head.root_hash,
    )


def verify_answer(
    response: pb.SignedResponse,
    *,
    lab_public_key: Ed25519PublicKey,
    request_digest: bytes,
    method: str,
    item_index: int = 0,
) -> pb.ResponseBody:
    """Verify signature, binding (request digest, method, batch position) and receipt.

    Returns:
        The parsed, verified response body.

    Raises:
        WireVerificationError: any check failed; the message says which and how.
    """
    body = verify_response(
        response, lab_public_key=lab_public_key, request_digest=request_digest, method=method
    )
    if body.item_index != item_index:
        raise BindingError(f"answer is for batch item {body.item_index}, expected {item_index}")
    verify_receipt(response, body, lab_public_key=lab_public_key)
    return body
