"""Envelope verification: every refusal by class, status and message; and what passes."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from auditor_client.wire import digests
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.envelope import sign_request, signed_request_digest
from auditor_server.errors import InputError
from auditor_server.security.errors import (
    BadSignature,
    ExpiredKey,
    MalformedRequest,
    MethodMismatch,
    MethodNotAllowed,
    OversizedRequest,
    ReplayedNonce,
    RequestRejected,
    RevokedKey,
    StaleTimestamp,
    UnknownKey,
)
from auditor_server.security.replay import ReplayCache
from auditor_server.security.verify import (
    VerifiedRequest,
    has_unknown_fields,
    parse_body,
    verify_request,
)

NOW = 1_760_000_000_000
WINDOW = 300_000
MAX_BYTES = 64 * 1024

ALICE = "auditor-alice-7f3a"  # valid regulator key
BOB = "auditor-bob-91c2"  # expired key
CAROL = "auditor-carol-0d4e"  # revoked key
ALICE_KEY = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
BOB_KEY = Ed25519PrivateKey.from_private_bytes(b"\x02" * 32)
CAROL_KEY = Ed25519PrivateKey.from_private_bytes(b"\x03" * 32)
STRANGER_KEY = Ed25519PrivateKey.from_private_bytes(b"\x04" * 32)
ALICE_EXPIRES = datetime(2027, 12, 31, tzinfo=UTC)


@dataclass(frozen=True)
class FakeKey:
    """Shaped like the policy's RegisteredKey (read-only attributes)."""

    auditor_id: str
    role: str
    public_key: Ed25519PublicKey
    key_id: str
    expires: datetime | None
    revoked: bool = False


@dataclass
class FakeRegistry:
    keys: dict[tuple[str, str], FakeKey] = field(default_factory=dict)

    def add(self, auditor_id: str, key: Ed25519PrivateKey, **kw: object) -> None:
        pub = key.public_key()
        kid = digests.key_id(pub)
        self.keys[(auditor_id, kid)] = FakeKey(
            auditor_id=auditor_id,
            role=str(kw.get("role", "regulator")),
            public_key=pub,
            key_id=kid,
            expires=kw.get("expires"),  # type: ignore[arg-type]
            revoked=bool(kw.get("revoked", False)),
        )

    def find_key(self, auditor_id: str, key_id: str) -> FakeKey | None:
        return self.keys.get((auditor_id, key_id))


@dataclass
class Env:
    """A registry, a real replay cache on disk, and the verifier with fixed limits."""

    path: Path
    registry: FakeRegistry
    cache: ReplayCache

    def verify(self, raw: bytes, called: str = "Attribute", now_ms: int = NOW) -> VerifiedRequest:
        return verify_request(
            raw,
            called_method=called,
            keys=self.registry,
            replay=self.cache,
            now_ms=now_ms,
            window_ms=WINDOW,
            max_request_bytes=MAX_BYTES,
        )

    def reopen(self) -> None:
        self.cache.close()
        self.cache = ReplayCache.open(self.path, window_ms=WINDOW)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    registry = FakeRegistry()
    registry.add(ALICE, ALICE_KEY, expires=ALICE_EXPIRES)
    registry.add(BOB, BOB_KEY, expires=datetime(2025, 1, 1, tzinfo=UTC))
    registry.add(CAROL, CAROL_KEY, expires=None, revoked=True)
    e = Env(
        tmp_path / "replay.db", registry, ReplayCache.open(tmp_path / "replay.db", window_ms=WINDOW)
    )
    yield e
    e.cache.close()


_nonce_counter = iter(range(1, 1 << 30))


def _fresh_nonce() -> bytes:
    return next(_nonce_counter).to_bytes(16, "big")


BODY = pb.AttributeRequest(prompt="who wrote this?", completion="x", top_k=5).SerializeToString()


def envelope(
    *,
    key: Ed25519PrivateKey = ALICE_KEY,
    auditor_id: str = ALICE,
    method: str = "Attribute",
    body: bytes = BODY,
    ts: int = NOW,
    nonce: bytes | None = None,
) -> pb.SignedRequest:
    return sign_request(
        private_key=key,
        auditor_id=auditor_id,
        method=method,
        body=body,
        timestamp_ms=ts,
        nonce=nonce or _fresh_nonce(),
    )


