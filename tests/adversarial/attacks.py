"""The attacks, as a hostile auditor would run them, each returning what it measured.

Shared by the tests (which assert on the results) and ``bench/attack_figures.py`` (which
prints them). Every call goes over real gRPC to a real server process (:class:`Server`).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import Message

from auditor_client.errors import ServerRefusedError
from auditor_client.keys import load_keypair
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire._proto import audit_pb2_grpc
from auditor_client.wire.envelope import sign_request
from tests.adversarial.lab import CALL_DEADLINE_S, MAX_BATCH_ITEMS, Server, quantile

# --- one request ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What the attacker saw for one request."""

    code: str
    """``OK`` or the gRPC status name."""
    message: str = ""
    value: float | None = None
    """The log-probability, for an answered Score (or Attribute carrying one)."""
    evidence: bool = False
    """The refusal came with the lab's signed, logged, client-verified evidence."""
    ledger_leaf: int | None = None

    @property
    def observation(self) -> tuple[str, str]:
        """What tells this outcome apart from another, apart from the value."""
        return self.code, self.message


def refusal(exc: ServerRefusedError) -> Outcome:
    evidence = exc.evidence is not None
    if evidence:
        body = exc.evidence.body  # type: ignore[attr-defined]
        assert body.WhichOneof("result") == "refusal"
        assert body.refusal.code == exc.code and body.refusal.message == exc.message
    return Outcome(exc.code, exc.message, evidence=evidence, ledger_leaf=exc.ledger_leaf)


def signed_call(
    channel: grpc.Channel,
    server: Server,
    who: str,
    method: str,
    request: Message,
    *,
    timeout: float,
) -> tuple[float, str, str]:
    """One signed unary call without the client's verification and head bookkeeping, so
    the latency measured is the server's: ``(seconds, status name, status details)``."""
    envelope = sign_request(
        private_key=_private_key(server, who),
        auditor_id=who,
        method=method,
        body=request.SerializeToString(deterministic=True),
    )
    stub = audit_pb2_grpc.AuditServiceStub(channel)  # type: ignore[no-untyped-call]
    started = time.perf_counter()
    try:
        getattr(stub, method)(envelope, timeout=timeout)
        return time.perf_counter() - started, "OK", ""
    except grpc.RpcError as exc:
        elapsed = time.perf_counter() - started
        assert isinstance(exc, grpc.Call)
        return elapsed, exc.code().name, exc.details() or ""


_KEYS: dict[str, object] = {}


def _private_key(server: Server, who: str) -> object:
    path = server.lab.keys[who]
    key = _KEYS.get(str(path))
    if key is None:
        key = _KEYS[str(path)] = load_keypair(path).private
    return key


# --- 1. Score ranks candidate secrets -----------------------------------------------------------


@dataclass
class Ranking:
    """Candidates for a secret scored one by one, and where the true one ended up."""

    true: str
    candidates: list[str]
    outcomes: list[Outcome]

    @property
    def answered(self) -> int:
        return sum(o.code == "OK" for o in self.outcomes)

    @property
    def refused(self) -> list[str]:
        return [c for c, o in zip(self.candidates, self.outcomes, strict=True) if o.code != "OK"]

    @property
    def true_outcome(self) -> Outcome:
        return self.outcomes[self.candidates.index(self.true)]

    @property
    def rank(self) -> int | None:
        """1-based rank of the true candidate by log-probability among the answered ones
        (``None`` when it was not answered)."""
        mine = self.true_outcome.value
        if mine is None:
            return None
        return 1 + sum(o.value is not None and o.value > mine for o in self.outcomes)

    @property
    def look_alikes(self) -> int:
        """Candidates whose outcome the attacker cannot tell from the true one's, itself
        included: 1 means the outcome alone singles the true candidate out; with log-probs,
        the rank plays that role."""
        if self.true_outcome.code == "OK":
            return self.rank or 0
        mine = self.true_outcome.observation
        return sum(o.code != "OK" and o.observation == mine for o in self.outcomes)

    @property
    def chance_rank(self) -> float:
        return (len(self.candidates) + 1) / 2

    def kinds(self) -> Counter[tuple[str, str]]:
        return Counter(o.observation for o in self.outcomes if o.code != "OK")


