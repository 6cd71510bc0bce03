"""The audit service: envelope -> policy -> engine -> disclosure -> signature -> ledger.

Python gRPC interceptors cannot see message bodies, so every check happens here, on the raw
request bytes (the handlers are registered with no request deserializer): the size limit is
enforced before anything is parsed, and a request that cannot even be parsed still gets a
specific status and a ledger entry.

Every *authenticated* request (a valid signature from a registered, current key) appends
one ledger leaf, answered or refused. An answer is a lab-signed ``ResponseBody`` with a
receipt proving its leaf is in the log; a refusal is a gRPC status with fixed text, and the
same signed, logged proof: a ``ResponseBody`` whose result is a ``Refusal``, in the trailing
metadata ``x-signed-refusal-bin`` (and its leaf index in ``x-ledger-leaf``), so a report can
prove the lab declined. Requests that fail authentication never reach the ledger: anyone
who can reach the port could otherwise grow the lab's permanent log for ever. They are
counted per peer, rate-limited and logged to the process log instead.

Engine work goes through :class:`~auditor_server.scheduling.EngineScheduler` (round robin
across auditors; concurrent Attribute, Score and Generate calls batched into shared
passes); each auditor may have only ``limits.max_concurrent_per_auditor`` model-channel
calls in flight, and every call runs
under a deadline (the caller's, capped by ``limits.call_deadline_s``), so no auditor can
hold the workers or the engine hostage. Cheap RPCs never touch the engine queue.

The model channel obeys the policy too (:mod:`auditor_server.policy.guard`): Generate is
decoded so that it cannot reproduce withheld training text, and a log-probability of text
that touches withheld training text is never returned.

Attribute answers carry verbatim evidence beside the gradient results
(:mod:`auditor_server.attribution.verbatim`): the spans of the auditor's own text found word
for word in records of the classes the role may see, each record disclosed at the role's
level for its class. Withheld classes are not searched at all.

GetPolicy answers carry the index's *evaluation certificate*
(:mod:`auditor_client.wire.evaluation`): the lab's counterfactual check of its own
attributions, ``INDEX_DIR/validation.json``, signed and logged with the answer. It is read
when the service opens and again on SIGHUP, and served only while it measured this very
snapshot; a stale or unreadable file is logged and left out, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn, Protocol

import grpc
from google.protobuf.message import Message

from auditor_client.wire import digests
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.envelope import sign_response
from auditor_client.wire.evaluation import MAX_RESULT_BYTES, certificate_from_result
from auditor_client.wire.receipts import answer_status
from auditor_server.attribution import layout
from auditor_server.attribution.config import IndexConfig
from auditor_server.attribution.snapshots import as_wire, read_history
from auditor_server.attribution.verbatim import (
    VerbatimIndex,
    VerbatimMatch,
    open_for_serving,
    token_char_range,
)
from auditor_server.corpus.records import DATA_CLASSES
from auditor_server.errors import ConfigError, InputError, IntegrityError, SandboxError
from auditor_server.ledger.log import Ledger
from auditor_server.policy.disclose import (
    DisclosedResult,
    DisclosedSpanSource,
    disclose,
    disclose_span_source,
)
from auditor_server.policy.errors import DisclosureError
from auditor_server.policy.model import Policy
from auditor_server.policy.quota import QuotaStore
from auditor_server.policy.scrub import find_pii, scrub, scrub_range
from auditor_server.scheduling import AttributeJob, EngineScheduler, GenerateJob, ScoreJob
from auditor_server.security.errors import MethodNotAllowed, RequestRejected
from auditor_server.security.lab_keys import LabKey
from auditor_server.security.replay import ReplayCache
from auditor_server.security.unauth import UnauthenticatedLimiter, peer_host
from auditor_server.security.verify import VerifiedRequest, parse_body, verify_request

logger = logging.getLogger(__name__)

SERVICE_NAME = "auditor.v1.AuditService"
LEDGER_TRAILER = "x-ledger-leaf"
REFUSAL_TRAILER = "x-signed-refusal-bin"
"""Trailing metadata holding the signed, logged refusal (a serialized ``SignedResponse``)."""
BILLABLE = frozenset({"Generate", "Score", "Attribute", "AttributeBatch"})
"""Methods that consume the daily query quota (per item for a batch)."""
MODEL_CHANNEL = BILLABLE
"""Methods that run the model: capped per auditor, and suspended when the auditor has used
up its daily budget of requests touching withheld text."""

# Refusal texts are fixed: they never echo what the auditor sent, nor the server's state.
WITHHELD_TEXT: Final = "the text touches training data this policy withholds"
SUSPENDED: Final = (
    "model-channel methods are suspended until 00:00 UTC: the daily budget of requests "
    "touching withheld training data is used up"
)
TOO_MANY_CONCURRENT: Final = (
    "too many model-channel calls are in flight (yours, or all auditors'); retry when one "
    "has finished"
)
TOO_MANY_UNAUTHENTICATED: Final = (
    "too many unauthenticated requests from this address; try again in a minute"
)
DEADLINE_PASSED: Final = "the deadline passed before the answer was ready"
MODEL_INPUT: Final = (
    "the model cannot process this request (empty after tokenization, or longer than its "
    "context)"
)
INTERNAL: Final = "internal error; the lab has been notified"
MIN_SAMPLING_TEMPERATURE: Final = 1e-3
"""Below this (but above 0) a temperature is refused: the softmax overflows long before 0."""


@dataclass(frozen=True)
class Defences:
    """Which defences are on. ``auditor-server serve`` always runs with every one on; there
    is no flag or setting to turn one off. Tests build a service with one switched off to
    show that the attack it stops succeeds without it (``tests/adversarial/``).

    Attributes:
        withheld_guard: Generate is decoded away from withheld training text, and Score (and
            any log-probability) of text touching it is refused.
        logprob_gate: Attribute answers carry the log-probability only for roles granted
            Score.
        scrub_joined: the scrubber sees prompt + output together (not the output alone).
        unauthenticated_off_ledger: failed authentications are counted and rate-limited
            per peer instead of being appended to the ledger.
        fair_scheduling: per-auditor concurrency caps, round-robin engine queue, batching
            and server-side deadlines (off: one engine lock, first come first served).
        verbatim_visible_only: verbatim spans are searched only in the suffix arrays of the
            classes the role may see (off: every class the verbatim index holds is searched
            and a withheld record is only left out of the listing, so its text still makes
            spans and counts: the naive design this defence replaces).
    """

    withheld_guard: bool = True
    logprob_gate: bool = True
    scrub_joined: bool = True
    unauthenticated_off_ledger: bool = True
    fair_scheduling: bool = True
    verbatim_visible_only: bool = True


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


def check_fit_excludes(policy: Policy, manifest: dict[str, Any]) -> None:
    """Refuse a policy that hides a data class the index's fit was computed with.

    The preconditioner and quantizers are fitted on the rows of the classes left in; a
    class some role may not see must not be among them, or its rows would shape the
    answers that role gets. ``auditor-server reindex --policy FILE`` refits without them.

    Raises:
        ConfigError: the policy hides a class the index was fitted on.
    """
    stored = manifest.get("index_config")
    if stored is None:  # an engine without an index (test doubles)
        return
    fitted = set(DATA_CLASSES) - IndexConfig.from_dict(stored).fit_excluded
    exposed = sorted(policy.hidden_from_some_role() & fitted)
    if exposed:
        raise ConfigError(
            f"the policy hides {', '.join(exposed)} from some role, but the index's "
            "preconditioner was fitted on those rows; run `auditor-server reindex --index DIR "
            "--policy POLICY` (seconds: no gradient is recomputed) and serve the result"
        )


class Engine(Protocol):
    """What the service needs of :class:`~auditor_server.attribution.engine.AttributionEngine`."""

    @property
    def snapshot_id(self) -> str: ...

    manifest: dict[str, Any]
    catalog: Any

    @property
    def shingle_sets(self) -> Any:
        """The index's withheld-text shingles (``ShingleSets``), or None if it has none."""

    def attribute_many(
        self, pairs: Any, *, top_k: int = 10, exclude_classes: Any = ()
    ) -> list[Any]: ...

    def generate_constrained(self, prompt: str, *, guard: Any, **kwargs: Any) -> Any: ...

    def generate_many(self, requests: Any) -> list[Any]: ...

    def score(self, prompt: str, completion: str) -> Any: ...

    def score_many(self, pairs: Any) -> list[Any]: ...


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