def signed(**kw: object) -> bytes:
    return envelope(**kw).SerializeToString()  # type: ignore[arg-type]


def hand_signed(
    *, auditor_id: str = ALICE, key_id: str | None = None, nonce: bytes | None = None
) -> bytes:
    """An envelope built field by field (sign_request refuses bad shapes), validly signed."""
    kid = key_id if key_id is not None else digests.key_id(ALICE_KEY.public_key())
    n = nonce if nonce is not None else _fresh_nonce()
    digest = digests.request_digest(
        auditor_id=auditor_id, key_id=kid, method="Attribute", timestamp_ms=NOW, nonce=n, body=BODY
    )
    return pb.SignedRequest(
        auditor_id=auditor_id,
        key_id=kid,
        method="Attribute",
        timestamp_ms=NOW,
        nonce=n,
        body=BODY,
        signature=ALICE_KEY.sign(digest),
    ).SerializeToString()


def mutate(env_msg: pb.SignedRequest, change: Callable[[pb.SignedRequest], None]) -> bytes:
    change(env_msg)
    return env_msg.SerializeToString()


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def _set(field_name: str, value: object) -> Callable[[pb.SignedRequest], None]:
    return lambda m: setattr(m, field_name, value)


def _replayed(e: Env) -> bytes:
    raw = signed()
    e.verify(raw)
    return raw


def _replayed_after_reopen(e: Env) -> bytes:
    raw = signed()
    e.verify(raw)
    e.reopen()
    return raw


def _unknown_envelope_field(_: Env) -> bytes:
    return signed() + b"\xa0\x06\x01"  # field 100, varint 1


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Env], bytes]
    error: type[RequestRejected]
    code: str
    called: str = "Attribute"


