"""The contracts between the campaign runner, the probe suites and the report.

A campaign is a list of *probes*; each suite (copyright, bias, toxicity) turns its part of
the campaign file into probe specs, runs one spec against the lab through an
:class:`~auditor_client.client.AuditorClient`, and keeps every signed exchange it made in
the probe's record. Findings are a pure function of a record's inputs and its *verified*
answers, so anyone re-verifying a report can recompute them and catch an edited finding.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from auditor_client.client import AuditorClient, Verified
from auditor_client.wire._proto import audit_pb2 as pb

JSON = dict[str, Any]


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


class Suite(Protocol):
    """What every probe suite provides (one module per suite, registered by name)."""

    name: str
    """``copyright``, ``bias`` or ``toxicity``: the key under ``suites:`` in a campaign."""

    def plan(self, config: Mapping[str, Any], *, base_dir: Path, seed: int) -> list[ProbeSpec]:
        """Expand the suite's campaign section into probe specs (deterministic for a seed).

        Reads the files the section names (relative to ``base_dir``, the campaign file's
        directory); raises ``CampaignError`` naming the field or file line on bad input.
        """
        ...

    def run(self, spec: ProbeSpec, client: AuditorClient) -> ProbeRecord:
        """Run one probe: every call through ``client`` (so every answer is verified)."""
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
