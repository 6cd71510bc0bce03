"""Remove contact details and identifying numbers from text before it leaves the lab.

Scrubbing is a second line of defence: private records are never returned at all, and the
withheld-text guard (:mod:`auditor_server.policy.guard`) keeps the model from reproducing
them, but public and generated text can still carry someone's contact details. Three kinds
of match, each replaced by a placeholder:

* ``email`` → ``[email]``: ``a.b@example.com``, and the obfuscated spellings people use to
  dodge harvesters: ``a at example dot com``, ``a [at] example [dot] com``,
  ``a @ example.com``.
* ``phone`` → ``[phone]``: hand-written patterns for the common layouts, plus Google's
  libphonenumber (the ``phonenumbers`` package) with leniency ``POSSIBLE`` for the US, GB,
  DE, FR and IN, which knows each country's number lengths. ``POSSIBLE`` alone would take
  ``2024`` or ``10-20`` for a German number, so its matches must also have a phone's shape:
  an international ``+`` prefix, or 10-12 digits grouped like a national number
  (``1-212-555-0142``, ``212 5550142``, ``01 23 45 67 89``, ``030 12345678``).
* ``number`` → ``[number]``: card-like numbers (13-19 digits, Luhn-valid), IBAN-like ones
  (checksum-valid) and SSN-like ones (``123-45-6789``).

Text is matched after a *pre-normalization* that maps each character to at most one
character (so every match maps back to an exact range of the original): full-width and
other-script digits become ASCII digits, en/em dashes and the minus sign ``-``, NBSP and
other spaces `` ``, full-width ASCII forms their ASCII letters; zero-width characters vanish,
except between two digits where they separate groups (``212\\u200b555``). The patterns lean
towards over-scrubbing but leave years, dates (``2024-01-05``), times, decimals (``3.14``),
grouped numbers (``1,000``), version numbers and IP addresses alone.

Matches are found on the *whole* text and a window is cut afterwards
(:func:`scrub_range`), so a window that starts or ends inside an address still replaces the
whole address instead of leaking the part the window kept. Overlapping matches merge into one
(an email wins over a phone number inside it, see ``_merge``). Pure functions, no IO.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Final, Literal

import phonenumbers

__all__ = [
    "EMAIL_PLACEHOLDER",
    "NUMBER_PLACEHOLDER",
    "PHONE_PLACEHOLDER",
    "PHONE_REGIONS",
    "PiiKind",
    "PiiMatch",
    "find_pii",
    "scrub",
    "scrub_range",
]

EMAIL_PLACEHOLDER: Final = "[email]"
PHONE_PLACEHOLDER: Final = "[phone]"
NUMBER_PLACEHOLDER: Final = "[number]"

PiiKind = Literal["email", "phone", "number"]
_PLACEHOLDERS: Final[dict[PiiKind, str]] = {
    "email": EMAIL_PLACEHOLDER,
    "phone": PHONE_PLACEHOLDER,
    "number": NUMBER_PLACEHOLDER,
}
_PRIORITY: Final[dict[PiiKind, int]] = {"email": 0, "number": 1, "phone": 2}

#: Regions whose numbering plans libphonenumber checks national numbers against.
PHONE_REGIONS: Final = ("US", "GB", "DE", "FR", "IN")

# --- emails -----------------------------------------------------------------------------

_LOCAL = r"[\w%+-]+(?:\.[\w%+-]+)*"  # dot-separated atoms, no leading/trailing dot
_LABEL = r"[^\W_](?:[\w-]{0,61}[^\W_])?"  # a domain label (unicode letters allowed)
_TLD = r"[^\W\d_]{2,63}"  # letters only, so a trailing "." is not taken
_NOT_BEFORE = r"(?<![\w.%+-])"  # not the tail of a longer token
_NOT_AFTER = r"(?![\w-])"

_EMAIL = re.compile(rf"{_NOT_BEFORE}{_LOCAL}@(?:{_LABEL}\.)+{_TLD}{_NOT_AFTER}")

_BRACKET_AT = r"\s*[\[({<]\s*(?i:at)\s*[\])}>]\s*"
_BRACKET_DOT = r"\s*[\[({<]\s*(?i:dot)\s*[\])}>]\s*"
_WORD_AT = r"[ \t]+(?i:at)[ \t]+"
_WORD_DOT = r"[ \t]+(?i:dot)[ \t]+"
_SPELLED_DOT = rf"(?:{_BRACKET_DOT}|{_WORD_DOT})"
_ANY_DOT = rf"(?:{_SPELLED_DOT}|\.)"
_OBF_LOCAL = rf"[\w%+-]+(?:{_ANY_DOT}[\w%+-]+)*"
# "people at the dot com firms" is prose: a determiner right after "at" is never a domain.
_NOT_DETERMINER = r"(?!(?i:the|a|an|this|that|these|those|my|your|his|her|its|our|their)\b)"
# Each obfuscated form with a cheap test that must find something first: the full patterns
# try a local part at every word, which would dominate the cost of scrubbing ordinary prose.
_OBFUSCATED_EMAILS: Final = (
    (
        # dana.whit [at] example [dot] com, dana(at)example.com
        re.compile(r"[\[({<]\s*(?i:at)\s*[\])}>]"),
        re.compile(
            rf"{_NOT_BEFORE}{_OBF_LOCAL}{_BRACKET_AT}(?:{_LABEL}{_ANY_DOT})+{_TLD}{_NOT_AFTER}"
        ),
    ),
    (
        # dana whit at example dot com: the word "at" needs a spelled-out dot in the domain,
        # or "look at example.com" would be scrubbed as an address.
        re.compile(r"(?i:\bdot\b)"),
        re.compile(
            rf"{_NOT_BEFORE}{_OBF_LOCAL}{_WORD_AT}{_NOT_DETERMINER}"
            rf"(?:{_LABEL}{_ANY_DOT})*{_LABEL}{_SPELLED_DOT}(?:{_LABEL}{_ANY_DOT})*{_TLD}"
            rf"{_NOT_AFTER}"
        ),
    ),
    (
        # dana @ example.com
        re.compile(r"@"),
        re.compile(rf"{_NOT_BEFORE}{_LOCAL}\s*@\s*(?:{_LABEL}{_ANY_DOT})+{_TLD}{_NOT_AFTER}"),
    ),
)

# --- phones -----------------------------------------------------------------------------

_SEP = r"[ \t.\-]"
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
# Where libphonenumber is worth asking: runs of digits and phone punctuation.
_PHONE_CLUSTER = re.compile(r"\+?\(?\d[\d \t().\-/]*\d\)?")
_MIN_CLUSTER_DIGITS: Final = 8

# --- identifying numbers ----------------------------------------------------------------

_NUM_BEFORE = r"(?<![\w+.,/-])"
_NUM_AFTER = r"(?![\w-]|[.,/]\d)"
_DIGIT_GROUPS = re.compile(rf"{_NUM_BEFORE}\d+(?:[ -]\d+)*{_NUM_AFTER}")
_CARD_DIGITS: Final = range(13, 20)
_SSN = re.compile(rf"{_NUM_BEFORE}\d{{3}}-\d{{2}}-\d{{4}}{_NUM_AFTER}")
_IBAN = re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")
_IBAN_LENGTHS: Final = range(15, 35)


@dataclass(frozen=True, slots=True)
class PiiMatch:
    """One email address, phone number or identifying number (half-open character range)."""

    start: int
    end: int
    kind: PiiKind

    @property
    def placeholder(self) -> str:
        """What replaces the match: ``[email]``, ``[phone]`` or ``[number]``."""
        return _PLACEHOLDERS[self.kind]


# --- pre-normalization ------------------------------------------------------------------

_ZERO_WIDTH: Final = "\x00"


class _PrepTable(dict[int, str]):
    """Each character's pre-normalized form (one character, or ``_ZERO_WIDTH``), cached."""

    def __missing__(self, code: int) -> str:
        ch = chr(code)
        category = unicodedata.category(ch)
        if category == "Cf":
            value = _ZERO_WIDTH
        elif category == "Zs":
            value = " "
        elif category == "Pd" or ch == "\u2212":
            value = "-"
        elif category == "Nd":
            value = str(unicodedata.decimal(ch))
        else:
            folded = unicodedata.normalize("NFKC", ch)
            value = folded if len(folded) == 1 and folded.isascii() else ch
        self[code] = value
        return value


