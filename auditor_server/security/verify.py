"""Turn untrusted request bytes into a :class:`VerifiedRequest`, or refuse them.

:func:`verify_request` is the one gate every RPC passes. Its checks run in a fixed order,
cheapest and least revealing first, so that unauthenticated callers can neither make the lab
do expensive work nor learn anything about the registry:

1. **size** of the raw bytes, before parsing (parsing cost grows with size);
2. **parse** the ``SignedRequest``; refuse unknown fields (they would be unsigned data) and
   fields of the wrong shape (nonce 16 bytes, signature 64 bytes, ids and method non-empty,
   printable, at most 256 characters);
3. **method**: the envelope's method must be the RPC called, so a signed ``Score`` cannot
   be replayed against ``Attribute``;
4. **key lookup and signature together**: the signature over
   :func:`auditor_client.wire.digests.request_digest` is checked against the registered key,
   or against a fixed decoy key when no key is registered under that (auditor id, key id),
   and both failures get the *same* status and message. Looking the key up and refusing
   before the signature check told anyone holding a public key id whether it was
   registered (a zero signature got "unknown key" for one and "bad signature" for the
   other); now the only thing that separates the two is the signature itself;
5. **timestamp** within ``±window_ms`` of server time, only now, and with a message that
   echoes nothing (it used to print the server's clock);
6. **revoked**, then **expired**: only now, so the status of a key is told only to whoever
   holds it, never to someone who merely knows its (public) key id;
7. **replay**: record (auditor id, nonce) atomically; a duplicate is refused. This comes
   last so that unsigned garbage can never fill the replay cache.

The function does no IO itself apart from the replay store it is handed. Parsing the body
into the method's message type is the caller's next step (:func:`parse_body`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from auditor_client.wire import digests
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.envelope import signed_request_digest
from auditor_server.security.errors import (
    BadSignature,
    ExpiredKey,
    MalformedRequest,
    MethodMismatch,
    OversizedRequest,
    RevokedKey,
    StaleTimestamp,
    UnknownKey,
)

MAX_ID_CHARS = 256
"""Longest accepted auditor id, key id or method name."""
SIGNATURE_SIZE = 64
"""Bytes in an Ed25519 signature."""

M = TypeVar("M", bound=Message)


class RegisteredKeyLike(Protocol):
    """What verification needs of a registered auditor key (the policy's ``RegisteredKey``).

    Read-only properties, so frozen dataclasses and plain objects both satisfy it.
    """

    @property
    def auditor_id(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def public_key(self) -> Ed25519PublicKey: ...

    @property
    def key_id(self) -> str: ...

    @property
    def expires(self) -> datetime | None:
        """When the registration ends (UTC; a naive value is read as UTC); None: never."""

    @property
    def revoked(self) -> bool: ...


class KeyLookup(Protocol):
    """The key registry (the loaded policy)."""

    def find_key(self, auditor_id: str, key_id: str) -> RegisteredKeyLike | None:
        """The key registered for exactly this auditor and key id, or None."""


class ReplayStore(Protocol):
    """Durable memory of accepted nonces (:class:`~auditor_server.security.replay.ReplayCache`)."""

    def check_and_record(
        self, auditor_id: str, nonce: bytes, timestamp_ms: int, now_ms: int
    ) -> None:
        """Atomically record the nonce; raise ``ReplayedNonce`` if it was already there."""


@dataclass(frozen=True)
class VerifiedRequest:
    """A request whose envelope passed every check; the only kind the service acts on.

    Attributes:
        auditor_id: the registered auditor who signed it.
        role: that auditor's role in the policy.
        key_id: the key that signed it.
        method: the RPC (equal to the one called).
        timestamp_ms: the auditor's signed timestamp.
        nonce: the (now recorded) 16-byte nonce.
        body: the serialized inner request, still unparsed (see :func:`parse_body`).
        digest: the request digest the auditor signed; goes into the answer and the ledger.
        key_expires: when the signing key's registration ends (UTC), or None.
    """

    auditor_id: str
    role: str
    key_id: str
    method: str
    timestamp_ms: int
    nonce: bytes
    body: bytes
    digest: bytes
    key_expires: datetime | None


def verify_request(
    raw: bytes,
    *,
    called_method: str,
    keys: KeyLookup,
    replay: ReplayStore,
    now_ms: int,
    window_ms: int,
    max_request_bytes: int,
) -> VerifiedRequest:
    """Check an incoming envelope completely, in the order the module docstring gives.

    Args:
        raw: the request bytes exactly as received.
        called_method: short name of the RPC the bytes arrived on, e.g. ``"Attribute"``.
        keys: the key registry.
        replay: where accepted nonces are recorded.
        now_ms: server time, Unix milliseconds.
        window_ms: accepted clock difference either way, milliseconds.
        max_request_bytes: largest accepted ``raw``.

    Returns:
        The verified request; its nonce is recorded, so it will not verify a second time.

    Raises:
        OversizedRequest: ``raw`` is over ``max_request_bytes``.
        MalformedRequest: not a well-formed envelope.
        MethodMismatch: the envelope is for another RPC.
        UnknownKey: no such auditor, or no such key for that auditor.
        StaleTimestamp: the timestamp is outside the window.
        BadSignature: the signature does not verify.
        RevokedKey: the key was revoked.
        ExpiredKey: the key's registration has ended.
        ReplayedNonce: this auditor already used this nonce.
    """
    if len(raw) > max_request_bytes:
        raise OversizedRequest(f"request is larger than the {max_request_bytes}-byte limit")
    env = _parse_envelope(raw)
    if env.method != called_method:
        raise MethodMismatch()
    key = _find_key(keys, env.auditor_id, env.key_id)
    digest = signed_request_digest(env)
    try:
        # The decoy makes an unregistered key cost the same verification as a registered one.
        (key.public_key if key is not None else _DECOY_KEY).verify(env.signature, digest)
        valid = True
    except InvalidSignature:
        valid = False
    if key is None:
        raise UnknownKey()
    if not valid:
        raise BadSignature()
    if abs(now_ms - env.timestamp_ms) > window_ms:
        raise StaleTimestamp()
    if key.revoked:
        raise RevokedKey()
    expires = _as_utc(key.expires)
    if expires is not None and expires < datetime.fromtimestamp(now_ms / 1000, tz=UTC):
        raise ExpiredKey()
    replay.check_and_record(env.auditor_id, env.nonce, env.timestamp_ms, now_ms)
    return VerifiedRequest(
        auditor_id=env.auditor_id,
        role=key.role,
        key_id=env.key_id,
        method=env.method,
        timestamp_ms=env.timestamp_ms,
        nonce=env.nonce,
        body=env.body,
        digest=digest,
        key_expires=expires,
    )


def parse_body(verified: VerifiedRequest, message_cls: type[M]) -> M:
    """Parse the verified body as ``message_cls``, refusing fields the server does not know.

    protobuf keeps unknown fields silently (``UnknownFields()`` is not implemented by the
    upb backend of protobuf 7); a field this server does not know could be an option the
    auditor believes is honoured, so it is refused rather than ignored. Checked at every
    nesting level.

    Raises:
        MalformedRequest: the body does not parse, or holds unknown fields.
    """
    msg: M = message_cls()
    try:
        msg.ParseFromString(verified.body)
    except DecodeError:
        raise MalformedRequest(
            f"request body does not parse as {message_cls.DESCRIPTOR.name}"
        ) from None
    if has_unknown_fields(msg):
        raise MalformedRequest(
            f"request body holds fields that {message_cls.DESCRIPTOR.name} does not define"
        )
    return msg


def has_unknown_fields(msg: Message) -> bool:
    """Whether ``msg`` or any message nested in it kept fields its schema does not define.

    A known field number sent with the wrong wire type also lands here, so this catches
    type confusion as well as fields from a newer schema.
    """
    if len(UnknownFieldSet(msg)) > 0:
        return True
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None and any(
                has_unknown_fields(v) for v in value.values()
            ):
                return True
        elif field.is_repeated:
            if any(has_unknown_fields(v) for v in value):
                return True
        elif has_unknown_fields(value):
            return True
    return False


def _parse_envelope(raw: bytes) -> pb.SignedRequest:
    """Parse and shape-check the envelope; the messages name the rule, never the value."""
    env = pb.SignedRequest()
    try:
        env.ParseFromString(raw)
    except DecodeError:
        raise MalformedRequest() from None
    if has_unknown_fields(env):
        raise MalformedRequest("request envelope holds fields SignedRequest does not define")
    for name, text in (
        ("auditor_id", env.auditor_id),
        ("key_id", env.key_id),
        ("method", env.method),
    ):
        if not text or len(text) > MAX_ID_CHARS or not text.isprintable():
            raise MalformedRequest(f"{name} must be 1 to {MAX_ID_CHARS} printable characters")
    if len(env.nonce) != digests.NONCE_SIZE:
        raise MalformedRequest(f"nonce must be exactly {digests.NONCE_SIZE} bytes")
    if len(env.signature) != SIGNATURE_SIZE:
        raise MalformedRequest(f"signature must be exactly {SIGNATURE_SIZE} bytes")
    return env


def _find_key(keys: KeyLookup, auditor_id: str, key_id: str) -> RegisteredKeyLike | None:
    """The registered key, or None for every way it can be missing.

    The result is also checked to belong to exactly this auditor and key id, so a registry
    that matched loosely (case, prefixes) cannot let one auditor sign as another.
    """
    try:
        key = keys.find_key(auditor_id, key_id)
    except LookupError:
        return None
    if key is None or key.auditor_id != auditor_id or key.key_id != key_id:
        return None
    return key


_DECOY_KEY: Final = Ed25519PrivateKey.from_private_bytes(
    hashlib.sha256(b"auditor-sandbox decoy key: verifies nothing anyone signed").digest()
).public_key()
"""Stands in for a missing key so an unknown key costs one signature check too. Its private
half is derivable from this source, but it is never registered, so a signature under it
still ends in UnknownKey."""


def _as_utc(moment: datetime | None) -> datetime | None:
    """Read a naive datetime as UTC, so comparisons never raise or shift by the local zone."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
