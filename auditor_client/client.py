"""``AuditorClient``: typed calls to the lab's audit service, each answer verified.

Every call signs a fresh envelope (new nonce, current time) and verifies the answer before
returning it: the lab's signature, that it answers *this* request (request digest and
method), and its ledger receipt (a signed tree head and an inclusion proof for the leaf the
client recomputes itself). A failed check raises; there is no unverified path.

Every tree head the lab signs for us (each receipt's, and those in proof answers) is kept
in the auditor's head store (:mod:`auditor_client.headstore`) across runs: a head of a size
we already hold with another root raises
:class:`~auditor_client.wire.errors.SplitViewError` at once, and :meth:`AuditorClient.check_heads`
proves with the lab that every stored head is a prefix of its newest one.

A ``GetPolicy`` answer may carry the lab's *evaluation certificate* (its own signed
measurement of how right its attributions are): :meth:`AuditorClient.get_policy` checks it
too, and :meth:`Verified.evaluation` returns it typed.

The only retry is on ``UNAVAILABLE`` (the request most likely never reached the service),
with exponential backoff and a *newly signed* envelope each time, so a retry can never be
mistaken for a replay.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError, Message

from auditor_client.errors import ServerRefusedError
from auditor_client.headstore import HeadCheck, HeadStore
from auditor_client.keys import KeyPair, decode_public_key, load_keypair
from auditor_client.wire import digests
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire._proto import audit_pb2_grpc
from auditor_client.wire.envelope import sign_request, signed_request_digest
from auditor_client.wire.errors import BindingError, MalformedResponseError
from auditor_client.wire.evaluation import Evaluation, read_certificate
from auditor_client.wire.receipts import verify_answer
from auditor_client.wire.snapshots import Snapshot, read_snapshots

__all__ = [
    "AuditorClient",
    "Evaluation",
    "TLSConfig",
    "VerbatimEvidence",
    "VerbatimSourceView",
    "Verified",
    "read_auditor_id",
    "refusal_from_error",
    "verbatim_evidence",
]

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
LEDGER_TRAILER = "x-ledger-leaf"
REFUSAL_TRAILER = "x-signed-refusal-bin"
"""Trailing metadata carrying the lab's signed, logged refusal (a serialized SignedResponse)."""
AUDITOR_ID_FILE = "auditor.id"

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class TLSConfig:
    """How the client authenticates the server, and optionally itself (mutual TLS).

    Attributes:
        ca: PEM file of the CA that signed the server certificate (None: system roots).
        cert: client certificate for mutual TLS.
        key: client private key for mutual TLS.
        server_name: override the name checked against the server certificate.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        root = self.ca.read_bytes() if self.ca is not None else None
        cert = self.cert.read_bytes() if self.cert is not None else None
        key = self.key.read_bytes() if self.key is not None else None
        return grpc.ssl_channel_credentials(
            root_certificates=root, private_key=key, certificate_chain=cert
        )


@dataclass(frozen=True)
class Verified:
    """One verified exchange: what was sent, what came back, and the parsed signed body.

    Kept whole so a report can carry it and anyone holding the lab's public key can check it
    again offline.
    """

    request: pb.SignedRequest
    response: pb.SignedResponse
    body: pb.ResponseBody = field(repr=False)

    @property
    def result(self) -> Message:
        """The method's own answer (e.g. an ``AttributeResponse``)."""
        name = self.body.WhichOneof("result")
        if name is None:
            raise ValueError("response body carries no result")
        result: Message = getattr(self.body, name)
        return result

    def verbatim(self) -> list[VerbatimEvidence]:
        """The verbatim spans of an Attribute (or AttributeBatch item) answer, each with the
        stretch of *our own* signed prompt + completion it covers.

        Raises:
            ValueError: this is not an attribute answer.
            MalformedResponseError: a span lies outside the text we sent.
        """
        if self.body.WhichOneof("result") != "attribute":
            raise ValueError("only attribute answers carry verbatim spans")
        if self.request.method == "AttributeBatch":
            batch = pb.AttributeBatchRequest.FromString(self.request.body)
            item = batch.items[self.body.item_index]
        else:
            item = pb.AttributeRequest.FromString(self.request.body)
        return verbatim_evidence(
            self.body.attribute, item.prompt + item.completion, prompt_chars=len(item.prompt)
        )

    def evaluation(self) -> Evaluation | None:
        """The lab's evaluation certificate in a GetPolicy answer, checked; None if the lab
        served none (its index has no measurement for the snapshot it serves).

        The certificate must vouch for this answer's signed ``snapshot_id``, and its typed
        fields must say exactly what its ``result_json`` says (see
        :func:`~auditor_client.wire.evaluation.read_certificate`).

        Raises:
            ValueError: this is not a GetPolicy answer.
            MalformedResponseError: the certificate fails a check.
        """
        if self.body.WhichOneof("result") != "policy":
            raise ValueError("only GetPolicy answers carry an evaluation certificate")
        if not self.body.policy.HasField("evaluation"):
            return None
        return read_certificate(self.body.policy.evaluation, snapshot_id=self.body.snapshot_id)

    def snapshots(self) -> list[Snapshot]:
        """The index's snapshot history in a GetPolicy answer, checked (oldest first; empty
        when the lab lists none): every id recomputed from its commitments, one parent
        chain, ending at this answer's signed ``snapshot_id``.

        Raises:
            ValueError: this is not a GetPolicy answer.
            SnapshotHistoryError: the history contradicts itself or the answer.
        """
        if self.body.WhichOneof("result") != "policy":
            raise ValueError("only GetPolicy answers carry the snapshot history")
        return read_snapshots(self.body.policy.snapshots, snapshot_id=self.body.snapshot_id)


