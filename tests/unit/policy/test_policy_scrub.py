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


# --- obfuscated and non-ASCII forms, identifying numbers ---------------------------------

MORE_PHONES = [
    "1-212-555-0142",
    "212 5550142",
    "212\u2013555\u20130142",  # en dashes
    "212\u2014555\u20140142",  # em dashes
    "(212)\u00a0555\u00a00142",  # no-break spaces
    "212\u200b555\u200b0142",  # zero-width spaces between the groups
    "\uff12\uff11\uff12 \uff15\uff15\uff15 \uff10\uff11\uff14\uff12",  # full-width digits
    "\uff08\uff12\uff11\uff12\uff09\uff15\uff15\uff15\uff0d\uff10\uff11\uff14\uff12",
    "01 23 45 67 89",  # France
    "030 12345678",  # Germany
    "+91 98765 43210",  # India
    "98765 43210",
]
MORE_EMAILS = [
    "dana.whit at example dot com",
    "dana dot whit at example dot com",
    "DANA AT EXAMPLE DOT COM",
    "dana.whit [at] example [dot] com",
    "dana.whit (at) example.com",
    "dana.whit{at}example{dot}co{dot}uk",
    "dana @ example.com",
    "dana\u200b.whit@example.com",
    "dana.whit\uff20example.com",  # full-width @
]
NUMBERS = [
    "4111 1111 1111 1111",  # Visa test number (Luhn-valid)
    "4111-1111-1111-1111",
    "5500005555555559",
    "3782 822463 10005",  # Amex grouping
    "DE89 3704 0044 0532 0130 00",  # IBAN (checksum-valid)
    "GB82WEST12345698765432",
    "123-45-6789",  # SSN-like
]
MORE_ORDINARY = [
    "Card 4111 1111 1111 1112 fails its check digit.",
    "Account DE00 1234 5678 9012 3456 78 fails its checksum.",
    "Tickets 40012 40019 and 40026 were merged.",
    "In 1990 2000 2010 2020 the census ran.",
    "Rows 12 2024 2024 12 2024 of the table.",
    "Look at example.com for the manual.",
    "People at the dot com firms of 1999 lost money.",
    "Meet at noon. The room is 4.12, floor 3.",
    "Released 2024-01-05 12:30, build 20240105.1230.",
    "Call the front desk at extension 4012.",
    "It cost \u20ac1.234.567,89 in 2023\u20132024.",
    "Serial A1B2-C3D4-E5F6; part 12-3456-78.",
    "Dated \uff12\uff10\uff12\uff14-\uff10\uff11-\uff10\uff15.",  # full-width date
    "About 1\u00a0000\u00a0000 people live there.",
    "Version 10.0.19045.3803 of the OS.",
]


@pytest.mark.parametrize("phone", MORE_PHONES)
def test_separator_variants_and_other_digit_forms_of_phones_are_replaced(phone: str) -> None:
    assert scrub(f"Call {phone}, thanks") == "Call [phone], thanks"


@pytest.mark.parametrize("email", MORE_EMAILS)
def test_obfuscated_emails_are_replaced(email: str) -> None:
    assert scrub(f"Mail {email} today") == "Mail [email] today"


@pytest.mark.parametrize("number", NUMBERS)
def test_card_iban_and_ssn_like_numbers_are_replaced(number: str) -> None:
    assert scrub(f"Use {number} for it.") == "Use [number] for it."
    assert [m.kind for m in find_pii(number)] == ["number"]


@pytest.mark.parametrize("text", MORE_ORDINARY)
def test_more_ordinary_text_is_left_alone(text: str) -> None:
    assert find_pii(text) == []


def test_matches_are_ranges_of_the_original_text() -> None:
    phone = "\uff08\uff12\uff11\uff12\uff09\u200b\uff15\uff15\uff15\u2013\uff10\uff11\uff14\uff12"
    email = "dana\u200b.whit\uff20example.com"
    text = f"Ring {phone} or mail {email}."
    matches = find_pii(text)
    assert [text[m.start : m.end] for m in matches] == [phone, email]
    # A window cutting through either match still replaces it whole.
    cut = text.index("\uff15")
    assert scrub_range(text, cut, len(text)) == "[phone] or mail [email]."
    assert scrub_range(text, 0, text.index("example")) == "Ring [phone] or mail [email]"


@settings(max_examples=150, deadline=None)
@given(_FILLER, st.sampled_from(MORE_PHONES + MORE_EMAILS + NUMBERS), _FILLER)
def test_new_forms_in_any_context_are_removed(before: str, pii: str, after: str) -> None:
    text = f"{before} {pii} {after}"
    scrubbed = scrub(text)
    assert pii not in scrubbed
    assert sum(scrubbed.count(p) for p in ("[email]", "[phone]", "[number]")) == 1
    assert scrub(scrubbed) == scrubbed