_PREP: Final = _PrepTable()


def _prepare(text: str) -> tuple[str, list[int] | None]:
    """Pre-normalized text and, unless it is ``text`` itself, each character's origin index.

    A zero-width character between two digits becomes a space (it separated digit groups);
    anywhere else it is dropped (it split an address or a word).
    """
    if text.isascii():
        return text, None
    out: list[str] = []
    origin: list[int] = []
    pending_zero_width = -1
    for i, ch in enumerate(text):
        mapped = _PREP[ord(ch)]
        if mapped == _ZERO_WIDTH:
            if pending_zero_width < 0:
                pending_zero_width = i
            continue
        if pending_zero_width >= 0:
            if mapped.isdigit() and out and out[-1].isdigit():
                out.append(" ")
                origin.append(pending_zero_width)
            pending_zero_width = -1
        out.append(mapped)
        origin.append(i)
    return "".join(out), origin


# --- detectors (on pre-normalized text) ---------------------------------------------------


def _digits(s: str) -> int:
    return sum(ch.isdigit() for ch in s)


def _fit_digits(text: str, start: int, end: int) -> int | None:
    """End of the longest prefix of a phone match with a plausible digit count, if any.

    The international pattern takes digit groups greedily, so ``+44 20 7946 0958 2024``
    (a number followed by a year) first matches as one 16-digit run; dropping trailing
    groups recovers the number instead of missing it.
    """
    while True:
        digits = _digits(text[start:end])
        if digits < _MIN_PHONE_DIGITS:
            return None
        if digits <= _MAX_PHONE_DIGITS:
            return end
        cut = max(text.rfind(sep, start, end) for sep in " \t.-")
        if cut <= start:
            return None
        end = cut
        while end > start and not text[end - 1].isdigit() and text[end - 1] != ")":
            end -= 1


