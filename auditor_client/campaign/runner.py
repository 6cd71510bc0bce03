"""Run a campaign: plan every suite, run the probes with bounded concurrency, checkpoint each
one the moment it finishes, and close with a proof that the lab's ledger only grew.

Output directory (``OUT``)::

    campaign.json              what ran, against which lab snapshot/policy/model, as whom,
                               and the campaign file and every file it names (the inputs a
                               verifier plans the campaign again from)
    probes/<suite>/<id>.json   one ProbeRecord per finished probe (atomic, never rewritten)
    ledger.json                the lab's final signed tree head and a verified consistency
                               proof from every tree size seen in any receipt to it

Each probe makes exactly the calls its suite's pure ``next_call`` implies (the verifier
asks the same function which signed requests a record must hold). Failure policy, by who
is at fault:

- The lab refuses one probe because of what it asks (``PERMISSION_DENIED``: the role may
  not call a method the suite needs; ``INVALID_ARGUMENT``) *and signs that refusal*: the
  refusal is itself a finding (the policy denied it), so it is checkpointed as a record
  whose last exchange is the lab's signed, logged refusal, and the run goes on.
- The same refusal *without* the lab's signature (a lab that does not sign refusals, or
  something between us and the lab answering in its name): nothing proves the lab said it,
  so it is not recorded as a finding. The probe stays unfinished and the run stops as
  below (reason ``unproven_refusal``); a report can only call a probe "refused by the lab"
  with the lab's signature.
- The lab cannot serve more now (``RESOURCE_EXHAUSTED``: quota; ``UNAVAILABLE`` /
  ``DEADLINE_EXCEEDED`` after the client's own retries): nothing new is scheduled, probes in
  flight finish and are checkpointed, the stop is recorded, and :class:`CampaignStopped`
  is raised; ``--resume`` continues later without redoing anything.
- The lab sends something that does not verify (:class:`WireVerificationError`): the run is
  aborted at once. Such an answer is never written as a success.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from auditor_client import __version__
from auditor_client.campaign.checkpoint import (
    PROBES_DIR,
    CheckpointError,
    atomic_write_json,
    load_checkpoint,
    read_json,
    write_checkpoint,
)
from auditor_client.campaign.model import (
    MAX_CONCURRENCY,
    Campaign,
    CampaignFiles,
    canonical_json,
    file_sha256,
)
from auditor_client.campaign.types import (
    JSON,
    PROBE_REFUSAL_CODES,
    Exchange,
    ProbeRecord,
    ProbeSpec,
    Suite,
    drive,
    refusal_findings,
)
from auditor_client.client import AuditorClient, TLSConfig, Verified
from auditor_client.errors import CampaignError, CampaignStopped, ServerRefusedError
from auditor_client.wire import merkle
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.errors import ProofError, WireVerificationError

__all__ = [
    "CAMPAIGN_FILE",
    "FORMAT_VERSION",
    "LEDGER_FILE",
    "PROBE_REFUSAL_CODES",
    "STOP_CODES",
    "ClientFactory",
    "Plan",
    "RunSummary",
    "SuiteRegistry",
    "carried_inputs",
    "connect",
    "plan_campaign",
    "run_campaign",
]

log = logging.getLogger(__name__)

FORMAT_VERSION: Final = 2
"""Version of the ``campaign.json`` and ``ledger.json`` layouts (2: they carry the campaign's
input files, and the lab's signed refusal where it refused tree heads)."""
CAMPAIGN_FILE: Final = "campaign.json"
LEDGER_FILE: Final = "ledger.json"
_LOCK_FILE: Final = ".lock"

STOP_CODES: Final = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED"})
"""Refusals that mean "not now": stop scheduling and let the auditor resume later.

A refusal in :data:`PROBE_REFUSAL_CODES` that comes without the lab's signature stops the
run the same way (it cannot be recorded as the lab's)."""

SuiteRegistry = Mapping[str, Suite]
ClientFactory = Callable[[Campaign], AuditorClient]


@dataclass(frozen=True)
class Plan:
    """Every probe of a campaign, in run order, and the hash that identifies the campaign."""

    specs: tuple[ProbeSpec, ...]
    per_suite: Mapping[str, int]
    """Probe count per suite (suites in name order)."""
    files: Mapping[str, str]
    """Every file the suites read to plan: name as the campaign writes it -> text."""
    campaign_hash: str
    """Hex SHA-256 of canonical JSON of the validated document, the SHA-256 of every file
    in :attr:`files` by name, and every spec's inputs (see :func:`plan_campaign`)."""


@dataclass(frozen=True)
class RunSummary:
    """What one invocation of :func:`run_campaign` did."""

    out_dir: Path
    campaign_hash: str
    total: int
    """Probes in the campaign."""
    ran: int
    """Probes run (and checkpointed) by this invocation, refused ones included."""
    skipped: int
    """Probes already checkpointed by an earlier invocation (``--resume``)."""
    refused: int
    """Probes this invocation recorded as refused by the lab's policy."""
    redone: tuple[str, ...]
    """Checkpoints that existed but did not parse, and were run again."""
    per_suite: Mapping[str, int]
    consistency_proofs: int
    """Consistency proofs verified into ``ledger.json`` (0 when the role may not ask)."""
    report_written: bool


# ---------------------------------------------------------------------------- planning


def _default_suites() -> SuiteRegistry:
    """The shipped suites, imported only when needed (the registry pulls in their modules)."""
    from auditor_client.campaign.suites import SUITES

    registry: SuiteRegistry = SUITES
    return registry


def plan_campaign(
    campaign: Campaign,
    *,
    suites: SuiteRegistry | None = None,
    files: CampaignFiles | None = None,
    where: str | None = None,
) -> Plan:
    """Plan every suite of ``campaign`` (no network) and compute the campaign hash.

    The runner plans from the files on disk; ``auditor verify`` plans the same campaign
    again with this very function from the copies a report carries, so both sides agree on
    every probe and every input by construction.

    The hash covers the parsed campaign document, every file a suite read (by name and
    SHA-256) and the specs' inputs: it changes when a reference, template or prompt file
    changes even if the campaign file does not, and it ignores YAML layout and comments.

    Args:
        campaign: The validated campaign.
        suites: Suite registry (default: the shipped suites).
        files: Where suites read their files (default: the disk, relative to the campaign
            file's directory).
        where: How errors name the campaign (default: its path).

    Raises:
        CampaignError: An unknown suite, a suite's invalid section or file (raised by the
            suite), duplicate or empty probe ids, or inputs that are not JSON.
    """
    registry = _default_suites() if suites is None else suites
    source = CampaignFiles.on_disk(campaign.base_dir) if files is None else files
    specs: list[ProbeSpec] = []
    per_suite: dict[str, int] = {}
    where = str(campaign.path) if where is None else where
    for name, section in campaign.suites.items():
        suite = registry.get(name)
        if suite is None:
            known = ", ".join(sorted(registry)) or "none"
            raise CampaignError(f"{where}: suites.{name}: no such suite (available: {known})")
        planned = suite.plan(dict(section), files=source, seed=campaign.seed)
        seen: set[str] = set()
        for n, spec in enumerate(planned):
            if spec.suite != name:
                raise CampaignError(
                    f"{where}: suites.{name}: planned probe [{n}] names suite {spec.suite!r}"
                )
            if not spec.probe_id:
                raise CampaignError(f"{where}: suites.{name}: planned probe [{n}] has no id")
            if spec.probe_id in seen:
                raise CampaignError(
                    f"{where}: suites.{name}: probe id {spec.probe_id!r} is planned twice "
                    "(probe ids must be unique within a suite)"
                )
            seen.add(spec.probe_id)
        specs.extend(planned)
        per_suite[name] = len(planned)
    read = source.read
    try:
        material = canonical_json(
            {
                "campaign": dict(campaign.document),
                "files": {name: file_sha256(text) for name, text in read.items()},
                "specs": [
                    {"suite": s.suite, "probe_id": s.probe_id, "inputs": s.inputs} for s in specs
                ],
            }
        )
    except (TypeError, ValueError) as exc:
        raise CampaignError(
            f"{where}: suites: a section or probe input is not JSON: {exc}"
        ) from None
    return Plan(
        specs=tuple(specs),
        per_suite=MappingProxyType(per_suite),
        files=read,
        campaign_hash=hashlib.sha256(material).hexdigest(),
    )


def carried_inputs(campaign: Campaign, plan: Plan) -> JSON:
    """What ``campaign.json`` (and so the report) carries to plan the campaign again.

    The campaign file's text and every file its suites read, each with its SHA-256; the
    names are the strings the campaign uses for them.
    """
    return {
        "campaign_file_text": campaign.text,
        "files": {
            name: {"sha256": file_sha256(text), "text": text} for name, text in plan.files.items()
        },
    }


# ---------------------------------------------------------------------------- connecting


def connect(campaign: Campaign) -> AuditorClient:
    """Open an :class:`AuditorClient` with the campaign's server, keys and TLS settings.

    Raises:
        CampaignError: A TLS file or the lab key file is missing, or no auditor id.
        KeyFileError: The auditor's key cannot be read.
    """
    srv = campaign.server
    for field_name in ("tls_ca", "tls_cert", "tls_key"):
        path: Path | None = getattr(srv, field_name)
        if path is not None and not path.is_file():
            raise CampaignError(f"{campaign.path}: server.{field_name}: file not found: {path}")
    tls = None
    if not srv.insecure:
        tls = TLSConfig(
            ca=srv.tls_ca, cert=srv.tls_cert, key=srv.tls_key, server_name=srv.server_name
        )
    try:
        return AuditorClient.connect(
            srv.address,
            key_dir=campaign.auditor.key_dir,
            lab_public_key=campaign.lab_public_key(),
            auditor_id=campaign.auditor.id,
            tls=tls,
            insecure=srv.insecure,
        )
    except ValueError as exc:  # no auditor id given or stored with the key
        raise CampaignError(f"{campaign.path}: auditor.id: {exc}") from None


# ---------------------------------------------------------------------------- running


def run_campaign(
    campaign: Campaign,
    *,
    out_dir: Path,
    resume: bool,
    workers: int | None,
    progress: bool,
    client_factory: ClientFactory | None = None,
    suites: SuiteRegistry | None = None,
) -> RunSummary:
    """Run (or resume) ``campaign`` into ``out_dir``.

    Args:
        campaign: The validated campaign (with any command-line overrides applied).
        out_dir: Output directory; created if missing.
        resume: Continue the run already in ``out_dir`` (same campaign hash), skipping
            every probe that has a checkpoint.
        workers: Probes in flight; ``None`` uses ``campaign.concurrency``.
        progress: Show a progress bar on stderr.
        client_factory: Builds the client (default :func:`connect`); the runner closes it.
        suites: Suite registry (default: the shipped suites).

    Returns:
        What this invocation did.

    Raises:
        CampaignError: Bad campaign, suite input, or output directory (nothing was sent).
        CampaignStopped: Quota used up or lab unreachable; finished probes are
            checkpointed and the stop is recorded; resume with ``resume=True``.
        ServerRefusedError: The lab refused the campaign as a whole (e.g. the key is
            revoked); finished probes are checkpointed.
        WireVerificationError: The lab sent something that does not verify; the run was
            aborted and nothing unverified was written.
        KeyFileError: The auditor's key cannot be read.
    """
    plan = plan_campaign(campaign, suites=suites)
    registry = _default_suites() if suites is None else suites
    n_workers = campaign.concurrency if workers is None else workers
    if not 1 <= n_workers <= MAX_CONCURRENCY:
        raise CampaignError(f"workers must be between 1 and {MAX_CONCURRENCY}, got {n_workers}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(out_dir):
        previous = _check_out_dir(out_dir, plan, resume=resume)
        factory = connect if client_factory is None else client_factory
        with factory(campaign) as client:
            return _Run(campaign, plan, registry, out_dir, client, previous, n_workers).go(progress)


@contextlib.contextmanager
def _exclusive(out_dir: Path) -> Iterator[None]:
    """Hold an advisory lock on ``out_dir`` so two runs never work the same directory."""
    with open(out_dir / _LOCK_FILE, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CampaignError(
                f"{out_dir}: another campaign run is using this directory"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _check_out_dir(out_dir: Path, plan: Plan, *, resume: bool) -> dict[str, Any] | None:
    """The previous ``campaign.json`` when resuming; refuse directories we must not touch."""
    state = out_dir / CAMPAIGN_FILE
    probes = out_dir / PROBES_DIR
    if not resume:
        if state.exists() or probes.exists():
            raise CampaignError(
                f"{out_dir} already holds a campaign run; use --resume to continue it, "
                "or choose another --out"
            )
        return None
    if not state.exists():
        if probes.exists():
            raise CampaignError(
                f"{out_dir}: cannot resume: probe checkpoints exist but {CAMPAIGN_FILE} "
                "does not; choose another --out"
            )
        log.info("nothing to resume in %s; starting the campaign", out_dir)
        return None
    try:
        previous = read_json(state)
    except CheckpointError as exc:
        raise CampaignError(f"cannot resume: {exc}") from None
    if not isinstance(previous, dict) or not isinstance(previous.get("campaign_hash"), str):
        raise CampaignError(f"cannot resume: {state} is not a campaign record")
    if previous["campaign_hash"] != plan.campaign_hash:
        raise CampaignError(
            f"cannot resume: {state} records campaign {previous['campaign_hash']}, but the "
            f"campaign file now plans campaign {plan.campaign_hash} (the file or a file it "
            "names changed); run it into another --out"
        )
    return previous


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _lab_info(method: str, verified: Verified) -> JSON:
    body = verified.body
    return {
        "method": method,
        "snapshot_id": body.snapshot_id,
        "policy_hash": body.policy_hash,
        "model_hash": body.model_hash,
        "server_time_ms": body.server_time_ms,
        "exchange": Exchange.of(verified).to_json(),
    }


def _unproven(exc: BaseException) -> bool:
    """A refusal that would be a probe's outcome, but without the lab's signature."""
    return (
        isinstance(exc, ServerRefusedError)
        and exc.code in PROBE_REFUSAL_CODES
        and exc.evidence is None
    )


def _severity(exc: BaseException) -> int:
    """Which failure wins when several probes fail at once (the worst is reported)."""
    if isinstance(exc, WireVerificationError):
        return 3
    if isinstance(exc, ServerRefusedError) and (exc.code in STOP_CODES or _unproven(exc)):
        return 0
    if isinstance(exc, ServerRefusedError):
        return 1
    return 2


def _stop_record(exc: BaseException) -> JSON:
    if isinstance(exc, WireVerificationError):
        return {"reason": "verification_failed", "error": str(exc), "at": _now()}
    if isinstance(exc, ServerRefusedError):
        reason = {
            "RESOURCE_EXHAUSTED": "quota",
            "UNAVAILABLE": "unavailable",
            "DEADLINE_EXCEEDED": "deadline_exceeded",
        }.get(exc.code, "unproven_refusal" if _unproven(exc) else "refused")
        return {
            "reason": reason,
            "code": exc.code,
            "message": exc.message,
            "ledger_leaf": exc.ledger_leaf,
            "at": _now(),
        }
    return {"reason": "error", "error": f"{type(exc).__name__}: {exc}", "at": _now()}


class _Run:
    """One invocation's state: the campaign record, counters, and the probe loop."""

    def __init__(
        self,
        campaign: Campaign,
        plan: Plan,
        registry: SuiteRegistry,
        out_dir: Path,
        client: AuditorClient,
        previous: dict[str, Any] | None,
        workers: int,
    ) -> None:
        self.campaign = campaign
        self.plan = plan
        self.registry = registry
        self.out_dir = out_dir
        self.client = client
        self.previous = previous
        self.workers = workers
        self.ran = 0
        self.refused = 0
        self.record: JSON = {}
        self.session: JSON = {}

    # --- the campaign record --------------------------------------------------------------

    def _save(self) -> None:
        atomic_write_json(self.out_dir / CAMPAIGN_FILE, self.record)

    def _start(self) -> None:
        """Check in with the lab and write ``campaign.json`` before any probe runs."""
        method, verified = self._lab_check()
        lab = _lab_info(method, verified)
        started = _now()
        self.session = {
            "started": started,
            "finished": None,
            "resume": self.previous is not None,
            "client_version": __version__,
            "workers": self.workers,
            "lab": lab,
            "status": "running",
            "stop": None,
        }
        if self.previous is None:
            c = self.campaign
            self.record = {
                "format": FORMAT_VERSION,
                "name": c.name,
                "campaign_hash": self.plan.campaign_hash,
                "campaign_file": str(c.path),
                "campaign_file_sha256": c.file_sha256,
                **carried_inputs(c, self.plan),
                "seed": c.seed,
                "specs": dict(self.plan.per_suite),
                "total_specs": len(self.plan.specs),
                "client_version": __version__,
                "auditor": {
                    "id": self.client.auditor_id,
                    "public_key": self.client.keypair.public_text,
                },
                "started": started,
                "finished": None,
                "lab": lab,
                "status": "running",
                "stop": None,
                "sessions": [],
            }
        else:
            self.record = dict(self.previous)
            self.record.update(finished=None, status="running", stop=None)
            if self.record.get("lab", {}).get("policy_hash") != lab["policy_hash"]:
                log.warning("the lab's policy changed since this campaign started")
        self.record.setdefault("sessions", []).append(self.session)
        self._save()

    def _lab_check(self) -> tuple[str, Verified]:
        """A first verified answer naming the lab's snapshot, policy and model.

        ``GetPolicy`` says the most (the role's disclosure levels too); a role that may not
        call it still may call ``WhoAmI``.
        """
        try:
            try:
                return "GetPolicy", self.client.get_policy()
            except ServerRefusedError as exc:
                if exc.code != "PERMISSION_DENIED":
                    raise
            return "WhoAmI", self.client.whoami()
        except ServerRefusedError as exc:
            stopped = _as_stop(exc)
            if stopped is exc:
                raise
            raise stopped from exc

    def _finish(self, status: str, stop: JSON | None) -> None:
        finished = _now()
        self.session.update(
            finished=finished, status=status, stop=stop, ran=self.ran, refused=self.refused
        )
        self.record.update(status=status, stop=stop)
        if status == "complete":
            self.record["finished"] = finished
        self._save()

    # --- probes ---------------------------------------------------------------------------

    def go(self, progress: bool) -> RunSummary:
        self._start()
        # A run killed mid-write leaves only its temporary file behind (the rename never
        # happened); we hold the directory lock, so no live writer owns these.
        for stale in (self.out_dir / PROBES_DIR).glob("*/.*.tmp"):
            stale.unlink(missing_ok=True)
        done: list[ProbeRecord] = []
        todo: list[ProbeSpec] = []
        redone: list[str] = []
        for spec in self.plan.specs:
            try:
                record = load_checkpoint(self.out_dir, spec)
            except CheckpointError as exc:
                log.warning("damaged checkpoint, running the probe again: %s", exc)
                redone.append(f"{spec.suite}/{spec.probe_id}")
                record = None
            if record is None:
                todo.append(spec)
            else:
                done.append(record)
        skipped = len(done)
        self.session.update(skipped=skipped, redone=redone)
        if skipped:
            log.info("resuming: %d of %d probes already done", skipped, len(self.plan.specs))

        failure = self._run_probes(todo, done, progress)
        if failure is not None:
            self._finish("failed" if _severity(failure) else "stopped", _stop_record(failure))
            stopped = _as_stop(failure)
            if stopped is failure:
                raise failure
            raise stopped from failure

        try:
            proofs = self._check_ledger(done)
        except BaseException as exc:
            self._finish("failed" if _severity(exc) else "stopped", _stop_record(exc))
            stopped = _as_stop(exc)
            if stopped is exc:
                raise
            raise stopped from exc
        self._finish("complete", None)
        report = _write_report(self.out_dir, self.campaign, self.registry)
        return RunSummary(
            out_dir=self.out_dir,
            campaign_hash=self.plan.campaign_hash,
            total=len(self.plan.specs),
            ran=self.ran,
            skipped=skipped,
            refused=self.refused,
            redone=tuple(redone),
            per_suite=self.plan.per_suite,
            consistency_proofs=proofs,
            report_written=report,
        )

    def _run_probes(
        self, todo: Sequence[ProbeSpec], done: list[ProbeRecord], progress: bool
    ) -> BaseException | None:
        """Run ``todo`` with at most ``workers`` in flight; the worst failure, if any.

        Specs are submitted one at a time as slots free up (not all at once), so stopping
        means simply not submitting more: nothing has to be cancelled out of a queue.
        """
        from tqdm import tqdm

        pending = deque(todo)
        in_flight: dict[Future[ProbeRecord], ProbeSpec] = {}
        failure: BaseException | None = None
        bar = tqdm(
            total=len(self.plan.specs),
            initial=len(done),
            disable=not progress,
            unit="probe",
            desc=self.campaign.name,
            file=sys.stderr,
        )
        # One client for all workers: a gRPC channel is thread-safe and multiplexes calls
        # over one HTTP/2 connection, and AuditorClient keeps no per-call state (each call
        # signs a fresh envelope with a random nonce), so per-worker clients would only add
        # connections (and TLS handshakes) against the lab's concurrent-RPC cap.
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="probe")
        abort = False
        try:
            while (pending and failure is None) or in_flight:
                while pending and failure is None and len(in_flight) < self.workers:
                    spec = pending.popleft()
                    in_flight[pool.submit(self._probe, spec)] = spec
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    spec = in_flight.pop(future)
                    exc = future.exception()
                    if exc is None:
                        record = future.result()
                        done.append(record)
                        self.ran += 1
                        if "refused" in record.findings:
                            self.refused += 1
                        bar.update(1)
                        continue
                    log.warning("probe %s/%s failed: %s", spec.suite, spec.probe_id, exc)
                    if failure is None or _severity(exc) > _severity(failure):
                        failure = exc
                    if isinstance(exc, WireVerificationError):
                        abort = True
                if abort:
                    # The lab sent something unprovable: stop now. Probes still in flight
                    # write their checkpoints only if their own answers verify.
                    break
        finally:
            pool.shutdown(wait=not abort, cancel_futures=True)
            bar.close()
        return failure

    def _probe(self, spec: ProbeSpec) -> ProbeRecord:
        """Run one probe (in a worker thread) and checkpoint it the moment it finishes.

        The calls are the ones the suite's ``next_call`` implies, made by :func:`drive`; a
        signed refusal of one of them ends the probe with the refusal as its last exchange.

        Raises:
            ServerRefusedError: A refusal that is not this probe's outcome (a stop, a
                refused key) or one the lab did not sign; nothing is checkpointed.
        """
        suite = self.registry[spec.suite]
        started = _now_ms()
        made: list[Verified] = []
        notes: tuple[str, ...] = ()
        try:
            drive(suite, spec, self.client, made)
        except ServerRefusedError as exc:
            evidence = exc.evidence
            if exc.code not in PROBE_REFUSAL_CODES or not isinstance(evidence, Verified):
                raise
            made.append(evidence)
            findings = refusal_findings(evidence.body)
            notes = (
                f"the lab refused this probe: {exc.code} "
                f"(signed, ledger leaf {evidence.response.receipt.leaf_index})",
            )
        else:
            findings = suite.findings(spec, [v.body for v in made])
        record = ProbeRecord(
            suite=spec.suite,
            probe_id=spec.probe_id,
            inputs=spec.inputs,
            exchanges=tuple(Exchange.of(v) for v in made),
            findings=findings,
            started_ms=started,
            finished_ms=_now_ms(),
            notes=notes,
        )
        write_checkpoint(self.out_dir, record)
        return record

    # --- the ledger -----------------------------------------------------------------------

    def _exchanges(self, records: Sequence[ProbeRecord]) -> Iterator[Exchange]:
        for session in self.record.get("sessions", []):
            yield Exchange.from_json(session["lab"]["exchange"])
        for record in records:
            yield from record.exchanges

    def _check_ledger(self, records: Sequence[ProbeRecord]) -> int:
        """Prove every tree head seen in a receipt is a prefix of the lab's latest head.

        A lab that rewrote or truncated its log after answering would be caught here: its
        latest head could not be consistent with the heads it signed in earlier receipts.

        Returns:
            How many consistency proofs were verified (and stored in ``ledger.json``).
        """
        seen: dict[int, bytes] = {}
        signed_heads: dict[int, pb.SignedTreeHead] = {}
        for exchange in self._exchanges(records):
            head = exchange.signed_response().receipt.tree_head
            if head.tree_size == 0:
                continue
            signed_heads.setdefault(head.tree_size, head)
            root = seen.setdefault(head.tree_size, head.root_hash)
            if root != head.root_hash:
                raise ProofError(
                    f"the lab signed two different roots for tree size {head.tree_size}: "
                    f"{root.hex()} and {head.root_hash.hex()}"
                )
        try:
            final = self.client.tree_head()
        except ServerRefusedError as exc:
            evidence = exc.evidence
            if exc.code != "PERMISSION_DENIED" or not isinstance(evidence, Verified):
                raise  # unsigned: a stop (see _severity), never recorded as the lab's word
            log.warning("this role may not ask for tree heads; ledger consistency not checked")
            atomic_write_json(
                self.out_dir / LEDGER_FILE,
                {
                    "format": FORMAT_VERSION,
                    "final_head": None,
                    "consistency": [],
                    "refused": {
                        "code": evidence.body.refusal.code,
                        "message": evidence.body.refusal.message,
                        "exchange": Exchange.of(evidence).to_json(),
                    },
                },
            )
            return 0
        head = final.body.tree_head.tree_head
        final_size, final_root = head.tree_size, head.root_hash
        entries: list[JSON] = []
        for size in sorted(seen):
            if size > final_size:
                raise ProofError(
                    f"a receipt names tree size {size}, beyond the lab's latest head {final_size}"
                )
            if size == final_size:
                if seen[size] != final_root:
                    raise ProofError(f"the lab signed two different roots for tree size {size}")
                continue
            proof = self.client.consistency_proof(size, final_size)
            cons = proof.body.consistency_proof
            if (cons.first_size, cons.second_size) != (size, final_size):
                raise ProofError(
                    f"asked for a consistency proof {size}->{final_size}, got "
                    f"{cons.first_size}->{cons.second_size}"
                )
            if cons.tree_head.root_hash != final_root:
                raise ProofError(f"the lab signed two different roots for tree size {final_size}")
            merkle.verify_consistency(size, final_size, seen[size], final_root, list(cons.path))
            # The auditor's head store (across runs and campaigns) learns that this head is
            # proven to be a prefix of the latest, so a later rewrite of either is caught.
            self.client.heads.record_proven(signed_heads[size], cons.tree_head)
            entries.append(
                {
                    "from_size": size,
                    "from_root": seen[size].hex(),
                    "to_size": final_size,
                    "exchange": Exchange.of(proof).to_json(),
                }
            )
        atomic_write_json(
            self.out_dir / LEDGER_FILE,
            {
                "format": FORMAT_VERSION,
                "final_size": final_size,
                "final_root": final_root.hex(),
                "final_head": Exchange.of(final).to_json(),
                "consistency": entries,
            },
        )
        return len(entries)


def _as_stop(exc: BaseException) -> BaseException:
    """A stop-worthy refusal as :class:`CampaignStopped`; anything else as it is."""
    if _unproven(exc):
        assert isinstance(exc, ServerRefusedError)
        return CampaignStopped(
            f"stopped: the lab answered {exc.code} ({exc.message}) without a signed refusal, "
            "so it cannot be reported as the lab's; that probe is unfinished and finished "
            "probes are checkpointed; resume with --resume once the lab signs its refusals"
        )
    if isinstance(exc, ServerRefusedError) and exc.code in STOP_CODES:
        return CampaignStopped(
            f"stopped: the lab answered {exc.code}: {exc.message}; finished probes are "
            "checkpointed, resume with --resume"
        )
    return exc


def _write_report(out_dir: Path, campaign: Campaign, registry: SuiteRegistry) -> bool:
    """Build the report from ``out_dir``, verified against the lab key the run used.

    Imported here, not at module level, so planning and the CLI's start-up do not load the
    report's rendering code.
    """
    from auditor_client.report.build import write_report

    write_report(out_dir, lab_public_key=campaign.lab_public_key(), suites=registry)
    return True
