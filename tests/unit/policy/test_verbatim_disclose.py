"""Disclosure of one record holding a verbatim span: what each level lets leave the lab."""

from __future__ import annotations

import pytest

from auditor_server.corpus.records import Record, Source
from auditor_server.policy.disclose import disclose_span_source
from auditor_server.policy.errors import DisclosureError

TEXT = "Intro. Write to ana.lopez@example.org or call +1 212 555 0142 about the flood report today."


def _record(data_class: str) -> Record:
    source = Source(title="T", publisher="P", url="u", license="L", data_class=data_class)  # type: ignore[arg-type]
    return Record(id="rec-1", text=TEXT, source=source)


def test_full_text_gives_the_id_and_the_scrubbed_span() -> None:
    start = TEXT.index("Write")
    shown = disclose_span_source(
        _record("public"), "full_text", char_start=start, char_end=len(TEXT), snippet_chars=10
    )
    assert shown.record_id == "rec-1"
    assert shown.span_text == "Write to [email] or call [phone] about the flood report today."
    assert (shown.title, shown.publisher, shown.url, shown.license) == ("T", "P", "u", "L")


def test_snippet_is_cut_at_a_word_and_never_longer_than_allowed() -> None:
    start = TEXT.index("about")
    shown = disclose_span_source(
        _record("public"), "snippet", char_start=start, char_end=len(TEXT), snippet_chars=18
    )
    assert shown.record_id == "rec-1" and shown.span_text == "about the flood"
    # A span cut inside an email still gets the placeholder, never part of the address.
    start = TEXT.index("ana")
    cut = disclose_span_source(
        _record("public"), "snippet", char_start=start, char_end=len(TEXT), snippet_chars=12
    )
    assert "ana" not in (cut.span_text or "") and len(cut.span_text or "") <= 12


def test_source_metadata_gives_no_id_and_no_text() -> None:
    shown = disclose_span_source(
        _record("proprietary"), "source_metadata", char_start=0, char_end=6, snippet_chars=40
    )
    assert shown.record_id is None and shown.span_text is None
    assert shown.data_class == "proprietary" and shown.title == "T"


@pytest.mark.parametrize(("start", "end"), [(-1, 3), (5, 5), (0, len(TEXT) + 1), (9, 3)])
def test_a_span_outside_the_record_fails_closed(start: int, end: int) -> None:
    with pytest.raises(DisclosureError):
        disclose_span_source(
            _record("public"), "full_text", char_start=start, char_end=end, snippet_chars=40
        )


def test_none_is_never_disclosed() -> None:
    with pytest.raises(DisclosureError, match="must not be searched"):
        disclose_span_source(_record("private"), "none", char_start=0, char_end=6, snippet_chars=40)
