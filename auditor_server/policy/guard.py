"""The withheld-text guard: does a text reproduce a stretch of training text that is withheld?

Why: private records never leave the lab as records, but the model memorized some of them,
so a hostile auditor can pull them out through the *model channel*: chain short ``Generate``
calls (each prompt = the previous prompt + the previous output), or rank candidate
completions by ``Score``. The guard answers, cheaply and without holding the private text,
whether a string contains a *shingle* (``shingle_chars`` consecutive normalized characters)
that occurs in withheld training text; constrained decoding
(:func:`auditor_server.model.generation.generate_constrained`) asks it before every token.

**Normalization** (:func:`normalize`) makes formatting tricks useless: Unicode NFKC, case
folding, then only letters and digits (Unicode categories ``L*`` and ``N*``, any script) are
kept; whitespace, punctuation, symbols, zero-width characters (``Cf``) and combining marks are
dropped, accented letters lose their accents (an NFKD step after case folding) and decimal
digits of every script become ASCII digits. So ``"Dana.Whit@Example.com"`` and
``"dana whit @ example . com"`` are the same ``danawhitexamplecom``; ``"(212) 555-0142"``,
``"212\\u200b555\\u20130142"`` and ``"２１２ ５５５ ０１４２"`` the same ``2125550142``; a
precomposed ``"ć"`` equals ``"c\\u0301"`` and ``"c"``. (Spelled-out ``at``/``dot`` stay letters:
``"dana whit at example"`` differs, which is the scrubber's case, not the guard's.)
Normalization is defined *per original character* (the output of a string is the
concatenation of its characters' outputs), which is what lets
:meth:`WithheldGuard.completes` look only at the end of a context and
:func:`normalize_with_map` say which original character produced each normalized one.

**What is withheld** (:meth:`ShingleSets.guard_for`): the shingles of the withheld data
classes, *minus every shingle that also occurs in a disclosed class*, *minus the withheld
classes' boilerplate*. Text the lab publishes (or discloses to this auditor) is not secret;
subtracting it keeps phrases that public records happen to contain (a public street name)
from being blocked. That alone left ordinary phrasing withheld whenever a private chat used
it and no disclosed record happened to ("Great, thanks for the help.", "Sorry about that",
"Can you confirm the email on the account?"): 9,429 of the 9,437 shingles of the demo
corpus's 150 private chats. ``Generate`` was steered away from ordinary sentences and
``Score`` refused them, and each refusal spends one of the auditor's small daily
``withheld_budget``, so an ordinary bias campaign could get its model channel suspended.

**Boilerplate** (template text of a withheld class, :data:`BOILERPLATE_CLASSES`): a shingle
that occurs in at least ``boilerplate_records`` (:data:`DEFAULT_BOILERPLATE_RECORDS` = 10)
*distinct* records of the class *and contains no digit* is the class's template, nobody's
secret, and is not withheld. Why both conditions: personal data lives in what differs between
records, and the identifiers most worth protecting carry digits (phone, ticket, card and house
numbers, most email suffixes), so a shingle with a digit stays withheld however often it
recurs (one customer's phone number in 50 of their chats). Measured with
``bench/guard_false_positives.py`` (AMD EPYC, 2 cores; bench/README.md) on the demo corpus,
seed 0: ordinary text the lab never saw that the guard refuses, 35 of 297 → 4 of 297
(everyday sentences 34 → 4 of 131; the campaigns' bias, toxicity, control and copyright
inputs 1 → 0 of 166), while every private email, phone number (as written and as digits)
and address stays protected in a neutral sentence and after its chat's own prompt, and
every ticket after ``"Support chat #"`` (778 of 778 pieces, as before). What still trips it
there is a template shingle ending in the first letters of a customer's first name ("Hi,
this is the front desk" shares ``thisisthea`` with "Hi, this is Thea"), which recurs in
fewer than 10 of 150 chats.

The cost, precisely: *digit-free personal text that recurs in at least N separate withheld
records is no longer protected by the guard*: a frequent customer's name (and a digit-free
email address) once they have N chats, a full name that N different customers share, a
street name. Text in fewer records, and every shingle with a digit, is withheld as before. A
class with fewer than N records keeps all of its shingles (on the 10-chat tiny corpus the
chats' issue lines are still refused: 17% of the everyday sentences). Identical records count
once (a chat stored ten times is one chat). The scrubber, which removes emails and phone
numbers from every returned text, and the attribution policy, which never ranks a withheld
record, are unaffected. Not applied to ``proprietary``: there the repetition is the withheld
text itself (a licensed passage reprinted in many records); applying it drops 30% of the
demo's passage stretches from the Generate guard of a role with ``generate_proprietary:
withhold``. ``boilerplate_records=0`` restores the guard without this rule.

Not adopted: a small bundled list of common English phrases counted as disclosed. With half
of the bench's everyday sentences as that list and the other half to test, it cleared 1 more
of 65 on the demo corpus and 2 of 65 on the tiny one: what stays refused is the chats' own
issue wording or template joined to a name, which no small generic list covers.

**Hashing.** Each shingle is stored as a 64-bit hash, keyed with a lab secret (``guard.key``
beside the hashes): code points are mixed with a key-derived salt, combined by a polynomial
hash modulo 2**64 with a key-derived odd base, xored with a third key-derived value and
finalized with splitmix64's mixer. The key is not what keeps the guard sound (a collision only
ever blocks *more*); it makes the stored hashes useless without it: a leaked ``.npy`` cannot
be tested offline against guessed phone numbers or names, and nobody outside the lab can
precompute texts that collide with withheld shingles. It is a random 32-byte key made when
the guard is built, never the lab's Ed25519 signing key.

**Memory.** A guard holds one sorted ``uint64`` per distinct withheld shingle: 8 bytes each
(plus a 0.25-byte-per-hash bucket directory for fast lookups), so at most ~8 bytes per
character of private text before de-duplication (≈ 8·10⁸ bytes for a 10⁸-character private
corpus). Measured by ``bench/guard_memory.py`` on support-chat-like synthetic text (AMD EPYC,
2 cores; bench/README.md): 10⁷ characters → 3.5·10⁶ withheld shingles, 27.3 MiB (2.9 bytes
per character); 10⁸ characters → 2.4·10⁷ shingles, 185.7 MiB (2.0 bytes per character),
built in 27 s (12 s without the boilerplate count, same run), 1.5 GiB peak; a Python
``set`` of the same hashes takes 11x more. Per request: :meth:`WithheldGuard.touches` on
2,000 characters ~0.3 ms (0.5-0.6 ms with cold caches) at either size,
:meth:`WithheldGuard.completes` 30-40 µs per decoding step (~0.1 ms cold).

The guard directory (``INDEX_DIR/guard/``) stays on the lab's side, like the catalog:
``guard.json`` (format, shingle length, ``boilerplate_records``, key id = sha256 of the key,
per-class counts and file checksums, the corpus manifest hash), one ``<data_class>.npy`` per
class, one ``<data_class>.boilerplate.npy`` per boilerplate class and ``guard.key`` (mode
0600). Files are written atomically and ``guard.json`` last, so a crash mid-build
leaves no guard that looks complete.
"""