@dataclass(frozen=True)
class VerbatimSourceView:
    """One training record holding a verbatim span, as the lab's policy discloses it.

    ``record_id`` and ``span_text`` (the record's own text of the span, scrubbed) are None
    for ``source_metadata`` (proprietary) records: the work is named, the record is not.
    """

    data_class: str
    disclosure: str
    title: str
    publisher: str
    url: str
    license: str
    record_id: str | None
    span_text: str | None


@dataclass(frozen=True)
class VerbatimEvidence:
    """A stretch of the attributed text found word for word in training records the lab
    lets this auditor see (the lab searches no other class)."""

    start: int
    """Code-point offset into ``prompt + completion``."""
    end: int
    text: str
    """``(prompt + completion)[start:end]``: the auditor's own text, never the lab's."""
    region: str
    """``prompt``, ``completion`` or ``both``."""
    words: int
    records: int
    """Visible records holding the span (``sources`` lists a few of them)."""
    sources: tuple[VerbatimSourceView, ...]


def verbatim_evidence(
    response: pb.AttributeResponse, text: str, *, prompt_chars: int | None = None
) -> list[VerbatimEvidence]:
    """Typed verbatim spans of ``response``, an answer about ``text`` (prompt + completion,
    the prompt's length ``prompt_chars`` when known, so that each region is checked too).

    Raises:
        MalformedResponseError: a span lies outside ``text``, or its length, region or a
            source's disclosure contradicts the protocol.
    """
    out = []
    for span in response.verbatim:
        if not span.start < span.end <= len(text) or span.length_chars != span.end - span.start:
            raise MalformedResponseError("verbatim span lies outside the attributed text")
        if span.region != _region(span.start, span.end, prompt_chars, span.region):
            raise MalformedResponseError(f"verbatim span has region {span.region!r}")
        sources = []
        for source in span.sources:
            shows_record = source.disclosure in ("full_text", "snippet")
            if not shows_record and source.disclosure != "source_metadata":
                raise MalformedResponseError(f"verbatim source disclosed as {source.disclosure!r}")
            sources.append(
                VerbatimSourceView(
                    data_class=source.data_class,
                    disclosure=source.disclosure,
                    title=source.source.title,
                    publisher=source.source.publisher,
                    url=source.source.url,
                    license=source.source.license,
                    record_id=source.record_id if shows_record else None,
                    span_text=source.span_text if shows_record else None,
                )
            )
        out.append(
            VerbatimEvidence(
                start=span.start,
                end=span.end,
                text=text[span.start : span.end],
                region=span.region,
                words=span.words,
                records=span.records,
                sources=tuple(sources),
            )
        )
    return out


def read_auditor_id(key_dir: Path) -> str | None:
    """The auditor id stored next to the key by ``auditor keygen --id``, if any."""
    path = key_dir / AUDITOR_ID_FILE
    if not path.exists():
        return None
    return path.read_text(encoding="utf-8").strip() or None


