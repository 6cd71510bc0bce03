"""Re-verify a campaign report offline, with nothing but the lab's public key.

A report (``report.json``, see :mod:`auditor_client.report.build`) carries every signed
exchange a campaign made and every input the campaign was planned from. A regulator holding
the lab's public key checks, without talking to anyone:

1. the campaign: the carried campaign file and every file it names hash to what the report
   says, the campaign hash is what they give, and planning them again with the runner's own
   :func:`~auditor_client.campaign.runner.plan_campaign` gives the report's probes, in
   order, with the same inputs (nothing dropped, added, reordered or relabelled; a run that
   stopped early may report a prefix of the plan, and must say so);
2. every request was signed by the auditor the report names, and its body is exactly the
   request the probe's planned inputs imply (the suite's pure ``next_call``, fed the
   *verified* earlier answers where a request depends on them), so no exchange can be
   moved to another probe and no input edited after the fact;
3. every answer was signed by the lab, answers exactly that request (digest, method, batch
   position), and is included in the lab's append-only ledger under a signed tree head; a
   probe reported as refused ends with the lab's signed, logged refusal of the request it
   made, and its code is the one the report shows;
4. every tree head a receipt used is consistent with the final head the campaign fetched
   (stored consistency proofs), so the lab did not rewrite, during the campaign, the log
   this auditor was shown, and, with ``newer_head``, that the lab's current log still
   extends that head (whether *other* auditors were shown the same log, a report alone
   cannot tell: only comparing heads can, ``auditor head export``/``import``);
5. every answer came from the snapshot and model the report names, under a policy the
   report lists (a mid-campaign policy change is allowed but never hidden);
6. every finding and every suite summary is what the suite's pure code recomputes from the
   planned inputs and the verified answers, so an edited number is caught;
7. the ``evaluation`` section is what the lab's signed evaluation certificate in the
   campaign's check-in says (:mod:`auditor_client.report.evaluation`), the certificate
   passes the client's own checks and vouches for ``lab.snapshot_id``.

The first failure raises :class:`~auditor_client.report.errors.ReportVerificationError`
naming the entry; nothing is "mostly verified".
"""

from __future__ import annotations

import base64
import binascii
import importlib
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from auditor_client.campaign.model import Campaign, CampaignFiles, file_sha256
from auditor_client.campaign.runner import Plan, plan_campaign
from auditor_client.campaign.types import (
    JSON,
    PROBE_REFUSAL_CODES,
    Call,
    ProbeRecord,
    ProbeSpec,
    Suite,
    refusal_findings,
)
from auditor_client.errors import CampaignError
from auditor_client.keys import KeyFileError, decode_public_key
from auditor_client.report.errors import ReportVerificationError
from auditor_client.report.evaluation import evaluation_section
from auditor_client.wire import digests, merkle
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.envelope import (
    SIGNATURE_SIZE,
    signed_request_digest,
    verify_tree_head,
)
from auditor_client.wire.errors import WireVerificationError
from auditor_client.wire.receipts import verify_answer

M = TypeVar("M", bound=Message)

REPORT_FORMAT = "auditor-sandbox-report/v2"
"""The ``format`` of a report this module can verify (v2: it carries the campaign's inputs,
its probes follow the plan, refusals carry the lab's signature)."""

NEWER_HEAD_FORMAT = "auditor-sandbox-newer-head/v1"
"""The ``format`` of a file written by ``auditor head``."""

CAMPAIGN_METHODS = frozenset({"GetPolicy", "WhoAmI"})
"""Methods the campaign's opening exchange may use (it records who the lab thinks we are)."""

CAMPAIGN_TEXT = "campaign.campaign_file_text"
CAMPAIGN_FILES = "campaign.files"

_FILE_ENTRY = re.compile(r'campaign\.files\["(?:[^"\\]|\\.)*"\]')
"""A carried file's entry inside a planning error (the suites name files by their label)."""

_FLOAT_REL_TOL = 1e-9
"""Relative tolerance for recomputed floats: a sum over a differently ordered set may differ
in its last bits between two processes (string hashing is randomized); an edit does not."""


