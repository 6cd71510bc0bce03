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

**Verbatim evidence** (``verbatim``): the lab's answer also lists the stretches of the
opening + generation found word for word in training records the auditor may see
(``AttributeResponse.verbatim``). The work holding the longest stretch that reaches into
the generation is where the regurgitated passage came from, named by title and publisher
(all the lab discloses for proprietary records). Influence and verbatim evidence answer
different questions (what shaped the output; where its words occur), so where they point at
different works the report says so (``verbatim_vs_influence``): the verbatim work is not
among the works the attribution ranked, or the top-ranked work holds none of the verbatim
stretches. Either is worth a look: a copy the gradients miss, or influence from a work the
output does not quote. Both blocks are pure functions of the signed answers, so
``auditor verify`` recomputes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from auditor_client.campaign.model import CampaignFiles
from auditor_client.campaign.suites import _config, _probe, influence
from auditor_client.campaign.suites.metrics import longest_common_substring, ngram_overlap
from auditor_client.campaign.types import JSON, Call, ProbeRecord, ProbeSpec
from auditor_client.client import AuditorClient, VerbatimEvidence, verbatim_evidence
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
_SPAN_TEXT_CHARS = 200
WORK_FIELDS: tuple[str, ...] = ("title", "publisher", "license", "data_class")
"""What names a work (as :data:`influence.GROUP_FIELDS`): reprints at other addresses are one."""


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
        verbatim = (
            verbatim_findings(attributed, str(inputs["opening"]), generation)
            if attributed is not None
            else None
        )
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
            "verbatim": verbatim,
            "reference_verbatim": verbatim is not None
            and any(w["title"].casefold() == title for w in verbatim["works"]),
            "verbatim_vs_influence": compare_evidence(verbatim, attribution),
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
        summary["verbatim"] = _verbatim_summary(records)
        return summary


def _short_source(row: Mapping[str, Any] | None) -> JSON | None:
    if row is None:
        return None
    return {k: row[k] for k in ("title", "publisher", "license", "data_class")}


# --- verbatim evidence ------------------------------------------------------------------------


def _work(source: Any) -> JSON:
    return {f: getattr(source, f) for f in WORK_FIELDS}


def _work_key(row: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(str(row[f]) for f in WORK_FIELDS)


def verbatim_findings(response: pb.AttributeResponse, opening: str, generation: str) -> JSON:
    """The verbatim block of one probe: every span with the works holding it, and the works
    ranked by their longest span reaching into the generation.

    Only the auditor's own text of a span is kept (the lab's ``span_text`` of a public record
    is its scrubbed copy of the same words; a proprietary record has none). Public record
    ids are kept as quotable evidence; a proprietary source is its work's metadata.

    Raises:
        MalformedResponseError: a span lies outside the attributed text.
    """
    spans = verbatim_evidence(response, opening + generation, prompt_chars=len(opening))
    rows: list[JSON] = []
    works: dict[tuple[str, ...], JSON] = {}
    for span in spans:
        held = {_work_key(w): w for w in (_work(s) for s in span.sources)}
        rows.append(
            {
                "start": span.start,
                "end": span.end,
                "region": span.region,
                "chars": span.end - span.start,
                "words": span.words,
                "records": span.records,
                "text": span.text[:_SPAN_TEXT_CHARS],
                "works": [held[k] for k in sorted(held)],
                "public_records": sorted(
                    {s.record_id for s in span.sources if s.data_class == "public" and s.record_id}
                ),
            }
        )
        if span.region == "prompt":
            continue  # the opening is the auditor's own: quoting it proves nothing
        reached = _chars_in_generation(span, len(opening))
        for key, work in held.items():
            entry = works.setdefault(key, {**work, "longest_chars": 0, "spans": 0})
            entry["longest_chars"] = max(entry["longest_chars"], reached)
            entry["spans"] += 1
    ranked = sorted(works.values(), key=lambda w: (-w["longest_chars"], *_work_key(w)))
    return {
        "searched": response.verbatim_searched,
        "spans": rows,
        "works": ranked,
        "top_work": dict(ranked[0]) if ranked else None,
    }


def _chars_in_generation(span: VerbatimEvidence, opening_chars: int) -> int:
    """Characters of the span that lie in the generation (the part the model produced)."""
    return span.end - max(span.start, opening_chars)


def compare_evidence(
    verbatim: Mapping[str, Any] | None, attribution: Mapping[str, Any] | None
) -> JSON:
    """Where verbatim evidence and influence point at different works.

    ``verbatim_work_not_in_influence``: the work with the longest verbatim stretch in the
    generation is none of the works the attribution ranked. ``influence_top_without_verbatim``:
    the top-ranked work holds no verbatim stretch of the generation while others do. ``agree``
    is None when there is nothing to compare (no verbatim stretch in the generation, or no
    attribution).
    """
    top_verbatim = verbatim["top_work"] if verbatim else None
    sources = list(attribution["sources"]) if attribution else []
    top_influence = sources[0] if sources else None
    disagreements: list[str] = []
    if top_verbatim is not None and sources:
        ranked = {_work_key(row) for row in sources}
        if _work_key(top_verbatim) not in ranked:
            disagreements.append("verbatim_work_not_in_influence")
        quoted = {_work_key(w) for w in verbatim["works"]} if verbatim else set()
        if top_influence is not None and _work_key(top_influence) not in quoted:
            disagreements.append("influence_top_without_verbatim")
    comparable = top_verbatim is not None and top_influence is not None
    return {
        "verbatim_work": _short(top_verbatim),
        "verbatim_chars": int(top_verbatim["longest_chars"]) if top_verbatim else 0,
        "influence_top": _short(top_influence),
        "agree": (not disagreements) if comparable else None,
        "disagreements": disagreements,
    }


def _short(row: Mapping[str, Any] | None) -> JSON | None:
    return None if row is None else {f: row[f] for f in WORK_FIELDS}


def _verbatim_summary(records: Sequence[ProbeRecord]) -> JSON:
    """Over the answered probes: how many were searched, how many generations hold a verbatim
    stretch, the works they came from and every probe where the two kinds of evidence part."""
    answered = [r for r in records if "refused" not in r.findings]
    blocks = [(r, r.findings.get("verbatim")) for r in answered]
    searched = [(r, b) for r, b in blocks if b and b["searched"]]
    items = []
    for record, block in searched:
        comparison = record.findings["verbatim_vs_influence"]
        if block["top_work"] is None and not comparison["disagreements"]:
            continue
        items.append(
            {
                "probe_id": record.probe_id,
                "reference_title": record.findings["reference_title"],
                "flagged": record.findings["flagged"],
                **comparison,
            }
        )
    return {
        "searched": len(searched),
        "with_verbatim": sum(1 for _, b in searched if b["top_work"] is not None),
        "flagged_with_verbatim": sum(
            1 for r, b in searched if b["top_work"] is not None and r.findings["flagged"]
        ),
        "disagreements": sum(1 for item in items if item["disagreements"]),
        "items": items,
    }
