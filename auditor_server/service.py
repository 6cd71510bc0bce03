"""The audit service: envelope -> policy -> engine -> disclosure -> signature -> ledger.

Python gRPC interceptors cannot see message bodies, so every check happens here, on the raw
request bytes (the handlers are registered with no request deserializer): the size limit is
enforced before anything is parsed, and a request that cannot even be parsed still gets a
specific status and a ledger entry.

Every request handled, accepted or rejected, appends one ledger leaf. An accepted request is
answered with a lab-signed ``ResponseBody`` and a receipt proving that leaf is in the log; a
rejected one gets a gRPC status whose message leaks nothing, and the leaf index in the
trailing metadata (``x-ledger-leaf``) so the auditor can ask for its proof.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

import grpc
from google.protobuf.message import Message

from auditor_client.wire import digests
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.envelope import sign_response
from auditor_client.wire.receipts import answer_status
from auditor_server.corpus.records import DATA_CLASSES
from auditor_server.errors import InputError, SandboxError
from auditor_server.ledger.log import Ledger
from auditor_server.policy.disclose import DisclosedResult, disclose
from auditor_server.policy.model import Policy
from auditor_server.policy.quota import QuotaStore
from auditor_server.policy.scrub import scrub
from auditor_server.security.errors import MethodNotAllowed, RequestRejected
from auditor_server.security.lab_keys import LabKey
from auditor_server.security.replay import ReplayCache
from auditor_server.security.verify import VerifiedRequest, parse_body, verify_request

logger = logging.getLogger(__name__)

SERVICE_NAME = "auditor.v1.AuditService"
LEDGER_TRAILER = "x-ledger-leaf"
BILLABLE = frozenset({"Generate", "Score", "Attribute", "AttributeBatch"})
"""Methods that consume the daily query quota (per item for a batch)."""

REQUEST_TYPES: dict[str, type[Message]] = {
    "WhoAmI": pb.WhoAmIRequest,
    "GetPolicy": pb.GetPolicyRequest,
    "Generate": pb.GenerateRequest,
    "Score": pb.ScoreRequest,
    "Attribute": pb.AttributeRequest,
    "AttributeBatch": pb.AttributeBatchRequest,
    "GetTreeHead": pb.GetTreeHeadRequest,
    "GetInclusionProof": pb.GetInclusionProofRequest,
    "GetConsistencyProof": pb.GetConsistencyProofRequest,
}
"""Every RPC of ``AuditService`` and the inner message its envelope's body must hold."""