@dataclass(frozen=True)
class VerifySummary:
    """What a successful verification covered, for the command's summary line.

    Attributes:
        answers: signed answers verified (request signature, lab signature, binding, receipt).
        probes: probe records checked (refused ones included).
        planned: probes the campaign plans (more than ``probes`` in a partial report of a
            run that stopped early).
        refused_probes: probes whose outcome is the lab's signed refusal.
        heads: distinct signed tree heads checked (receipts, final head, newer head).
        final_tree_size: size of the report's final ledger head.
        newer_tree_size: size of the newer head checked, when one was given.
        policy_hashes: every policy hash the answers carried, first seen first.
        seconds: wall time the verification took.
        ledger_refused: the status the lab refused tree heads with (then the receipts'
            heads could not be proven consistent with each other), or None.
        unproven_heads: receipt tree heads not proven consistent (only with
            ``ledger_refused`` or ``ledger_missing``).
        ledger_missing: a partial report of a run that stopped before it fetched the
            final head and consistency proofs.
    """

    answers: int
    probes: int
    planned: int
    refused_probes: int
    heads: int
    final_tree_size: int
    newer_tree_size: int | None
    policy_hashes: tuple[str, ...]
    seconds: float
    ledger_refused: str | None = None
    unproven_heads: int = 0
    ledger_missing: bool = False

    def line(self) -> str:
        """One human line: what was verified and how long it took."""
        policies = (
            "1 policy"
            if len(self.policy_hashes) == 1
            else f"{len(self.policy_hashes)} policies (changed mid-campaign)"
        )
        newer = (
            f"; still consistent with the lab's newer head of size {self.newer_tree_size}"
            if self.newer_tree_size is not None
            else ""
        )
        if self.ledger_missing:
            ledger = (
                f"{self.heads} signed tree heads; WARNING: the run stopped before fetching "
                f"ledger proofs, so {self.unproven_heads} receipt heads are not proven "
                "consistent with each other"
            )
        elif self.ledger_refused is None:
            ledger = (
                f"{self.heads} tree heads consistent with the final head of size "
                f"{self.final_tree_size}{newer}"
            )
        else:
            ledger = (
                f"{self.heads} signed tree heads; WARNING: the lab refused tree heads "
                f"({self.ledger_refused}), so {self.unproven_heads} receipt heads are not "
                "proven consistent with each other"
            )
        partial = (
            f"; PARTIAL: {self.probes} of the {self.planned} planned probes (the run stopped)"
            if self.probes < self.planned
            else ""
        )
        return (
            f"report verified: {self.answers} answers, {self.probes} probes "
            f"({self.refused_probes} refused){partial}, {ledger}; {policies}; "
            f"{self.seconds:.3f} s"
        )

    def to_json(self) -> JSON:
        """The summary as JSON-friendly data (``auditor verify --json``)."""
        return {
            "verified": True,
            "answers": self.answers,
            "probes": self.probes,
            "planned": self.planned,
            "refused_probes": self.refused_probes,
            "heads": self.heads,
            "final_tree_size": self.final_tree_size,
            "newer_tree_size": self.newer_tree_size,
            "policy_hashes": list(self.policy_hashes),
            "seconds": self.seconds,
            "ledger_refused": self.ledger_refused,
            "unproven_heads": self.unproven_heads,
            "ledger_missing": self.ledger_missing,
        }


def default_suites() -> Mapping[str, Suite]:
    """The registered probe suites, imported only when a report needs them."""
    module = importlib.import_module("auditor_client.campaign.suites")
    suites: Mapping[str, Suite] = module.SUITES
    return suites


def load_json(path: Path, *, what: str) -> JSON:
    """Read a JSON object from ``path``, naming ``what`` it should have been on failure.

    Raises:
        ReportVerificationError: unreadable, not JSON, or not an object.
    """
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportVerificationError(what, f"cannot read {path}: {exc}") from exc
    if not isinstance(obj, dict):
        raise ReportVerificationError(what, f"{path} does not hold a JSON object")
    return obj


def verify_report(
    path: Path,
    *,
    lab_public_key: str,
    newer_head: Path | None = None,
    suites: Mapping[str, Suite] | None = None,
) -> VerifySummary:
    """Verify the report at ``path`` offline (see the module docstring for what is checked).

    Args:
        path: a ``report.json``.
        lab_public_key: the lab's key, ``ed25519:<base64>``, obtained out of band (never
            from the report: a forged report would carry the forger's key).
        newer_head: a file written by ``auditor head``: a consistency proof from the
            report's final head to a newer head of the lab's log.
        suites: the probe suites to recompute findings with (default: the registered ones).

    Returns:
        What was verified and how long it took.

    Raises:
        ReportVerificationError: the first entry that failed, by name.
        KeyFileError: ``lab_public_key`` is not an Ed25519 public key.
    """
    report = load_json(path, what="report")
    newer = load_json(newer_head, what="newer_head") if newer_head is not None else None
    return verify_report_data(
        report, lab_public_key=lab_public_key, newer_head=newer, suites=suites
    )


def verify_report_data(
    report: Mapping[str, Any],
    *,
    lab_public_key: str,
    newer_head: Mapping[str, Any] | None = None,
    suites: Mapping[str, Suite] | None = None,
) -> VerifySummary:
    """:func:`verify_report` on an already-loaded report (the builder checks before writing).

    Raises:
        ReportVerificationError: the first entry that failed, by name.
        KeyFileError: ``lab_public_key`` is not an Ed25519 public key.
    """
    started = time.perf_counter()
    verifier = _Verifier(
        report,
        lab_key=decode_public_key(lab_public_key),
        suites=suites if suites is not None else default_suites(),
    )
    verifier.run(newer_head)
    return VerifySummary(
        answers=verifier.answers,
        probes=verifier.probes,
        planned=verifier.planned,
        refused_probes=verifier.refused,
        heads=len(verifier.heads),
        final_tree_size=verifier.final_size,
        newer_tree_size=verifier.newer_size,
        policy_hashes=tuple(verifier.policy_hashes),
        seconds=time.perf_counter() - started,
        ledger_refused=verifier.ledger_refused,
        unproven_heads=verifier.unproven_heads,
        ledger_missing=verifier.ledger_missing,
    )


@dataclass
class _Answer:
    """One verified exchange, as the later checks need it."""

    request: pb.SignedRequest
    response: pb.SignedResponse
    body: pb.ResponseBody


