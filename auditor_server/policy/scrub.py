"""Remove email addresses and phone numbers from text before it leaves the lab.

Scrubbing is a second line of defence: private records are never returned at all, but
public and generated text can still carry someone's contact details. The patterns lean
towards over-scrubbing (a 10-digit number is treated as a phone number) but leave years,
dates (``2024-01-05``), times, decimals (``3.14``) and grouped numbers (``1,000``) alone.

Matches are found on the *whole* text and a window is cut afterwards
(:func:`scrub_range`), so a window that starts or ends inside an address still replaces the
whole address instead of leaking the part the window kept. Pure functions, no IO.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["EMAIL_PLACEHOLDER", "PHONE_PLACEHOLDER", "PiiMatch", "find_pii", "scrub", "scrub_range"]

EMAIL_PLACEHOLDER: Final = "[email]"
PHONE_PLACEHOLDER: Final = "[phone]"

_EMAIL = re.compile(
    r"(?<![\w.%+-])"  # not the tail of a longer token
    r"[\w%+-]+(?:\.[\w%+-]+)*"  # local part: dot-separated atoms, no leading/trailing dot
    r"@"
    r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+"  # domain labels (unicode letters allowed)
    r"[^\W\d_]{2,63}"  # top-level domain: letters only, so a trailing "." is not taken
    r"(?![\w-])"
)

_SEP = r"[ \t.\-\u00a0]"
_PHONE = re.compile(
    r"(?<![\w+/.,-])(?:"
    # international: +CC then 2-6 digit groups, optionally a parenthesised trunk/area code
    rf"\+\d{{1,3}}(?:{_SEP}?(?:\(\d{{1,4}}\)|\d{{1,5}})){{2,6}}"
    # North American: (555) 010-9999, 555-010-9999, 555.010.9999, 555 010 9999
    rf"|(?:\(\d{{3}}\){_SEP}?|\d{{3}}{_SEP})\d{{3}}{_SEP}\d{{4}}"
    # national with trunk 0: 020 7946 0958, 07700 900123, 0161-496-0000
    r"|0\d{2,4}[ \-]\d{3,4}[ \-]?\d{3,4}"
    # seven-digit local number with a hyphen: 555-0142
    r"|\d{3}-\d{4}"
    # bare run of 10 to 12 digits: 5550109999, 07700900123
    r"|\d{10,12}"
    r")(?![\w+]|[.,\-/]\d)"
)
_MIN_PHONE_DIGITS: Final = 7
_MAX_PHONE_DIGITS: Final = 15


@dataclass(frozen=True, slots=True)
class PiiMatch:
    """One email address or phone number found in a text (half-open character range)."""

    start: int
    end: int
    kind: Literal["email", "phone"]

    @property
    def placeholder(self) -> str:
        """What replaces the match: ``[email]`` or ``[phone]``."""
        return EMAIL_PLACEHOLDER if self.kind == "email" else PHONE_PLACEHOLDER


def find_pii(text: str) -> list[PiiMatch]:
    """Every email address and phone number in ``text``, in order, not overlapping.

    Emails win over phone numbers they overlap (``5550109999@example.com`` is one email).
    """
    emails = [PiiMatch(m.start(), m.end(), "email") for m in _EMAIL.finditer(text)]
    found = list(emails)
    for m in _PHONE.finditer(text):
        start, end = m.start(), _fit_digits(text, m.start(), m.end())
        if end is None:
            continue
        if any(e.start < end and start < e.end for e in emails):
            continue
        found.append(PiiMatch(start, end, "phone"))
    found.sort(key=lambda p: p.start)
    return found


def _fit_digits(text: str, start: int, end: int) -> int | None:
    """End of the longest prefix of a phone match with a plausible digit count, if any.

    The international pattern takes digit groups greedily, so ``+44 20 7946 0958 2024``
    (a number followed by a year) first matches as one 16-digit run; dropping trailing
    groups recovers the number instead of missing it.
    """
    while True:
        digits = sum(ch.isdigit() for ch in text[start:end])
        if digits < _MIN_PHONE_DIGITS:
            return None
        if digits <= _MAX_PHONE_DIGITS:
            return end
        cut = max(text.rfind(sep, start, end) for sep in " \t.-\u00a0")
        if cut <= start:
            return None
        end = cut
        while end > start and not text[end - 1].isdigit() and text[end - 1] != ")":
            end -= 1


def scrub_range(text: str, start: int, end: int) -> str:
    """Scrub ``text[start:end]``, replacing any address that overlaps the window *whole*.

    Args:
        text: The full text (matches are found on all of it, not on the window).
        start: Window start (clamped to the text).
        end: Window end, exclusive (clamped to the text).

    Returns:
        The window with every overlapping email or phone number replaced by its
        placeholder, once, even where the window cuts through it.
    """
    start = max(0, min(start, len(text)))
    end = max(start, min(end, len(text)))
    out: list[str] = []
    pos = start
    for match in find_pii(text):
        if match.end <= start:
            continue
        if match.start >= end:
            break
        if match.start > pos:
            out.append(text[pos : match.start])
        out.append(match.placeholder)
        pos = match.end
    if pos < end:
        out.append(text[pos:end])
    return "".join(out)


def scrub(text: str) -> str:
    """Replace every email address with ``[email]`` and phone number with ``[phone]``."""
    return scrub_range(text, 0, len(text))