class RefusalError(Exception):
    """A request the service refuses after the envelope checked out (bad arguments, quota).

    Carries a gRPC status name and a message meant for the auditor.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Engine(Protocol):
    """What the service needs of :class:`~auditor_server.attribution.engine.AttributionEngine`."""

    @property
    def snapshot_id(self) -> str: ...

    manifest: dict[str, Any]
    catalog: Any

    def attribute_many(
        self, pairs: Any, *, top_k: int = 10, exclude_classes: Any = ()
    ) -> list[Any]: ...

    def generate(self, prompt: str, **kwargs: Any) -> str: ...

    def score(self, prompt: str, completion: str) -> Any: ...


@dataclass(frozen=True)
class StatePaths:
    """Where the service keeps its durable state (one directory, three SQLite files)."""

    root: Path

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.db"

    @property
    def replay(self) -> Path:
        return self.root / "replay.db"

    @property
    def quota(self) -> Path:
        return self.root / "quota.db"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class AuditService:
    """Handles every RPC; the gRPC glue (:func:`generic_handler`) stays a thin shell.

    Thread-safe: the policy is swapped atomically on reload, the engine (torch model plus
    capture hooks with per-call state) runs under one lock, and the ledger, replay cache and
    quota store serialize their own writes.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        policy: Policy,
        policy_path: Path | None,
        lab_key: LabKey,
        ledger: Ledger,
        replay: ReplayCache,
        quota: QuotaStore,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self.engine = engine
        self._policy = policy
        self.policy_path = policy_path
        self.lab_key = lab_key
        self.ledger = ledger
        self.replay = replay
        self.quota = quota
        self.clock = clock
        self._engine_lock = threading.Lock()
        self.model_hash = str(engine.manifest.get("model_hash", ""))

    @classmethod
    def open(
        cls,
        *,
        engine: Engine,
        policy: Policy,
        policy_path: Path | None,
        lab_key: LabKey,
        state_dir: Path,
    ) -> AuditService:
        """A service over ``engine`` keeping its durable state in ``state_dir``.

        Opens (creating if needed) the ledger, replay cache and quota store there; keep the
        directory across restarts, or the replay window and the quotas start afresh.
        """
        state_dir.mkdir(parents=True, exist_ok=True)
        paths = StatePaths(state_dir)
        return cls(
            engine=engine,
            policy=policy,
            policy_path=policy_path,
            lab_key=lab_key,
            ledger=Ledger.open(paths.ledger, signer=lab_key),
            replay=ReplayCache.open(
                paths.replay, window_ms=policy.limits.timestamp_window_s * 1000
            ),
            quota=QuotaStore.open(paths.quota),
        )

    def close(self) -> None:
        """Release the durable stores and the engine (the server has stopped serving)."""
        for resource in (self.ledger, self.replay, self.quota, self.engine):
            close = getattr(resource, "close", None)
            if close is not None:
                close()

    # --- policy -----------------------------------------------------------------------------

    @property
    def policy(self) -> Policy:
        return self._policy

    def reload_policy(self) -> bool:
        """Re-read the policy file; keep serving the old one if the new one is invalid.

        Returns:
            Whether the new policy is now in force.
        """
        if self.policy_path is None:
            return False
        try:
            new = Policy.from_file(self.policy_path)
        except SandboxError as exc:
            logger.error("policy reload refused, keeping %s: %s", self._policy.policy_hash, exc)
            return False
        old, self._policy = self._policy, new
        logger.warning("policy reloaded: %s -> %s", old.policy_hash, new.policy_hash)
        return True

    # --- entry points -----------------------------------------------------------------------

    def unary(self, method: str, raw: bytes, context: grpc.ServicerContext) -> pb.SignedResponse:
        """Handle one unary RPC; aborts the call with a specific status on any refusal."""
        policy = self._policy
        try:
            verified, request = self._admit(method, raw, policy)
            handler = getattr(self, f"_do_{method}")
            result_field, result = handler(verified, request, policy, context)
        except (RequestRejected, RefusalError) as exc:
            self._refuse(raw, exc.code, exc.message, context)
        except Exception:
            logger.exception("internal error handling %s", method)
            self._refuse(raw, "INTERNAL", "internal error; the lab has been notified", context)
        return self._answer(verified, policy, result_field, result)

    def stream(
        self, method: str, raw: bytes, context: grpc.ServicerContext
    ) -> Iterator[pb.SignedResponse]:
        """Handle ``AttributeBatch``: one signed request, one signed, logged answer per item.

        A refusal of the whole request aborts the stream before any answer; a refusal of one
        item (its quota ran out) is answered in-band with a signed ``ItemError``, so the
        auditor still gets, and can prove, everything that was answered.
        """
        policy = self._policy
        try:
            verified, request = self._admit(method, raw, policy)
            assert isinstance(request, pb.AttributeBatchRequest)
            limit = policy.limits.max_batch_items
            if not 1 <= len(request.items) <= limit:
                raise RefusalError(
                    "INVALID_ARGUMENT",
                    f"a batch holds 1 to {limit} items, got {len(request.items)}",
                )
            for item in request.items:
                self._check_attribute(item, policy, verified.role)
        except (RequestRejected, RefusalError) as exc:
            self._refuse(raw, exc.code, exc.message, context)
        for index, item in enumerate(request.items):
            if not context.is_active():
                return
            field: str
            result: Message
            try:
                self._consume_quota(verified, policy, 1)
                field, result = "attribute", self._attribute(item, policy, verified.role, context)
            except RefusalError as exc:
                field, result = "error", pb.ItemError(code=exc.code, message=exc.message)
            except Exception:
                logger.exception("internal error in batch item %d", index)
                field, result = "error", pb.ItemError(code="INTERNAL", message="internal error")
            yield self._answer(verified, policy, field, result, item_index=index)

    # --- admission --------------------------------------------------------------------------

    def _admit(self, method: str, raw: bytes, policy: Policy) -> tuple[VerifiedRequest, Message]:
        """Verify the envelope, the role's right to the method, and parse the body."""
        verified = verify_request(
            raw,
            called_method=method,
            keys=policy,
            replay=self.replay,
            now_ms=self.clock(),
            window_ms=policy.limits.timestamp_window_s * 1000,
            max_request_bytes=policy.limits.max_request_bytes,
        )
        if not policy.role(verified.role).allows(method):
            raise MethodNotAllowed()
        request = parse_body(verified, REQUEST_TYPES[method])
        return verified, request

    def _consume_quota(self, verified: VerifiedRequest, policy: Policy, n: int) -> None:
        role = policy.role(verified.role)
        decision = self.quota.try_consume(
            verified.auditor_id, role.daily_queries, n=n, now=self.clock() / 1000
        )
        if not decision.allowed:
            raise RefusalError(
                "RESOURCE_EXHAUSTED",
                f"daily query quota of {role.daily_queries} used up; it resets at 00:00 UTC",
            )

    def _check_deadline(self, context: grpc.ServicerContext) -> None:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise RefusalError(
                "DEADLINE_EXCEEDED", "the deadline passed before the answer was ready"
            )

    # --- methods ----------------------------------------------------------------------------

    def _do_WhoAmI(  # noqa: N802 (named after the RPC)
        self, v: VerifiedRequest, _: Message, policy: Policy, __: grpc.ServicerContext
    ) -> tuple[str, Message]:
        role = policy.role(v.role)
        left = self.quota.remaining(v.auditor_id, role.daily_queries, now=self.clock() / 1000)
        expires = v.key_expires
        return "whoami", pb.WhoAmIResponse(
            auditor_id=v.auditor_id,
            role=v.role,
            methods=sorted(role.methods),
            max_top_k=role.max_top_k,
            daily_queries=role.daily_queries,
            queries_left_today=left,
            key_expires_ms=int(expires.timestamp() * 1000) if expires is not None else 0,
        )

    def _do_GetPolicy(  # noqa: N802
        self, v: VerifiedRequest, _: Message, policy: Policy, __: grpc.ServicerContext
    ) -> tuple[str, Message]:
        role = policy.role(v.role)
        return "policy", pb.GetPolicyResponse(
            policy_hash=policy.policy_hash,
            role=v.role,
            disclosure={c: policy.disclosure_for(v.role, c) for c in DATA_CLASSES},
            methods=sorted(role.methods),
            max_top_k=role.max_top_k,
            daily_queries=role.daily_queries,
            max_new_tokens=role.max_new_tokens,
        )

    def _do_Generate(  # noqa: N802
        self, v: VerifiedRequest, req: Message, policy: Policy, ctx: grpc.ServicerContext
    ) -> tuple[str, Message]:
        assert isinstance(req, pb.GenerateRequest)
        role = policy.role(v.role)
        self._check_prompt(req.prompt, policy)
        if not 1 <= req.max_new_tokens <= role.max_new_tokens:
            raise RefusalError(
                "INVALID_ARGUMENT",
                f"max_new_tokens must be between 1 and {role.max_new_tokens} for your role",
            )
        if not 0.0 <= req.temperature <= 10.0:
            raise RefusalError("INVALID_ARGUMENT", "temperature must be between 0 and 10")
        self._consume_quota(v, policy, 1)
        text = self._run(
            ctx,
            lambda: self.engine.generate(
                req.prompt,
                max_new_tokens=req.max_new_tokens,
                temperature=float(req.temperature),
                seed=int(req.seed),
            ),
        )
        # The model saw private records in training; what it says is scrubbed like any text
        # that leaves the lab.
        return "generate", pb.GenerateResponse(completion=scrub(text))

    def _do_Score(  # noqa: N802
        self, v: VerifiedRequest, req: Message, policy: Policy, ctx: grpc.ServicerContext
    ) -> tuple[str, Message]:
        assert isinstance(req, pb.ScoreRequest)
        self._check_prompt(req.prompt, policy)
        self._check_completion(req.completion, policy)
        self._consume_quota(v, policy, 1)
        result = self._run(ctx, lambda: self.engine.score(req.prompt, req.completion))
        return "score", pb.ScoreResponse(
            logprob=result.logprob, completion_tokens=result.num_tokens
        )

    def _do_Attribute(  # noqa: N802
        self, v: VerifiedRequest, req: Message, policy: Policy, ctx: grpc.ServicerContext
    ) -> tuple[str, Message]:
        assert isinstance(req, pb.AttributeRequest)
        self._check_attribute(req, policy, v.role)
        self._consume_quota(v, policy, 1)
        return "attribute", self._attribute(req, policy, v.role, ctx)

    def _do_GetTreeHead(  # noqa: N802
        self, v: VerifiedRequest, _: Message, policy: Policy, __: grpc.ServicerContext
    ) -> tuple[str, Message]:
        return "tree_head", pb.TreeHeadResponse(tree_head=_sth(self.ledger.tree_head()))

    def _do_GetInclusionProof(  # noqa: N802
        self, v: VerifiedRequest, req: Message, policy: Policy, __: grpc.ServicerContext
    ) -> tuple[str, Message]:
        assert isinstance(req, pb.GetInclusionProofRequest)
        size = req.tree_size or self.ledger.size
        try:
            path = self.ledger.inclusion_proof(req.leaf_index, size)
            head = self.ledger.tree_head(size)
            leaf = self.ledger.leaf_hash(req.leaf_index)
        except InputError as exc:
            raise RefusalError("OUT_OF_RANGE", str(exc)) from exc
        return "inclusion_proof", pb.InclusionProofResponse(
            leaf_index=req.leaf_index, leaf_hash=leaf, path=path, tree_head=_sth(head)
        )

    def _do_GetConsistencyProof(  # noqa: N802
        self, v: VerifiedRequest, req: Message, policy: Policy, __: grpc.ServicerContext
    ) -> tuple[str, Message]:
        assert isinstance(req, pb.GetConsistencyProofRequest)
        second = req.second_size or self.ledger.size
        try:
            path = self.ledger.consistency_proof(req.first_size, second)
            head = self.ledger.tree_head(second)
        except InputError as exc:
            raise RefusalError("OUT_OF_RANGE", str(exc)) from exc
        return "consistency_proof", pb.ConsistencyProofResponse(
            first_size=req.first_size, second_size=second, path=path, tree_head=_sth(head)
        )

    # --- attribution --------------------------------------------------------------------------

    def _check_prompt(self, prompt: str, policy: Policy) -> None:
        limit = policy.limits.max_prompt_chars
        if len(prompt) > limit:
            raise RefusalError("INVALID_ARGUMENT", f"prompt longer than {limit} characters")

    def _check_completion(self, completion: str, policy: Policy) -> None:
        limit = policy.limits.max_prompt_chars
        if not completion.strip():
            raise RefusalError("INVALID_ARGUMENT", "completion must not be empty")
        if len(completion) > limit:
            raise RefusalError("INVALID_ARGUMENT", f"completion longer than {limit} characters")

    def _check_attribute(self, req: pb.AttributeRequest, policy: Policy, role_name: str) -> None:
        self._check_prompt(req.prompt, policy)
        self._check_completion(req.completion, policy)
        max_top_k = policy.role(role_name).max_top_k
        if not 1 <= req.top_k <= max_top_k:
            raise RefusalError(
                "INVALID_ARGUMENT", f"top_k must be between 1 and {max_top_k} for your role"
            )

    def _attribute(
        self,
        req: pb.AttributeRequest,
        policy: Policy,
        role_name: str,
        ctx: grpc.ServicerContext,
    ) -> pb.AttributeResponse:
        # Classes the role may not see are removed before ranking, not after: no rank, score
        # or count in the answer depends on whether such records exist.
        hidden = policy.hidden_classes(role_name)
        (answer,) = self._run(
            ctx,
            lambda: self.engine.attribute_many(
                [(req.prompt, req.completion)], top_k=req.top_k, exclude_classes=hidden
            ),
        )
        results = []
        for item in answer.results:
            level = policy.disclosure_for(role_name, item.data_class)
            record = self.engine.catalog.get(item.record_id)
            shown = disclose(item, record, level, snippet_chars=policy.limits.snippet_chars)
            results.append(_result_message(shown))
        return pb.AttributeResponse(logprob=answer.completion_logprob, results=results)

    def _run(self, ctx: grpc.ServicerContext, work: Callable[[], Any]) -> Any:
        """Run engine work under the engine lock, honouring the call's deadline."""
        self._check_deadline(ctx)
        with self._engine_lock:
            self._check_deadline(ctx)
            try:
                result = work()
            except InputError as exc:
                raise RefusalError("INVALID_ARGUMENT", str(exc)) from exc
        self._check_deadline(ctx)
        return result

    # --- answers ------------------------------------------------------------------------------

    def _answer(
        self,
        verified: VerifiedRequest,
        policy: Policy,
        field: str,
        result: Message,
        *,
        item_index: int = 0,
    ) -> pb.SignedResponse:
        body = pb.ResponseBody(
            request_digest=verified.digest,
            method=verified.method,
            snapshot_id=self.engine.snapshot_id,
            model_hash=self.model_hash,
            policy_hash=policy.policy_hash,
            server_time_ms=self.clock(),
            item_index=item_index,
        )
        getattr(body, field).CopyFrom(result)
        signed = sign_response(private_key=self.lab_key.private_key, body=body)
        status = answer_status(body)  # what the auditor will recompute for the leaf
        entry = self.ledger.append(
            request_digest=verified.digest,
            response_digest=digests.response_digest(signed.body),
            status=status,
        )
        signed.receipt.CopyFrom(
            pb.Receipt(
                leaf_index=entry.index,
                inclusion_path=entry.inclusion_path,
                tree_head=_sth(entry.tree_head),
            )
        )
        return signed

    def _refuse(
        self, raw: bytes, code: str, message: str, context: grpc.ServicerContext
    ) -> NoReturn:
        """Log a refusal in the ledger, then abort the call (never returns)."""
        status = grpc.StatusCode[code]
        entry = self.ledger.append(
            request_digest=hashlib.sha256(raw).digest(),
            response_digest=hashlib.sha256(f"{code}: {message}".encode()).digest(),
            status=status.value[0],
        )
        logger.info("refused request (%s): %s; ledger leaf %d", code, message, entry.index)
        context.set_trailing_metadata(((LEDGER_TRAILER, str(entry.index)),))
        context.abort(status, message)
        raise AssertionError("grpc's abort() returned")  # pragma: no cover