from __future__ import annotations

import hashlib
import re
import threading
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray

from auditor_server.errors import ConfigError, IntegrityError
from auditor_server.fsutil import atomic_write, atomic_write_json, sha256_file
from auditor_server.manifests import read_manifest

__all__ = [
    "BOILERPLATE_CLASSES",
    "DEFAULT_BOILERPLATE_RECORDS",
    "DEFAULT_SHINGLE_CHARS",
    "GUARD_FORMAT",
    "KEY_FILE",
    "MANIFEST_FILE",
    "MAX_SHINGLE_CHARS",
    "MIN_SHINGLE_CHARS",
    "ShingleSets",
    "WithheldGuard",
    "normalize",
    "normalize_with_map",
]

DEFAULT_SHINGLE_CHARS: Final = 10
"""Normalized characters per shingle. Ten letters/digits is a whole phone number, most of a
name plus surname, or two to three words of a sentence: long enough that shingles of private
text rarely occur by chance in other text, short enough that generation is stopped within
nine characters of any withheld stretch."""
MIN_SHINGLE_CHARS: Final = 6
MAX_SHINGLE_CHARS: Final = 64

DEFAULT_BOILERPLATE_RECORDS: Final = 10
"""A digit-free shingle occurring in at least this many distinct records of a boilerplate class
is that class's template text and is not withheld (see "What is withheld" above); 0 keeps all.

Chosen with ``bench/guard_false_positives.py`` on the demo corpus (150 private chats, seeds
0/1/2), everyday sentences refused out of 131 (26% with no rule): N=3 → 2/3/1 but 3-6 customer
names that recur in 3 chats are given up; N=5 → 2/4/1, N=10 → 4/5/3, N=20 → 10/7/7,
N=40 → 24 each; every other piece stays protected from N=5 up. 10 rather than 5: with 1,500
chats from the same generator (``--private-chats 1500``: its 528 customer names recur ~3
times each) N=5 gives up 27% of the customers' full names (those in 5 or more chats) to
refuse 1 fewer of 297 ordinary texts, while N=10 keeps every name; and it takes twice as many
chats of one frequent customer before their digit-free text stops being protected."""

BOILERPLATE_CLASSES: Final = frozenset({"private"})
"""Classes whose template text is dropped from the guard. Not ``proprietary``: there the
repetition *is* the withheld text (a licensed book or article reprinted in many records, 6-10
in the demo corpus), which must stay withheld from roles with ``generate_proprietary:
withhold``; personal data, by contrast, lives in what differs between records."""

GUARD_FORMAT: Final = "auditor-sandbox-guard/v2"
"""v2 added the per-class boilerplate sets; a v1 guard is refused by :meth:`ShingleSets.load`
(and rebuilt by ``ensure_guard``), since using it would block template text again."""
MANIFEST_FILE: Final = "guard.json"
KEY_FILE: Final = "guard.key"

_U64 = np.uint64
_CHUNK_CHARS: Final = 1 << 23
"""Normalized characters hashed per numpy batch while building (bounds the temporaries)."""
_SEPARATOR: Final = "\x00"
"""Joins records in a batch; never survives normalization, so it marks record boundaries."""
_CLASS_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_BOILERPLATE_SUFFIX: Final = ".boilerplate.npy"
"""``<class>.boilerplate.npy``: a class name has no dot, so this never names a class file."""


