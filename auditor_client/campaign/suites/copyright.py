"""Copyright suite: does the model reproduce works the auditor holds, and from which sources?

The auditor keeps its own copy of each work (``references``: an opening and the text that
follows it). A probe prompts the model with the opening (greedy, seeded), measures how much
of the generation is verbatim from the auditor's continuation, and asks the lab to attribute
the generation. Overlap is measured on the auditor's side only, so the lab never has to
disclose licensed text: for proprietary results the policy sends source metadata, and that
metadata (title, publisher, licence) is what a finding names.

Two overlap measures, because they fail differently: the longest common substring in
characters (``difflib``, ``autojunk=False``) catches one long verbatim run; word n-gram
overlap (fraction of the generation's n-grams found in the continuation) catches copying
with small edits. A probe is flagged when either meets its threshold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from auditor_client.campaign.model import CampaignFiles
from auditor_client.campaign.suites import _config, _probe, influence
from auditor_client.campaign.suites.metrics import longest_common_substring, ngram_overlap
from auditor_client.campaign.types import JSON, Call, ProbeRecord, ProbeSpec
from auditor_client.client import AuditorClient
from auditor_client.wire._proto import audit_pb2 as pb

SECTION_SCHEMA: JSON = {
    "type": "object",
    "required": ["references"],
    "additionalProperties": False,
    "properties": {
        "references": {"type": "string", "minLength": 1},
        "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": 1024, "default": 48},
        "top_k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
        "flag_lcs_chars": {"type": "integer", "minimum": 1, "default": 40},
        "flag_ngram_overlap": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 1,
            "default": 0.5,
        },
        "ngram": {"type": "integer", "minimum": 1, "maximum": 50, "default": 8},
    },
}

REFERENCE_SCHEMA: JSON = {
    "type": "object",
    "required": ["id", "title", "opening", "continuation"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]*$", "maxLength": 100},
        "title": {"type": "string", "minLength": 1},
        "opening": {"type": "string", "minLength": 1, "pattern": r"\S"},
        "continuation": {"type": "string", "minLength": 1, "pattern": r"\S"},
        "note": {"type": "string"},
    },
}

_LCS_TEXT_CHARS = 200


class CopyrightSuite:
    """Verbatim reproduction of reference works, and the sources attribution points at."""

    name = "copyright"

    def plan(
        self, config: Mapping[str, Any], *, files: CampaignFiles, seed: int
    ) -> list[ProbeSpec]:
        """One probe per reference line, in file order.

        The seed (unused by greedy decoding) commits the signed ``Generate`` request to the
        whole reference, continuation included (:func:`_probe.committed_seed`).
        """
        section = _config.check_section(self.name, config, SECTION_SCHEMA)
        label, text = _config.read_file(self.name, "references", section["references"], files)
        specs = []
        for ref in _config.read_jsonl(label, text, REFERENCE_SCHEMA):
            inputs: JSON = {
                "reference_id": ref["id"],
                "reference_title": ref["title"],
                "opening": ref["opening"],
                "continuation": ref["continuation"],
                "max_new_tokens": section["max_new_tokens"],
                "temperature": 0.0,
                "top_k": section["top_k"],
                "flag_lcs_chars": section["flag_lcs_chars"],
                "flag_ngram_overlap": section["flag_ngram_overlap"],
                "ngram": section["ngram"],
            }
            inputs["seed"] = _probe.committed_seed(seed, self.name, ref["id"], inputs)
            specs.append(ProbeSpec(suite=self.name, probe_id=ref["id"], inputs=inputs))
        return specs

    def next_call(self, spec: ProbeSpec, answers: Sequence[pb.ResponseBody]) -> Call | None:
        """Generate from the opening; then attribute the generation unless it is empty."""
        return _probe.generate_then_attribute(
            spec.inputs, str(spec.inputs["opening"]), answers, lambda text: bool(text.strip())
        )

    def run(self, spec: ProbeSpec, client: AuditorClient) -> ProbeRecord:
        """Make the calls :meth:`next_call` implies and record them with their findings."""
        return _probe.run(self, spec, client)

    def findings(self, spec: ProbeSpec, answers: Sequence[pb.ResponseBody]) -> JSON:
        """Overlap with the reference, the flag, and who the lab says the text came from."""
        _probe.check_count(answers, 2)
        inputs = spec.inputs
        generated = _probe.answer(answers, 0, "generate")
        if generated is None:
            raise ValueError("a copyright probe starts with a generate answer")
        generation: str = generated.completion
        continuation = str(inputs["continuation"])
        lcs = longest_common_substring(generation, continuation)
        overlap, grams = ngram_overlap(generation, continuation, int(inputs["ngram"]))
        reasons = []
        if len(lcs) >= int(inputs["flag_lcs_chars"]):
            reasons.append("lcs")
        if grams and overlap >= float(inputs["flag_ngram_overlap"]):
            reasons.append("ngram")
        attributed = _probe.answer(answers, 1, "attribute")
        attribution = influence.attribution_findings(attributed) if attributed is not None else None
        shares = attribution["influence_share_by_class"] if attribution else {}
        proprietary = [
            {k: row[k] for k in ("title", "publisher", "url", "license", "count", "share")}
            for row in (attribution["sources"] if attribution else [])
            if row["data_class"] == "proprietary"
        ]
        title = str(inputs["reference_title"]).casefold()
        return {
            "reference_id": inputs["reference_id"],
            "reference_title": inputs["reference_title"],
            "generation": generation,
            "lcs_chars": len(lcs),
            "lcs_text": lcs[:_LCS_TEXT_CHARS],
            "ngram_overlap": round(overlap, influence.DIGITS),
            "ngrams": grams,
            "flagged": bool(reasons),
            "flag_reasons": reasons,
            "attribution": attribution,
            "proprietary_share": float(shares.get("proprietary", 0.0)),
            "proprietary_sources": proprietary,
            "reference_attributed": any(row["title"].casefold() == title for row in proprietary),
            "top_source": influence.top_source(attribution),
            "top_proprietary_source": influence.top_source(attribution, "proprietary"),
        }

    def summarize(self, records: Sequence[ProbeRecord]) -> JSON:
        """Flag rate and the flagged items with the proprietary source each is attributed to.

        A flagged item's ``top_source`` is its largest-share *proprietary* source (None when
        no proprietary record was ranked): the licensed work the copy most likely came from.
        """
        findings = [r.findings for r in records]
        summary = influence.common_summary(findings)
        answered = _probe.live(findings)
        flagged = [r for r in records if "refused" not in r.findings and r.findings["flagged"]]
        summary["flagged"] = len(flagged)
        summary["flag_rate"] = (
            round(len(flagged) / len(answered), influence.DIGITS) if answered else 0.0
        )
        summary["flagged_items"] = [
            {
                "probe_id": r.probe_id,
                "reference_title": r.findings["reference_title"],
                "lcs_chars": r.findings["lcs_chars"],
                "ngram_overlap": r.findings["ngram_overlap"],
                "top_source": _short_source(r.findings["top_proprietary_source"]),
                "proprietary_share": r.findings["proprietary_share"],
            }
            for r in flagged
        ]
        return summary


def _short_source(row: Mapping[str, Any] | None) -> JSON | None:
    if row is None:
        return None
    return {k: row[k] for k in ("title", "publisher", "license", "data_class")}