@dataclass
class _Verifier:
    """Walks a report once, in a fixed order, raising on the first bad entry."""

    report: Mapping[str, Any]
    lab_key: Ed25519PublicKey
    suites: Mapping[str, Suite]
    answers: int = 0
    probes: int = 0
    refused: int = 0
    final_size: int = 0
    newer_size: int | None = None
    policy_hashes: list[str] = field(default_factory=list)
    heads: set[tuple[int, bytes]] = field(default_factory=set)
    _receipt_roots: dict[int, tuple[bytes, str]] = field(default_factory=dict)
    _leaves: dict[int, str] = field(default_factory=dict)
    _batch_items: dict[bytes, int] = field(default_factory=dict)
    unproven_heads: int = 0
    ledger_refused: str | None = None
    ledger_missing: bool = False
    planned: int = 0
    _checkin: tuple[str, pb.ResponseBody] | None = None

    def run(self, newer_head: Mapping[str, Any] | None) -> None:
        if self.report.get("format") != REPORT_FORMAT:
            raise ReportVerificationError(
                "format", f"is {self.report.get('format')!r}, expected {REPORT_FORMAT!r}"
            )
        self._sections()
        plan = self._campaign_plan()
        self._campaign_exchange()
        self._evaluation()
        records = self._probes(plan)
        self._completeness(plan, records)
        self._summaries(records)
        final_root = self._ledger()
        if newer_head is not None:
            self._newer_head(newer_head, final_root)

    # --- sections ---------------------------------------------------------------------------

    def _sections(self) -> None:
        """The lab and auditor sections: well-formed, and the same as the campaign's."""
        campaign = _mapping(self.report.get("campaign"), "campaign")
        lab = _mapping(self.report.get("lab"), "lab")
        auditor = _mapping(self.report.get("auditor"), "auditor")
        campaign_lab = _mapping(campaign.get("lab"), "campaign.lab")
        campaign_auditor = _mapping(campaign.get("auditor"), "campaign.auditor")
        for key in ("snapshot_id", "policy_hash", "model_hash"):
            _string(lab.get(key), f"lab.{key}")
            if lab.get(key) != campaign_lab.get(key):
                raise ReportVerificationError(
                    f"lab.{key}",
                    f"is {lab.get(key)!r} but campaign.lab says {campaign_lab.get(key)!r}",
                )
        listed = lab.get("policy_hashes")
        if not isinstance(listed, list) or not all(isinstance(h, str) for h in listed):
            raise ReportVerificationError("lab.policy_hashes", "missing or not a list of hashes")
        self.listed_policies = list(listed)
        for key in ("id", "public_key"):
            _string(auditor.get(key), f"auditor.{key}")
            if auditor.get(key) != campaign_auditor.get(key):
                raise ReportVerificationError(
                    f"auditor.{key}",
                    f"is {auditor.get(key)!r} but campaign.auditor says "
                    f"{campaign_auditor.get(key)!r}",
                )
        self.lab = lab
        self.auditor_id = str(auditor["id"])
        try:
            self.auditor_key = decode_public_key(str(auditor["public_key"]))
        except KeyFileError as exc:
            raise ReportVerificationError("auditor.public_key", str(exc)) from exc
        self.auditor_key_id = digests.key_id(self.auditor_key)

    def _campaign_exchange(self) -> None:
        """The check-in exchanges: the campaign's first, and one per resumed session.

        Each session's ``lab`` block (snapshot, policy, model) is display data copied from
        its exchange; it must say what the signed body says.
        """
        campaign = _mapping(self.report["campaign"], "campaign")
        found = campaign_exchanges(campaign)
        if not found:
            raise ReportVerificationError(
                "campaign.lab.exchange", "missing: the campaign's first signed exchange"
            )
        verified: dict[str, _Answer] = {}
        for k, (entry, exchange, lab_block) in enumerate(found):
            key = json.dumps(exchange, sort_keys=True)
            answer = verified.get(key)  # the first session's check-in is also the campaign's
            if answer is None:
                answer = self._exchange(entry, exchange, methods=CAMPAIGN_METHODS, consistent=True)
                verified[key] = answer
            try:  # every check-in's certificate must pass the client's checks
                evaluation_section(answer.body)
            except WireVerificationError as exc:
                raise ReportVerificationError(entry, str(exc)) from exc
            if k == 0:
                self._checkin = (entry, answer.body)
            if k == 0 and answer.body.policy_hash != self.lab["policy_hash"]:
                raise ReportVerificationError(
                    entry,
                    f"policy hash {answer.body.policy_hash!r} at the campaign's start differs "
                    f"from lab.policy_hash {self.lab['policy_hash']!r}",
                )
            for field_name in ("snapshot_id", "policy_hash", "model_hash"):
                shown = lab_block.get(field_name)
                if shown is not None and shown != getattr(answer.body, field_name):
                    raise ReportVerificationError(
                        entry.removesuffix(".exchange") + f".{field_name}",
                        f"says {shown!r} but its signed answer says "
                        f"{getattr(answer.body, field_name)!r}",
                    )

    def _evaluation(self) -> None:
        """The report's ``evaluation`` section is what the first check-in's signed answer
        implies, and the certificate in it vouches for the report's snapshot.

        A report without the section verifies only when the check-in carries no certificate
        (a report built before certificates existed had nothing to show); deleting the
        section of a report whose lab served one is caught like editing it.
        """
        assert self._checkin is not None, "the check-in is verified first"
        entry, body = self._checkin
        recomputed = evaluation_section(body)  # checked in _campaign_exchange
        stored = self.report.get("evaluation")
        if stored is None and not recomputed["available"]:
            return
        if stored is None:
            raise ReportVerificationError(
                "evaluation",
                f"missing: {entry} carries the lab's signed evaluation certificate",
            )
        if recomputed["available"] and recomputed["snapshot_id"] != self.lab["snapshot_id"]:
            raise ReportVerificationError(  # unreachable past _check_lab; stated for clarity
                "evaluation.snapshot_id",
                f"the certificate is for snapshot {recomputed['snapshot_id']!r}, not "
                f"lab.snapshot_id {self.lab['snapshot_id']!r}",
            )
        _compare("evaluation", stored, recomputed, exact=True)

    # --- the campaign's plan -----------------------------------------------------------------

    def _campaign_plan(self) -> Plan:
        """Plan the campaign again from the inputs the report carries; check what it states.

        The carried campaign file and files must hash to what the report says; planning
        them with the runner's own :func:`plan_campaign` must read exactly the carried
        files and give the report's campaign hash, name, seed and probe counts. Probes are
        then checked against this plan, never against the inputs a record states.
        """
        campaign_block = _mapping(self.report.get("campaign"), "campaign")
        text = campaign_block.get("campaign_file_text")
        if not isinstance(text, str) or not text:
            raise ReportVerificationError(
                CAMPAIGN_TEXT, "missing: the campaign file the probes were planned from"
            )
        stated = campaign_block.get("campaign_file_sha256")
        if file_sha256(text) != stated:
            raise ReportVerificationError(
                CAMPAIGN_TEXT,
                f"its SHA-256 is {file_sha256(text)} but campaign.campaign_file_sha256 says "
                f"{stated!r}",
            )
        texts = self._carried_files(_mapping(campaign_block.get("files"), CAMPAIGN_FILES))
        try:
            campaign = Campaign.from_yaml(text, source=CAMPAIGN_TEXT)
            plan = plan_campaign(
                campaign,
                suites=self.suites,
                files=CampaignFiles.from_report(texts, where=CAMPAIGN_FILES),
                where=CAMPAIGN_TEXT,
            )
        except CampaignError as exc:
            found = _FILE_ENTRY.search(str(exc))
            entry = found.group(0) if found else CAMPAIGN_TEXT
            raise ReportVerificationError(entry, f"does not plan: {exc}") from exc
        extra = sorted(set(texts) - set(plan.files))
        if extra:
            raise ReportVerificationError(
                _file_entry(extra[0]), "is not a file the campaign's suites read"
            )
        for key, recomputed in (
            ("campaign_hash", plan.campaign_hash),
            ("name", campaign.name),
            ("seed", campaign.seed),
            ("specs", dict(plan.per_suite)),
            ("total_specs", len(plan.specs)),
        ):
            _compare(f"campaign.{key}", campaign_block.get(key), recomputed, exact=True)
        return plan

    def _carried_files(self, files: Mapping[str, Any]) -> dict[str, str]:
        """Each carried file's text, after checking it hashes to the SHA-256 stated for it."""
        texts: dict[str, str] = {}
        for name, obj in sorted(files.items()):
            entry = _file_entry(name)
            item = _mapping(obj, entry)
            text = item.get("text")
            if not isinstance(text, str):
                raise ReportVerificationError(entry, "text is missing or not a string")
            if file_sha256(text) != item.get("sha256"):
                raise ReportVerificationError(
                    entry,
                    f"its text's SHA-256 is {file_sha256(text)} but the entry says "
                    f"{item.get('sha256')!r}",
                )
            texts[name] = text
        return texts

    # --- probes -----------------------------------------------------------------------------

    def _probes(self, plan: Plan) -> list[ProbeRecord]:
        """Every reported probe is the plan's probe at its position, with the planned inputs."""
        raw = self.report.get("probes")
        if not isinstance(raw, list):
            raise ReportVerificationError("probes", "missing or not a list")
        records: list[ProbeRecord] = []
        for i, obj in enumerate(raw):
            try:
                record = ProbeRecord.from_json(_mapping(obj, f"probes[{i}]"))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ReportVerificationError(
                    f"probes[{i}]", f"is not a probe record ({exc!r})"
                ) from exc
            name = f"probes[{i}] ({record.suite}/{record.probe_id})"
            if i >= len(plan.specs):
                raise ReportVerificationError(
                    name, f"the campaign plans {len(plan.specs)} probes; this one is extra"
                )
            spec = plan.specs[i]
            if (record.suite, record.probe_id) != (spec.suite, spec.probe_id):
                raise ReportVerificationError(
                    name,
                    f"the plan's probe {i} is {spec.suite}/{spec.probe_id}: probes were "
                    "dropped, added or reordered",
                )
            _compare(f"{name} inputs", record.inputs, spec.inputs, exact=True)
            self._probe(name, spec, record)
            records.append(record)
        return records

    def _completeness(self, plan: Plan, records: Sequence[ProbeRecord]) -> None:
        """A report short of the plan must say it is partial (a run that stopped early).

        Only a prefix of the plan can be reported (:func:`_probes` checks positions), so
        what is missing is exactly the probes the run did not finish, in plan order; the
        campaign must not claim to be complete, and ``plan`` must say how many are missing.
        """
        campaign_block = _mapping(self.report.get("campaign"), "campaign")
        reported, planned = len(records), len(plan.specs)
        self.planned = planned
        if reported < planned and campaign_block.get("status") == "complete":
            missing = plan.specs[reported]
            raise ReportVerificationError(
                f"probes[{reported}]",
                f"missing: the plan's probe {missing.suite}/{missing.probe_id}, but "
                "campaign.status says the campaign is complete",
            )
        _compare(
            "plan",
            self.report.get("plan"),
            plan_summary(planned=planned, reported=reported),
        )

    def _probe(self, name: str, spec: ProbeSpec, record: ProbeRecord) -> None:
        """Verify a probe's exchanges against the requests its planned inputs imply.

        The suite's ``next_call`` says which request comes next, given the verified answers
        so far; each stored exchange must hold exactly that request, signed by the auditor,
        and the lab's verified answer to it. A signed refusal ends the probe, and is then
        its only finding.
        """
        self.probes += 1
        suite = self._suite(spec.suite, name)
        exchanges = record.exchanges
        bodies: list[pb.ResponseBody] = []
        refusal: tuple[str, pb.ResponseBody] | None = None
        last_leaf = -1
        j = 0
        while refusal is None:
            try:
                call = suite.next_call(spec, bodies)
            except Exception as exc:  # a suite's own bug is still a failed verification
                raise ReportVerificationError(
                    f"{name} exchange {j}", f"the next request cannot be derived: {exc!r}"
                ) from exc
            if call is None:
                break
            for k in range(call.answers()):
                entry = f"{name} exchange {j}"
                if j >= len(exchanges):
                    raise ReportVerificationError(
                        entry,
                        f"missing: the probe's inputs imply a {call.method} request here "
                        "(an exchange was dropped)",
                    )
                answer = self._exchange(
                    entry,
                    exchanges[j].to_json(),
                    methods=frozenset({call.method}),
                    consistent=True,
                )
                _check_body(entry, answer.request, call)
                leaf = answer.response.receipt.leaf_index
                if leaf <= last_leaf:
                    raise ReportVerificationError(
                        entry,
                        f"ledger leaf {leaf} does not follow leaf {last_leaf} of the exchange "
                        "before it: the exchanges are not in call order",
                    )
                last_leaf = leaf
                j += 1
                if answer.body.WhichOneof("result") == "refusal":
                    if k:
                        raise ReportVerificationError(
                            entry, "a refusal of the whole request after answers to it"
                        )
                    refusal = (entry, answer.body)
                    break
                bodies.append(answer.body)
        if j < len(exchanges):
            raise ReportVerificationError(
                f"{name} exchange {j}",
                "the probe's inputs and answers imply no further request (an extra exchange)",
            )
        if refusal is not None:
            entry, body = refusal
            if body.refusal.code not in PROBE_REFUSAL_CODES:
                raise ReportVerificationError(
                    entry,
                    f"a {body.refusal.code} refusal stops a run; it is not a probe's outcome",
                )
            _compare(f"{name} findings", record.findings, refusal_findings(body))
            self.refused += 1
            return
        if "refused" in record.findings:
            raise ReportVerificationError(
                f"{name} findings.refused",
                "says the lab refused this probe, but no exchange holds the lab's signed refusal",
            )
        try:
            recomputed = suite.findings(spec, bodies)
        except Exception as exc:  # a suite's own bug is still a failed verification
            raise ReportVerificationError(
                f"{name} findings", f"cannot be recomputed: {exc!r}"
            ) from exc
        _compare(f"{name} findings", record.findings, recomputed)

    def _suite(self, suite: str, entry: str) -> Suite:
        found = self.suites.get(suite)
        if found is None:
            raise ReportVerificationError(
                entry, f"suite {suite!r} is unknown to this verifier; cannot recompute it"
            )
        return found

    def _summaries(self, records: Sequence[ProbeRecord]) -> None:
        stored = _mapping(self.report.get("findings"), "findings")
        by_suite = group_by_suite(records)
        for suite in sorted(set(stored) | set(by_suite)):
            entry = f"findings.{suite}"
            if suite not in by_suite:
                raise ReportVerificationError(entry, "a summary for a suite with no probes")
            if suite not in stored:
                raise ReportVerificationError(entry, "missing: the suite has probes")
            try:
                recomputed = self._suite(suite, entry).summarize(by_suite[suite])
            except ReportVerificationError:
                raise
            except Exception as exc:
                raise ReportVerificationError(entry, f"cannot be recomputed: {exc!r}") from exc
            _compare(entry, stored[suite], recomputed)

    # --- ledger -----------------------------------------------------------------------------

    def _ledger(self) -> bytes | None:
        """The final head, the consistency proofs, and that they cover every receipt.

        Returns:
            The final head's root, or None when the lab's policy refused the auditor's role
            tree heads (the runner records that signed refusal instead of a head), or when a
            partial report's run stopped before fetching them: then every receipt is still
            checked on its own, but heads of different sizes cannot be proven consistent,
            and the summary says so.
        """
        if self.report.get("ledger") is None and self.probes < self.planned:
            # A run that stopped early never fetched its closing proofs.
            self.ledger_missing = True
            self._unproven_ledger()
            return None
        ledger = _mapping(self.report.get("ledger"), "ledger")
        if ledger.get("final_head") is None and isinstance(ledger.get("refused"), Mapping):
            self._ledger_refusal(ledger["refused"])
            self._unproven_ledger()
            return None
        answer = self._exchange(
            "ledger.final_head", ledger.get("final_head"), methods=frozenset({"GetTreeHead"})
        )
        if answer.body.WhichOneof("result") != "tree_head":
            raise ReportVerificationError("ledger.final_head", "the answer holds no tree head")
        head = answer.body.tree_head.tree_head
        self._head("ledger.final_head", head)
        self.final_size, final_root = head.tree_size, head.root_hash
        for key, value in (("final_size", self.final_size), ("final_root", final_root.hex())):
            if key in ledger and ledger[key] != value:
                raise ReportVerificationError(
                    f"ledger.{key}",
                    f"says {ledger[key]!r} but the signed final head says {value!r}",
                )
        proofs = ledger.get("consistency")
        if not isinstance(proofs, list):
            raise ReportVerificationError("ledger.consistency", "missing or not a list")
        proven: set[int] = set()
        for k, item in enumerate(proofs):
            item = _mapping(item, f"ledger.consistency[{k}]")
            from_size = item.get("from_size")
            entry = f"ledger.consistency[{k}] (from size {from_size})"
            if not isinstance(from_size, int) or isinstance(from_size, bool):
                raise ReportVerificationError(entry, "from_size is not an integer")
            known = self._receipt_roots.get(from_size)
            if known is None:
                raise ReportVerificationError(
                    entry, f"no receipt in the report has a tree head of size {from_size}"
                )
            proof = self._consistency(entry, item.get("exchange"), from_size)
            if proof.second_size != self.final_size or proof.tree_head.root_hash != final_root:
                raise ReportVerificationError(
                    entry,
                    f"proves up to a head of size {proof.second_size}, not the final head "
                    f"of size {self.final_size}",
                )
            _proof(entry, from_size, self.final_size, known[0], final_root, proof.path)
            proven.add(from_size)
        for size, (root, where) in sorted(self._receipt_roots.items()):
            if size > self.final_size:
                raise ReportVerificationError(
                    where,
                    f"receipt tree head of size {size} is newer than the final head of size "
                    f"{self.final_size}",
                )
            if size == self.final_size:
                if root != final_root:
                    raise ReportVerificationError(
                        where,
                        f"receipt tree head of size {size} has another root than the final "
                        "head of the same size: the lab forked its log",
                    )
            elif size not in proven:
                raise ReportVerificationError(
                    "ledger.consistency",
                    f"no consistency proof from size {size} (the receipt of {where}) to the "
                    f"final head of size {self.final_size}",
                )
        self._check_policies()
        return final_root

    def _unproven_ledger(self) -> None:
        """No final head: every receipt was checked on its own; heads stay unproven."""
        self._check_policies()
        sizes = sorted(self._receipt_roots)
        self.final_size = sizes[-1] if sizes else 0
        self.unproven_heads = max(len(sizes) - 1, 0)

    def _ledger_refusal(self, refused: Mapping[str, Any]) -> None:
        """No final head, because the lab refused tree heads: only with its signed refusal.

        Otherwise anyone could drop the final head and the consistency proofs from a report
        and claim the lab refused them.
        """
        entry = "ledger.refused.exchange"
        if refused.get("exchange") is None:
            raise ReportVerificationError(
                entry, "missing: the lab's signed refusal of the tree head request"
            )
        answer = self._exchange(
            entry, refused["exchange"], methods=frozenset({"GetTreeHead"}), consistent=True
        )
        if answer.body.WhichOneof("result") != "refusal":
            raise ReportVerificationError(entry, "the answer is not a refusal")
        _check_body(entry, answer.request, Call("GetTreeHead", pb.GetTreeHeadRequest()))
        _compare(
            "ledger.refused",
            {k: v for k, v in refused.items() if k != "exchange"},
            {"code": answer.body.refusal.code, "message": answer.body.refusal.message},
        )
        self.ledger_refused = answer.body.refusal.code

    def _check_policies(self) -> None:
        if set(self.listed_policies) != set(self.policy_hashes):
            raise ReportVerificationError(
                "lab.policy_hashes",
                f"lists {sorted(self.listed_policies)}, but the answers carry "
                f"{sorted(self.policy_hashes)}",
            )

    def _newer_head(self, newer: Mapping[str, Any], final_root: bytes | None) -> None:
        entry = "newer_head"
        if final_root is None:
            raise ReportVerificationError(
                entry, "the report has no final head (the lab refused it) for it to extend"
            )
        if newer.get("format", NEWER_HEAD_FORMAT) != NEWER_HEAD_FORMAT:
            raise ReportVerificationError(
                entry, f"format is {newer.get('format')!r}, expected {NEWER_HEAD_FORMAT!r}"
            )
        exchange = newer.get("exchange", newer)
        proof = self._consistency(entry, exchange, self.final_size, record=False)
        _proof(
            entry,
            self.final_size,
            proof.second_size,
            final_root,
            proof.tree_head.root_hash,
            proof.path,
        )
        self.newer_size = proof.second_size

    def _consistency(
        self, entry: str, exchange: Any, from_size: int, *, record: bool = True
    ) -> pb.ConsistencyProofResponse:
        """Verify a GetConsistencyProof exchange asked from ``from_size``; return its proof."""
        answer = self._exchange(
            entry, exchange, methods=frozenset({"GetConsistencyProof"}), record=record
        )
        asked = pb.GetConsistencyProofRequest()
        try:
            asked.ParseFromString(answer.request.body)
        except DecodeError as exc:
            raise ReportVerificationError(entry, "request body does not parse") from exc
        if asked.first_size != from_size:
            raise ReportVerificationError(
                entry, f"asks for a proof from size {asked.first_size}, expected {from_size}"
            )
        if answer.body.WhichOneof("result") != "consistency_proof":
            raise ReportVerificationError(entry, "the answer holds no consistency proof")
        proof = answer.body.consistency_proof
        if proof.first_size != from_size or proof.second_size != proof.tree_head.tree_size:
            raise ReportVerificationError(
                entry,
                f"proof is from size {proof.first_size} to {proof.second_size} under a head of "
                f"size {proof.tree_head.tree_size}; expected from {from_size}",
            )
        self._head(entry, proof.tree_head)
        return proof

    def _head(self, entry: str, head: pb.SignedTreeHead) -> None:
        try:
            verify_tree_head(head, lab_public_key=self.lab_key)
        except WireVerificationError as exc:
            raise ReportVerificationError(entry, str(exc)) from exc
        self.heads.add((head.tree_size, head.root_hash))

    # --- one exchange -----------------------------------------------------------------------

    def _exchange(
        self,
        entry: str,
        obj: Any,
        *,
        methods: frozenset[str] | None,
        consistent: bool = False,
        record: bool = True,
    ) -> _Answer:
        """Verify one stored exchange completely; see the module docstring, checks 1, 2, 4.

        Args:
            entry: the name failures carry.
            obj: the stored ``{request, response}``.
            methods: the methods this entry may use (None: any).
            consistent: its receipt's head must be proven consistent with the final head.
            record: count it against the report's leaves and policies (False for a newer
                head fetched after the report was built).
        """
        exchange = _mapping(obj, entry)
        request = _decode(entry, exchange.get("request"), pb.SignedRequest(), "request")
        response = _decode(entry, exchange.get("response"), pb.SignedResponse(), "response")
        self._check_request(entry, request)
        if methods is not None and request.method not in methods:
            raise ReportVerificationError(
                entry, f"method is {request.method!r}, expected one of {sorted(methods)}"
            )
        raw_request = request.SerializeToString()
        item_index = 0
        if request.method == "AttributeBatch":
            item_index = self._batch_items.get(raw_request, 0)
            self._batch_items[raw_request] = item_index + 1
        try:
            body = verify_answer(
                response,
                lab_public_key=self.lab_key,
                request_digest=signed_request_digest(request),
                method=request.method,
                item_index=item_index,
            )
        except WireVerificationError as exc:
            raise ReportVerificationError(entry, str(exc)) from exc
        receipt = response.receipt
        self.heads.add((receipt.tree_head.tree_size, receipt.tree_head.root_hash))
        if not record:
            return _Answer(request, response, body)
        seen = self._leaves.get(receipt.leaf_index)
        if seen is not None:
            raise ReportVerificationError(
                entry, f"ledger leaf {receipt.leaf_index} is also the receipt of {seen}"
            )
        self._leaves[receipt.leaf_index] = entry
        self._check_lab(entry, body)
        self.answers += 1
        if consistent:
            size, root = receipt.tree_head.tree_size, receipt.tree_head.root_hash
            known = self._receipt_roots.get(size)
            if known is None:
                self._receipt_roots[size] = (root, entry)
            elif known[0] != root:
                raise ReportVerificationError(
                    entry,
                    f"receipt tree head of size {size} has another root than the one in "
                    f"{known[1]}: the lab forked its log",
                )
        return _Answer(request, response, body)

    def _check_request(self, entry: str, request: pb.SignedRequest) -> None:
        """The request was signed by the report's auditor, with the key the report names."""
        if request.auditor_id != self.auditor_id:
            raise ReportVerificationError(
                entry,
                f"request is from auditor {request.auditor_id!r}, not the report's auditor "
                f"{self.auditor_id!r}",
            )
        if request.key_id != self.auditor_key_id:
            raise ReportVerificationError(
                entry,
                f"request signed with key id {request.key_id!r}, but the report's auditor key "
                f"has id {self.auditor_key_id!r}",
            )
        if len(request.signature) != SIGNATURE_SIZE:
            raise ReportVerificationError(
                entry, f"request signature is {len(request.signature)} bytes, expected 64"
            )
        try:
            self.auditor_key.verify(request.signature, signed_request_digest(request))
        except InvalidSignature as exc:
            raise ReportVerificationError(
                entry, f"request signature does not verify under auditor key {self.auditor_key_id}"
            ) from exc

    def _check_lab(self, entry: str, body: pb.ResponseBody) -> None:
        """The answer came from the report's snapshot and model, under a listed policy."""
        for key in ("snapshot_id", "model_hash"):
            value = getattr(body, key)
            if value != self.lab[key]:
                raise ReportVerificationError(
                    entry, f"answer's {key} {value!r} differs from lab.{key} {self.lab[key]!r}"
                )
        if body.policy_hash not in self.listed_policies:
            raise ReportVerificationError(
                entry,
                f"answer's policy hash {body.policy_hash!r} is not listed in lab.policy_hashes",
            )
        if body.policy_hash not in self.policy_hashes:
            self.policy_hashes.append(body.policy_hash)