def score_ranking(
    server: Server, who: str, prompt: str, candidates: Sequence[str], true: str
) -> Ranking:
    """Score ``prompt + candidate`` for every candidate, in order, as ``who``."""
    outcomes = []
    with server.client(who) as client:
        for candidate in candidates:
            try:
                answer = client.score(prompt, candidate).body.score
                outcomes.append(Outcome("OK", value=answer.logprob))
            except ServerRefusedError as exc:
                outcomes.append(refusal(exc))
    return Ranking(true=true, candidates=list(candidates), outcomes=outcomes)


def phone_candidates() -> list[str]:
    return [f"{i:02d}" for i in range(100)]


def email_candidates() -> list[str]:
    return [f"{i}@" for i in range(1, 100)]


# --- 3. chained Generate ------------------------------------------------------------------------

CHAIN_STEPS = 14
CHAIN_TOKENS = 5
CHAIN_KEEP_CHARS = 200
"""The attacker keeps the last this-many characters as the next prompt (the model's context
is 128 tokens)."""


@dataclass
class Chain:
    prompt: str
    outputs: list[str] = field(default_factory=list)
    constrained: list[int] = field(default_factory=list)
    scrubbed: list[int] = field(default_factory=list)

    @property
    def text(self) -> str:
        """Everything the lab generated, in order (the attacker's reassembly)."""
        return "".join(self.outputs)


def chain_generate(
    server: Server,
    who: str,
    prompt: str,
    *,
    steps: int = CHAIN_STEPS,
    tokens: int = CHAIN_TOKENS,
) -> Chain:
    """Generate a few greedy tokens, append them to the prompt, repeat."""
    chain = Chain(prompt=prompt)
    context = prompt
    with server.client(who) as client:
        for _ in range(steps):
            answer = client.generate(
                context[-CHAIN_KEEP_CHARS:], max_new_tokens=tokens, temperature=0.0
            ).body.generate
            chain.outputs.append(answer.completion)
            chain.constrained.append(answer.constrained_tokens)
            chain.scrubbed.append(answer.scrubbed_items)
            context += answer.completion
    return chain


# --- 5. starvation ------------------------------------------------------------------------------


@dataclass
class Latencies:
    """A victim's round trips (seconds) and the calls that failed, by status.

    ``whoami`` holds every WhoAmI, timeouts included (the victim waited that long);
    ``attribute`` only the answered Attribute calls (a refusal is counted, not timed).
    """

    whoami: list[float] = field(default_factory=list)
    whoami_failed: Counter[str] = field(default_factory=Counter)
    attribute: list[float] = field(default_factory=list)
    attribute_failed: Counter[str] = field(default_factory=Counter)

    @staticmethod
    def _q(values: list[float], q: float) -> float:
        return quantile(values, q)

    @property
    def whoami_p50(self) -> float:
        return self._q(self.whoami, 0.5)

    @property
    def whoami_p99(self) -> float:
        return self._q(self.whoami, 0.99)

    @property
    def attribute_p50(self) -> float:
        return self._q(self.attribute, 0.5)

    @property
    def attribute_max(self) -> float:
        return max(self.attribute, default=float("nan"))


@dataclass
class Starvation:
    idle: Latencies
    abused: Latencies
    abuser_calls: Counter[str]
    """Outcomes of the abuser's batch calls (``OK`` = read to the end)."""

    @property
    def unread_cancelled(self) -> int:
        """Unread streams the server cancelled within ``UNREAD_HOLD_S`` (its deadline)."""
        return self.abuser_calls["unread CANCELLED"] + self.abuser_calls["unread DEADLINE_EXCEEDED"]

    @property
    def unread_waited(self) -> int:
        """Unread streams still open after ``UNREAD_HOLD_S``, every answer waiting."""
        return self.abuser_calls["unread OK"]


