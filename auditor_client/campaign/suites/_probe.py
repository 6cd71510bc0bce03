"""Plumbing every suite's ``run``/``findings`` shares: reading answers, building records."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from auditor_client.campaign.types import JSON, Exchange, ProbeRecord, ProbeSpec
from auditor_client.client import AuditorClient, Verified
from auditor_client.wire._proto import audit_pb2 as pb


class _Finder(Protocol):
    name: str

    def findings(self, spec: ProbeSpec, answers: Sequence[pb.ResponseBody]) -> JSON: ...


def now_ms() -> int:
    return int(time.time() * 1000)


def answer(answers: Sequence[pb.ResponseBody], index: int, kind: str) -> Any | None:
    """The ``kind`` result (``generate``, ``score``, ``attribute``) of answer ``index``.

    ``None`` when the probe made fewer calls (a step it skipped on purpose). An answer of
    another kind means the record does not belong to this probe: refuse to compute findings
    from it rather than guess.

    Raises:
        ValueError: answer ``index`` is not a ``kind`` answer.
    """
    if index >= len(answers):
        return None
    body = answers[index]
    found = body.WhichOneof("result")
    if found != kind:
        raise ValueError(f"answer {index} should be a {kind} result, got {found}")
    return getattr(body, kind)


def check_count(answers: Sequence[pb.ResponseBody], most: int) -> None:
    """Refuse records with more answers than the probe makes (findings would ignore some)."""
    if len(answers) > most:
        raise ValueError(f"expected at most {most} answers, got {len(answers)}")


def generate_then_attribute(
    client: AuditorClient,
    inputs: Mapping[str, Any],
    prompt: str,
    attribute_if: Callable[[str], bool],
) -> list[Verified]:
    """Generate from ``prompt`` with the probe's settings; attribute the text if asked to.

    The shared shape of the copyright and toxicity probes: one ``Generate`` (its
    ``max_new_tokens``, ``temperature`` and ``seed`` from ``inputs``), then one ``Attribute``
    of that generation (``top_k`` from ``inputs``) when ``attribute_if(generation)`` holds.
    """
    calls = [
        client.generate(
            prompt,
            max_new_tokens=inputs["max_new_tokens"],
            temperature=inputs["temperature"],
            seed=inputs["seed"],
        )
    ]
    generation = calls[0].body.generate.completion
    if attribute_if(generation):
        calls.append(client.attribute(prompt, generation, top_k=inputs["top_k"]))
    return calls


def finish(
    suite: _Finder, spec: ProbeSpec, calls: Sequence[Verified], started_ms: int
) -> ProbeRecord:
    """The probe's record: its exchanges in call order and findings computed from them.

    Findings go through the suite's pure ``findings`` on exactly the verified bodies, so the
    stored findings are what a verifier recomputes from the stored exchanges.
    """
    return ProbeRecord(
        suite=suite.name,
        probe_id=spec.probe_id,
        inputs=spec.inputs,
        exchanges=tuple(Exchange.of(v) for v in calls),
        findings=suite.findings(spec, [v.body for v in calls]),
        started_ms=started_ms,
        finished_ms=now_ms(),
    )


def live(findings: Sequence[JSON]) -> list[JSON]:
    """Findings of probes the lab answered (not refused)."""
    return [f for f in findings if "refused" not in f]