# --- helpers --------------------------------------------------------------------------------


def campaign_exchanges(
    campaign: Mapping[str, Any],
) -> list[tuple[str, Any, Mapping[str, Any]]]:
    """The campaign's check-in exchanges: (entry name, exchange, its ``lab`` block).

    The runner stores the first under ``campaign.lab.exchange`` and one per session (a
    resumed run checks in again) under ``campaign.sessions[i].lab.exchange``; a top-level
    ``campaign.exchange`` is accepted too.
    """
    out: list[tuple[str, Any, Mapping[str, Any]]] = []
    lab = campaign.get("lab")
    if isinstance(lab, Mapping) and lab.get("exchange") is not None:
        out.append(("campaign.lab.exchange", lab["exchange"], lab))
    if campaign.get("exchange") is not None:
        out.append(("campaign.exchange", campaign["exchange"], {}))
    sessions = campaign.get("sessions")
    for i, session in enumerate(sessions if isinstance(sessions, list) else ()):
        block = session.get("lab") if isinstance(session, Mapping) else None
        if isinstance(block, Mapping) and block.get("exchange") is not None:
            out.append((f"campaign.sessions[{i}].lab.exchange", block["exchange"], block))
    return out


def plan_summary(*, planned: int, reported: int) -> JSON:
    """The report's ``plan`` section: how many probes were planned and how many it holds."""
    return {"probes": planned, "reported": reported, "complete": reported == planned}