def _phone_shaped(raw: str) -> bool:
    """Whether a libphonenumber ``POSSIBLE`` match is laid out like a phone number.

    Without a ``+`` the number must have 10-12 digits in one of the national layouts:
    US ``3-3-4``/``3-7`` (optionally after a ``1``), a trunk-``0`` number whose groups have
    two or more digits (GB, DE, FR, IN), an Indian mobile ``5-5``, or a bare run. That
    excludes what ``POSSIBLE`` alone accepts: years and lists of years, date and page
    ranges, ISBNs (one-digit groups), decimals, IP and version numbers.
    """
    if "," in raw:
        return False
    digits = _digits(raw)
    groups = re.findall(r"\d+", raw)
    if raw.startswith("+"):
        return 8 <= digits <= _MAX_PHONE_DIGITS
    if not 10 <= digits <= 12:
        return False
    sizes = tuple(len(g) for g in groups)
    first = groups[0]
    if "." in raw and sizes not in ((2, 2, 2, 2, 2), (3, 3, 4)):
        return False
    if "/" in raw and not (first.startswith("0") and len(groups) == 2):
        return False
    if len(groups) == 1:
        return True
    if sizes in ((3, 3, 4), (3, 7)) and not first.startswith("0"):
        return True
    if first == "1" and sizes[1:] in ((3, 3, 4), (3, 7)):
        return True
    if first.startswith("0") and len(first) <= 5 and len(groups) <= 5:
        return all(size >= 2 for size in sizes[1:])
    return sizes == (5, 5) and first[0] in "6789"


def _standalone(text: str, start: int, end: int) -> bool:
    """Not glued to a longer token: same context rules as the hand-written phone pattern."""
    if start > 0 and (text[start - 1].isalnum() or text[start - 1] in "_+/.,-"):
        return False
    if end < len(text):
        nxt = text[end]
        if nxt.isalnum() or nxt in "_+":
            return False
        if nxt in ".,-/" and end + 1 < len(text) and text[end + 1].isdigit():
            return False
    return True


