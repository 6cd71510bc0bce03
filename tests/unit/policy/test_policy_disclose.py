"""Disclosure: what each level reveals, and that hidden parts are absent, not blanked."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditor_server.corpus.records import Record, Source
from auditor_server.policy.disclose import DisclosedResult, _window, disclose
from auditor_server.policy.errors import DisclosureError
from auditor_server.policy.model import DisclosureLevel


@dataclass(frozen=True)
class FakeSpan:
    tok_start: int
    tok_end: int
    char_start: int
    char_end: int


@dataclass(frozen=True)
class FakeAttribution:
    """Shaped like auditor_server.attribution.engine.Attribution (which imports torch)."""

    rank: int
    record_id: str
    data_class: str
    score: float
    span: FakeSpan
    module_shares: dict[str, float] = field(default_factory=dict)


PREFIX = "Chapter one. " * 20
FACT = "The lighthouse keeper, reachable at keeper@harbour.example or 555-010-9999, wrote it."
SUFFIX = " And so the story ends." * 20
TEXT = PREFIX + FACT + SUFFIX
START, END = len(PREFIX), len(PREFIX) + len(FACT)


def _record(data_class: str, record_id: str = "rec-secret-0042") -> Record:
    source = Source(
        title="The Lighthouse",
        publisher="Harbour Press",
        url="https://harbour.example/lighthouse",
        license="CC-BY-4.0" if data_class == "public" else "licensed",
        data_class=data_class,  # type: ignore[arg-type]
    )
    return Record(id=record_id, text=TEXT, source=source)


def _result(data_class: str, record_id: str = "rec-secret-0042") -> FakeAttribution:
    return FakeAttribution(
        rank=3,
        record_id=record_id,
        data_class=data_class,
        score=0.123456789,
        span=FakeSpan(0, 10, START, END),
        module_shares={"h.1.mlp": 0.6666666666, "h.0.attn": 0.3333333334},
    )


def _show(level: DisclosureLevel, data_class: str = "public", chars: int = 160) -> DisclosedResult:
    return disclose(_result(data_class), _record(data_class), level, snippet_chars=chars)


def test_full_text_reveals_scrubbed_text_and_span() -> None:
    shown = _show("full_text")
    assert shown.record_id == "rec-secret-0042"
    assert shown.text is not None and shown.span_text is not None
    assert shown.text.startswith(PREFIX) and shown.text.endswith(SUFFIX)
    assert shown.span_text == ("The lighthouse keeper, reachable at [email] or [phone], wrote it.")
    assert "keeper@" not in shown.text and "555-010" not in shown.text
    assert (shown.rank, shown.data_class, shown.disclosure) == (3, "public", "full_text")
    assert shown.title == "The Lighthouse" and shown.license == "CC-BY-4.0"


def test_scores_and_shares_are_rounded() -> None:
    shown = _show("full_text")
    assert shown.score == 0.123457
    assert dict(shown.module_share) == {"h.0.attn": 0.333333, "h.1.mlp": 0.666667}


@pytest.mark.parametrize("chars", [16, 40, 160, 4000])
def test_snippet_is_a_short_scrubbed_window_around_the_span(chars: int) -> None:
    shown = _show("snippet", chars=chars)
    assert shown.record_id == "rec-secret-0042"
    assert shown.span_text is None
    assert shown.text is not None and 0 < len(shown.text) <= chars
    assert "@" not in shown.text and "555" not in shown.text
    if chars >= len(FACT) + 10:
        assert "The lighthouse keeper" in shown.text
    if chars < len(TEXT):
        assert shown.text != TEXT


def test_source_metadata_reveals_no_id_and_no_text() -> None:
    shown = _show("source_metadata", data_class="proprietary")
    assert shown.record_id is None and shown.text is None and shown.span_text is None
    assert (shown.title, shown.publisher, shown.url) == (
        "The Lighthouse",
        "Harbour Press",
        "https://harbour.example/lighthouse",
    )
    everything = repr([getattr(shown, f.name) for f in dataclasses.fields(shown)])
    for secret in ("rec-secret-0042", "secret", "keeper", "Chapter one", "story ends"):
        assert secret not in everything


def test_none_is_an_internal_error() -> None:
    with pytest.raises(DisclosureError, match="excluded before ranking"):
        _show("none", data_class="private")


@pytest.mark.parametrize(
    ("result", "record", "message"),
    [
        (_result("public", "other"), _record("public"), "does not match"),
        (_result("public"), _record("proprietary"), "disagrees"),
        (
            dataclasses.replace(_result("public"), span=FakeSpan(0, 1, 5, len(TEXT) + 1)),
            _record("public"),
            "outside",
        ),
    ],
)
def test_inconsistent_inputs_fail_closed(
    result: FakeAttribution, record: Record, message: str
) -> None:
    with pytest.raises(DisclosureError, match=message):
        disclose(result, record, "full_text", snippet_chars=160)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 500),
    st.integers(0, 500),
    st.integers(0, 500),
    st.integers(1, 300),
)
def test_window_stays_inside_and_covers_the_span(length: int, a: int, b: int, size: int) -> None:
    start, end = sorted((min(a, length), min(b, length)))
    lo, hi = _window(length, start, end, size)
    assert 0 <= lo <= hi <= length
    assert hi - lo <= size
    if end - start <= size:
        assert lo <= start and end <= hi
        assert hi - lo == min(size, length)
    else:
        assert (lo, hi) == (start, start + size)


@pytest.mark.parametrize("chars", [40, 97, 160, 161, 233])
def test_snippet_neither_starts_nor_ends_inside_a_word(chars: int) -> None:
    shown = _show("snippet", chars=chars)
    assert shown.text is not None
    lo = TEXT.find(shown.text)
    if lo == -1:  # scrubbed: compare against the scrubbed record instead
        from auditor_server.policy.scrub import scrub

        lo = scrub(TEXT).find(shown.text)
        source = scrub(TEXT)
    else:
        source = TEXT
    assert lo >= 0
    hi = lo + len(shown.text)
    assert lo == 0 or source[lo - 1].isspace(), shown.text[:20]
    assert hi == len(source) or source[hi].isspace() or not source[hi - 1].isalnum(), shown.text[
        -20:
    ]
    assert not shown.text[0].isspace() and not shown.text[-1].isspace()
