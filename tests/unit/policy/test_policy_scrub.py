"""PII scrubbing: the formats it must catch, the numbers it must leave alone."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditor_server.corpus.demo_sources import private_records
from auditor_server.policy.scrub import find_pii, scrub, scrub_range

EMAILS = [
    "user.name+tag@sub.example.co.uk",
    "alma.abbott12@example.com",
    "x@example.org",
    "first_last-99@mail.example.net",
    "Ilić@example.org",
    "5550109999@example.com",
]
PHONES = [
    "+1 (555) 010-9999",
    "(555) 010-9999",
    "(212) 555-0142",
    "555-010-9999",
    "555.010.9999",
    "555 010 9999",
    "020 7946 0958",
    "+44 20 7946 0958",
    "+44 (0)20 7946 0958",
    "5550109999",
    "07700 900123",
    "+4915112345678",
    "+1-555-010-9999",
    "555-0142",
]
ORDINARY = [
    "In 2024 the court ruled.",
    "Filed on 2024-01-05 at 10:30.",
    "2024-01-05T10:00:00Z",
    "Dated 05.01.2024 and 12/31/2024.",
    "About 1,000 people; 100,000,000 in total; $1,234,567.89.",
    "Pi is 3.14, e is 2.71828.",
    "Pages 10-20, years 1990-2000.",
    "Version 1.2.3 on host 192.168.0.1.",
    "ISBN 978-3-16-148410-0",
    "Support chat #40012",
    "He was 42 and she 1234567.",
    "Score +12.5 or -3.",
    "Contact us at the front desk (room 101).",
]


@pytest.mark.parametrize("email", EMAILS)
def test_emails_are_replaced(email: str) -> None:
    assert scrub(f"Write to {email}.") == "Write to [email]."
    assert scrub(f"<{email}>") == "<[email]>"


@pytest.mark.parametrize("phone", PHONES)
def test_phones_are_replaced(phone: str) -> None:
    assert scrub(f"Call {phone}.") == "Call [phone]."
    assert scrub(f"Customer: {phone}, thanks") == "Customer: [phone], thanks"


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_numbers_are_left_alone(text: str) -> None:
    assert scrub(text) == text
    assert find_pii(text) == []


def test_demo_private_chats_are_fully_scrubbed() -> None:
    for record in private_records(300, random.Random(7)):
        scrubbed = scrub(record.text)
        assert "@" not in scrubbed
        assert "555-01" not in scrubbed
        assert "[email]" in scrubbed and "[phone]" in scrubbed
        # Ticket numbers and house numbers survive: only contact details go.
        assert scrubbed.splitlines()[0] == record.text.splitlines()[0]


_FILLER = st.lists(
    st.sampled_from(
        [
            "the",
            "report",
            "said",
            "in",
            "2024",
            "on",
            "2024-01-05",
            "1,000",
            "3.14",
            "about",
            "page",
            "12",
            "Mr.",
            "(see",
            "notes)",
            "-",
            "and",
        ]
    ),
    max_size=8,
).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(_FILLER, st.sampled_from(EMAILS + PHONES), _FILLER)
def test_pii_in_any_context_is_removed(before: str, pii: str, after: str) -> None:
    text = f"{before} {pii} {after}"
    scrubbed = scrub(text)
    assert pii not in scrubbed
    assert scrubbed.count("[email]") + scrubbed.count("[phone]") == 1
    assert scrub(scrubbed) == scrubbed  # idempotent


@settings(max_examples=150, deadline=None)
@given(_FILLER)
def test_text_without_pii_is_unchanged(text: str) -> None:
    assert scrub(text) == text


_CHAT = "Hi, it is Alma. Mail alma.abbott@example.com or ring (212) 555-0142 today, Alma."


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(_CHAT)), st.integers(0, len(_CHAT)))
def test_a_window_never_leaks_part_of_an_address(a: int, b: int) -> None:
    start, end = min(a, b), max(a, b)
    out = scrub_range(_CHAT, start, end)
    assert "@" not in out
    assert not any(ch.isdigit() for ch in out)
    for fragment in ("abb", "bbo", "bot", "exa", ".co", "com"):
        assert fragment not in out
    if start == 0 and end == len(_CHAT):
        assert out == scrub(_CHAT)


def test_window_is_clamped() -> None:
    assert scrub_range("abc", -5, 99) == "abc"
    assert scrub_range("abc", 2, 1) == ""
