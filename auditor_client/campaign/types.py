"""The contracts between the campaign runner, the probe suites and the report.

A campaign is a list of *probes*; each suite (copyright, bias, toxicity) turns its part of
the campaign file into probe specs and says, as a pure function, which request each probe
makes next given the verified answers so far (:meth:`Suite.next_call`). The runner makes
exactly those calls through an :class:`~auditor_client.client.AuditorClient` and keeps every
signed exchange in the probe's record; a verifier asks the same function which requests the
record must hold and compares them with the bodies the auditor signed. Findings are a pure
function of a probe's inputs and its *verified* answers, so anyone re-verifying a report can
recompute them and catch an edited finding.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from google.protobuf.message import Message

from auditor_client.client import AuditorClient, Verified
from auditor_client.wire._proto import audit_pb2 as pb

if TYPE_CHECKING:
    from auditor_client.campaign.model import CampaignFiles

JSON = dict[str, Any]

PROBE_REFUSAL_CODES: Final = frozenset({"PERMISSION_DENIED", "INVALID_ARGUMENT"})
"""Refusals of one probe's request that are that probe's outcome (the run goes on).

Only with the lab's signed refusal as evidence: a record may say "refused by the lab" only
when it holds the lab's signed, logged ``Refusal`` for the request the probe made."""


@dataclass(frozen=True)
class Exchange:
    """One signed request and the lab's signed answer, as stored in a report (base64)."""

    request: str
    response: str

    @classmethod
    def of(cls, verified: Verified) -> Exchange:
        return cls(
            request=base64.b64encode(verified.request.SerializeToString()).decode("ascii"),
            response=base64.b64encode(verified.response.SerializeToString()).decode("ascii"),
        )

    def signed_request(self) -> pb.SignedRequest:
        message: pb.SignedRequest = pb.SignedRequest.FromString(
            base64.b64decode(self.request, validate=True)
        )
        return message

    def signed_response(self) -> pb.SignedResponse:
        message: pb.SignedResponse = pb.SignedResponse.FromString(
            base64.b64decode(self.response, validate=True)
        )
        return message

    def to_json(self) -> JSON:
        return {"request": self.request, "response": self.response}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Exchange:
        return cls(request=str(obj["request"]), response=str(obj["response"]))


@dataclass(frozen=True)
class Call:
    """One request a probe's inputs imply: the method and its inner request message.

    The verifier compares :meth:`body` byte for byte with the body inside the auditor's
    signed envelope, so it is serialized exactly as the client serializes what it signs
    (``deterministic=True``).
    """

    method: str
    request: Message

    def body(self) -> bytes:
        """The serialized inner request, as the client puts it in the signed envelope."""
        data: bytes = self.request.SerializeToString(deterministic=True)
        return data

    def answers(self) -> int:
        """How many signed answers the call gets: one per item for a batch, else one."""
        if isinstance(self.request, pb.AttributeBatchRequest):
            return len(self.request.items)
        return 1

    def send(self, client: AuditorClient) -> list[Verified]:
        """Make the call through ``client`` (which verifies every answer).

        Raises:
            ServerRefusedError: The lab refused it (with its signed refusal as evidence
                when the request was authenticated).
            WireVerificationError: An answer does not verify.
            ValueError: The call is not one a probe may make (a suite's bug): probes call
                Generate, Score, Attribute, AttributeBatch, WhoAmI or GetPolicy.
        """
        r = self.request
        if self.method == "Generate" and isinstance(r, pb.GenerateRequest):
            generated = client.generate(
                r.prompt, max_new_tokens=r.max_new_tokens, temperature=r.temperature, seed=r.seed
            )
            return [generated]
        if self.method == "Score" and isinstance(r, pb.ScoreRequest):
            return [client.score(r.prompt, r.completion)]
        if self.method == "Attribute" and isinstance(r, pb.AttributeRequest):
            return [client.attribute(r.prompt, r.completion, top_k=r.top_k)]
        if self.method == "WhoAmI" and isinstance(r, pb.WhoAmIRequest):
            return [client.whoami()]
        if self.method == "GetPolicy" and isinstance(r, pb.GetPolicyRequest):
            return [client.get_policy()]
        if self.method == "AttributeBatch" and isinstance(r, pb.AttributeBatchRequest):
            top_ks = {item.top_k for item in r.items}
            if len(top_ks) != 1:
                raise ValueError("a batch call needs one top_k for all its items")
            items = [(item.prompt, item.completion) for item in r.items]
            return list(client.attribute_batch(items, top_k=top_ks.pop()))
        raise ValueError(f"a probe cannot call {self.method} with {type(r).__name__}")