def _file_entry(name: str) -> str:
    """``campaign.files["refs.jsonl"]``: how failures name a carried file."""
    return f"{CAMPAIGN_FILES}[{json.dumps(name)}]"


def _check_body(entry: str, request: pb.SignedRequest, call: Call) -> None:
    """The signed request is exactly ``call``: same method, byte-identical body.

    On a mismatch, names the first field that differs, so a reader sees what was edited.
    """
    if request.method != call.method:
        raise ReportVerificationError(
            entry, f"signed request is a {request.method}, the probe implies a {call.method}"
        )
    expected = call.body()
    if request.body == expected:
        return
    signed = type(call.request)()
    try:
        signed.ParseFromString(request.body)
    except DecodeError as exc:
        raise ReportVerificationError(
            entry, f"signed request body does not parse as {call.request.DESCRIPTOR.name}"
        ) from exc
    for descriptor in call.request.DESCRIPTOR.fields:
        mine, theirs = getattr(call.request, descriptor.name), getattr(signed, descriptor.name)
        if mine != theirs:
            raise ReportVerificationError(
                entry,
                f"signed {call.method} request has {descriptor.name} {_short(_plain(theirs))}, "
                f"but the probe's planned inputs imply {_short(_plain(mine))}",
            )
    raise ReportVerificationError(
        entry, f"signed {call.method} request body differs from the one the probe implies"
    )