# --- normalization ----------------------------------------------------------------------


class _CharTable(dict[int, str | None]):
    """``str.translate`` table computing each character's normalized form on first use.

    A dict subclass with ``__missing__`` keeps ``str.translate``'s C loop (no per-character
    Python call after a character has been seen once) while covering all of Unicode lazily.
    """

    def __missing__(self, code: int) -> str | None:
        folded = unicodedata.normalize("NFKC", chr(code)).casefold()
        kept: list[str] = []
        for ch in unicodedata.normalize("NFKD", folded):
            category = unicodedata.category(ch)
            if category == "Nd":  # any script's decimal digit counts as that digit
                kept.append(str(unicodedata.decimal(ch)))
            elif category[0] in "LN":
                kept.append(ch)
        value = "".join(kept) or None
        self[code] = value
        return value


_TABLE: Final = _CharTable()


def normalize(text: str) -> str:
    """Letters and digits of ``text`` after NFKC and case folding, accents removed.

    Per original character: ``normalize(a + b) == normalize(a) + normalize(b)``.
    """
    return text.translate(_TABLE)


def normalize_with_map(text: str) -> tuple[str, list[int]]:
    """:func:`normalize` plus, for each normalized character, the index in ``text`` of the
    character that produced it (one character can produce several, e.g. ``"ﬁ"`` → ``"fi"``).
    """
    out: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        piece = _TABLE[ord(ch)]
        if piece:
            out.append(piece)
            origin.extend([i] * len(piece))
    return "".join(out), origin


def _normalized_tail(text: str, n: int) -> str:
    """The last ``n`` normalized characters of ``text``, reading it from the end.

    Cost is proportional to ``n`` plus the number of trailing characters that normalize to
    nothing (whitespace, punctuation), not to ``len(text)``.
    """
    if n <= 0:
        return ""
    parts: list[str] = []
    got = 0
    i = len(text) - 1
    while got < n and i >= 0:
        piece = _TABLE[ord(text[i])]
        if piece:
            parts.append(piece)
            got += len(piece)
        i -= 1
    return "".join(reversed(parts))[-n:]


# --- hashing ----------------------------------------------------------------------------