def _library_phones(text: str) -> list[tuple[int, int]]:
    """Phone numbers libphonenumber finds in runs of digits and phone punctuation.

    Its matcher segments a run of several numbers its own way: in ``212 5550142 2024-01-05``
    (a number, then a date) it finds ``5550142`` for the US and ``5550142 2024-01-05`` for
    Germany, neither of them the phone number. So besides the matcher's phone-shaped
    matches, every run of whole digit groups is tried, longest first from each group, and
    kept if it is phone-shaped and a possible number for one of :data:`PHONE_REGIONS`.
    """
    found: list[tuple[int, int]] = []
    for cluster in _PHONE_CLUSTER.finditer(text):
        if _digits(cluster.group()) < _MIN_CLUSTER_DIGITS:
            continue
        for region in PHONE_REGIONS:
            matcher = phonenumbers.PhoneNumberMatcher(
                cluster.group(), region, leniency=phonenumbers.Leniency.POSSIBLE
            )
            for match in matcher:
                start, end = cluster.start() + match.start, cluster.start() + match.end
                if _phone_shaped(match.raw_string) and _standalone(text, start, end):
                    found.append((start, end))
        found.extend(_group_runs(text, cluster.start(), cluster.end()))
    return found


_MAX_PHONE_GROUPS: Final = 6


