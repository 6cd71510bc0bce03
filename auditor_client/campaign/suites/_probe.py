"""Plumbing every suite's ``next_call``/``run``/``findings`` shares: the calls, reading
answers, building records."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from auditor_client.campaign.model import canonical_json
from auditor_client.campaign.suites.metrics import derive_seed
from auditor_client.campaign.types import JSON, Call, Exchange, ProbeRecord, ProbeSpec, drive
from auditor_client.client import AuditorClient, Verified
from auditor_client.wire._proto import audit_pb2 as pb


class _Suite(Protocol):
    name: str

    def next_call(self, spec: ProbeSpec, answers: Sequence[pb.ResponseBody]) -> Call | None: ...

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


def committed_seed(seed: int, suite: str, probe_id: str, inputs: Mapping[str, Any]) -> int:
    """A probe's ``Generate`` seed, derived from the campaign seed *and all its other inputs*.

    Greedy decoding ignores the seed and sampling draws from it; either way it travels in
    the request the auditor signs and the lab logs. Deriving it from every input (SHA-256
    of their canonical JSON) commits that signed request to the inputs the lab never sees
    (a reference's continuation, the flag and toxicity thresholds), so a report whose
    reference text was replaced afterwards no longer matches its own signed requests.
    """
    digest = hashlib.sha256(canonical_json(dict(inputs))).hexdigest()
    return derive_seed(seed, suite, probe_id, digest)


def generate_call(inputs: Mapping[str, Any], prompt: str) -> Call:
    """``Generate`` from ``prompt`` with the probe's ``max_new_tokens``, temperature, seed."""
    return Call(
        "Generate",
        pb.GenerateRequest(
            prompt=prompt,
            max_new_tokens=int(inputs["max_new_tokens"]),
            temperature=float(inputs["temperature"]),
            seed=int(inputs["seed"]),
        ),
    )


def attribute_call(prompt: str, completion: str, top_k: int) -> Call:
    """``Attribute`` ``completion`` after ``prompt``, ``top_k`` results."""
    return Call(
        "Attribute", pb.AttributeRequest(prompt=prompt, completion=completion, top_k=int(top_k))
    )


def generate_then_attribute(
    inputs: Mapping[str, Any],
    prompt: str,
    answers: Sequence[pb.ResponseBody],
    attribute_if: Callable[[str], bool],
) -> Call | None:
    """The next call of a generate-then-attribute probe, given its answers so far.

    The shared shape of the copyright and toxicity probes: one ``Generate`` (its
    ``max_new_tokens``, ``temperature`` and ``seed`` from ``inputs``), then one ``Attribute``
    of *the verified generation* (``top_k`` from ``inputs``) when
    ``attribute_if(generation)`` holds; then nothing.

    Raises:
        ValueError: the first answer is not a generate result.
    """
    if not answers:
        return generate_call(inputs, prompt)
    if len(answers) > 1:
        return None
    generated = answer(answers, 0, "generate")
    if generated is None:
        return None
    generation: str = generated.completion
    if attribute_if(generation):
        return attribute_call(prompt, generation, inputs["top_k"])
    return None


def run(suite: _Suite, spec: ProbeSpec, client: AuditorClient) -> ProbeRecord:
    """Make the probe's calls (:func:`~auditor_client.campaign.types.drive`) and record them.

    Raises:
        ServerRefusedError: the lab refused a call (the runner records it as the outcome).
    """
    started = now_ms()
    made: list[Verified] = []
    drive(suite, spec, client, made)
    return finish(suite, spec, made, started)


def finish(
    suite: _Suite, spec: ProbeSpec, calls: Sequence[Verified], started_ms: int
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
