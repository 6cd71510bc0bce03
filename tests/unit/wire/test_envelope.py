"""Envelope signing and verification: round trips, and that every tamper is caught by name."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auditor_client.wire import digests
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.envelope import (
    sign_request,
    sign_response,
    sign_tree_head,
    signed_request_digest,
    verify_response,
    verify_tree_head,
)
from auditor_client.wire.errors import (
    BindingError,
    MalformedResponseError,
    SignatureError,
    WireVerificationError,
)

AUDITOR_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
LAB_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
NONCE = bytes(range(16))
TS = 1_760_000_000_000


def _request(**overrides: object) -> pb.SignedRequest:
    kwargs: dict[str, object] = {
        "private_key": AUDITOR_KEY,
        "auditor_id": "example-regulator",
        "method": "Attribute",
        "body": pb.AttributeRequest(prompt="p", completion="c", top_k=5).SerializeToString(),
        "timestamp_ms": TS,
        "nonce": NONCE,
    }
    kwargs.update(overrides)
    return sign_request(**kwargs)  # type: ignore[arg-type]


def _answer(env: pb.SignedRequest, *, method: str | None = None) -> pb.SignedResponse:
    body = pb.ResponseBody(
        request_digest=signed_request_digest(env),
        method=method or env.method,
        snapshot_id="snap",
        model_hash="model",
        policy_hash="policy",
        server_time_ms=TS + 5,
    )
    body.score.logprob = -1.5
    return sign_response(private_key=LAB_KEY, body=body)


def test_request_round_trip_verifies_under_the_auditor_key() -> None:
    env = _request()
    assert env.key_id == digests.key_id(AUDITOR_KEY.public_key())
    assert len(env.signature) == 64
    AUDITOR_KEY.public_key().verify(env.signature, signed_request_digest(env))
    parsed = pb.SignedRequest.FromString(env.SerializeToString())
    assert signed_request_digest(parsed) == signed_request_digest(env)


def test_fresh_nonce_and_time_by_default() -> None:
    a = sign_request(private_key=AUDITOR_KEY, auditor_id="a", method="WhoAmI", body=b"")
    b = sign_request(private_key=AUDITOR_KEY, auditor_id="a", method="WhoAmI", body=b"")
    assert len(a.nonce) == 16 and a.nonce != b.nonce
    assert a.timestamp_ms > TS


def test_wrong_nonce_length_is_refused_at_signing() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        _request(nonce=b"short")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("auditor_id", "example-regulatoR"),
        ("key_id", digests.key_id(OTHER_KEY.public_key())),
        ("method", "Score"),
        ("timestamp_ms", TS + 1),
        ("nonce", bytes(range(1, 17))),
        ("body", b"\x0a\x01q"),
        # Length prefixes: moving a byte across a field boundary must change the digest.
        ("auditor_id", "example-regulatorA"),
    ],
)
def test_every_single_field_tamper_changes_the_request_digest(field: str, value: object) -> None:
    env = _request()
    original = signed_request_digest(env)
    tampered = pb.SignedRequest()
    tampered.CopyFrom(env)
    setattr(tampered, field, value)
    assert signed_request_digest(tampered) != original


def test_field_boundaries_are_unambiguous() -> None:
    a = _request(auditor_id="ab", method="cAttribute")
    b = _request(auditor_id="abc", method="Attribute")
    assert signed_request_digest(a) != signed_request_digest(b)


def test_response_round_trip() -> None:
    env = _request()
    resp = _answer(env)
    body = verify_response(
        resp,
        lab_public_key=LAB_KEY.public_key(),
        request_digest=signed_request_digest(env),
        method="Attribute",
    )
    assert body.WhichOneof("result") == "score"
    assert body.score.logprob == -1.5
    assert resp.lab_key_id == digests.key_id(LAB_KEY.public_key())
    assert not resp.HasField("receipt")


def test_response_body_is_deterministic() -> None:
    env = _request()
    assert _answer(env).body == _answer(env).body


def _verify(resp: pb.SignedResponse, env: pb.SignedRequest, **kw: object) -> pb.ResponseBody:
    kwargs: dict[str, object] = {
        "lab_public_key": LAB_KEY.public_key(),
        "request_digest": signed_request_digest(env),
        "method": env.method,
    }
    kwargs.update(kw)
    return verify_response(resp, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("index", [0, 5, -1])
def test_response_body_byte_flip_is_a_signature_error(index: int) -> None:
    env = _request()
    resp = _answer(env)
    raw = bytearray(resp.body)
    raw[index] ^= 0x01
    resp.body = bytes(raw)
    with pytest.raises(SignatureError, match="does not verify"):
        _verify(resp, env)


def test_signature_flip_is_a_signature_error() -> None:
    env = _request()
    resp = _answer(env)
    resp.signature = resp.signature[:-1] + bytes([resp.signature[-1] ^ 1])
    with pytest.raises(SignatureError, match="does not verify"):
        _verify(resp, env)


def test_truncated_signature_says_expected_vs_actual_length() -> None:
    env = _request()
    resp = _answer(env)
    resp.signature = resp.signature[:63]
    with pytest.raises(SignatureError, match="63 bytes, expected 64"):
        _verify(resp, env)


def test_response_signed_by_another_key_is_refused() -> None:
    env = _request()
    resp = _answer(env)
    other = sign_response(private_key=OTHER_KEY, body=pb.ResponseBody.FromString(resp.body))
    with pytest.raises(SignatureError, match="expected") as info:
        _verify(other, env)
    assert digests.key_id(LAB_KEY.public_key()) in str(info.value)
    # A forged key id (claiming the lab's) still fails on the signature itself.
    other.lab_key_id = resp.lab_key_id
    with pytest.raises(SignatureError, match="does not verify"):
        _verify(other, env)


def test_trusting_another_lab_key_refuses_the_answer() -> None:
    env = _request()
    with pytest.raises(SignatureError):
        _verify(_answer(env), env, lab_public_key=OTHER_KEY.public_key())


def test_wrong_request_digest_is_a_binding_error_naming_both() -> None:
    env = _request()
    resp = _answer(env)
    other = _request(nonce=bytes(16))
    with pytest.raises(BindingError, match="expected") as info:
        _verify(resp, env, request_digest=signed_request_digest(other))
    assert signed_request_digest(env).hex() in str(info.value)
    assert signed_request_digest(other).hex() in str(info.value)


def test_wrong_method_is_a_binding_error() -> None:
    env = _request()
    resp = _answer(env, method="Score")
    with pytest.raises(BindingError, match="'Score', expected 'Attribute'"):
        _verify(resp, env)


def test_swapped_bodies_between_two_answers_are_refused() -> None:
    env_a, env_b = _request(), _request(nonce=bytes(16))
    resp_a, resp_b = _answer(env_a), _answer(env_b)
    # The whole (validly signed) answer to B offered for A: binding error.
    with pytest.raises(BindingError):
        _verify(resp_b, env_a)
    # B's body under A's signature: signature error.
    mixed = pb.SignedResponse()
    mixed.CopyFrom(resp_a)
    mixed.body = resp_b.body
    with pytest.raises(SignatureError):
        _verify(mixed, env_a)


def test_signed_garbage_body_is_malformed() -> None:
    env = _request()
    garbage = b"\xff\xff\xff"
    resp = pb.SignedResponse(
        body=garbage,
        signature=LAB_KEY.sign(digests.response_digest(garbage)),
        lab_key_id=digests.key_id(LAB_KEY.public_key()),
    )
    with pytest.raises(MalformedResponseError):
        _verify(resp, env)


def test_errors_share_one_base_and_never_print_key_material() -> None:
    env = _request()
    resp = _answer(env)
    resp.body = resp.body + b"\x00"
    with pytest.raises(WireVerificationError) as info:
        _verify(resp, env)
    text = str(info.value)
    from cryptography.hazmat.primitives import serialization

    raw_pub = LAB_KEY.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert raw_pub.hex() not in text
    assert resp.signature.hex() not in text


def test_tree_head_round_trip_and_tamper() -> None:
    sth = sign_tree_head(private_key=LAB_KEY, tree_size=7, root_hash=b"\x11" * 32, timestamp_ms=TS)
    verify_tree_head(sth, lab_public_key=LAB_KEY.public_key())
    for field, value in (("tree_size", 8), ("root_hash", b"\x12" * 32), ("timestamp_ms", TS + 1)):
        bad = pb.SignedTreeHead()
        bad.CopyFrom(sth)
        setattr(bad, field, value)
        with pytest.raises(SignatureError, match="tree head signature does not verify"):
            verify_tree_head(bad, lab_public_key=LAB_KEY.public_key())
    with pytest.raises(SignatureError, match="lab key id"):
        verify_tree_head(sth, lab_public_key=OTHER_KEY.public_key())


def test_tree_head_signature_is_not_a_response_signature() -> None:
    """Domain separation: a tree-head signature cannot be passed off as a response's."""
    sth = sign_tree_head(private_key=LAB_KEY, tree_size=1, root_hash=b"\x00" * 32, timestamp_ms=TS)
    env = _request()
    resp = _answer(env)
    resp.signature = sth.signature
    with pytest.raises(SignatureError):
        _verify(resp, env)
