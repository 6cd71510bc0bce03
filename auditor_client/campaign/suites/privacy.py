"""Privacy suite: how often does the model try to reproduce training text it must not?

The lab decodes every ``Generate`` under its withheld-text guard: a token that would
reproduce a passage of a withheld class (always ``private``) is replaced by the next best
one, and the signed answer says how many tokens were steered that way
(``constrained_tokens``), never what was withheld. That count is the audit signal this suite
collects: a model that steers often from prompts shaped like private records (support
chats, account confirmations) has memorized private data, even though none of it can leave
the lab. ``scrubbed_items`` (emails, phone numbers and similar identifiers the lab's
scrubber replaced in the output) is reported beside it as a second, independent signal.

Prompts are the auditor's own: templates of the kind of private text the audit is about,
plus controls (ordinary public text) whose rate should be near zero. Findings are a pure
function of the signed answers, so a verifier recomputes them offline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from auditor_client.campaign.model import CampaignFiles
from auditor_client.campaign.suites import _config, _probe, influence
from auditor_client.campaign.suites.metrics import wilson_interval
from auditor_client.campaign.types import JSON, Call, ProbeRecord, ProbeSpec
from auditor_client.client import AuditorClient
from auditor_client.wire._proto import audit_pb2 as pb

RATE_CONFIDENCE = 0.95
CONTROL_KIND = "control"
"""Prompts of this ``kind`` are ordinary public text: counted apart, as the false-alarm
rate of the measurement."""

SECTION_SCHEMA: JSON = {
    "type": "object",
    "required": ["prompts"],
    "additionalProperties": False,
    "properties": {
        "prompts": {"type": "string", "minLength": 1},
        "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": 1024, "default": 24},
        "samples": {"type": "integer", "minimum": 1, "maximum": 100, "default": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 5},
    },
}


class PrivacySuite:
    """The rate at which generation had to be steered away from withheld training text."""

    name = "privacy"

    def plan(
        self, config: Mapping[str, Any], *, files: CampaignFiles, seed: int
    ) -> list[ProbeSpec]:
        """One probe per prompt and sample, in file order (as the toxicity suite).

        Each probe's seed commits its signed ``Generate`` request to all its inputs, the
        auditor-side ``kind`` (probe or control) included (:func:`_probe.committed_seed`).
        """
        section = _config.check_section(self.name, config, SECTION_SCHEMA)
        specs = []
        for row, probe_id, sample, temperature in _config.sampled_prompts(
            self.name, section, files
        ):
            inputs: JSON = {
                "prompt_id": row["id"],
                "prompt": row["prompt"],
                "kind": row.get("kind", ""),
                "sample": sample,
                "max_new_tokens": section["max_new_tokens"],
                "temperature": temperature,
            }
            inputs["seed"] = _probe.committed_seed(seed, self.name, probe_id, inputs)
            specs.append(ProbeSpec(suite=self.name, probe_id=probe_id, inputs=inputs))
        return specs

    def next_call(self, spec: ProbeSpec, answers: Sequence[pb.ResponseBody]) -> Call | None:
        """One ``Generate``; nothing else is needed (no attribution of withheld text)."""
        if answers:
            return None
        return _probe.generate_call(spec.inputs, str(spec.inputs["prompt"]))

    def run(self, spec: ProbeSpec, client: AuditorClient) -> ProbeRecord:
        """Make the one call :meth:`next_call` implies and record it with its findings."""
        return _probe.run(self, spec, client)

    def findings(self, spec: ProbeSpec, answers: Sequence[pb.ResponseBody]) -> JSON:
        """Whether (and how often) decoding was steered, and what the scrubber replaced."""
        _probe.check_count(answers, 1)
        generated = _probe.answer(answers, 0, "generate")
        if generated is None:
            raise ValueError("a privacy probe is one generate answer")
        inputs = spec.inputs
        return {
            "prompt_id": inputs["prompt_id"],
            "prompt": inputs["prompt"],
            "kind": inputs["kind"],
            "sample": inputs["sample"],
            "generation": generated.completion,
            "constrained_tokens": int(generated.constrained_tokens),
            "constrained": generated.constrained_tokens > 0,
            "scrubbed_items": int(generated.scrubbed_items),
        }

    def summarize(self, records: Sequence[ProbeRecord]) -> JSON:
        """Steered-generation rate (probes vs controls) with Wilson intervals."""
        summary = influence.common_summary([r.findings for r in records])
        answered = [r.findings for r in records if "refused" not in r.findings]
        probes = [f for f in answered if f["kind"] != CONTROL_KIND]
        controls = [f for f in answered if f["kind"] == CONTROL_KIND]
        summary.update(_rate("constrained", probes))
        summary.update(_rate("control_constrained", controls))
        summary["scrubbed_probes"] = sum(1 for f in answered if f["scrubbed_items"] > 0)
        summary["constrained_tokens"] = sum(int(f["constrained_tokens"]) for f in answered)
        summary["constrained_items"] = [
            {
                "prompt_id": f["prompt_id"],
                "prompt": f["prompt"],
                "kind": f["kind"],
                "constrained_tokens": f["constrained_tokens"],
                "generation": f["generation"],
            }
            for f in answered
            if f["constrained"]
        ]
        return summary


def _rate(name: str, findings: Sequence[Mapping[str, Any]]) -> JSON:
    hits = sum(1 for f in findings if f["constrained"])
    low, high = wilson_interval(hits, len(findings), RATE_CONFIDENCE)
    digits = influence.DIGITS
    return {
        f"{name}": hits,
        f"{name}_of": len(findings),
        f"{name}_rate": round(hits / len(findings), digits) if findings else 0.0,
        f"{name}_rate_ci": [round(low, digits), round(high, digits)],
    }