ABUSER_CHANNEL_OPTIONS = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384)]
VICTIM_WHOAMI_TIMEOUT_S = 2.0
VICTIM_ATTRIBUTE_TIMEOUT_S = 5.0
ABUSE_CONCURRENT_BATCHES = 8
ABUSE_UNREAD_STREAMS = 8
UNREAD_HOLD_S = CALL_DEADLINE_S + 1.5
"""How long the abuser leaves a stream unread before looking at it."""
ABUSE_SECONDS = UNREAD_HOLD_S + 1.0
"""How long the victim is measured under abuse (after 1 s to let it take hold): longer than
the server's deadline, so unread streams must have been cancelled within it."""


def _victim_pair(server: Server) -> tuple[str, str]:
    target = server.lab.public_target()
    text = str(target["text"])
    return text[:60], text[60:120]


def measure_victim(server: Server, victim: str, *, seconds: float) -> Latencies:
    """For ``seconds``, WhoAmI back to back on one connection and, at the same time,
    Attribute back to back on another (two clients of the same auditor)."""
    out = Latencies()
    prompt, completion = _victim_pair(server)
    deadline = time.monotonic() + seconds

    def loop(
        method: str, request: Message, timeout: float, into: list[float], failed: Counter[str]
    ) -> None:
        with server.channel() as channel:  # one connection per loop, as a client keeps
            grpc.channel_ready_future(channel).result(timeout=10)
            while time.monotonic() < deadline:
                elapsed, code, _ = signed_call(
                    channel, server, victim, method, request, timeout=timeout
                )
                if code == "OK" or (code == "DEADLINE_EXCEEDED" and method == "WhoAmI"):
                    into.append(elapsed)  # a WhoAmI timeout is a wait; a refusal is not
                if code != "OK":
                    failed[code] += 1
                time.sleep(0.02)

    attribute = threading.Thread(
        target=loop,
        args=(
            "Attribute",
            pb.AttributeRequest(prompt=prompt, completion=completion, top_k=5),
            VICTIM_ATTRIBUTE_TIMEOUT_S,
            out.attribute,
            out.attribute_failed,
        ),
    )
    attribute.start()
    loop("WhoAmI", pb.WhoAmIRequest(), VICTIM_WHOAMI_TIMEOUT_S, out.whoami, out.whoami_failed)
    attribute.join()
    return out


