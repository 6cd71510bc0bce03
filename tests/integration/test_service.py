"""The audit service end to end: a real server process, real gRPC, real signatures.

Covers the hostile-request table (every refusal has its own status and the server keeps
answering), replay across a restart, quotas, disclosure per role and data class, the ledger
proofs as an auditor checks them, health/reflection, deadlines and the policy reload.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auditor_client.client import refusal_from_error
from auditor_client.errors import ServerRefusedError
from auditor_client.keys import decode_public_key, encode_public_key, load_keypair
from auditor_client.wire import merkle
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.envelope import sign_request, signed_request_digest
from auditor_client.wire.errors import WireVerificationError
from auditor_client.wire.receipts import verify_answer
from auditor_server.attribution import layout
from tests.fixtures.validation import sample_validation
from tests.integration.lab_server import (
    Lab,
    attribute_body,
    build_lab,
    cli,
    env,
    policy_text,
    records,
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = build_lab(tmp_path_factory.mktemp("lab"))
    lab.start()
    yield lab
    if lab.process is not None:
        lab.stop()


def _key(lab: Lab, who: str) -> Ed25519PrivateKey:
    return load_keypair(lab.keys[who]).private


def _envelope(
    lab: Lab,
    who: str = "reg",
    method: str = "Attribute",
    body: bytes | None = None,
    **kw: object,
) -> pb.SignedRequest:
    return sign_request(
        private_key=_key(lab, who),
        auditor_id=who,
        method=method,
        body=attribute_body("The", " quick brown fox") if body is None else body,
        **kw,  # type: ignore[arg-type]
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _resign(lab: Lab, env_: pb.SignedRequest, who: str = "reg") -> pb.SignedRequest:
    """Sign an edited envelope again, as a client that means it would."""
    env_.signature = _key(lab, who).sign(signed_request_digest(env_))
    return env_


# Each case: (name, method called, builder of raw request bytes, expected status).
Case = tuple[str, str, Callable[[Lab], bytes], grpc.StatusCode]


def _tampered_body(lab: Lab) -> bytes:
    e = _envelope(lab)
    e.body = attribute_body("The", " quick brown cat")
    return e.SerializeToString()


def _bad_signature(lab: Lab) -> bytes:
    e = _envelope(lab)
    e.signature = secrets.token_bytes(64)
    return e.SerializeToString()


def _truncated_signature(lab: Lab) -> bytes:
    e = _envelope(lab)
    e.signature = e.signature[:63]
    return e.SerializeToString()


def _other_key_same_id(lab: Lab) -> bytes:
    e = _envelope(lab)
    e.signature = Ed25519PrivateKey.generate().sign(signed_request_digest(e))
    return e.SerializeToString()


def _field(lab: Lab, **changes: object) -> bytes:
    e = _envelope(lab)
    for k, v in changes.items():
        setattr(e, k, v)
    return _resign(lab, e).SerializeToString()


def _keyid_of(lab: Lab, owner: str, claimed: str) -> bytes:
    """``claimed``'s id with ``owner``'s key id, signed by ``owner``."""
    e = _envelope(lab, who=owner)
    e.auditor_id = claimed
    return _resign(lab, e, who=owner).SerializeToString()


def _body(method: str, message: object, who: str = "reg") -> Callable[[Lab], bytes]:
    def build(lab: Lab) -> bytes:
        raw = message.SerializeToString() if hasattr(message, "SerializeToString") else message
        assert isinstance(raw, bytes)
        return _envelope(lab, who=who, method=method, body=raw).SerializeToString()

    return build


def _unknown_field_body(lab: Lab) -> bytes:
    raw = attribute_body("The", " quick") + bytes([0xF8, 0x07, 0x01])  # field 127, varint 1
    return _envelope(lab, body=raw).SerializeToString()


def _invalid_utf8_prompt(lab: Lab) -> bytes:
    # field 1 (prompt), length 2, bytes that are not UTF-8; then a valid completion
    raw = b"\x0a\x02\xff\xfe" + pb.AttributeRequest(completion=" x", top_k=3).SerializeToString()
    return _envelope(lab, body=raw).SerializeToString()


S = grpc.StatusCode
CASES: list[Case] = [
    ("garbage bytes", "Attribute", lambda lab: b"\xff" * 40, S.INVALID_ARGUMENT),
    ("empty request", "Attribute", lambda lab: b"", S.INVALID_ARGUMENT),
    (
        "oversized request",
        "Attribute",
        lambda lab: _envelope(lab, body=attribute_body("a" * 20000, " b")).SerializeToString(),
        S.RESOURCE_EXHAUSTED,
    ),
    (
        "unknown auditor",
        "Attribute",
        lambda lab: _keyid_of(lab, "reg", "nobody"),
        S.UNAUTHENTICATED,
    ),
    (
        "known auditor, another auditor's key",
        "Attribute",
        lambda lab: _keyid_of(lab, "tp", "reg"),
        S.UNAUTHENTICATED,
    ),
    ("unknown key id", "Attribute", lambda lab: _field(lab, key_id="00" * 16), S.UNAUTHENTICATED),
    (
        "expired key",
        "Attribute",
        lambda lab: _envelope(lab, who="expired").SerializeToString(),
        S.UNAUTHENTICATED,
    ),
    (
        "revoked key",
        "Attribute",
        lambda lab: _envelope(lab, who="revoked").SerializeToString(),
        S.UNAUTHENTICATED,
    ),
    ("random signature", "Attribute", _bad_signature, S.UNAUTHENTICATED),
    ("signature by an unregistered key", "Attribute", _other_key_same_id, S.UNAUTHENTICATED),
    ("body tampered after signing", "Attribute", _tampered_body, S.UNAUTHENTICATED),
    (
        "truncated signature",
        "Attribute",
        lambda lab: _truncated_signature(lab),
        S.INVALID_ARGUMENT,
    ),
    (
        "method in envelope differs",
        "Attribute",
        lambda lab: _envelope(lab, method="Score").SerializeToString(),
        S.INVALID_ARGUMENT,
    ),
    (
        "timestamp 10 minutes old",
        "Attribute",
        lambda lab: _envelope(lab, timestamp_ms=_now_ms() - 600_000).SerializeToString(),
        S.UNAUTHENTICATED,
    ),
    (
        "timestamp 10 minutes ahead",
        "Attribute",
        lambda lab: _envelope(lab, timestamp_ms=_now_ms() + 600_000).SerializeToString(),
        S.UNAUTHENTICATED,
    ),
    ("short nonce", "Attribute", lambda lab: _field(lab, nonce=b"\x00" * 8), S.INVALID_ARGUMENT),
    (
        "huge auditor id",
        "Attribute",
        lambda lab: _field(lab, auditor_id="r" * 5000),
        S.INVALID_ARGUMENT,
    ),
    ("empty method", "Attribute", lambda lab: _field(lab, method=""), S.INVALID_ARGUMENT),
    ("body is not a request", "Attribute", _body("Attribute", b"\xff\xff\xff"), S.INVALID_ARGUMENT),
    ("body has unknown fields", "Attribute", _unknown_field_body, S.INVALID_ARGUMENT),
    ("prompt is not UTF-8", "Attribute", _invalid_utf8_prompt, S.INVALID_ARGUMENT),
    (
        "top_k 0",
        "Attribute",
        _body("Attribute", pb.AttributeRequest(prompt="a", completion=" b", top_k=0)),
        S.INVALID_ARGUMENT,
    ),
    (
        "top_k above the role's cap",
        "Attribute",
        _body("Attribute", pb.AttributeRequest(prompt="a", completion=" b", top_k=6), "tp"),
        S.INVALID_ARGUMENT,
    ),
    (
        "empty completion",
        "Attribute",
        _body("Attribute", pb.AttributeRequest(prompt="a", completion="  ", top_k=3)),
        S.INVALID_ARGUMENT,
    ),
    (
        "prompt over the policy's length",
        "Attribute",
        _body("Attribute", pb.AttributeRequest(prompt="a" * 401, completion=" b", top_k=3)),
        S.INVALID_ARGUMENT,
    ),
    (
        "completion beyond the model's context",
        "Attribute",
        _body("Attribute", pb.AttributeRequest(prompt="a " * 150, completion=" b " * 100, top_k=3)),
        S.INVALID_ARGUMENT,
    ),
    (
        "third party calls Score",
        "Score",
        _body("Score", pb.ScoreRequest(prompt="a", completion=" b"), "tp"),
        S.PERMISSION_DENIED,
    ),
    (
        "limited role calls Generate",
        "Generate",
        _body("Generate", pb.GenerateRequest(prompt="a", max_new_tokens=2), "limited"),
        S.PERMISSION_DENIED,
    ),
    (
        "generate 0 tokens",
        "Generate",
        _body("Generate", pb.GenerateRequest(prompt="a", max_new_tokens=0)),
        S.INVALID_ARGUMENT,
    ),
    (
        "generate more tokens than the role may",
        "Generate",
        _body("Generate", pb.GenerateRequest(prompt="a", max_new_tokens=17)),
        S.INVALID_ARGUMENT,
    ),
    (
        "negative temperature",
        "Generate",
        _body("Generate", pb.GenerateRequest(prompt="a", max_new_tokens=2, temperature=-1)),
        S.INVALID_ARGUMENT,
    ),
    (
        "NaN temperature",
        "Generate",
        _body(
            "Generate", pb.GenerateRequest(prompt="a", max_new_tokens=2, temperature=float("nan"))
        ),
        S.INVALID_ARGUMENT,
    ),
    (
        "inclusion proof past the log",
        "GetInclusionProof",
        _body("GetInclusionProof", pb.GetInclusionProofRequest(leaf_index=10**9)),
        S.OUT_OF_RANGE,
    ),
    (
        "consistency proof with first > second",
        "GetConsistencyProof",
        _body("GetConsistencyProof", pb.GetConsistencyProofRequest(first_size=5, second_size=2)),
        S.OUT_OF_RANGE,
    ),
    (
        "empty batch",
        "AttributeBatch",
        _body("AttributeBatch", pb.AttributeBatchRequest()),
        S.INVALID_ARGUMENT,
    ),
    (
        "batch over the policy's size",
        "AttributeBatch",
        _body(
            "AttributeBatch",
            pb.AttributeBatchRequest(
                items=[pb.AttributeRequest(prompt="a", completion=" b", top_k=1)] * 9
            ),
        ),
        S.INVALID_ARGUMENT,
    ),
    (
        "batch item over top_k cap",
        "AttributeBatch",
        _body(
            "AttributeBatch",
            pb.AttributeBatchRequest(
                items=[pb.AttributeRequest(prompt="a", completion=" b", top_k=51)]
            ),
        ),
        S.INVALID_ARGUMENT,
    ),
]


def _call(lab: Lab, method: str, raw: bytes) -> grpc.RpcError | None:
    """Send raw bytes to ``method``; the error it raised, or None if it answered."""
    with lab.channel() as ch:
        try:
            if method == "AttributeBatch":
                stream = ch.unary_stream(
                    f"/auditor.v1.AuditService/{method}",
                    request_serializer=None,
                    response_deserializer=None,
                )
                list(stream(raw, timeout=60))
            else:
                unary = ch.unary_unary(
                    f"/auditor.v1.AuditService/{method}",
                    request_serializer=None,
                    response_deserializer=None,
                )
                unary(raw, timeout=60)
        except grpc.RpcError as exc:
            return exc
    return None


def _call_expecting_error(lab: Lab, method: str, raw: bytes) -> grpc.RpcError:
    err = _call(lab, method, raw)
    assert err is not None, f"{method} answered a request it should refuse"
    return err


UNAUTHENTICATED_CASES = {
    "garbage bytes",
    "empty request",
    "oversized request",
    "unknown auditor",
    "known auditor, another auditor's key",
    "unknown key id",
    "expired key",
    "revoked key",
    "random signature",
    "signature by an unregistered key",
    "body tampered after signing",
    "truncated signature",
    "method in envelope differs",
    "timestamp 10 minutes old",
    "timestamp 10 minutes ahead",
    "short nonce",
    "huge auditor id",
    "empty method",
}
"""Requests without a valid signature from a registered, current key: nobody's requests,
so they must never reach the ledger. Every other case is an authenticated auditor's request,
whose refusal is signed and logged like an answer."""


def test_hostile_requests_get_specific_statuses_and_the_server_keeps_serving(lab: Lab) -> None:
    assert len(CASES) >= 30
    assert {name for name, *_ in CASES} > UNAUTHENTICATED_CASES
    with lab.client() as client:
        size_before = client.tree_head().body.tree_head.tree_head.tree_size
    problems = []
    leaves = []
    for name, method, build, expected in CASES:
        raw = build(lab)
        err = _call(lab, method, raw)
        if err is None:
            problems.append(f"{name}: answered, want {expected.name}")
            continue
        assert isinstance(err, grpc.Call)
        if err.code() != expected:
            problems.append(
                f"{name}: got {err.code().name} ({err.details()}), want {expected.name}"
            )
            continue
        details = err.details() or ""
        assert details and "Traceback" not in details, name
        # The message never echoes key material or the auditor's own ids back.
        assert "ed25519:" not in details and "nobody" not in details, (name, details)
        trailer = dict(err.trailing_metadata() or ())
        if name in UNAUTHENTICATED_CASES:
            assert not trailer, (name, trailer)
            continue
        # An authenticated refusal carries the lab's signed, logged refusal, bound to the
        # request and verified exactly as the client verifies any answer.
        refusal = refusal_from_error(
            err,
            lab_public_key=decode_public_key(lab.lab_public),
            envelope=pb.SignedRequest.FromString(raw),
            method=method,
        )
        assert refusal.evidence is not None, name
        assert refusal.evidence.body.refusal.message == details, name
        assert int(trailer["x-ledger-leaf"]) == refusal.ledger_leaf, name
        leaves.append(refusal.ledger_leaf)
    assert not problems, "\n".join(problems)
    # Every authenticated refusal was logged, in order; no unauthenticated one was.
    assert leaves == sorted(leaves) and len(set(leaves)) == len(CASES) - len(UNAUTHENTICATED_CASES)
    with lab.client() as client:
        answer = client.attribute("The", " quick brown fox", top_k=3)
        assert len(answer.body.attribute.results) == 3
        head = client.tree_head().body.tree_head.tree_head
    assert head.tree_size == size_before + len(leaves) + 2
    assert lab.process is not None and lab.process.poll() is None


def test_replayed_request_is_refused_even_after_a_restart(lab: Lab) -> None:
    raw = _envelope(lab).SerializeToString()
    first = pb.SignedResponse.FromString(lab.raw_call("Attribute", raw))
    assert first.body
    err = _call_expecting_error(lab, "Attribute", raw)
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS  # type: ignore[attr-defined]
    lab.stop()
    lab.start()
    err = _call_expecting_error(lab, "Attribute", raw)
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS  # type: ignore[attr-defined]


def test_every_answer_is_verified_and_bound_to_its_request(lab: Lab) -> None:
    with lab.client() as client:
        client.whoami()  # so the log holds more than one leaf whatever ran before
        who = client.whoami()
        assert who.body.whoami.auditor_id == "reg" and who.body.whoami.role == "regulator"
        assert who.body.snapshot_id == lab.listening["snapshot_id"]
        assert who.body.policy_hash == lab.listening["policy_hash"]
        # An answer checked against a different request, method or lab key fails.
        other = _envelope(lab)
        with pytest.raises(WireVerificationError):
            verify_answer(
                who.response,
                lab_public_key=client.lab_public_key,
                request_digest=signed_request_digest(other),
                method="WhoAmI",
            )
        with pytest.raises(WireVerificationError):
            verify_answer(
                who.response,
                lab_public_key=client.lab_public_key,
                request_digest=signed_request_digest(who.request),
                method="Attribute",
            )
        with pytest.raises(WireVerificationError):
            verify_answer(
                who.response,
                lab_public_key=Ed25519PrivateKey.generate().public_key(),
                request_digest=signed_request_digest(who.request),
                method="WhoAmI",
            )
        # A receipt that does not prove this answer's leaf fails too.
        assert who.response.receipt.tree_head.tree_size > 1  # so the path is not empty
        for tamper in ("path", "index", "root"):
            bad = pb.SignedResponse()
            bad.CopyFrom(who.response)
            if tamper == "path":
                bad.receipt.inclusion_path[0] = bytes(32)
            elif tamper == "index":
                bad.receipt.leaf_index ^= 1
            else:
                bad.receipt.tree_head.root_hash = bytes(32)
            with pytest.raises(WireVerificationError):
                verify_answer(
                    bad,
                    lab_public_key=client.lab_public_key,
                    request_digest=signed_request_digest(who.request),
                    method="WhoAmI",
                )


def test_ledger_proofs_check_out_with_the_client_verifier(lab: Lab) -> None:
    with lab.client() as client:
        first = client.attribute("The", " quick brown fox", top_k=2)
        old_head = first.response.receipt.tree_head
        for _ in range(5):
            client.whoami()
        now = client.tree_head().body.tree_head.tree_head
        assert now.tree_size > old_head.tree_size
        # The old answer's leaf is still in the bigger tree ...
        proof = client.inclusion_proof(first.response.receipt.leaf_index, now.tree_size)
        got = proof.body.inclusion_proof
        merkle.verify_inclusion(
            got.leaf_hash,
            first.response.receipt.leaf_index,
            now.tree_size,
            list(got.path),
            got.tree_head.root_hash,
        )
        # ... and the log only grew between the two heads.
        cons = client.consistency_proof(old_head.tree_size, got.tree_head.tree_size)
        c = cons.body.consistency_proof
        merkle.verify_consistency(
            old_head.tree_size,
            c.tree_head.tree_size,
            old_head.root_hash,
            c.tree_head.root_hash,
            list(c.path),
        )
        with pytest.raises(WireVerificationError):
            merkle.verify_consistency(
                old_head.tree_size,
                c.tree_head.tree_size,
                bytes(32),
                c.tree_head.root_hash,
                list(c.path),
            )


def test_quota_is_enforced_per_day_and_survives_in_batches(lab: Lab) -> None:
    with lab.client("limited") as client:
        left = client.whoami().body.whoami.queries_left_today
        for _ in range(left):
            client.attribute("The", " quick brown fox", top_k=2)
        with pytest.raises(ServerRefusedError) as info:
            client.attribute("The", " quick brown fox", top_k=2)
        assert info.value.code == "RESOURCE_EXHAUSTED" and info.value.ledger_leaf is not None
        # In a batch, refused items arrive signed and logged, and the stream goes on.
        answers = list(client.attribute_batch([("The", " fox"), ("A", " dog")], top_k=2))
        assert [a.body.WhichOneof("result") for a in answers] == ["error", "error"]
        assert answers[1].body.error.code == "RESOURCE_EXHAUSTED"
        assert [a.body.item_index for a in answers] == [0, 1]


def _by_class(lab: Lab, cls: str) -> list[dict[str, object]]:
    return [r for r in records(lab) if r["source"]["data_class"] == cls]  # type: ignore[index]


def test_disclosure_follows_role_and_data_class(lab: Lab) -> None:
    proprietary = _by_class(lab, "proprietary")
    private_ids = {str(r["id"]) for r in _by_class(lab, "private")}
    private_texts = [str(r["text"]) for r in _by_class(lab, "private")]
    seen: dict[tuple[str, str], int] = {}
    with lab.client("reg") as reg, lab.client("tp") as tp:
        for rec in proprietary[:3] + _by_class(lab, "private")[:3] + _by_class(lab, "public")[:3]:
            text = str(rec["text"])
            prompt, completion = text[:30], text[30:90]
            for who, client, k in (("reg", reg, 20), ("tp", tp, 5)):
                answer = client.attribute(prompt, completion, top_k=k).body.attribute
                assert len(answer.results) == k
                for r in answer.results:
                    seen[(who, r.data_class)] = seen.get((who, r.data_class), 0) + 1
                    assert r.data_class in ("public", "proprietary")
                    assert r.record_id not in private_ids
                    if r.data_class == "proprietary":
                        assert r.disclosure == "source_metadata"
                        assert not r.record_id and not r.text and not r.span_text
                        assert r.source.title and r.source.publisher
                    elif who == "reg":
                        assert r.disclosure == "full_text" and r.record_id and r.text
                    else:
                        assert r.disclosure == "snippet" and r.record_id
                        assert 0 < len(r.text) <= 40 and not r.span_text
                    for secret in private_texts:
                        assert secret[:30] not in r.text
    assert seen.get(("reg", "proprietary")) and seen.get(("tp", "public"))


def test_health_and_reflection(lab: Lab) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with lab.channel() as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="auditor.v1.AuditService"), timeout=10
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        responses = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert "auditor.v1.AuditService" in names


def test_deadline_is_honoured_and_the_server_goes_on(lab: Lab) -> None:
    with lab.client() as client:
        client.timeout_s = 0.001
        with pytest.raises(ServerRefusedError) as info:
            client.attribute("The", " quick brown fox", top_k=3)
        assert info.value.code == "DEADLINE_EXCEEDED"
        client.timeout_s = 60
        assert client.whoami().body.whoami.auditor_id == "reg"


def test_policy_reload_on_sighup(lab: Lab) -> None:
    assert lab.process is not None
    with lab.client() as client:
        old_hash = client.whoami().body.policy_hash
        original = lab.policy.read_text()
        try:
            lab.policy.write_text(policy_text(limited_quota=7))
            lab.process.send_signal(signal.SIGHUP)
            new_hash = _wait_for(lambda: client.whoami().body.policy_hash, lambda h: h != old_hash)
            assert new_hash != old_hash
            # An invalid policy is refused; the server keeps the one in force.
            lab.policy.write_text("version: 1\nroles: 7\n")
            lab.process.send_signal(signal.SIGHUP)
            time.sleep(1.0)
            assert client.whoami().body.policy_hash == new_hash
        finally:
            lab.policy.write_text(original)
            lab.process.send_signal(signal.SIGHUP)
        assert _wait_for(lambda: client.whoami().body.policy_hash, lambda h: h == old_hash)


def test_sighup_publishes_a_new_evaluation_certificate(lab: Lab) -> None:
    """The lab validates its index while serving, then ``kill -HUP``: GetPolicy answers
    carry the certificate from then on; one measured on another index is never served."""
    assert lab.process is not None
    path = lab.index / layout.VALIDATION
    snapshot = str(lab.listening["snapshot_id"])

    def certified() -> str:
        with lab.client() as client:
            found = client.get_policy().evaluation()
        return "" if found is None else found.snapshot_id

    try:
        assert certified() == ""
        path.write_text(json.dumps(sample_validation("sha256:" + "00" * 32)))
        lab.process.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert certified() == ""  # stale: logged, not served
        path.write_text(json.dumps(sample_validation(snapshot)))
        lab.process.send_signal(signal.SIGHUP)
        assert _wait_for(certified, lambda s: s == snapshot) == snapshot
    finally:
        path.unlink(missing_ok=True)
        lab.process.send_signal(signal.SIGHUP)
    assert _wait_for(certified, lambda s: s == "") == ""
    assert any("measured snapshot sha256:0000" in line for line in lab.stderr_lines)


def _wait_for(get: Callable[[], str], ok: Callable[[str], bool], timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_ledger_verify_command_on_the_live_log(lab: Lab) -> None:
    out = subprocess.run(
        cli(
            "ledger",
            "verify",
            "--db",
            str(lab.state / "ledger.db"),
            "--lab-key",
            lab.lab_public,
        ),
        capture_output=True,
        text=True,
        env=env(),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr


def test_client_cli_whoami_and_attribute(lab: Lab) -> None:
    base = [
        "--server",
        lab.address,
        "--key",
        str(lab.keys["tp"]),
        "--auditor-id",
        "tp",
        "--lab-key",
        lab.lab_public,
        "--insecure",
    ]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "auditor_client.cli", *args],
            capture_output=True,
            text=True,
            env=env(),
            timeout=120,
        )

    who = run("whoami", *base)
    assert who.returncode == 0, who.stderr
    assert "tp (third_party)" in who.stdout and "verified:" in who.stdout
    att = run(
        "attribute", *base, "--prompt", "The", "--completion", " quick", "--top-k", "3", "--json"
    )
    assert att.returncode == 0, att.stderr
    doc = json.loads(att.stdout)
    assert len(doc["body"]["attribute"]["results"]) == 3
    assert "logprob" not in doc["body"]["attribute"]
    text = run("attribute", *base, "--prompt", "The", "--completion", " quick", "--top-k", "3")
    assert text.returncode == 0, text.stderr
    assert "not given (your role may not Score)" in text.stdout
    wrong = encode_public_key(Ed25519PrivateKey.generate().public_key())
    bad = run("whoami", *base[:-2], wrong, "--insecure")
    assert bad.returncode == 4 and "VERIFICATION FAILED" in bad.stderr
    refused = run("attribute", *base, "--prompt", "a", "--completion", " b", "--top-k", "6")
    assert refused.returncode == 3 and "INVALID_ARGUMENT" in refused.stderr


def test_generate_score_and_batch_answers(lab: Lab) -> None:
    with lab.client("reg") as client:
        gen = client.generate("The", max_new_tokens=4, temperature=0.0)
        again = client.generate("The", max_new_tokens=4, temperature=0.0)
        assert gen.body.generate.completion == again.body.generate.completion
        score = client.score("The", " quick brown fox").body.score
        assert score.logprob < 0 and score.completion_tokens > 0
        single = client.attribute("The", " quick brown fox", top_k=4).body.attribute
        batch = list(
            client.attribute_batch([("The", " quick brown fox"), ("A", " lazy dog")], top_k=4)
        )
        assert [b.body.item_index for b in batch] == [0, 1]
        # A batch item's answer equals the single query's answer.
        assert batch[0].body.attribute == single
        answer = client.get_policy()
        policy = answer.body.policy
        # This index was built without --questions: no validation.json, no certificate, and
        # GetPolicy is answered all the same.
        assert not policy.HasField("evaluation") and answer.evaluation() is None
        assert policy.disclosure["private"] == "none"
        assert policy.disclosure["proprietary"] == "source_metadata"
        assert policy.withheld_budget == 20 and policy.generate_proprietary == "allow"
        # A role granted Score gets the completion's log-probability with an attribution,
        # equal to what Score itself answers.
        assert single.HasField("logprob") and single.logprob == pytest.approx(score.logprob)
        assert not single.logprob_withheld
        assert gen.body.generate.constrained_tokens == 0


def test_attribute_carries_no_log_probability_for_a_role_without_score(lab: Lab) -> None:
    """Before the gate, a role refused Score read the same number off every Attribute."""
    with lab.client("tp") as client:
        answer = client.attribute("The", " quick brown fox", top_k=3).body.attribute
        (item,) = client.attribute_batch([("The", " quick brown fox")], top_k=3)
        with pytest.raises(ServerRefusedError) as info:
            client.score("The", " quick brown fox")
    assert len(answer.results) == 3
    assert not answer.HasField("logprob") and not answer.logprob_withheld
    assert not item.body.attribute.HasField("logprob")
    # The refusal is the lab's signed, logged statement, verified by the client.
    refusal = info.value.evidence
    assert info.value.code == "PERMISSION_DENIED" and refusal is not None
    assert refusal.body.refusal.code == "PERMISSION_DENIED"
    assert refusal.response.receipt.leaf_index == info.value.ledger_leaf


def test_concurrent_rpc_cap(built_lab_with_cap: Lab) -> None:
    """With a cap of one RPC at a time, concurrent calls beyond it are refused, not queued."""
    import concurrent.futures

    lab = built_lab_with_cap

    def hammer(_: int) -> list[str]:
        codes = []
        with lab.client("reg") as client:
            client.retries = 0
            for i in range(15):
                try:
                    client.attribute("The", f" quick brown fox {i}", top_k=3)
                    codes.append("OK")
                except ServerRefusedError as exc:
                    codes.append(exc.code)
        return codes

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        codes = [c for result in pool.map(hammer, range(6)) for c in result]
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, set(codes)
    with lab.client("reg") as client:
        assert client.whoami().body.whoami.auditor_id == "reg"


@pytest.fixture
def built_lab_with_cap(lab: Lab, tmp_path: Path) -> Iterator[Lab]:
    import dataclasses

    capped = dataclasses.replace(lab, state=tmp_path / "state", process=None, stderr_lines=[])
    capped.start("--insecure", "--max-concurrent-rpcs", "1")
    yield capped
    capped.stop()