def _sth(head: Any) -> pb.SignedTreeHead:
    return pb.SignedTreeHead(
        tree_size=head.tree_size,
        root_hash=head.root_hash,
        timestamp_ms=head.timestamp_ms,
        lab_key_id=head.key_id,
        signature=head.signature,
    )


def _result_message(shown: DisclosedResult) -> pb.AttributionResult:
    return pb.AttributionResult(
        rank=shown.rank,
        score=shown.score,
        data_class=shown.data_class,
        disclosure=shown.disclosure,
        source=pb.Source(
            title=shown.title, publisher=shown.publisher, url=shown.url, license=shown.license
        ),
        record_id=shown.record_id or "",
        text=shown.text or "",
        span_text=shown.span_text or "",
        module_share=dict(shown.module_share),
    )


def generic_handler(service: AuditService) -> grpc.GenericRpcHandler:
    """gRPC handlers for every ``AuditService`` method, taking the request as raw bytes."""

    def unary(method: str) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            lambda raw, ctx: service.unary(method, raw, ctx),
            request_deserializer=None,
            response_serializer=_serialize,
        )

    handlers = {m: unary(m) for m in REQUEST_TYPES if m != "AttributeBatch"}
    handlers["AttributeBatch"] = grpc.unary_stream_rpc_method_handler(
        lambda raw, ctx: service.stream("AttributeBatch", raw, ctx),
        request_deserializer=None,
        response_serializer=_serialize,
    )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def _serialize(message: pb.SignedResponse) -> bytes:
    data: bytes = message.SerializeToString()
    return data