class Abuse:
    """One auditor holding the model channel: concurrent full batches read as fast as they
    come, plus batch streams opened and never read. Runs until :meth:`stop`."""

    def __init__(self, server: Server, abuser: str) -> None:
        self.server = server
        self.abuser = abuser
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._channels: list[grpc.Channel] = []
        self._threads: list[threading.Thread] = []
        # Disclosed text only: what is measured is the load, not the withheld budget.
        records = server.lab.disclosed_texts()
        rng = random.Random(8)
        self._items = [
            pb.AttributeRequest(prompt=t[:40], completion=t[40:120], top_k=20)
            for t in rng.sample(records, k=min(len(records), MAX_BATCH_ITEMS))
        ]
        while len(self._items) < MAX_BATCH_ITEMS:
            self._items.append(self._items[len(self._items) % len(records)])

    def _count(self, what: str) -> None:
        with self._lock:
            self.calls[what] += 1

    def _open(self) -> tuple[grpc.Channel, object]:
        request = pb.AttributeBatchRequest(items=self._items)
        envelope = sign_request(
            private_key=_private_key(self.server, self.abuser),
            auditor_id=self.abuser,
            method="AttributeBatch",
            body=request.SerializeToString(deterministic=True),
        )
        # One connection per call, as separate clients, each with a small receive window
        # (no BDP probing), so an unread stream stops the server after a few answers
        # instead of all 64 (about 1 MB) fitting in transport buffers.
        channel = grpc.insecure_channel(self.server.address, options=ABUSER_CHANNEL_OPTIONS)
        with self._lock:
            self._channels.append(channel)
        stub = audit_pb2_grpc.AuditServiceStub(channel)  # type: ignore[no-untyped-call]
        return channel, stub.AttributeBatch(envelope)  # no deadline: the abuser sets none

    def _reader(self) -> None:
        while not self._stop.is_set():
            channel, call = self._open()
            try:
                for _ in call:  # type: ignore[attr-defined]
                    if self._stop.is_set():
                        call.cancel()  # type: ignore[attr-defined]
                        break
                else:
                    self._count("OK")
            except grpc.RpcError as exc:
                if not self._stop.is_set():
                    self._count(exc.code().name if isinstance(exc, grpc.Call) else "ERROR")
                    self._stop.wait(0.05)
            finally:
                channel.close()

    def _holder(self) -> None:
        """Open a stream, read nothing for ``UNREAD_HOLD_S``, then look at what became of
        it: cancelled by the server (its deadline), refused at once (no slot), or still
        there with every answer waiting (nothing ended it)."""
        while not self._stop.is_set():
            channel, call = self._open()
            if self._stop.wait(UNREAD_HOLD_S):
                call.cancel()  # type: ignore[attr-defined]
                channel.close()
                return
            try:
                next(call)  # type: ignore[call-overload]
                outcome = "unread OK"  # still open, its answers waiting for us
            except StopIteration:
                outcome = "unread OK"
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                outcome = f"unread {code.name if code else 'ERROR'}"
            finally:
                call.cancel()  # type: ignore[attr-defined]
                channel.close()
            if not self._stop.is_set():  # at the end, stop() itself cancels calls
                self._count(outcome)

    def start(self) -> None:
        """Unread streams first (each pins a slot for as long as the server lets it), then
        the batches that are read."""
        for target, n in (
            (self._holder, ABUSE_UNREAD_STREAMS),
            (self._reader, ABUSE_CONCURRENT_BATCHES),
        ):
            for _ in range(n):
                thread = threading.Thread(target=target, daemon=True)
                thread.start()
                self._threads.append(thread)
            time.sleep(0.3)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            channels = list(self._channels)
        for channel in channels:
            channel.close()  # cancels whatever is still open
        for thread in self._threads:
            thread.join(timeout=10)


def starvation(
    server: Server,
    *,
    abuser: str = "abuser",
    victim: str = "victim",
    seconds: float = ABUSE_SECONDS,
) -> Starvation:
    """The victim's latencies idle, then while ``abuser`` abuses the model channel."""
    idle = measure_victim(server, victim, seconds=2.0)
    abuse = Abuse(server, abuser)
    abuse.start()
    try:
        time.sleep(0.5)  # let the abuse take hold
        abused = measure_victim(server, victim, seconds=seconds)
    finally:
        abuse.stop()
    return Starvation(idle=idle, abused=abused, abuser_calls=abuse.calls)


# --- 6. unauthenticated requests --------------------------------------------------------------


@dataclass
class Flood:
    growth: int
    """Ledger leaves added by the flood."""
    codes: Counter[str]
    messages: Counter[str]


def raw_call(server: Server, method: str, raw: bytes, *, timeout: float = 10) -> tuple[str, str]:
    with server.channel() as channel:
        call = channel.unary_unary(
            f"/auditor.v1.AuditService/{method}",
            request_serializer=None,
            response_deserializer=None,
        )
        try:
            call(raw, timeout=timeout)
            return "OK", ""
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            return exc.code().name, exc.details() or ""


def garbage_flood(
    server: Server, n: int = 300, *, make: Callable[[int], bytes] | None = None
) -> Flood:
    """``n`` requests of 10 garbage bytes each (or ``make(i)``), one connection for all."""
    rng = random.Random(6)
    before = server.ledger_size()
    codes: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    with server.channel() as channel:
        call = channel.unary_unary(
            "/auditor.v1.AuditService/Attribute",
            request_serializer=None,
            response_deserializer=None,
        )
        for i in range(n):
            raw = make(i) if make is not None else rng.randbytes(10)
            try:
                call(raw, timeout=10)
                codes["OK"] += 1
            except grpc.RpcError as exc:
                assert isinstance(exc, grpc.Call)
                codes[exc.code().name] += 1
                messages[exc.details() or ""] += 1
    return Flood(growth=server.ledger_size() - before, codes=codes, messages=messages)