@dataclass(frozen=True)
class ProbeSpec:
    """One probe to run: which suite, a stable id (unique within the suite), its inputs."""

    suite: str
    probe_id: str
    inputs: JSON


@dataclass(frozen=True)
class ProbeRecord:
    """A finished probe: its spec's inputs, every exchange in call order, its findings."""

    suite: str
    probe_id: str
    inputs: JSON
    exchanges: Sequence[Exchange]
    findings: JSON
    started_ms: int = 0
    finished_ms: int = 0
    notes: Sequence[str] = field(default_factory=tuple)

    def to_json(self) -> JSON:
        return {
            "suite": self.suite,
            "probe_id": self.probe_id,
            "inputs": self.inputs,
            "exchanges": [e.to_json() for e in self.exchanges],
            "findings": self.findings,
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ProbeRecord:
        return cls(
            suite=str(obj["suite"]),
            probe_id=str(obj["probe_id"]),
            inputs=dict(obj["inputs"]),
            exchanges=tuple(Exchange.from_json(e) for e in obj["exchanges"]),
            findings=dict(obj["findings"]),
            started_ms=int(obj.get("started_ms", 0)),
            finished_ms=int(obj.get("finished_ms", 0)),
            notes=tuple(str(n) for n in obj.get("notes", ())),
        )


class Steps(Protocol):
    """What :func:`drive` needs of a suite: which request a probe makes next."""

    def next_call(self, spec: ProbeSpec, answers: Sequence[pb.ResponseBody]) -> Call | None:
        """The probe's next request given its verified answers so far; None when done."""
        ...


class Suite(Steps, Protocol):
    """What every probe suite provides (one module per suite, registered by name)."""

    name: str
    """``copyright``, ``bias`` or ``toxicity``: the key under ``suites:`` in a campaign."""

    def plan(
        self, config: Mapping[str, Any], *, files: CampaignFiles, seed: int
    ) -> list[ProbeSpec]:
        """Expand the suite's campaign section into probe specs (deterministic for a seed).

        Reads every file the section names through ``files`` only (never the disk
        directly), so the runner knows which bytes the plan came from and a verifier can
        plan again from the copies a report carries; raises ``CampaignError`` naming the
        field or file line on bad input.
        """
        ...

    def next_call(self, spec: ProbeSpec, answers: Sequence[pb.ResponseBody]) -> Call | None:
        """The probe's next request given its verified answers so far; None when done.

        Pure and deterministic: the runner makes exactly these calls (:func:`drive`) and
        ``auditor verify`` asks it which requests a record must hold, so a probe's signed
        requests are bound to its inputs (and a later request to the verified earlier
        answers it depends on, e.g. attributing what was generated).
        """
        ...

    def findings(self, spec: ProbeSpec, answers: Sequence[pb.ResponseBody]) -> JSON:
        """The probe's findings from its inputs and its verified answers, in call order.

        Pure and deterministic: ``auditor verify`` recomputes it from a report's exchanges
        and compares it with the stored findings.
        """
        ...

    def summarize(self, records: Sequence[ProbeRecord]) -> JSON:
        """Suite-level findings over all its probes (rates, shares, intervals, top sources)."""
        ...


def drive(suite: Steps, spec: ProbeSpec, client: AuditorClient, made: list[Verified]) -> None:
    """Make every call ``suite.next_call`` implies for ``spec``, appending each answer.

    Answers go into the caller's ``made`` as they arrive, so a caller that catches a
    refusal still holds every verified exchange made before it.

    Raises:
        ServerRefusedError, WireVerificationError: from the client, as :meth:`Call.send`.
    """
    while (call := suite.next_call(spec, [v.body for v in made])) is not None:
        made.extend(call.send(client))


def refusal_findings(body: pb.ResponseBody) -> JSON:
    """A refused probe's findings: the code and message of the lab's *signed* refusal.

    Taken from the signed body, not from the gRPC status that carried it, so a verifier
    recomputes them from the evidence alone.
    """
    return {"refused": body.refusal.code, "message": body.refusal.message}
