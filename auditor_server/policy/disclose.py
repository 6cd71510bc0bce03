"""Decide what one attribution result may reveal: the last step before it leaves the lab.

:func:`disclose` is a pure function from an engine result, its catalog record and a
disclosure level (from :meth:`Policy.disclosure_for`) to a :class:`DisclosedResult` whose
fields mirror the wire's ``AttributionResult``. Whatever a level must not reveal is simply
absent from the returned object, so nothing later can leak it by accident.

The engine's classes are only described by :class:`AttributionLike` and :class:`SpanLike`:
importing :mod:`auditor_server.attribution.engine` would pull in torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from auditor_server.corpus.records import Record
from auditor_server.policy.errors import DisclosureError
from auditor_server.policy.model import DisclosureLevel
from auditor_server.policy.scrub import scrub, scrub_range

__all__ = [
    "SCORE_DECIMALS",
    "AttributionLike",
    "DisclosedResult",
    "DisclosedSpanSource",
    "SpanLike",
    "disclose",
    "disclose_span_source",
]

SCORE_DECIMALS = 6
"""Scores and module shares are rounded so answers carry no more precision than meaning
(and float noise between runs does not look like a different answer)."""


class SpanLike(Protocol):
    """Where the best-matching window lies in its record (the engine's ``Span``)."""

    @property
    def char_start(self) -> int: ...

    @property
    def char_end(self) -> int: ...


class AttributionLike(Protocol):
    """One ranked engine result (the engine's ``Attribution``)."""

    @property
    def rank(self) -> int: ...

    @property
    def record_id(self) -> str: ...

    @property
    def data_class(self) -> str: ...

    @property
    def score(self) -> float: ...

    @property
    def span(self) -> SpanLike: ...

    @property
    def module_shares(self) -> Mapping[str, float]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DisclosedResult:
    """What may leave the lab about one result; mirrors ``auditor.v1.AttributionResult``.

    Fields a level does not reveal are ``None``.
    """

    rank: int
    score: float
    """Rounded to :data:`SCORE_DECIMALS` places."""
    data_class: str
    disclosure: DisclosureLevel
    """The level applied: ``full_text``, ``snippet`` or ``source_metadata``."""
    title: str
    publisher: str
    url: str
    license: str
    record_id: str | None
    """Only for ``full_text`` and ``snippet``."""
    text: str | None
    """``full_text``: the scrubbed record; ``snippet``: a scrubbed window around the span."""
    span_text: str | None
    """``full_text`` only: the scrubbed matched span."""
    module_share: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    """Share of the score per tracked module, rounded like the score."""


def disclose(
    result: AttributionLike,
    record: Record,
    level: DisclosureLevel,
    *,
    snippet_chars: int,
) -> DisclosedResult:
    """Turn one engine result into what ``level`` allows to be shown.

    * ``full_text``: record id, the scrubbed record text and the scrubbed matched span.
    * ``snippet``: record id and a scrubbed window of at most ``snippet_chars`` characters
      around the matched span; no full text.
    * ``source_metadata``: title, publisher, url and licence only; no record id, text or span.

    Source metadata is curated by the lab for display and is returned as is.

    Args:
        result: The engine's result (rank, record id, class, score, span, module shares).
        record: The catalog record ``result`` points at.
        level: What the policy allows for this role and the record's class.
        snippet_chars: Length limit of a snippet (the policy's ``limits.snippet_chars``).

    Returns:
        The disclosed result.

    Raises:
        DisclosureError: ``level`` is ``none`` (the class should have been excluded before
            ranking), the record is not the one the result names, their data classes
            disagree, or the span lies outside the record. All are bugs upstream, so the
            answer fails closed instead of showing something.
    """
    if level == "none":
        raise DisclosureError(
            f"result of class {result.data_class!r} is not disclosable; hidden classes must be "
            "excluded before ranking"
        )
    if record.id != result.record_id:
        raise DisclosureError("catalog record does not match the attribution result")
    if record.source.data_class != result.data_class:
        raise DisclosureError("attribution result's data class disagrees with the catalog")
    start, end = result.span.char_start, result.span.char_end
    if not 0 <= start <= end <= len(record.text):
        raise DisclosureError("attribution span lies outside its record")

    record_id: str | None = None
    text: str | None = None
    span_text: str | None = None
    if level == "full_text":
        record_id = record.id
        text = scrub(record.text)
        span_text = scrub_range(record.text, start, end)
    elif level == "snippet":
        record_id = record.id
        lo, hi = _trim_to_words(record.text, *_window(len(record.text), start, end, snippet_chars))
        text = scrub_range(record.text, lo, hi)[:snippet_chars]
    source = record.source
    return DisclosedResult(
        rank=result.rank,
        score=round(float(result.score), SCORE_DECIMALS),
        data_class=result.data_class,
        disclosure=level,
        title=source.title,
        publisher=source.publisher,
        url=source.url,
        license=source.license,
        record_id=record_id,
        text=text,
        span_text=span_text,
        module_share=MappingProxyType(
            {
                name: round(float(share), SCORE_DECIMALS)
                for name, share in sorted(result.module_shares.items())
            }
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DisclosedSpanSource:
    """What may leave the lab about one record holding a verbatim span; mirrors
    ``auditor.v1.VerbatimSource``. Fields a level does not reveal are ``None``."""

    data_class: str
    disclosure: DisclosureLevel
    title: str
    publisher: str
    url: str
    license: str
    record_id: str | None
    """Only for ``full_text`` and ``snippet``."""
    span_text: str | None
    """The record's own text of the span, scrubbed: whole for ``full_text``, its first
    ``snippet_chars`` (cut at a word) for ``snippet``; ``None`` for ``source_metadata``."""


def disclose_span_source(
    record: Record,
    level: DisclosureLevel,
    *,
    char_start: int,
    char_end: int,
    snippet_chars: int,
) -> DisclosedSpanSource:
    """Turn one record holding a verbatim span into what ``level`` allows to be shown.

    The same levels as :func:`disclose`: ``full_text`` and ``snippet`` reveal the record id
    and the record's text of the span (a snippet no more than ``snippet_chars`` of it),
    scrubbed like any record text; ``source_metadata`` only the source (the auditor learns
    which work holds its text and, from the span, how much of it, never the record).

    Raises:
        DisclosureError: ``level`` is ``none`` (a withheld class must never be searched) or
            the span lies outside the record; both are bugs upstream, so the answer fails
            closed.
    """
    if level == "none":
        raise DisclosureError(
            f"a record of class {record.source.data_class!r} is not disclosable; withheld "
            "classes must not be searched for verbatim spans"
        )
    if not 0 <= char_start < char_end <= len(record.text):
        raise DisclosureError("verbatim span lies outside its record")
    record_id: str | None = None
    span_text: str | None = None
    if level == "full_text":
        record_id = record.id
        span_text = scrub_range(record.text, char_start, char_end)
    elif level == "snippet":
        record_id = record.id
        end = _cut_at_word(record.text, char_start, min(char_end, char_start + snippet_chars))
        span_text = scrub_range(record.text, char_start, end)[:snippet_chars]
    source = record.source
    return DisclosedSpanSource(
        data_class=source.data_class,
        disclosure=level,
        title=source.title,
        publisher=source.publisher,
        url=source.url,
        license=source.license,
        record_id=record_id,
        span_text=span_text,
    )


def _cut_at_word(text: str, start: int, end: int) -> int:
    """``end`` moved back so that ``text[start:end]`` does not stop inside a word (kept when
    the window is one unbroken word)."""
    cut = end
    while cut > start and cut < len(text) and not (text[cut].isspace() or text[cut - 1].isspace()):
        cut -= 1
    while cut > start and text[cut - 1].isspace():
        cut -= 1
    return cut if cut > start else end


def _window(length: int, start: int, end: int, size: int) -> tuple[int, int]:
    """A window of at most ``size`` characters centred on ``[start, end)``, inside the text.

    A span longer than ``size`` is cut to its first ``size`` characters; otherwise the
    spare room is split evenly either side, and whatever one side cannot use (at the start
    or end of the record) goes to the other.
    """
    size = max(0, size)
    if end - start >= size:
        return start, start + size
    spare = size - (end - start)
    lo = start - spare // 2
    hi = end + (spare - spare // 2)
    if lo < 0:
        hi, lo = min(length, hi - lo), 0
    if hi > length:
        lo, hi = max(0, lo - (hi - length)), length
    return lo, hi


def _trim_to_words(text: str, lo: int, hi: int) -> tuple[int, int]:
    """Shrink ``[lo, hi)`` so it neither starts nor ends inside a word.

    A snippet that opens with "el Drummond" reads as garbage and invites guessing at the cut
    word; dropping the partial words at either edge costs a few characters of context. A
    window that is a single unbroken word is left as it is.
    """

    def inside_word(i: int) -> bool:
        return 0 < i < len(text) and not text[i - 1].isspace() and not text[i].isspace()

    new_lo, new_hi = lo, hi
    while new_lo < new_hi and inside_word(new_lo):
        new_lo += 1
    while new_hi > new_lo and inside_word(new_hi):
        new_hi -= 1
    while new_lo < new_hi and text[new_lo].isspace():
        new_lo += 1
    while new_hi > new_lo and text[new_hi - 1].isspace():
        new_hi -= 1
    if new_lo >= new_hi:
        return lo, hi
    return new_lo, new_hi