CASES = [
    Case("unknown auditor", lambda e: signed(key=STRANGER_KEY, auditor_id="auditor-zed-5555"),
         UnknownKey, "UNAUTHENTICATED"),
    Case("unknown key of a known auditor", lambda e: signed(key=STRANGER_KEY),
         UnknownKey, "UNAUTHENTICATED"),
    Case("another auditor's key", lambda e: signed(key=ALICE_KEY, auditor_id=BOB),
         UnknownKey, "UNAUTHENTICATED"),
    Case("expired key", lambda e: signed(key=BOB_KEY, auditor_id=BOB),
         ExpiredKey, "UNAUTHENTICATED"),
    Case("revoked key", lambda e: signed(key=CAROL_KEY, auditor_id=CAROL),
         RevokedKey, "UNAUTHENTICATED"),
    Case("revoked key, bad signature: status not told",
         lambda e: mutate(envelope(key=CAROL_KEY, auditor_id=CAROL),
                          lambda m: setattr(m, "signature", _flip_last(m.signature))),
         BadSignature, "UNAUTHENTICATED"),
    Case("expired key, bad signature: status not told",
         lambda e: mutate(envelope(key=BOB_KEY, auditor_id=BOB),
                          lambda m: setattr(m, "signature", _flip_last(m.signature))),
         BadSignature, "UNAUTHENTICATED"),
    Case("bad signature", lambda e: mutate(envelope(),
                                           lambda m: setattr(m, "signature", bytes(64))),
         BadSignature, "UNAUTHENTICATED"),
    Case("signature by another key", lambda e: mutate(
        envelope(), lambda m: setattr(m, "signature", envelope(key=STRANGER_KEY).signature)),
         BadSignature, "UNAUTHENTICATED"),
    Case("body tampered after signing",
         lambda e: mutate(envelope(), _set("body", BODY.replace(b"who", b"why"))),
         BadSignature, "UNAUTHENTICATED"),
    Case("timestamp tampered after signing",
         lambda e: mutate(envelope(), _set("timestamp_ms", NOW + 1)),
         BadSignature, "UNAUTHENTICATED"),
    Case("nonce tampered after signing", lambda e: mutate(envelope(), _set("nonce", bytes(16))),
         BadSignature, "UNAUTHENTICATED"),
    Case("method mismatch", lambda e: signed(method="Score"), MethodMismatch, "INVALID_ARGUMENT"),
    Case("method field rewritten to the called RPC",
         lambda e: mutate(envelope(method="Score"), _set("method", "Attribute")),
         BadSignature, "UNAUTHENTICATED"),
    Case("timestamp too old", lambda e: signed(ts=NOW - WINDOW - 1),
         StaleTimestamp, "UNAUTHENTICATED"),
    Case("timestamp too new", lambda e: signed(ts=NOW + WINDOW + 1),
         StaleTimestamp, "UNAUTHENTICATED"),
    Case("replayed nonce", _replayed, ReplayedNonce, "ALREADY_EXISTS"),
    Case("replayed after reopening the cache", _replayed_after_reopen,
         ReplayedNonce, "ALREADY_EXISTS"),
    Case("oversized raw bytes", lambda e: signed(body=b"\x0a" * MAX_BYTES),
         OversizedRequest, "RESOURCE_EXHAUSTED"),
    Case("oversized garbage is refused by size before parsing",
         lambda e: b"\xff" * (MAX_BYTES + 1), OversizedRequest, "RESOURCE_EXHAUSTED"),
    Case("garbage bytes", lambda e: b"\xff\xfe\xfd\x00garbage", MalformedRequest,
         "INVALID_ARGUMENT"),
    Case("empty bytes", lambda e: b"", MalformedRequest, "INVALID_ARGUMENT"),
    Case("short nonce", lambda e: hand_signed(nonce=bytes(15)), MalformedRequest,
         "INVALID_ARGUMENT"),
    Case("long nonce", lambda e: hand_signed(nonce=bytes(17)), MalformedRequest,
         "INVALID_ARGUMENT"),
    Case("auditor id of 257 characters", lambda e: hand_signed(auditor_id="a" * 257),
         MalformedRequest, "INVALID_ARGUMENT"),
    Case("auditor id with a newline (log injection)",
         lambda e: hand_signed(auditor_id=ALICE + "\nfake log line"), MalformedRequest,
         "INVALID_ARGUMENT"),
    Case("empty key id", lambda e: hand_signed(key_id=""), MalformedRequest, "INVALID_ARGUMENT"),
    Case("truncated signature",
         lambda e: mutate(envelope(), lambda m: setattr(m, "signature", m.signature[:63])),
         MalformedRequest, "INVALID_ARGUMENT"),
    Case("missing signature", lambda e: mutate(envelope(), _set("signature", b"")),
         MalformedRequest, "INVALID_ARGUMENT"),
    Case("unknown field in the envelope", _unknown_envelope_field, MalformedRequest,
         "INVALID_ARGUMENT"),
    Case("method name empty", lambda e: mutate(envelope(), _set("method", "")),
         MalformedRequest, "INVALID_ARGUMENT"),
]  # fmt: skip


def _forbidden_fragments(raw: bytes) -> list[str]:
    """Things a refusal message must never contain: key material and auditor-sent text."""
    out = []
    for key in (ALICE_KEY, BOB_KEY, CAROL_KEY, STRANGER_KEY):
        pub = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        priv = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        out += [
            pub.hex(),
            base64.b64encode(pub).decode(),
            priv.hex(),
            digests.key_id(key.public_key()),
        ]
    out += [ALICE, BOB, CAROL, "auditor-zed", "Score", "garbage", "fake log line"]
    try:
        m = pb.SignedRequest.FromString(raw)
    except Exception:
        return out
    if m.signature:
        out.append(m.signature.hex())
    if m.nonce:
        out.append(m.nonce.hex())
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_rejection_has_its_class_status_and_a_safe_message(env: Env, case: Case) -> None:
    raw = case.build(env)
    before = len(env.cache)
    with pytest.raises(RequestRejected) as info:
        env.verify(raw, called=case.called)
    exc = info.value
    assert type(exc) is case.error
    assert exc.code == case.code
    assert isinstance(exc, InputError)
    assert str(exc) == exc.message and exc.message
    for fragment in _forbidden_fragments(raw):
        assert fragment not in exc.message, (case.name, fragment)
    # A refused request never adds to the replay cache.
    assert len(env.cache) == before