class AuditorClient:
    """A connection to one lab's audit service, as one registered auditor.

    Use :meth:`connect`; close it (or use it as a context manager) when done.
    """

    def __init__(
        self,
        *,
        channel: grpc.Channel,
        keypair: KeyPair,
        auditor_id: str,
        lab_public_key: str,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.25,
        head_store: HeadStore | None = None,
    ) -> None:
        """See :meth:`connect`; ``head_store`` defaults to :meth:`HeadStore.default`."""
        self._channel = channel
        self._stub = audit_pb2_grpc.AuditServiceStub(channel)  # type: ignore[no-untyped-call]
        self.keypair = keypair
        self.auditor_id = auditor_id
        self.lab_public_key = decode_public_key(lab_public_key)
        self.lab_key_id = digests.key_id(self.lab_public_key)
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.head_store = head_store if head_store is not None else HeadStore.default()
        self.heads = self.head_store.lab(self.lab_public_key)
        """This lab's heads in the store: every head it signed for us, across runs."""

    @classmethod
    def connect(
        cls,
        server: str,
        *,
        key_dir: Path,
        lab_public_key: str,
        auditor_id: str | None = None,
        tls: TLSConfig | None = None,
        insecure: bool = False,
        timeout_s: float = 60.0,
        head_store: HeadStore | None = None,
    ) -> AuditorClient:
        """Open a channel to ``server`` (``host:port``) signing with the key in ``key_dir``.

        ``head_store`` keeps the lab's signed heads across runs; the default is
        ``$AUDITOR_HEAD_STORE`` or ``~/.local/share/auditor/heads``.

        Raises:
            KeyFileError: the key or the lab's public key cannot be read.
            ValueError: no auditor id given and none stored with the key; or neither TLS
                nor ``insecure`` chosen.
        """
        keypair = load_keypair(key_dir)
        auditor_id = auditor_id or read_auditor_id(key_dir)
        if not auditor_id:
            raise ValueError(
                f"no auditor id: pass one, or store it with `auditor keygen --id` in {key_dir}"
            )
        options: list[tuple[str, str | int]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if tls is not None:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            channel = grpc.secure_channel(server, tls.credentials(), options=options)
        elif insecure:
            channel = grpc.insecure_channel(server, options=options)
        else:
            raise ValueError("choose TLS (a TLSConfig) or insecure=True explicitly")
        return cls(
            channel=channel,
            keypair=keypair,
            auditor_id=auditor_id,
            lab_public_key=lab_public_key,
            timeout_s=timeout_s,
            head_store=head_store,
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AuditorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- typed calls ----------------------------------------------------------------------

    def whoami(self) -> Verified:
        return self._call("WhoAmI", pb.WhoAmIRequest())

    def get_policy(self) -> Verified:
        """The role's policy, and the lab's evaluation certificate when it serves one.

        Raises:
            MalformedResponseError: the certificate or the snapshot history contradicts
                itself or the answer (a signed answer that fails a check is never returned,
                like any other).
        """
        verified = self._call("GetPolicy", pb.GetPolicyRequest())
        verified.evaluation()
        verified.snapshots()
        return verified

    def generate(
        self, prompt: str, *, max_new_tokens: int = 32, temperature: float = 0.0, seed: int = 0
    ) -> Verified:
        return self._call(
            "Generate",
            pb.GenerateRequest(
                prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed
            ),
        )

    def score(self, prompt: str, completion: str) -> Verified:
        return self._call("Score", pb.ScoreRequest(prompt=prompt, completion=completion))

    def attribute(self, prompt: str, completion: str, *, top_k: int = 10) -> Verified:
        return self._call(
            "Attribute", pb.AttributeRequest(prompt=prompt, completion=completion, top_k=top_k)
        )

    def attribute_batch(
        self, items: Sequence[tuple[str, str]], *, top_k: int = 10
    ) -> Iterator[Verified]:
        """Attribute many (prompt, completion) pairs in one signed request.

        Yields one verified answer per item, in order; an item the lab refused (e.g. the
        quota ran out mid-batch) arrives as a signed ``ItemError`` result, not an exception.
        """
        request = pb.AttributeBatchRequest(
            items=[pb.AttributeRequest(prompt=p, completion=c, top_k=top_k) for p, c in items]
        )
        envelope = self._sign("AttributeBatch", request)
        digest = signed_request_digest(envelope)
        try:
            for expected, response in enumerate(
                self._stub.AttributeBatch(envelope, timeout=self.timeout_s)
            ):
                body = verify_answer(
                    response,
                    lab_public_key=self.lab_public_key,
                    request_digest=digest,
                    method="AttributeBatch",
                    item_index=expected,
                )
                self._record_heads(response, body)
                yield Verified(request=envelope, response=response, body=body)
        except grpc.RpcError as exc:
            raise self._refused(exc, envelope, "AttributeBatch") from exc

    def tree_head(self) -> Verified:
        return self._call("GetTreeHead", pb.GetTreeHeadRequest())

    def inclusion_proof(self, leaf_index: int, tree_size: int = 0) -> Verified:
        return self._call(
            "GetInclusionProof",
            pb.GetInclusionProofRequest(leaf_index=leaf_index, tree_size=tree_size),
        )

    def consistency_proof(self, first_size: int, second_size: int = 0) -> Verified:
        return self._call(
            "GetConsistencyProof",
            pb.GetConsistencyProofRequest(first_size=first_size, second_size=second_size),
        )

    def check_heads(self) -> HeadCheck:
        """Prove with the lab that every head we hold is a prefix of its newest head.

        One consistency proof per group of stored heads not yet linked to the newest (see
        :meth:`~auditor_client.headstore.LabHeads.check`); cheap when run regularly.

        Raises:
            SplitViewError: the lab cannot prove it, or its log is smaller than before.
        """
        return self.heads.check(self)

    # --- plumbing -------------------------------------------------------------------------

    def _record_heads(self, response: pb.SignedResponse, body: pb.ResponseBody) -> None:
        """Keep the receipt's head and any head a proof answer carries (signatures checked)."""
        heads = [response.receipt.tree_head]
        kind = body.WhichOneof("result")
        if kind == "tree_head":
            heads.append(body.tree_head.tree_head)
        elif kind == "inclusion_proof":
            heads.append(body.inclusion_proof.tree_head)
        elif kind == "consistency_proof":
            heads.append(body.consistency_proof.tree_head)
        self.heads.record_all(heads)

    def _sign(self, method: str, request: Message) -> pb.SignedRequest:
        return sign_request(
            private_key=self.keypair.private,
            auditor_id=self.auditor_id,
            method=method,
            body=request.SerializeToString(deterministic=True),
        )

    def _refused(
        self, exc: grpc.RpcError, envelope: pb.SignedRequest, method: str
    ) -> ServerRefusedError:
        refused = refusal_from_error(
            exc, lab_public_key=self.lab_public_key, envelope=envelope, method=method
        )
        if isinstance(refused.evidence, Verified):  # a signed refusal has a receipt too
            self._record_heads(refused.evidence.response, refused.evidence.body)
        return refused

    def _call(self, method: str, request: Message) -> Verified:
        rpc = getattr(self._stub, method)
        attempt = 0
        while True:
            envelope = self._sign(method, request)
            try:
                response = rpc(envelope, timeout=self.timeout_s)
                break
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if code == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    time.sleep(self.backoff_s * 2**attempt)
                    attempt += 1
                    continue
                raise self._refused(exc, envelope, method) from exc
        body = verify_answer(
            response,
            lab_public_key=self.lab_public_key,
            request_digest=signed_request_digest(envelope),
            method=method,
        )
        self._record_heads(response, body)
        return Verified(request=envelope, response=response, body=body)


def _region(start: int, end: int, prompt_chars: int | None, claimed: str) -> str | None:
    """Where ``[start, end)`` lies in prompt + completion (``claimed`` if it is a region name
    and the prompt's length is unknown; None for anything else)."""
    if prompt_chars is None:
        return claimed if claimed in ("prompt", "completion", "both") else None
    if end <= prompt_chars:
        return "prompt"
    return "completion" if start >= prompt_chars else "both"


def _trailer(exc: grpc.Call, key: str) -> str | bytes | None:
    for name, value in exc.trailing_metadata() or ():
        if name == key:
            found: str | bytes = value
            return found
    return None


def refusal_from_error(
    exc: grpc.RpcError,
    *,
    lab_public_key: Ed25519PublicKey,
    envelope: pb.SignedRequest,
    method: str,
) -> ServerRefusedError:
    """The service's refusal as a typed error, with its verified signed evidence if any.

    A signed refusal is verified like any answer (signature, binding to *this* request,
    ledger receipt) and must agree with the gRPC status; one that fails verification raises
    instead of being reported, because a report must never hold unproven lab statements.
    """
    if not isinstance(exc, grpc.Call):
        return ServerRefusedError("UNKNOWN", str(exc), None)
    code = exc.code()
    name = code.name if code is not None else "UNKNOWN"
    leaf_text = _trailer(exc, LEDGER_TRAILER)
    leaf = int(leaf_text) if isinstance(leaf_text, str) and leaf_text.isdigit() else None
    raw = _trailer(exc, REFUSAL_TRAILER)
    evidence: Verified | None = None
    if isinstance(raw, bytes):
        response = pb.SignedResponse()
        try:
            response.ParseFromString(raw)
        except DecodeError as err:
            raise MalformedResponseError("signed refusal does not parse") from err
        body = verify_answer(
            response,
            lab_public_key=lab_public_key,
            request_digest=signed_request_digest(envelope),
            method=method,
        )
        if body.WhichOneof("result") != "refusal" or body.refusal.code != name:
            raise BindingError(f"signed refusal does not match the {name} status it came with")
        evidence = Verified(request=envelope, response=response, body=body)
        leaf = response.receipt.leaf_index
    return ServerRefusedError(name, exc.details() or "", leaf, evidence)