def _withheld_key(auditor_id: str) -> str:
    """The quota-store counter of an auditor's requests touching withheld text.

    Auditor ids are printable, so a NUL-separated name cannot collide with one.
    """
    return f"\x00withheld\x00{auditor_id}"


@dataclass
class _Call:
    """One authenticated call in progress: who, under which policy, until when."""

    verified: VerifiedRequest
    policy: Policy
    context: grpc.ServicerContext
    deadline_at: float
    """``time.monotonic()`` after which no more engine work is started for this call."""

    def remaining_s(self) -> float:
        return self.deadline_at - time.monotonic()


@dataclass
class _Slots:
    """Model-channel calls in flight per auditor."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    busy: dict[str, int] = field(default_factory=dict)

    def acquire(self, owner: str, limit: int, total_limit: int) -> bool:
        with self.lock:
            if self.busy.get(owner, 0) >= limit or sum(self.busy.values()) >= total_limit:
                return False
            self.busy[owner] = self.busy.get(owner, 0) + 1
            return True

    def release(self, owner: str) -> None:
        with self.lock:
            left = self.busy.get(owner, 0) - 1
            if left > 0:
                self.busy[owner] = left
            else:
                self.busy.pop(owner, None)


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
        defences: Defences | None = None,
        verbatim: VerbatimIndex | None = None,
        evaluation_path: Path | None = None,
    ) -> None:
        self.engine = engine
        self.verbatim = verbatim
        """Verbatim evidence for Attribute answers; None: the index has none (answers say
        ``verbatim_searched: false``)."""
        self.evaluation_path = (
            evaluation_path if evaluation_path is not None else _default_evaluation_path(engine)
        )
        """Where the evaluation certificate is read from (default ``INDEX_DIR/validation.json``
        of the engine's index; None: an engine with no index directory serves none)."""
        self._evaluation: pb.EvaluationCertificate | None = None
        self._snapshots: list[pb.SnapshotRecord] = []
        self.reload_evaluation()
        check_fit_excludes(policy, engine.manifest)
        self._policy = policy
        self.policy_path = policy_path
        self.lab_key = lab_key
        self.ledger = ledger
        self.replay = replay
        self.quota = quota
        self.clock = clock
        self.defences = defences if defences is not None else Defences()
        self._engine_lock = threading.Lock()
        self.model_hash = str(engine.manifest.get("model_hash", ""))
        self.unauthenticated = UnauthenticatedLimiter(
            max_failures=policy.limits.unauthenticated_per_minute, window_s=60.0
        )
        self._slots = _Slots()
        self.max_model_calls = 12
        """Model-channel calls in flight across all auditors; the server sets it to its
        worker threads minus a reserve, so cheap RPCs never wait for a thread."""
        self.scheduler = EngineScheduler(
            lambda pairs, top_k, excluded: engine.attribute_many(
                pairs, top_k=top_k, exclude_classes=excluded
            ),
            # Concurrent Score and Generate calls share a pass too.
            score_many=engine.score_many,
            generate_many=engine.generate_many,
        )
        self._shingles = engine.shingle_sets if self.defences.withheld_guard else None
        if self.defences.withheld_guard and self._shingles is None:
            raise ConfigError(
                "the index has no withheld-text guard; build one with "
                "`auditor-server guard --index INDEX_DIR` before serving it"
            )

    @classmethod
    def open(
        cls,
        *,
        engine: Engine,
        policy: Policy,
        policy_path: Path | None,
        lab_key: LabKey,
        state_dir: Path,
        defences: Defences | None = None,
        verbatim_dir: Path | None = None,
        evaluation_path: Path | None = None,
    ) -> AuditService:
        """A service over ``engine`` keeping its durable state in ``state_dir``.

        Opens (creating if needed) the ledger, replay cache and quota store there; keep the
        directory across restarts, or the replay window and the quotas start afresh. The
        verbatim index is opened from ``verbatim_dir`` (default: the engine's
        ``INDEX_DIR/verbatim``); an index built before verbatim evidence serves without it.
        The evaluation certificate is read from ``evaluation_path`` (default: the engine's
        ``INDEX_DIR/validation.json``); an index without one serves GetPolicy without it.
        """
        state_dir.mkdir(parents=True, exist_ok=True)
        paths = StatePaths(state_dir)
        verbatim = _open_verbatim(engine, verbatim_dir)
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
            defences=defences,
            verbatim=verbatim,
            evaluation_path=evaluation_path,
        )

    def close(self) -> None:
        """Release the durable stores and the engine (the server has stopped serving)."""
        self.scheduler.close()
        for resource in (self.ledger, self.replay, self.quota, self.engine, self.verbatim):
            close = getattr(resource, "close", None)
            if close is not None:
                close()

    # --- policy -----------------------------------------------------------------------------

    @property
    def policy(self) -> Policy:
        return self._policy

    def reload_policy(self) -> bool:
        """Re-read the policy file; keep serving the old one if the new one is invalid.

        SIGHUP calls this, so the evaluation certificate is read again first (a lab that
        ran ``auditor-server validate`` while serving publishes the result with ``kill -HUP``),
        whatever becomes of the policy.

        Returns:
            Whether the new policy is now in force.
        """
        self.reload_evaluation()
        if self.policy_path is None:
            return False
        try:
            new = Policy.from_file(self.policy_path)
            check_fit_excludes(new, self.engine.manifest)
        except SandboxError as exc:
            logger.error("policy reload refused, keeping %s: %s", self._policy.policy_hash, exc)
            return False
        old, self._policy = self._policy, new
        self.unauthenticated.max_failures = new.limits.unauthenticated_per_minute
        logger.warning("policy reloaded: %s -> %s", old.policy_hash, new.policy_hash)
        return True

    # --- evaluation certificate -------------------------------------------------------------

    @property
    def evaluation(self) -> pb.EvaluationCertificate | None:
        """The certificate GetPolicy answers carry now, or None."""
        return self._evaluation

    def reload_evaluation(self) -> bool:
        """Read the evaluation certificate (see :func:`load_evaluation`) and the snapshot
        history (:func:`load_snapshots`) again.

        Returns:
            Whether a certificate is now served.
        """
        self._snapshots = load_snapshots(self.engine)
        if self.evaluation_path is None:
            self._evaluation = None
            return False
        self._evaluation = load_evaluation(
            self.evaluation_path, snapshot_id=self.engine.snapshot_id
        )
        return self._evaluation is not None

    # --- entry points -----------------------------------------------------------------------

    def unary(self, method: str, raw: bytes, context: grpc.ServicerContext) -> pb.SignedResponse:
        """Handle one unary RPC; aborts the call with a specific status on any refusal."""
        policy = self._policy
        verified = self._authenticate(method, raw, policy, context)
        call = self._start_call(verified, policy, context)
        try:
            request = self._authorize(verified, method, policy)
            handler = getattr(self, f"_do_{method}")
            with self._model_slot(call, method):
                result_field, result = handler(verified, request, policy, call)
        except (RequestRejected, RefusalError) as exc:
            self._refuse(call, exc.code, exc.message)
        except Exception:
            logger.exception("internal error handling %s", method)
            self._refuse(call, "INTERNAL", INTERNAL)
        return self._answer(verified, policy, result_field, result)

    def stream(
        self, method: str, raw: bytes, context: grpc.ServicerContext
    ) -> Iterator[pb.SignedResponse]:
        """Handle ``AttributeBatch``: one signed request, one signed, logged answer per item.

        A refusal of the whole request aborts the stream before any answer; a refusal of one
        item (its quota ran out) is answered in-band with a signed ``ItemError``, so the
        auditor still gets, and can prove, everything that was answered. A stream that is
        not read is cancelled at its deadline, releasing its worker and its slot.
        """
        policy = self._policy
        verified = self._authenticate(method, raw, policy, context)
        call = self._start_call(verified, policy, context)
        watchdog: threading.Timer | None = None
        slot = None
        try:
            request = self._authorize(verified, method, policy)
            assert isinstance(request, pb.AttributeBatchRequest)
            limit = policy.limits.max_batch_items
            if not 1 <= len(request.items) <= limit:
                raise RefusalError("INVALID_ARGUMENT", f"a batch holds 1 to {limit} items")
            for item in request.items:
                self._check_attribute(item, policy, verified.role)
            self._check_not_suspended(verified, policy)
            slot = self._model_slot(call, method)
            slot.__enter__()
        except (RequestRejected, RefusalError) as exc:
            self._refuse(call, exc.code, exc.message)
        if self.defences.fair_scheduling:
            # gRPC blocks a generator whose client stops reading; only cancelling the call
            # frees the worker thread, so the deadline is enforced from outside.
            watchdog = threading.Timer(max(0.0, call.remaining_s()), context.cancel)
            watchdog.daemon = True
            watchdog.start()
        try:
            for index, item in enumerate(request.items):
                if not context.is_active():
                    return
                field_name: str
                result: Message
                try:
                    with self._charged(verified, policy, 1):
                        field_name, result = "attribute", self._attribute(item, call)
                except RefusalError as exc:
                    field_name, result = "error", pb.ItemError(code=exc.code, message=exc.message)
                except Exception:
                    logger.exception("internal error in batch item %d", index)
                    field_name, result = "error", pb.ItemError(code="INTERNAL", message=INTERNAL)
                yield self._answer(verified, policy, field_name, result, item_index=index)
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if slot is not None:
                slot.__exit__(None, None, None)

    # --- admission --------------------------------------------------------------------------

    def _authenticate(
        self, method: str, raw: bytes, policy: Policy, context: grpc.ServicerContext
    ) -> VerifiedRequest:
        """Verify the envelope, or refuse without touching the ledger (never returns then)."""
        peer = peer_host(context.peer() or "")
        off_ledger = self.defences.unauthenticated_off_ledger
        try:
            return verify_request(
                raw,
                called_method=method,
                keys=policy,
                replay=self.replay,
                now_ms=self.clock(),
                window_ms=policy.limits.timestamp_window_s * 1000,
                max_request_bytes=policy.limits.max_request_bytes,
            )
        except RequestRejected as exc:
            if not off_ledger:
                self._refuse_unsigned(raw, exc.code, exc.message, context)
            # A peer over its limit learns nothing more, not even which check failed. Its
            # requests are still verified: an auditor behind the same address (NAT, proxy)
            # as an attacker must keep being served.
            over_limit = self.unauthenticated.blocked(peer)
            self.unauthenticated.record(peer, type(exc).__name__)
            if over_limit:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_MANY_UNAUTHENTICATED)
            context.abort(grpc.StatusCode[exc.code], exc.message)
            raise AssertionError("grpc's abort() returned") from None  # pragma: no cover

    def _start_call(
        self, verified: VerifiedRequest, policy: Policy, context: grpc.ServicerContext
    ) -> _Call:
        budget = float(policy.limits.call_deadline_s)
        remaining = context.time_remaining()
        if remaining is not None and math.isfinite(remaining):
            budget = min(budget, remaining)
        return _Call(verified, policy, context, time.monotonic() + budget)

    def _authorize(self, verified: VerifiedRequest, method: str, policy: Policy) -> Message:
        """The role's right to the method, then the body parsed."""
        if not policy.role(verified.role).allows(method):
            raise MethodNotAllowed()
        return parse_body(verified, REQUEST_TYPES[method])

    @contextmanager
    def _model_slot(self, call: _Call, method: str) -> Iterator[None]:
        """Hold one of the auditor's model-channel slots for the duration of the call."""
        if method not in MODEL_CHANNEL or not self.defences.fair_scheduling:
            yield
            return
        owner = call.verified.auditor_id
        # However the policy sets it, one auditor never holds more than half the model-channel
        # threads, so a second auditor always finds room.
        per_auditor = min(
            call.policy.limits.max_concurrent_per_auditor, max(1, self.max_model_calls // 2)
        )
        if not self._slots.acquire(owner, per_auditor, self.max_model_calls):
            raise RefusalError("RESOURCE_EXHAUSTED", TOO_MANY_CONCURRENT)
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                self._slots.release(owner)

        call.context.add_callback(release)  # also when the client goes away mid-call
        try:
            yield
        finally:
            release()

    @contextmanager
    def _charged(self, verified: VerifiedRequest, policy: Policy, n: int) -> Iterator[None]:
        """Count ``n`` billable queries; give them back if no answer comes of them."""
        role = policy.role(verified.role)
        now = self.clock() / 1000
        decision = self.quota.try_consume(verified.auditor_id, role.daily_queries, n=n, now=now)
        if not decision.allowed:
            raise RefusalError(
                "RESOURCE_EXHAUSTED",
                f"daily query quota of {role.daily_queries} used up; it resets at 00:00 UTC",
            )
        try:
            yield
        except BaseException:
            self.quota.refund(verified.auditor_id, n, now=now)
            raise

    def _check_not_suspended(self, verified: VerifiedRequest, policy: Policy) -> None:
        if not self.defences.withheld_guard:
            return
        budget = policy.role(verified.role).withheld_budget
        used = self.quota.used(_withheld_key(verified.auditor_id), now=self.clock() / 1000)
        if used > budget:
            raise RefusalError("PERMISSION_DENIED", SUSPENDED)

    def _spend_withheld(self, verified: VerifiedRequest) -> None:
        """Count one request that touched withheld text (one more is a suspension)."""
        self.quota.try_consume(
            _withheld_key(verified.auditor_id), 2**62, n=1, now=self.clock() / 1000
        )

    def _guard(self, classes: frozenset[str]) -> Any:
        """The withheld-text guard for ``classes``, or None when the defence is off."""
        if self._shingles is None:
            return None
        return self._shingles.guard_for(classes)

    def _touches_withheld(self, text: str, call: _Call) -> bool:
        guard = self._guard(call.policy.hidden_classes(call.verified.role))
        return guard is not None and bool(guard.touches(text))

    # --- methods ----------------------------------------------------------------------------

    def _do_WhoAmI(  # noqa: N802 (named after the RPC)
        self, v: VerifiedRequest, _: Message, policy: Policy, __: _Call
    ) -> tuple[str, Message]:
        role = policy.role(v.role)
        now = self.clock() / 1000
        left = self.quota.remaining(v.auditor_id, role.daily_queries, now=now)
        touched = self.quota.used(_withheld_key(v.auditor_id), now=now)
        expires = v.key_expires
        return "whoami", pb.WhoAmIResponse(
            auditor_id=v.auditor_id,
            role=v.role,
            methods=sorted(role.methods),
            max_top_k=role.max_top_k,
            daily_queries=role.daily_queries,
            queries_left_today=left,
            key_expires_ms=int(expires.timestamp() * 1000) if expires is not None else 0,
            withheld_left_today=max(0, role.withheld_budget - touched),
        )

    def _do_GetPolicy(  # noqa: N802
        self, v: VerifiedRequest, _: Message, policy: Policy, __: _Call
    ) -> tuple[str, Message]:
        role = policy.role(v.role)
        answer = pb.GetPolicyResponse(
            policy_hash=policy.policy_hash,
            role=v.role,
            disclosure={c: policy.disclosure_for(v.role, c) for c in DATA_CLASSES},
            methods=sorted(role.methods),
            max_top_k=role.max_top_k,
            daily_queries=role.daily_queries,
            max_new_tokens=role.max_new_tokens,
            withheld_budget=role.withheld_budget,
            generate_proprietary=role.generate_proprietary,
        )
        evaluation = self._evaluation  # one read: a SIGHUP may swap it meanwhile
        if evaluation is not None:
            answer.evaluation.CopyFrom(evaluation)
        answer.snapshots.extend(self._snapshots)
        return "policy", answer

    def _do_Generate(  # noqa: N802
        self, v: VerifiedRequest, req: Message, policy: Policy, call: _Call
    ) -> tuple[str, Message]:
        assert isinstance(req, pb.GenerateRequest)
        role = policy.role(v.role)
        self._check_prompt(req.prompt, policy)
        if not 1 <= req.max_new_tokens <= role.max_new_tokens:
            raise RefusalError(
                "INVALID_ARGUMENT",
                f"max_new_tokens must be between 1 and {role.max_new_tokens} for your role",
            )
        temperature = float(req.temperature)
        if not (temperature == 0.0 or MIN_SAMPLING_TEMPERATURE <= temperature <= 10.0):
            raise RefusalError(
                "INVALID_ARGUMENT",
                f"temperature must be 0 (greedy) or between {MIN_SAMPLING_TEMPERATURE} and 10",
            )
        self._check_not_suspended(v, policy)
        guard = self._guard(policy.generation_withheld_classes(v.role))
        options: dict[str, Any] = {
            "guard": guard,
            "max_new_tokens": req.max_new_tokens,
            "temperature": temperature,
            "seed": int(req.seed),
        }
        job = GenerateJob(
            req.prompt,
            options,
            alone=lambda: self.engine.generate_constrained(req.prompt, **options),
        )
        with self._charged(v, policy, 1):
            # Decoded in one batch with other auditors' concurrent Generate calls, each row
            # with its own settings, seed and guard (see EngineScheduler).
            generated: Any = self._run(call, job)
        if generated.banned_tokens > 0 and guard is not None:
            # Being steered tells the auditor that its prompt leads into withheld text: a
            # membership answer like a refused Score, rationed by the same budget.
            self._spend_withheld(v)
        # The model saw private records in training; what it says is scrubbed like any text
        # that leaves the lab, together with the end of the prompt, so an address split
        # across prompt and output (a chained request) is still recognized.
        text = str(generated.text)
        if self.defences.scrub_joined:
            joined = req.prompt + text
            cut = len(req.prompt)
            scrubbed = sum(1 for m in find_pii(joined) if m.end > cut)
            completion = scrub_range(joined, cut, len(joined))
        else:
            completion = scrub(text)
            scrubbed = len(find_pii(text))
        return "generate", pb.GenerateResponse(
            completion=completion,
            constrained_tokens=int(generated.banned_tokens),
            scrubbed_items=scrubbed,
        )

    def _do_Score(  # noqa: N802
        self, v: VerifiedRequest, req: Message, policy: Policy, call: _Call
    ) -> tuple[str, Message]:
        assert isinstance(req, pb.ScoreRequest)
        self._check_prompt(req.prompt, policy)
        self._check_completion(req.completion, policy)
        self._check_not_suspended(v, policy)
        if self._touches_withheld(req.prompt + req.completion, call):
            self._spend_withheld(v)
            raise RefusalError("PERMISSION_DENIED", WITHHELD_TEXT)
        with self._charged(v, policy, 1):
            result = self._run(
                call,
                ScoreJob(
                    req.prompt,
                    req.completion,
                    alone=lambda: self.engine.score(req.prompt, req.completion),
                ),
            )
        return "score", pb.ScoreResponse(
            logprob=result.logprob, completion_tokens=result.num_tokens
        )

    def _do_Attribute(  # noqa: N802
        self, v: VerifiedRequest, req: Message, policy: Policy, call: _Call
    ) -> tuple[str, Message]:
        assert isinstance(req, pb.AttributeRequest)
        self._check_attribute(req, policy, v.role)
        self._check_not_suspended(v, policy)
        with self._charged(v, policy, 1):
            return "attribute", self._attribute(req, call)

    def _do_GetTreeHead(  # noqa: N802
        self, v: VerifiedRequest, _: Message, policy: Policy, __: _Call
    ) -> tuple[str, Message]:
        return "tree_head", pb.TreeHeadResponse(tree_head=self.ledger.tree_head().to_proto())

    def _do_GetInclusionProof(  # noqa: N802
        self, v: VerifiedRequest, req: Message, policy: Policy, __: _Call
    ) -> tuple[str, Message]:
        assert isinstance(req, pb.GetInclusionProofRequest)
        size = req.tree_size or self.ledger.size
        try:
            path = self.ledger.inclusion_proof(req.leaf_index, size)
            head = self.ledger.tree_head(size)
            leaf = self.ledger.leaf_hash(req.leaf_index)
        except InputError:
            raise RefusalError("OUT_OF_RANGE", "no such leaf or tree size in the ledger") from None
        return "inclusion_proof", pb.InclusionProofResponse(
            leaf_index=req.leaf_index, leaf_hash=leaf, path=path, tree_head=head.to_proto()
        )

    def _do_GetConsistencyProof(  # noqa: N802
        self, v: VerifiedRequest, req: Message, policy: Policy, __: _Call
    ) -> tuple[str, Message]:
        assert isinstance(req, pb.GetConsistencyProofRequest)
        second = req.second_size or self.ledger.size
        try:
            path = self.ledger.consistency_proof(req.first_size, second)
            head = self.ledger.tree_head(second)
        except InputError:
            raise RefusalError(
                "OUT_OF_RANGE", "the tree sizes asked for are not both in the ledger"
            ) from None
        return "consistency_proof", pb.ConsistencyProofResponse(
            first_size=req.first_size, second_size=second, path=path, tree_head=head.to_proto()
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

    def _attribute(self, req: pb.AttributeRequest, call: _Call) -> pb.AttributeResponse:
        policy, role_name = call.policy, call.verified.role
        # Classes the role may not see are removed before ranking, not after: no rank, score
        # or count in the answer depends on whether such records exist.
        hidden = policy.hidden_classes(role_name)
        job = AttributeJob(req.prompt, req.completion, int(req.top_k), hidden)
        answer = self._run(call, job)
        results = []
        for item in answer.results:
            level = policy.disclosure_for(role_name, item.data_class)
            record = self.engine.catalog.get(item.record_id)
            shown = disclose(item, record, level, snippet_chars=policy.limits.snippet_chars)
            results.append(_result_message(shown))
        response = pb.AttributeResponse(results=results)
        # The completion's log-probability *is* a Score answer: only roles granted Score get
        # it, and never for text that touches withheld training data.
        may_score = policy.role(role_name).allows("Score") or not self.defences.logprob_gate
        if may_score:
            if self._touches_withheld(req.prompt + req.completion, call):
                self._spend_withheld(call.verified)
                response.logprob_withheld = True
            else:
                response.logprob = answer.completion_logprob
        if self.verbatim is not None:
            response.verbatim_searched = True
            response.verbatim.extend(self._verbatim_spans(req, policy, role_name))
        return response

    def _verbatim_spans(
        self, req: pb.AttributeRequest, policy: Policy, role_name: str
    ) -> list[pb.VerbatimSpan]:
        """The verbatim evidence of one Attribute answer, disclosed for ``role_name``.

        Only the suffix arrays of classes the role may see are searched (a class the
        policy does not describe is ``none``, so it fails closed): withheld text makes no
        span, no count and no difference in time.
        """
        assert self.verbatim is not None
        indexed = self.verbatim.classes
        if self.defences.verbatim_visible_only:
            searched = [c for c in indexed if policy.disclosure_for(role_name, c) != "none"]
        else:
            searched = list(indexed)
        matches = self.verbatim.search(req.prompt, req.completion, searched)
        return [self._verbatim_span(match, policy, role_name) for match in matches]

    def _verbatim_span(
        self, match: VerbatimMatch, policy: Policy, role_name: str
    ) -> pb.VerbatimSpan:
        sources: list[pb.VerbatimSource] = []
        records = 0
        for hits in match.hits:
            records += hits.records
            level = policy.disclosure_for(role_name, hits.data_class)
            if level == "none":  # searched only with verbatim_visible_only off
                continue
            shown: set[bytes] = set()
            for occurrence in hits.listed:
                record = self.engine.catalog.record_at(occurrence.ordinal)
                if record.source.data_class != hits.data_class:
                    raise DisclosureError("verbatim index and catalog disagree on a data class")
                start, end = token_char_range(
                    record.text, occurrence.token_start, occurrence.token_count
                )
                source = _span_source_message(
                    disclose_span_source(
                        record,
                        level,
                        char_start=start,
                        char_end=end,
                        snippet_chars=policy.limits.snippet_chars,
                    )
                )
                # Reprints of one work disclosed as metadata only read the same: list once.
                key = source.SerializeToString(deterministic=True)
                if key not in shown:
                    shown.add(key)
                    sources.append(source)
        return pb.VerbatimSpan(
            start=match.start,
            end=match.end,
            length_chars=match.length_chars,
            words=match.words,
            region=match.region,
            sources=sources,
            records=records,
        )

    def _run(self, call: _Call, work: Callable[[], Any] | AttributeJob) -> Any:
        """Run engine work in the auditor's turn, within the call's deadline."""
        if call.remaining_s() <= 0 or not call.context.is_active():
            raise RefusalError("DEADLINE_EXCEEDED", DEADLINE_PASSED)
        try:
            if self.defences.fair_scheduling:
                future = self.scheduler.submit(call.verified.auditor_id, work)
                try:
                    result = future.result(timeout=max(0.0, call.remaining_s()))
                except (FutureTimeout, CancelledError):
                    future.cancel()  # dropped unless the engine has already started it
                    raise RefusalError("DEADLINE_EXCEEDED", DEADLINE_PASSED) from None
            else:
                with self._engine_lock:
                    result = self.scheduler.run_alone(work)
        except InputError as exc:
            logger.info("model input refused: %s", exc)
            raise RefusalError("INVALID_ARGUMENT", MODEL_INPUT) from None
        if call.remaining_s() <= 0:
            raise RefusalError("DEADLINE_EXCEEDED", DEADLINE_PASSED)
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
                tree_head=entry.tree_head.to_proto(),
            )
        )
        return signed

    def _refuse(self, call: _Call, code: str, message: str) -> NoReturn:
        """Sign and log the refusal of an authenticated request, then abort the call.

        The signed refusal travels in the trailing metadata, so the auditor can prove that
        the lab declined (and a report cannot claim a refusal the lab never signed).
        """
        status = grpc.StatusCode[code]
        signed = self._answer(
            call.verified, call.policy, "refusal", pb.Refusal(code=code, message=message)
        )
        leaf = signed.receipt.leaf_index
        logger.info("refused request (%s): %s; ledger leaf %d", code, message, leaf)
        call.context.set_trailing_metadata(
            (
                (LEDGER_TRAILER, str(leaf)),
                (REFUSAL_TRAILER, signed.SerializeToString()),
            )
        )
        call.context.abort(status, message)
        raise AssertionError("grpc's abort() returned")  # pragma: no cover

    def _refuse_unsigned(
        self, raw: bytes, code: str, message: str, context: grpc.ServicerContext
    ) -> NoReturn:
        """The old handling of unauthenticated requests: a ledger leaf for each (tests only,
        with ``Defences.unauthenticated_off_ledger`` off, to show the attack it allowed)."""
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