def test_unknown_auditor_and_unknown_key_are_indistinguishable(env: Env) -> None:
    messages = []
    for raw in (
        signed(key=STRANGER_KEY, auditor_id="auditor-zed-5555"),
        signed(key=STRANGER_KEY, auditor_id=ALICE),
        signed(key=ALICE_KEY, auditor_id=BOB),
    ):
        with pytest.raises(UnknownKey) as info:
            env.verify(raw)
        messages.append(info.value.message)
    assert len(set(messages)) == 1


def test_a_registered_key_id_with_a_zero_signature_looks_like_an_unknown_key(env: Env) -> None:
    """Before the fix the key was looked up before the signature was checked, so a zero
    signature told anyone whether a (public) key id was registered."""
    registered = mutate(envelope(), _set("signature", bytes(64)))
    unregistered = mutate(envelope(key=STRANGER_KEY), _set("signature", bytes(64)))
    seen = []
    for raw in (registered, unregistered):
        with pytest.raises((UnknownKey, BadSignature)) as info:
            env.verify(raw)
        seen.append((info.value.code, info.value.message))
    assert seen[0] == seen[1]


def test_the_stale_timestamp_message_does_not_echo_the_server_clock(env: Env) -> None:
    with pytest.raises(StaleTimestamp) as info:
        env.verify(signed(ts=NOW - WINDOW - 1))
    assert str(NOW) not in info.value.message and str(NOW)[:6] not in info.value.message


def test_key_status_is_only_told_to_the_key_holder(env: Env) -> None:
    """Someone who knows the revoked key's id but not the key learns nothing about it."""
    forged = mutate(
        envelope(key=STRANGER_KEY, auditor_id=CAROL),
        _set("key_id", digests.key_id(CAROL_KEY.public_key())),
    )
    with pytest.raises(BadSignature):
        env.verify(forged)


def test_valid_request_returns_the_verified_request(env: Env) -> None:
    msg = envelope()
    verified = env.verify(msg.SerializeToString())
    assert verified == VerifiedRequest(
        auditor_id=ALICE,
        role="regulator",
        key_id=digests.key_id(ALICE_KEY.public_key()),
        method="Attribute",
        timestamp_ms=NOW,
        nonce=msg.nonce,
        body=BODY,
        digest=signed_request_digest(msg),
        key_expires=ALICE_EXPIRES,
    )
    assert len(env.cache) == 1
    request = parse_body(verified, pb.AttributeRequest)
    assert (request.prompt, request.top_k) == ("who wrote this?", 5)


@pytest.mark.parametrize("ts", [NOW - WINDOW, NOW + WINDOW, NOW])
def test_timestamps_at_the_edge_of_the_window_pass(env: Env, ts: int) -> None:
    assert env.verify(signed(ts=ts)).timestamp_ms == ts


def test_request_of_exactly_the_size_limit_passes(env: Env) -> None:
    raw = signed(body=b"")
    # A body adds its tag (1 byte) and a 3-byte length varint to the envelope.
    padded = signed(body=b"\x00" * (MAX_BYTES - len(raw) - 4))
    assert len(padded) == MAX_BYTES
    env.verify(padded)


def test_key_expiring_exactly_now_still_passes_and_naive_expiry_reads_as_utc(env: Env) -> None:
    dave = Ed25519PrivateKey.from_private_bytes(b"\x05" * 32)
    env.registry.add("dave", dave, expires=datetime.fromtimestamp(NOW / 1000, tz=UTC))
    assert env.verify(signed(key=dave, auditor_id="dave")).auditor_id == "dave"
    naive = datetime.fromtimestamp(NOW / 1000 - 1, tz=UTC).replace(tzinfo=None)
    env.registry.add("erin", dave, expires=naive)
    with pytest.raises(ExpiredKey):
        env.verify(signed(key=dave, auditor_id="erin"))


def test_same_nonce_for_two_auditors_is_not_a_replay(env: Env) -> None:
    nonce = _fresh_nonce()
    env.registry.add("frank", STRANGER_KEY)
    env.verify(signed(nonce=nonce))
    env.verify(signed(key=STRANGER_KEY, auditor_id="frank", nonce=nonce))