def _group_runs(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Phone numbers made of whole digit groups of ``text[start:end]``, left to right.

    From each group the longest run (at most :data:`_MAX_PHONE_GROUPS` groups) that is
    phone-shaped, standalone and possible in some region is taken; a leading ``+`` or ``(``
    and a trailing ``)`` go with their group.
    """
    groups = [(m.start() + start, m.end() + start) for m in re.finditer(r"\d+", text[start:end])]
    found: list[tuple[int, int]] = []
    i = 0
    while i < len(groups):
        for j in range(min(len(groups), i + _MAX_PHONE_GROUPS) - 1, i - 1, -1):
            lo, hi = groups[i][0], groups[j][1]
            while lo > start and text[lo - 1] in "+(":
                lo -= 1
            if hi < end and text[hi] == ")":
                hi += 1
            raw = text[lo:hi]
            if _phone_shaped(raw) and _standalone(text, lo, hi) and _possible(raw):
                found.append((lo, hi))
                i = j
                break
        i += 1
    return found


def _possible(raw: str) -> bool:
    """Whether libphonenumber deems ``raw`` a possible number in one of the regions."""
    for region in PHONE_REGIONS:
        try:
            number = phonenumbers.parse(raw, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_possible_number(number):
            return True
    return False


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_CARD_LAYOUTS: Final = ((4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4))
"""How cards are printed when grouped: 16 and 19 digits in fours, Amex 4-6-5, Diners 4-6-4."""


def _card_shaped(groups: list[str], separators: set[str]) -> bool:
    """13-19 digits, Luhn-valid, and either ungrouped or in a printed card layout with one
    kind of separator. The layouts keep an ISBN's ``978-3-16-148410-0`` and runs of years
    next to a phone number (``2024 2024 2024 020 7946``) from passing as cards 1 time in 10."""
    if len(groups) > 1 and (
        tuple(len(g) for g in groups) not in _CARD_LAYOUTS or len(separators) != 1
    ):
        return False
    digits = "".join(groups)
    return len(digits) in _CARD_DIGITS and _luhn_ok(digits)


def _cards(text: str) -> list[tuple[int, int]]:
    """Card-like numbers: runs of whole digit groups (space or dash separated), longest
    first from each group, so a card followed or preceded by other numbers (``… 1111 12``)
    is still found."""
    found: list[tuple[int, int]] = []
    for cluster in _DIGIT_GROUPS.finditer(text):
        if _digits(cluster.group()) < _CARD_DIGITS.start:
            continue
        spans = [(m.start(), m.end()) for m in re.finditer(r"\d+", cluster.group())]
        groups = [cluster.group()[a:b] for a, b in spans]
        i = 0
        while i < len(groups):
            last, total = i, len(groups[i])
            while last + 1 < len(groups) and total + len(groups[last + 1]) <= _CARD_DIGITS[-1]:
                last += 1
                total += len(groups[last])
            for j in range(last, i - 1, -1):
                between = {cluster.group()[spans[g][1]] for g in range(i, j)}
                if _card_shaped(groups[i : j + 1], between):
                    found.append((cluster.start() + spans[i][0], cluster.start() + spans[j][1]))
                    i = j
                    break
            i += 1
    return found


def _iban_ok(compact: str) -> bool:
    if len(compact) not in _IBAN_LENGTHS:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _ibans(text: str) -> list[tuple[int, int]]:
    """IBAN-like numbers: the longest checksum-valid prefix of each candidate, ending at a
    group boundary (the pattern can run on into a following uppercase word)."""
    found: list[tuple[int, int]] = []
    for m in _IBAN.finditer(text):
        for end in range(m.end(), m.start() + 14, -1):
            at_boundary = end == len(text) or not text[end].isalnum()
            if at_boundary and _iban_ok(text[m.start() : end].replace(" ", "")):
                found.append((m.start(), end))
                break
    return found


def _candidates(text: str) -> list[PiiMatch]:
    found: list[PiiMatch] = []
    if "@" in text:
        found.extend(PiiMatch(m.start(), m.end(), "email") for m in _EMAIL.finditer(text))
    for trigger, pattern in _OBFUSCATED_EMAILS:
        if trigger.search(text):
            found.extend(PiiMatch(m.start(), m.end(), "email") for m in pattern.finditer(text))
    for m in _PHONE.finditer(text):
        end = _fit_digits(text, m.start(), m.end())
        if end is not None:
            found.append(PiiMatch(m.start(), end, "phone"))
    found.extend(PiiMatch(s, e, "phone") for s, e in _library_phones(text))
    found.extend(PiiMatch(s, e, "number") for s, e in _cards(text))
    found.extend(PiiMatch(m.start(), m.end(), "number") for m in _SSN.finditer(text))
    found.extend(PiiMatch(s, e, "number") for s, e in _ibans(text))
    return found


def _merge(matches: list[PiiMatch]) -> list[PiiMatch]:
    """Overlapping matches become one covering all of them, of the kind of the match that
    starts first (at the same start: email, then number, then phone).

    Starting first decides because the later match is the one that ran into a neighbour:
    in ``020 7946 0958 2024 2024`` the phone number comes first and a Luhn-valid "card"
    made of its last groups and the years after it is the accident.
    """
    merged: list[PiiMatch] = []
    for m in sorted(matches, key=lambda p: (p.start, _PRIORITY[p.kind], -p.end)):
        if merged and m.start < merged[-1].end:
            last = merged[-1]
            merged[-1] = PiiMatch(last.start, max(last.end, m.end), last.kind)
        else:
            merged.append(m)
    return merged


def find_pii(text: str) -> list[PiiMatch]:
    """Every email address, phone number and identifying number in ``text``, in order, not
    overlapping, as ranges of ``text`` itself (not of its pre-normalized form).

    Emails win over phone numbers they overlap (``5550109999@example.com`` is one email).
    """
    prepared, origin = _prepare(text)
    matches = _merge(_candidates(prepared))
    if origin is None:
        return matches
    return [PiiMatch(origin[m.start], origin[m.end - 1] + 1, m.kind) for m in matches]


def scrub_range(text: str, start: int, end: int) -> str:
    """Scrub ``text[start:end]``, replacing any match that overlaps the window *whole*.

    Args:
        text: The full text (matches are found on all of it, not on the window).
        start: Window start (clamped to the text).
        end: Window end, exclusive (clamped to the text).

    Returns:
        The window with every overlapping match replaced by its placeholder, once, even
        where the window cuts through it.
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
    """Replace every match of :func:`find_pii` with its placeholder."""
    return scrub_range(text, 0, len(text))