def _span_source_message(shown: DisclosedSpanSource) -> pb.VerbatimSource:
    return pb.VerbatimSource(
        data_class=shown.data_class,
        disclosure=shown.disclosure,
        source=pb.Source(
            title=shown.title, publisher=shown.publisher, url=shown.url, license=shown.license
        ),
        record_id=shown.record_id or "",
        span_text=shown.span_text or "",
    )


def _open_verbatim(engine: Engine, directory: Path | None) -> VerbatimIndex | None:
    """The verbatim index for ``engine``: from ``directory``, else ``INDEX_DIR/verbatim``
    of the engine's index (an engine without one, such as a test double, has none)."""
    if directory is None:
        index_dir = getattr(engine, "index_dir", None)
        if index_dir is None:
            return None
        directory = Path(index_dir) / layout.VERBATIM
    return open_for_serving(directory, corpus_id=str(engine.catalog.manifest_hash))


def _default_evaluation_path(engine: Engine) -> Path | None:
    """``INDEX_DIR/validation.json`` of the engine's index (a test double may have none)."""
    index_dir = getattr(engine, "index_dir", None)
    return Path(index_dir) / layout.VALIDATION if index_dir is not None else None


def load_snapshots(engine: Engine) -> list[pb.SnapshotRecord]:
    """The index's snapshot history to serve, or none (logged) when it is unusable.

    Served only when it ends at the snapshot answering: a history left over from another
    index, or damaged, would make the lab contradict its own answers. Never raises.
    """
    index_dir = getattr(engine, "index_dir", None)
    if index_dir is None:
        return []
    try:
        entries = read_history(Path(index_dir))
    except IntegrityError as exc:
        logger.error("snapshot history not served: %s", exc)
        return []
    if entries and entries[-1]["snapshot_id"] != engine.snapshot_id:
        logger.error(
            "snapshot history not served: it ends at %s, the index is %s",
            entries[-1]["snapshot_id"],
            engine.snapshot_id,
        )
        return []
    return as_wire(entries)