def test_lookup_raising_lookuperror_is_unknown_key(env: Env) -> None:
    class Raising:
        def find_key(self, auditor_id: str, key_id: str) -> FakeKey | None:
            raise KeyError(auditor_id)

    with pytest.raises(UnknownKey):
        verify_request(
            signed(),
            called_method="Attribute",
            keys=Raising(),
            replay=env.cache,
            now_ms=NOW,
            window_ms=WINDOW,
            max_request_bytes=MAX_BYTES,
        )


# --- parse_body ---------------------------------------------------------------------------


def _verified(env: Env, body: bytes, method: str = "Attribute") -> VerifiedRequest:
    return env.verify(signed(body=body, method=method), called=method)


def test_parse_body_refuses_unknown_top_level_fields(env: Env) -> None:
    verified = _verified(env, BODY + b"\x98\x06\x01")  # field 99, varint
    with pytest.raises(MalformedRequest, match="does not define") as info:
        parse_body(verified, pb.AttributeRequest)
    assert info.value.code == "INVALID_ARGUMENT"


def test_parse_body_refuses_unknown_fields_in_nested_messages(env: Env) -> None:
    item = pb.AttributeRequest(prompt="p", completion="c", top_k=1).SerializeToString()
    nested = item + b"\x98\x06\x01"
    batch = b"\x0a" + bytes([len(nested)]) + nested  # AttributeBatchRequest.items
    verified = _verified(env, batch, method="AttributeBatch")
    with pytest.raises(MalformedRequest, match="does not define"):
        parse_body(verified, pb.AttributeBatchRequest)
    ok = _verified(env, b"\x0a" + bytes([len(item)]) + item, method="AttributeBatch")
    assert len(parse_body(ok, pb.AttributeBatchRequest).items) == 1


def test_parse_body_refuses_a_known_field_with_the_wrong_wire_type(env: Env) -> None:
    verified = _verified(env, b"\x08\x01")  # field 1 (prompt, a string) as a varint
    with pytest.raises(MalformedRequest):
        parse_body(verified, pb.AttributeRequest)


def test_parse_body_refuses_undecodable_bytes(env: Env) -> None:
    for body in (b"\x0a\x05ab", b"\x0a\x02\xff\xfe"):  # truncated; invalid UTF-8 in a string
        verified = _verified(env, body)
        with pytest.raises(MalformedRequest, match="does not parse as AttributeRequest"):
            parse_body(verified, pb.AttributeRequest)


def _wrap(field_number: int, payload: bytes) -> bytes:
    """A length-delimited field (payloads under 128 bytes)."""
    assert len(payload) < 128
    return bytes([field_number << 3 | 2, len(payload)]) + payload


def test_unknown_fields_are_found_in_repeated_messages_at_any_depth() -> None:
    result = pb.AttributionResult(rank=1, record_id="r")
    result.module_share["mlp"] = 0.5
    clean = _wrap(14, _wrap(3, result.SerializeToString()))  # ResponseBody.attribute.results
    parsed = pb.ResponseBody.FromString(clean)
    assert parsed.attribute.results[0].module_share["mlp"] == 0.5
    assert not has_unknown_fields(parsed)
    dirty = _wrap(14, _wrap(3, result.SerializeToString() + b"\x98\x06\x01"))
    assert has_unknown_fields(pb.ResponseBody.FromString(dirty))


def test_method_not_allowed_names_the_status_and_no_auditor_text() -> None:
    exc = MethodNotAllowed()
    assert exc.code == "PERMISSION_DENIED"
    assert "role" in exc.message


def test_every_refusal_class_names_a_real_grpc_status() -> None:
    """The service maps ``code`` with ``grpc.StatusCode[code]``; every name must exist."""
    grpc = pytest.importorskip("grpc")

    def subclasses(cls: type[RequestRejected]) -> list[type[RequestRejected]]:
        return [c for s in cls.__subclasses__() for c in (s, *subclasses(s))]

    found = subclasses(RequestRejected)
    assert len(found) >= 10
    for cls in found:
        assert grpc.StatusCode[cls.code] is not grpc.StatusCode.OK
        assert cls().message == cls.default_message
