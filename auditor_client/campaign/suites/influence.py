"""The one influence measure every suite (and every report plot) uses.

For one verified ``AttributeResponse``:

* ``influence_share_by_class``: per data class, the sum of ``max(score, 0)`` of its results
  over the total positive score (all zeros when nothing scored positive). Negative scores are
  records that argue *against* the completion; counting them would let a class's share go
  negative or over 1, which no plot can show honestly.
* sources: results grouped by work, ``(title, publisher, license, data_class)``, with their
  count, share of the positive score mass and the distinct ``urls`` they were found at (``url``
  is the first of them). A lab may hold one work many times over (reprints, syndicated
  copies, each at its own address); grouping by address would split the work's influence
  into slivers and hide the very source an auditor is looking for. For proprietary data this
  metadata is all the lab discloses, and all this module ever copies.

Public results may be quoted as evidence (record id and matched span); a proprietary
result's ``record_id``/``text``/``span_text`` is never read, even if a misbehaving lab sent
them, so no finding can leak licensed text further.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from auditor_client.campaign.suites.metrics import mean
from auditor_client.campaign.types import JSON
from auditor_client.wire._proto import audit_pb2 as pb

KNOWN_CLASSES: tuple[str, ...] = ("public", "proprietary")
"""Classes always present in shares (at 0.0 when absent), so plots have fixed columns."""

SOURCE_FIELDS: tuple[str, ...] = ("title", "publisher", "url", "license", "data_class")
"""Metadata fields of a source row (``url``: the first of ``urls``)."""
GROUP_FIELDS: tuple[str, ...] = ("title", "publisher", "license", "data_class")
"""What identifies a work: results of one work found at several addresses are one source."""
TOP_SOURCES = 10
EVIDENCE_LIMIT = 5
EVIDENCE_CHARS = 240
DIGITS = 6
"""Shares are rounded so stored findings read cleanly and compare exactly after JSON."""


def _positive(score: float) -> float:
    return score if score > 0.0 else 0.0


def influence_share_by_class(response: pb.AttributeResponse) -> dict[str, float]:
    """Share of positive attribution score per data class (see the module docstring)."""
    mass: dict[str, float] = dict.fromkeys(KNOWN_CLASSES, 0.0)
    for result in response.results:
        mass[result.data_class] = mass.get(result.data_class, 0.0) + _positive(result.score)
    total = sum(mass.values())
    return {
        name: (round(value / total, DIGITS) if total > 0.0 else 0.0)
        for name, value in sorted(mass.items())
    }


def sources(response: pb.AttributeResponse) -> list[JSON]:
    """Results grouped by work, with count, share and addresses, largest share first."""
    groups: dict[tuple[str, ...], list[float]] = {}
    urls: dict[tuple[str, ...], set[str]] = {}
    for result in response.results:
        key = (
            result.source.title,
            result.source.publisher,
            result.source.license,
            result.data_class,
        )
        groups.setdefault(key, []).append(_positive(result.score))
        urls.setdefault(key, set()).add(result.source.url)
    total = sum(sum(scores) for scores in groups.values())
    rows: list[JSON] = []
    for group_key, scores in groups.items():
        row = _source_row(dict(zip(GROUP_FIELDS, group_key, strict=True)), urls[group_key])
        row["count"] = len(scores)
        row["share"] = round(sum(scores) / total, DIGITS) if total > 0.0 else 0.0
        rows.append(row)
    return sort_sources(rows)


def _source_row(fields: Mapping[str, Any], urls: Iterable[str]) -> JSON:
    ordered = sorted({u for u in urls if u})
    return {
        "title": fields["title"],
        "publisher": fields["publisher"],
        "url": ordered[0] if ordered else "",
        "urls": ordered,
        "license": fields["license"],
        "data_class": fields["data_class"],
    }


def sort_sources(rows: Iterable[JSON]) -> list[JSON]:
    """Largest share first, then most results, then by metadata: a total, stable order."""
    return sorted(
        rows, key=lambda r: (-r["share"], -r["count"], *(str(r[f]) for f in SOURCE_FIELDS))
    )


def public_evidence(response: pb.AttributeResponse, limit: int = EVIDENCE_LIMIT) -> list[JSON]:
    """The best public results as quotable evidence: rank, record id, score, matched span.

    Only ``data_class == "public"`` results with a text disclosure qualify; the span is the
    lab's matched window (``span_text``) for full text, the snippet itself otherwise.
    """
    rows: list[JSON] = []
    for result in response.results:
        if result.data_class != "public" or result.disclosure not in ("full_text", "snippet"):
            continue
        span = result.span_text if result.disclosure == "full_text" else result.text
        rows.append(
            {
                "rank": result.rank,
                "record_id": result.record_id,
                "score": result.score,
                "title": result.source.title,
                "span": span[:EVIDENCE_CHARS],
            }
        )
        if len(rows) >= limit:
            break
    return rows


def attribution_findings(response: pb.AttributeResponse) -> JSON:
    """The per-probe influence block every suite stores under ``"attribution"``."""
    return {
        "logprob": response.logprob,
        "results": len(response.results),
        "influence_share_by_class": influence_share_by_class(response),
        "sources": sources(response),
        "public_evidence": public_evidence(response),
    }


def top_source(attribution: Mapping[str, Any] | None, data_class: str | None = None) -> JSON | None:
    """The largest-share source of an attribution block (optionally of one class), or None."""
    if attribution is None:
        return None
    for row in attribution["sources"]:
        if data_class is None or row["data_class"] == data_class:
            return dict(row)
    return None


def summarize_influence(attributions: Sequence[Mapping[str, Any]]) -> tuple[JSON, list[JSON]]:
    """Mean class shares and the top sources over a suite's attributed probes.

    Each probe weighs the same (a probe with many results does not dominate): a source's
    suite-level ``share`` is its mean per-probe share, ``count`` its total results.
    """
    classes = sorted(
        {*KNOWN_CLASSES, *(c for a in attributions for c in a["influence_share_by_class"])}
    )
    shares: JSON = {
        c: round(
            mean([float(a["influence_share_by_class"].get(c, 0.0)) for a in attributions]), DIGITS
        )
        for c in classes
    }
    totals: dict[tuple[str, ...], JSON] = {}
    for attribution in attributions:
        for row in attribution["sources"]:
            key = tuple(str(row[f]) for f in GROUP_FIELDS)
            entry = totals.setdefault(key, {**_source_row(row, ()), "count": 0, "share": 0.0})
            entry["urls"] = sorted({*entry["urls"], *row.get("urls", [row["url"]])} - {""})
            entry["url"] = entry["urls"][0] if entry["urls"] else ""
            entry["count"] += int(row["count"])
            entry["share"] += float(row["share"])
    n = len(attributions)
    for entry in totals.values():
        entry["share"] = round(entry["share"] / n, DIGITS) if n else 0.0
    return shares, sort_sources(totals.values())[:TOP_SOURCES]


def common_summary(findings: Sequence[Mapping[str, Any]]) -> JSON:
    """The keys every suite summary carries, from its records' findings.

    ``probes`` counts every record, ``refused`` those whose findings say the lab refused
    (the runner writes ``"refused"`` there), and the influence keys cover the probes that
    have an ``"attribution"`` block.
    """
    refused = sum(1 for f in findings if "refused" in f)
    attributions = [
        f["attribution"] for f in findings if "refused" not in f and f.get("attribution")
    ]
    shares, top = summarize_influence(attributions)
    return {
        "probes": len(findings),
        "refused": refused,
        "attributed": len(attributions),
        "influence_share_by_class": shares,
        "top_sources": top,
    }