def _plain(value: Any) -> Any:
    """A protobuf field value as JSON can show it (repeated messages by their text)."""
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)


def group_by_suite(records: Sequence[ProbeRecord]) -> dict[str, list[ProbeRecord]]:
    """Records per suite, in the report's order (the order summaries are computed in)."""
    out: dict[str, list[ProbeRecord]] = {}
    for record in records:
        out.setdefault(record.suite, []).append(record)
    return out


def _mapping(obj: Any, entry: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise ReportVerificationError(entry, "missing or not a JSON object")
    return obj


def _string(obj: Any, entry: str) -> str:
    if not isinstance(obj, str) or not obj:
        raise ReportVerificationError(entry, "missing or not a string")
    return obj


def _decode(entry: str, text: Any, message: M, what: str) -> M:
    """Parse base64 protobuf bytes strictly: canonical encoding, no unknown fields.

    The stored bytes are what the client serialized; anything that parses but re-serializes
    differently, or smuggles fields the protocol does not define, was edited.
    """
    if not isinstance(text, str):
        raise ReportVerificationError(entry, f"{what} is missing or not a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
        message.ParseFromString(raw)
    except (binascii.Error, ValueError) as exc:
        raise ReportVerificationError(entry, f"{what} is not valid base64") from exc
    except DecodeError as exc:
        raise ReportVerificationError(
            entry, f"{what} does not parse as {message.DESCRIPTOR.name}"
        ) from exc
    if _has_unknown_fields(message):
        raise ReportVerificationError(entry, f"{what} carries fields the protocol does not define")
    if message.SerializeToString() != raw:
        raise ReportVerificationError(entry, f"{what} bytes are not in canonical form")
    return message


def _has_unknown_fields(message: Message) -> bool:
    if len(UnknownFieldSet(message)):
        return True
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        values = value if descriptor.is_repeated else [value]
        if any(isinstance(v, Message) and _has_unknown_fields(v) for v in values):
            return True
    return False


def _proof(
    entry: str, first: int, second: int, first_root: bytes, second_root: bytes, path: Any
) -> None:
    try:
        merkle.verify_consistency(first, second, first_root, second_root, list(path))
    except WireVerificationError as exc:
        raise ReportVerificationError(entry, str(exc)) from exc


def _json_text(value: Any) -> str | None:
    """``value`` as canonical JSON text (keys sorted), or None if it is not JSON."""
    try:
        return json.dumps(value, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError):
        return None


def _normalize(value: Any, entry: str) -> Any:
    """The value as JSON would store it (tuples become lists, keys strings)."""
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise ReportVerificationError(entry, f"recomputed value is not JSON: {exc}") from exc


def _compare(entry: str, stored: Any, recomputed: Any, *, exact: bool = False) -> None:
    """Raise naming the first path where ``stored`` and ``recomputed`` disagree.

    ``exact``: no float tolerance (inputs are copied, not recomputed, so any difference is
    an edit); otherwise floats may differ in their last bits (see :data:`_FLOAT_REL_TOL`).
    """
    recomputed = _normalize(recomputed, entry)
    if _json_text(stored) == _json_text(recomputed):
        return  # the same JSON, so no difference under any rule (the usual case: fast)
    diff = _first_difference(stored, recomputed, "", exact)
    if diff is not None:
        path, left, right = diff
        raise ReportVerificationError(
            f"{entry}{path}", f"stored {_short(left)}, recomputed {_short(right)}"
        )


_MISSING = object()


def _first_difference(a: Any, b: Any, path: str, exact: bool) -> tuple[str, Any, Any] | None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=str):
            diff = _first_difference(
                a.get(key, _MISSING), b.get(key, _MISSING), f"{path}.{key}", exact
            )
            if diff is not None:
                return diff
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            left = a[i] if i < len(a) else _MISSING
            right = b[i] if i < len(b) else _MISSING
            diff = _first_difference(left, right, f"{path}[{i}]", exact)
            if diff is not None:
                return diff
        return None
    return None if _same_scalar(a, b, exact) else (path, a, b)


def _same_scalar(a: Any, b: Any, exact: bool) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int) and isinstance(b, int):  # counts, ids, seeds: never approximately
        return a == b
    if exact and isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return math.isclose(a, b, rel_tol=_FLOAT_REL_TOL, abs_tol=1e-12)
    return type(a) is type(b) and bool(a == b)


def _short(value: Any) -> str:
    if value is _MISSING:
        return "(absent)"
    text = json.dumps(value, sort_keys=True, allow_nan=True)
    return text if len(text) <= 80 else text[:77] + "..."