def load_evaluation(path: Path, *, snapshot_id: str) -> pb.EvaluationCertificate | None:
    """The evaluation certificate to serve for the index ``snapshot_id``, or None.

    None, logged, when the file is absent (an index validated never, or before
    certificates), unreadable, not the JSON object ``auditor-server validate`` writes
    (:func:`~auditor_client.wire.evaluation.certificate_from_result`), larger than
    :data:`~auditor_client.wire.evaluation.MAX_RESULT_BYTES`, or measured on another
    snapshot: a certificate vouches for one index, and an index rebuilt (other model,
    corpus, features or preconditioner) after its check was run must not be served under
    the old one's numbers. Never raises: a bad certificate costs the lab its certificate,
    not its service.
    """
    try:
        size = path.stat().st_size
        if size > 4 * MAX_RESULT_BYTES:  # pretty-printed JSON is larger than canonical
            raise ValueError(f"{size} bytes, more than a certificate may hold")
        result = json.loads(path.read_bytes().decode("utf-8"))
        certificate = certificate_from_result(result)
    except FileNotFoundError:
        logger.info("no evaluation certificate: %s does not exist", path)
        return None
    except (OSError, ValueError, RecursionError) as exc:  # JSON and certificate errors too
        logger.error("serving no evaluation certificate: %s is unusable: %s", path, exc)
        return None
    if certificate.snapshot_id != snapshot_id:
        logger.warning(
            "serving no evaluation certificate: %s measured snapshot %s, but the index "
            "served is %s (run `auditor-server validate` on this index)",
            path,
            certificate.snapshot_id,
            snapshot_id,
        )
        return None
    logger.info(
        "evaluation certificate: %s on %d %s questions (%s)",
        certificate.measure,
        certificate.n_questions,
        certificate.split,
        path,
    )
    return certificate


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