def _mix64(z: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """splitmix64's finalizer, in place on a uint64 array (a bijection on 64-bit values)."""
    z ^= z >> _U64(30)
    z *= _U64(0xBF58476D1CE4E5B9)
    z ^= z >> _U64(27)
    z *= _U64(0x94D049BB133111EB)
    z ^= z >> _U64(31)
    return z


_M64: Final = (1 << 64) - 1
_SMALL: Final = 64
"""Normalized strings up to this length are hashed in plain Python (see ``windows``)."""


def _mix64_int(z: int) -> int:
    """:func:`_mix64` on one Python int."""
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & _M64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


class _ShingleHasher:
    """Keyed 64-bit hashes of every window of ``k`` normalized characters.

    ``h(c_0..c_{k-1}) = mix(Σ mix(c_j + salt) · base^(k-1-j) mod 2**64  ⊕  out)`` with
    ``salt``, odd ``base`` and ``out`` derived from the key. Mixing each code point first
    spreads the small code-point differences over all 64 bits, so the weak low bits of a
    polynomial hash modulo a power of two are not a way to build collisions.
    """

    def __init__(self, key: bytes, k: int) -> None:
        if not key:
            raise ConfigError("the guard's hash key must not be empty")
        if not MIN_SHINGLE_CHARS <= k <= MAX_SHINGLE_CHARS:
            raise ConfigError(
                f"shingle_chars must be between {MIN_SHINGLE_CHARS} and {MAX_SHINGLE_CHARS}, "
                f"got {k}"
            )
        digest = hashlib.blake2b(key, digest_size=24, person=b"auditor-guard-v1").digest()
        self.k = k
        self.key_id = key_id(key)
        self._salt = _U64(int.from_bytes(digest[0:8], "little"))
        self._base = _U64(int.from_bytes(digest[8:16], "little") | 1)
        self._out = _U64(int.from_bytes(digest[16:24], "little"))

    def windows(self, normalized: str) -> NDArray[np.uint64]:
        """Hash of every window of ``k`` characters of ``normalized``, in order."""
        codes = np.frombuffer(normalized.encode("utf-32-le"), dtype=np.uint32)
        return self._hash_codes(codes)

    def windows_small(self, normalized: str) -> list[int]:
        """:meth:`windows` in plain Python, for the few windows of a decoding step.

        Same values (a rolling form of the same polynomial). Why a second implementation:
        right after a model forward pass the ~30 numpy calls of :meth:`windows` run with
        cold caches, measured 175 µs per ``completes`` instead of 33 µs; a few dozen Python
        integer operations do not suffer from that.
        """
        k, n = self.k, len(normalized)
        if n < k:
            return []
        salt, base, out = int(self._salt), int(self._base), int(self._out)
        x = [_mix64_int((ord(ch) + salt) & _M64) for ch in normalized]
        top = pow(base, k - 1, 1 << 64)
        h = 0
        for v in x[:k]:
            h = (h * base + v) & _M64
        hashes = [_mix64_int(h ^ out)]
        for i in range(k, n):
            h = ((h - x[i - k] * top) * base + x[i]) & _M64
            hashes.append(_mix64_int(h ^ out))
        return hashes

    def _hash_codes(self, codes: NDArray[np.uint32]) -> NDArray[np.uint64]:
        n, k = len(codes), self.k
        if n < k:
            return np.empty(0, dtype=np.uint64)
        with np.errstate(over="ignore"):
            x = codes.astype(np.uint64)
            x += self._salt
            _mix64(x)
            m = n - k + 1
            acc = x[:m].copy()
            for j in range(1, k):  # Horner: k vector passes, no per-window Python work
                acc *= self._base
                acc += x[j : j + m]
            acc ^= self._out
            return _mix64(acc)

    def record_windows(
        self, normalized: list[str], *, boilerplate: bool = False
    ) -> tuple[NDArray[np.uint64], NDArray[np.uint64] | None]:
        """Hashes of every window lying inside one of the ``normalized`` records (none spans
        two), and, with ``boilerplate``, the per-record-distinct *digit-free* ones.

        The second array holds each digit-free shingle once per record that contains it,
        sorted: :func:`_run_counts` turns it into "in how many records". Digit presence per
        window comes from a cumulative count of digits over the batch, and the records of a
        window from a cumulative count of separators, so both cost a few vector passes.
        """
        k = self.k
        joined = _SEPARATOR.join(normalized)
        codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
        hashes = self._hash_codes(codes)
        m = len(hashes)
        if not m or (len(normalized) == 1 and not boilerplate):
            return hashes, (np.empty(0, dtype=np.uint64) if boilerplate else None)
        # Cumulative counts fit in 32 bits for any batch under 2**31 characters (halves the
        # temporaries of a boilerplate batch, the build's memory peak).
        count_type = np.int32 if len(codes) < 2**31 - 1 else np.int64
        seps = np.zeros(len(codes) + 1, dtype=count_type)
        np.cumsum(codes == 0, dtype=count_type, out=seps[1:])
        record = seps[:m]  # the record of each window's first character
        inside = seps[k : k + m] == record
        if not boilerplate:
            return hashes[inside], None
        digits = np.zeros(len(codes) + 1, dtype=count_type)
        np.cumsum(_digit_mask(codes), dtype=count_type, out=digits[1:])
        plain = inside & (digits[k : k + m] == digits[:m])
        del digits
        h, r = hashes[plain], record[plain]
        del plain
        # Stable: windows come in record order, so equal hashes stay in record order and a
        # repeat inside one record lies next to its first occurrence.
        order = np.argsort(h, kind="stable")
        h, r = h[order], r[order]
        del order
        first = np.ones(len(h), dtype=bool)
        first[1:] = (h[1:] != h[:-1]) | (r[1:] != r[:-1])
        return hashes[inside], h[first]


def _digit_mask(codes: NDArray[np.uint32]) -> NDArray[np.bool_]:
    """Which normalized code points are digits: ASCII ``0-9`` (:func:`normalize` turns every
    script's decimal digits into those) or any other number character (``N*``) that survives
    normalization, such as a Tamil number sign, so no numeral escapes the digit rule."""
    mask = (codes >= 48) & (codes <= 57)
    high = codes > 127
    if high.any():
        uniq, inverse = np.unique(codes[high], return_inverse=True)
        numeric = np.array(
            [unicodedata.category(chr(c))[0] == "N" for c in uniq.tolist()], dtype=bool
        )
        mask[high] = numeric[inverse]
    return mask


def _run_counts(
    sorted_values: NDArray[np.uint64], weights: NDArray[np.uint32] | None = None
) -> tuple[NDArray[np.uint64], NDArray[np.uint32]]:
    """Distinct values of a sorted array and, for each, its number of occurrences (or the
    sum of ``weights`` over them)."""
    n = len(sorted_values)
    if not n:
        return sorted_values, np.empty(0, dtype=np.uint32)
    starts = np.flatnonzero(np.concatenate(([True], sorted_values[1:] != sorted_values[:-1])))
    if weights is None:
        counts = np.diff(np.append(starts, n)).astype(np.uint32)
    else:
        counts = np.add.reduceat(weights, starts, dtype=np.uint32)
    return sorted_values[starts], counts


def key_id(key: bytes) -> str:
    """Public identifier of a hash key: ``sha256:<hex>`` of it (the key itself stays secret)."""
    return f"sha256:{hashlib.sha256(key).hexdigest()}"


def _member(sorted_hashes: NDArray[np.uint64], probes: NDArray[np.uint64]) -> NDArray[np.bool_]:
    """For each of ``probes``, whether it is in the sorted array ``sorted_hashes``.

    Binary search rather than ``np.isin``: the haystack is already sorted (and may be
    memory-mapped), so this needs no copy of it and only one index per probe.
    """
    if not len(probes) or not len(sorted_hashes):
        return np.zeros(len(probes), dtype=bool)
    pos = np.searchsorted(sorted_hashes, probes)
    pos[pos == len(sorted_hashes)] = 0
    return np.asarray(sorted_hashes[pos] == probes)


_BUCKET_TARGET: Final = 32
"""Mean hashes per directory bucket: the directory costs 8/32 = 0.25 bytes per hash."""
_FEW_PROBES: Final = 24
"""Up to this many probes are looked up one by one (see ``_Directory.any_of_few``)."""


class _Directory:
    """Membership in a large sorted hash array at one cache/TLB miss per probe, not ~25.

    A plain binary search over 10⁷-10⁸ hashes touches a new memory page at nearly every
    step. With the caches cold, as they are after a model forward pass, ``np.searchsorted``
    took 7.3 ms for the ~1,600 windows of a 2,000-character text against 2.6·10⁷ hashes;
    this directory 0.46 ms (a Python set 0.07 ms, at 11x the memory). The hashes are
    uniform (they are mixed), so their top bits index a table of bucket offsets; each probe
    then binary-searches only its bucket (~32 hashes, a few cache lines), vectorized over
    all probes of a text at once.
    """

    def __init__(self, hashes: NDArray[np.uint64]) -> None:
        self._hashes = hashes
        n = len(hashes)
        self._bits = max(0, int(n // _BUCKET_TARGET).bit_length() - 1)
        if self._bits:
            bounds = np.arange(1 << self._bits, dtype=np.uint64) << _U64(64 - self._bits)
            offsets = np.empty((1 << self._bits) + 1, dtype=np.int64)
            offsets[:-1] = np.searchsorted(hashes, bounds)
            offsets[-1] = n
        else:
            offsets = np.array([0, n], dtype=np.int64)
        self._offsets = offsets
        largest = int(np.diff(offsets).max()) if n else 0
        self._steps = largest.bit_length()  # binary-search rounds that empty any bucket

    @property
    def nbytes(self) -> int:
        return int(self._offsets.nbytes)

    def any_of(self, probes: NDArray[np.uint64]) -> bool:
        """Whether any of ``probes`` is among the hashes."""
        n = len(self._hashes)
        if not n or not len(probes):
            return False
        if len(probes) <= _FEW_PROBES:
            return self.any_of_few(probes.tolist())
        if self._bits:
            bucket = (probes >> _U64(64 - self._bits)).astype(np.intp)
            lo, hi = self._offsets[bucket], self._offsets[bucket + 1]
        else:
            lo = np.zeros(len(probes), dtype=np.int64)
            hi = np.full(len(probes), n, dtype=np.int64)
        for _ in range(self._steps):  # lower bound of each probe within its bucket
            active = lo < hi
            mid = (lo + hi) >> 1
            below = self._hashes[np.minimum(mid, n - 1)] < probes
            lo = np.where(active & below, mid + 1, lo)
            hi = np.where(active & ~below, mid, hi)
        return bool(np.any(self._hashes[np.minimum(lo, n - 1)] == probes))

    def any_of_few(self, probes: list[int]) -> bool:
        """:meth:`any_of` for a handful of probes: each probe's bucket (~32 hashes) is
        compared in Python, cheaper than the vectorized rounds' fixed cost."""
        if not len(self._hashes):
            return False
        shift = 64 - self._bits
        offsets, hashes = self._offsets, self._hashes
        for probe in probes:
            bucket = probe >> shift if self._bits else 0
            if probe in hashes[offsets.item(bucket) : offsets.item(bucket + 1)].tolist():
                return True
        return False


# --- the guard ----------------------------------------------------------------------------


class WithheldGuard:
    """Membership tests against the withheld shingles of one set of withheld data classes.

    Immutable and safe to share between threads. Make one with :meth:`ShingleSets.guard_for`.
    """

    def __init__(self, hashes: NDArray[np.uint64], hasher: _ShingleHasher) -> None:
        """Wrap sorted, de-duplicated shingle hashes made by ``hasher``."""
        self._hashes = hashes
        self._hasher = hasher
        self._directory = _Directory(hashes)

    @property
    def shingle_chars(self) -> int:
        """Normalized characters per shingle."""
        return self._hasher.k

    @property
    def nbytes(self) -> int:
        """Bytes this guard holds: 8 per withheld shingle, plus its bucket directory."""
        return int(self._hashes.nbytes) + self._directory.nbytes

    def __len__(self) -> int:
        """Number of distinct withheld shingles."""
        return len(self._hashes)

    def touches(self, text: str) -> bool:
        """Whether any shingle of ``normalize(text)`` is withheld."""
        return self._any_window(normalize(text))

    def completes(self, context: str, addition: str) -> bool:
        """Whether appending ``addition`` to ``context`` forms a withheld shingle that
        includes at least one normalized character produced by ``addition``.

        Used before accepting each generated token: ``context`` is the end of the prompt plus
        what was generated so far, ``addition`` the token's text. Withheld shingles lying
        wholly inside ``context`` do not count (the caller already had that text), but a
        shingle spanning the boundary does, which is what stops a chained attack (prompt =
        previous prompt + previous output). Only the last ``shingle_chars - 1`` normalized
        characters of ``context`` can be part of such a shingle, so the cost does not grow
        with the context's length (only with trailing characters that normalize to nothing).
        """
        if not len(self._hashes):
            return False
        added = normalize(addition)
        if not added:
            return False
        joined = _normalized_tail(context, self._hasher.k - 1) + added
        # Every window of ``joined`` contains an added character: the tail is shorter than k.
        return self._any_window(joined)

    def _any_window(self, normalized: str) -> bool:
        if not len(self._hashes):
            return False
        if len(normalized) <= _SMALL:
            return self._directory.any_of_few(self._hasher.windows_small(normalized))
        return self._directory.any_of(self._hasher.windows(normalized))


# --- shingle sets -------------------------------------------------------------------------


class ShingleSets:
    """Sorted, de-duplicated shingle hashes of each data class of a corpus, plus each
    boilerplate class's template shingles.

    Build with :meth:`build`, persist with :meth:`save`, reopen (memory-mapped, checksums
    verified) with :meth:`load`; :meth:`guard_for` makes the guard for a set of withheld
    classes. The key is held because queries must hash exactly like the build did.
    """

    def __init__(
        self,
        arrays: Mapping[str, NDArray[np.uint64]],
        *,
        key: bytes,
        shingle_chars: int = DEFAULT_SHINGLE_CHARS,
        corpus_id: str | None = None,
        boilerplate: Mapping[str, NDArray[np.uint64]] | None = None,
        boilerplate_records: int = 0,
    ) -> None:
        """Wrap per-class sorted unique hashes; use :meth:`build` or :meth:`load` instead.

        ``boilerplate`` maps a class to its sorted unique template shingles (a subset of its
        shingles), found with ``boilerplate_records`` as the threshold (0: none found).
        """
        for name in arrays:
            _check_class_name(name)
        boilerplate = dict(boilerplate or {})
        for name in boilerplate:
            if name not in arrays:
                raise ConfigError(f"boilerplate for {name!r}, a class with no shingles")
        if boilerplate_records < 0:
            raise ConfigError(f"boilerplate_records must be >= 0, got {boilerplate_records}")
        self._hasher = _ShingleHasher(key, shingle_chars)
        self._key = key
        self._arrays = dict(sorted(arrays.items()))
        self._boilerplate = dict(sorted(boilerplate.items()))
        self.boilerplate_records = boilerplate_records
        """The threshold the boilerplate was found with (0: boilerplate was not looked for)."""
        self.corpus_id = corpus_id
        """Identifier of the corpus the sets were built from (the catalog's manifest hash)."""
        self._guards: dict[frozenset[str], WithheldGuard] = {}
        self._lock = threading.Lock()

    @classmethod
    def build(
        cls,
        corpus: Iterable[tuple[str, str]],
        *,
        key: bytes,
        shingle_chars: int = DEFAULT_SHINGLE_CHARS,
        corpus_id: str | None = None,
        boilerplate_records: int = DEFAULT_BOILERPLATE_RECORDS,
        boilerplate_classes: Iterable[str] = BOILERPLATE_CLASSES,
    ) -> ShingleSets:
        """Hash every shingle of every ``(data_class, text)`` record.

        Shingles never span two records. Records are hashed in batches of ~8M normalized
        characters with numpy, so memory stays bounded by the distinct shingles plus one
        batch.

        For each of ``boilerplate_classes`` present, its *boilerplate* is also found: the
        shingles without a digit that occur in at least ``boilerplate_records`` distinct
        records of the class (0 turns this off). Records whose normalized text is identical
        count once, so a chat stored ten times is not ten chats' worth of template (a 16-byte
        digest per such record is held while building). Counting is per batch (each record's
        distinct digit-free hashes, sorted, runs counted), then the batches' (hash, count)
        pairs are merged the same way; it roughly triples the build time (measured in
        ``bench/guard_memory.py``), still a small part of an index build.

        Raises:
            ConfigError: ``shingle_chars`` out of range, empty key, negative
                ``boilerplate_records`` or a data class name that is not a plain lowercase
                identifier.
        """
        hasher = _ShingleHasher(key, shingle_chars)
        if boilerplate_records < 0:
            raise ConfigError(f"boilerplate_records must be >= 0, got {boilerplate_records}")
        counted = frozenset(boilerplate_classes) if boilerplate_records else frozenset()
        pending: dict[str, list[str]] = {}
        pending_chars: dict[str, int] = {}
        parts: dict[str, list[NDArray[np.uint64]]] = {}
        counts: dict[str, list[tuple[NDArray[np.uint64], NDArray[np.uint32]]]] = {}
        seen: dict[str, set[bytes]] = {name: set() for name in counted}

        def flush(name: str) -> None:
            hashes, per_record = hasher.record_windows(
                pending.pop(name), boilerplate=name in counted
            )
            pending_chars.pop(name)
            parts.setdefault(name, []).append(_sorted_unique(hashes))
            if per_record is not None:
                counts.setdefault(name, []).append(_run_counts(per_record))

        for data_class, text in corpus:
            _check_class_name(data_class)
            norm = normalize(text)
            if data_class in counted:
                digest = hashlib.blake2b(norm.encode(), digest_size=16).digest()
                if digest in seen[data_class]:
                    continue  # an identical record adds no shingle and must not count twice
                seen[data_class].add(digest)
            pending.setdefault(data_class, []).append(norm)
            pending_chars[data_class] = pending_chars.get(data_class, 0) + len(norm)
            if pending_chars[data_class] >= _CHUNK_CHARS:
                flush(data_class)
        for name in list(pending):
            flush(name)
        del seen
        # Boilerplate first, then the classes' arrays, each batch list dropped once merged:
        # the two merges' temporaries never coexist with all of the other's inputs.
        boilerplate = {
            name: _frequent(counts.pop(name), boilerplate_records) for name in list(counts)
        }
        arrays = {}
        for name in list(parts):
            chunks = parts.pop(name)
            arrays[name] = _sorted_unique(np.concatenate(chunks)) if len(chunks) > 1 else chunks[0]
            del chunks
        return cls(
            arrays,
            key=key,
            shingle_chars=shingle_chars,
            corpus_id=corpus_id,
            boilerplate=boilerplate,
            boilerplate_records=boilerplate_records,
        )

    @property
    def shingle_chars(self) -> int:
        return self._hasher.k

    @property
    def key_id(self) -> str:
        """sha256 of the hash key, as recorded in ``guard.json``."""
        return self._hasher.key_id

    @property
    def classes(self) -> tuple[str, ...]:
        """Data classes with a shingle set, sorted."""
        return tuple(self._arrays)

    def count(self, data_class: str) -> int:
        """Distinct shingles of ``data_class`` (0 for a class not in the corpus)."""
        arr = self._arrays.get(data_class)
        return 0 if arr is None else len(arr)

    def boilerplate_count(self, data_class: str) -> int:
        """Distinct template shingles of ``data_class`` that its guard leaves out."""
        arr = self._boilerplate.get(data_class)
        return 0 if arr is None else len(arr)

    @property
    def nbytes(self) -> int:
        """Bytes of all hash arrays, boilerplate included (memory-mapped after :meth:`load`)."""
        arrays = [*self._arrays.values(), *self._boilerplate.values()]
        return sum(int(a.nbytes) for a in arrays)

    def guard_for(self, withheld: frozenset[str]) -> WithheldGuard:
        """The guard for ``withheld`` data classes: their shingles minus every shingle that
        also occurs in a class not withheld, minus the withheld classes' boilerplate. Cached
        per set; an empty set matches nothing.

        Classes that are not in the corpus contribute nothing.
        """
        with self._lock:
            cached = self._guards.get(withheld)
            if cached is not None:
                return cached
            hidden = [a for c, a in self._arrays.items() if c in withheld]
            not_secret = [a for c, a in self._arrays.items() if c not in withheld]
            not_secret += [a for c, a in self._boilerplate.items() if c in withheld and len(a)]
            hashes = _union(hidden)
            if len(hashes) and not_secret:
                hashes = hashes[~_member(_union(not_secret), hashes)]
            guard = WithheldGuard(np.ascontiguousarray(hashes, dtype=np.uint64), self._hasher)
            self._guards[withheld] = guard
            return guard

    # --- persistence --------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write the sets, the boilerplate sets, the key (mode 0600) and ``guard.json`` into
        ``directory``.

        ``guard.json`` is removed first and written last, so a crash mid-way leaves a
        directory that :meth:`load` refuses rather than a mix of two builds.
        """
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MANIFEST_FILE).unlink(missing_ok=True)
        # mkstemp behind atomic_write creates the file with mode 0600: the key never exists
        # on disk with wider permissions, not even briefly.
        atomic_write(directory / KEY_FILE, lambda fh: fh.write(self._key))
        classes: dict[str, dict[str, object]] = {}
        written: set[str] = set()

        def put(path: Path, arr: NDArray[np.uint64]) -> dict[str, object]:
            _save_array(path, arr)
            written.add(path.name)
            return {"file": path.name, "count": len(arr), "sha256": sha256_file(path)}

        for name, arr in self._arrays.items():
            classes[name] = put(directory / f"{name}.npy", arr)
            if name in self._boilerplate:
                path = directory / f"{name}{_BOILERPLATE_SUFFIX}"
                classes[name]["boilerplate"] = put(path, self._boilerplate[name])
        for stale in directory.glob("*.npy"):
            if stale.name not in written:
                stale.unlink()
        manifest = {
            "format": GUARD_FORMAT,
            "shingle_chars": self.shingle_chars,
            "boilerplate_records": self.boilerplate_records,
            "key_id": self.key_id,
            "corpus_id": self.corpus_id,
            "classes": classes,
        }
        atomic_write_json(directory / MANIFEST_FILE, manifest)

    @classmethod
    def load(cls, directory: Path, *, verify: bool = True) -> ShingleSets:
        """Open a guard directory written by :meth:`save`; arrays are memory-mapped.

        Raises:
            ConfigError: no ``guard.json`` (not a finished guard) or another format, such as
                a v1 guard made before boilerplate was left out (``auditor-server guard``
                rebuilds it; ``build`` and ``reindex`` do so by themselves).
            IntegrityError: a file's checksum, the key's id or an array's shape or order
                differs from what ``guard.json`` records.
        """
        manifest_path = directory / MANIFEST_FILE
        manifest = read_manifest(
            manifest_path,
            fmt=GUARD_FORMAT,
            what="guard",
            rebuild="`auditor-server guard --index INDEX_DIR`",
        )
        try:
            key = (directory / KEY_FILE).read_bytes()
        except OSError as exc:
            raise IntegrityError(f"{directory / KEY_FILE}: cannot read the key ({exc})") from exc
        if key_id(key) != manifest.get("key_id"):
            raise IntegrityError(f"{directory / KEY_FILE}: key differs from the one recorded")

        def open_array(path: Path, entry: object, what: str) -> NDArray[np.uint64]:
            if not isinstance(entry, dict) or entry.get("file") != path.name:
                raise IntegrityError(f"{manifest_path}: {what} names another file")
            if verify and (not path.is_file() or sha256_file(path) != entry.get("sha256")):
                raise IntegrityError(f"{path}: checksum differs from {MANIFEST_FILE}")
            try:
                arr: NDArray[np.uint64] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise IntegrityError(f"{path}: unreadable ({exc})") from exc
            if arr.dtype != np.uint64 or arr.ndim != 1 or len(arr) != entry.get("count"):
                raise IntegrityError(f"{path}: not the {entry.get('count')} hashes recorded")
            return arr

        arrays: dict[str, NDArray[np.uint64]] = {}
        boilerplate: dict[str, NDArray[np.uint64]] = {}
        for name, entry in dict(manifest.get("classes", {})).items():
            _check_class_name(name)
            arrays[name] = open_array(directory / f"{name}.npy", entry, f"class {name!r}")
            if isinstance(entry, dict) and "boilerplate" in entry:
                boilerplate[name] = open_array(
                    directory / f"{name}{_BOILERPLATE_SUFFIX}",
                    entry["boilerplate"],
                    f"boilerplate of {name!r}",
                )
        records = manifest.get("boilerplate_records")
        if not isinstance(records, int) or isinstance(records, bool) or records < 0:
            raise IntegrityError(f"{manifest_path}: boilerplate_records is {records!r}")
        return cls(
            arrays,
            key=key,
            shingle_chars=int(manifest["shingle_chars"]),
            corpus_id=manifest.get("corpus_id"),
            boilerplate=boilerplate,
            boilerplate_records=records,
        )


_MERGE_PARTS_BITS: Final = 4
"""The batches' (hash, count) pairs are merged in 2**4 ranges of hash values, one at a time."""


def _frequent(
    batches: list[tuple[NDArray[np.uint64], NDArray[np.uint32]]], threshold: int
) -> NDArray[np.uint64]:
    """Hashes whose record counts, summed over the batches, reach ``threshold`` (sorted).

    Each batch's hashes are sorted, so one range of hash values is a slice of every batch;
    merging range by range keeps the merge's temporaries (concatenation, argsort, gathers:
    ~30 bytes per pair) to a sixteenth of all pairs. Measured on 10⁸ private characters
    (12 batches): a 2.8 GiB build peak when merged at once.
    """
    if not batches:
        return np.empty(0, dtype=np.uint64)
    if len(batches) == 1:
        values, counts = batches[0]
        return np.ascontiguousarray(values[counts >= threshold], dtype=np.uint64)
    parts = 1 << _MERGE_PARTS_BITS
    bounds = np.arange(1, parts, dtype=np.uint64) << _U64(64 - _MERGE_PARTS_BITS)
    cuts = [np.concatenate(([0], np.searchsorted(v, bounds), [len(v)])) for v, _ in batches]
    found: list[NDArray[np.uint64]] = []
    for part in range(parts):
        pieces = [
            (v[c[part] : c[part + 1]], w[c[part] : c[part + 1]])
            for (v, w), c in zip(batches, cuts, strict=True)
        ]
        merged = np.concatenate([v for v, _ in pieces])
        weights = np.concatenate([w for _, w in pieces])
        order = np.argsort(merged)
        values, counts = _run_counts(merged[order], weights[order])
        found.append(values[counts >= threshold])
    return np.ascontiguousarray(np.concatenate(found), dtype=np.uint64)


def _save_array(path: Path, arr: NDArray[np.uint64]) -> None:
    data = np.ascontiguousarray(arr, dtype=np.uint64)
    atomic_write(path, lambda fh: np.save(fh, data, allow_pickle=False))


def _check_class_name(name: str) -> None:
    """Class names become file names: allow plain lowercase identifiers only."""
    if not isinstance(name, str) or not _CLASS_NAME.fullmatch(name):
        raise ConfigError(f"data class {name!r} is not a plain lowercase identifier")


def _union(arrays: list[NDArray[np.uint64]]) -> NDArray[np.uint64]:
    """Sorted unique union of sorted unique arrays."""
    if not arrays:
        return np.empty(0, dtype=np.uint64)
    if len(arrays) == 1:
        return arrays[0]
    return _sorted_unique(np.concatenate(arrays))


def _sorted_unique(values: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """Sorted distinct values, sorting in place (``values`` is a temporary).

    Not ``np.unique``: the numpy installed here (2.4) de-duplicates integers with a hash
    table before sorting, measured 17x slower than this (29 s vs 1.7 s for 1.3·10⁷ random
    64-bit hashes on the 2-core bench machine), and the result has to be sorted anyway.
    """
    values.sort()
    if len(values) < 2:
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]
