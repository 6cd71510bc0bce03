"""Verbatim evidence: which stretches of an attributed text occur word for word in training data.

Gradient attribution says which records *influenced* an output; it cannot say that a
passage was copied. OLMoTrace (Liu et al., 2025) shows the other half next to it: the
longest spans of the output that occur verbatim in the training corpus, found with a
suffix array (infini-gram). This module is that half, under the lab's disclosure policy.

**Per data class, never private.** Each data class has its own suffix array, so a search
for a role touches only the arrays of the classes the role may see: text of a withheld
class cannot shape a match, its length, its count or the time it takes. ``private`` is
disclosed as ``none`` under every valid policy (the policy schema rejects anything else),
so private text is not indexed at all (:data:`NEVER_INDEXED`); nothing in this directory
is derived from it.

**What a match is.** Text is cut into tokens, words (``\\w+``) and single punctuation marks;
whitespace only separates them. A span is a run of whole tokens of the auditor's text (it
starts at a word and ends at a token's end) whose token sequence occurs in one record, also
starting at a token there: "fox" never matches inside "foxes", and a passage matches across
different line wrapping. Case and every other character must agree exactly. Offsets
returned are code points into the auditor's own ``prompt + completion``.

**Which spans are kept** (:class:`SearchOptions`). For every word of the text the longest
token run starting there that occurs in the class is found (binary search of the suffix
array: the longest common prefix with any suffix is reached at a neighbour of the insertion
point); runs contained in an earlier one are dropped, so each span is *maximal*. A span
counts as evidence only with at least :data:`DEFAULT_MIN_WORDS` (6) words, 30 characters
and 2 words outside a list of common English function words (:data:`COMMON_WORDS`): five
words or fewer, or "and it was one of the", occur by chance in any large corpus, as in
OLMoTrace, which likewise filters out spans of very common tokens. Six words is shorter than
the copyright suite's 8-gram overlap on purpose: verbatim evidence should show the *start*
of a copied passage too, and a 30-character floor keeps six short words ("it is so as to
be") out. At most :data:`DEFAULT_MAX_SPANS` spans are returned, those reaching into the
completion first, longer before shorter; for each, per class, how many records contain it and
up to :data:`DEFAULT_MAX_LISTED` of them (lowest catalog ordinal first).

**Why a suffix array of our own, built with pydivsufsort, not the infini-gram package.**
infini-gram (evaluated: 2.6.0) indexes *token ids* of a Hugging Face tokenizer it fetches
by name at indexing time (gpt2/llama/olmo from the hub, which this lab must never do at run
time) or raw bytes, with a separate Rust executable driven through ``os.popen`` shell
commands that writes its own multi-file format in place (no atomic writes, no checksums,
nothing to say a build finished), and ships a 32 MB native engine for corpora of 10^12
tokens. Our corpora fit a plain suffix array: ``pydivsufsort`` (MIT, prebuilt wheels)
sorts the suffixes in C (10 MB in 0.7 s on the 2-core bench machine), and the query side is
a few dozen lines of numpy and ``bytes`` comparisons over memory-mapped files.

**On disk** (``INDEX_DIR/verbatim/``, lab side only: it holds disclosed classes' text):
per indexed class ``<class>.tokens`` (each record's tokens in UTF-8, each followed by byte
0xFE, records separated by 0xFF: neither byte occurs in UTF-8, so no match crosses a token
or record boundary), ``<class>.sa.npy`` (the suffix array, restricted to token starts),
``<class>.records.npy`` (per record: first byte, catalog ordinal) and ``verbatim.json``
(format, corpus manifest hash, per-class counts and sha256 of each file), written last:
a crash mid-build leaves a directory :meth:`VerbatimIndex.open` refuses.
"""

from __future__ import annotations

import bisect
import logging
import mmap
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Final, Self

import numpy as np
from numpy.typing import NDArray

from auditor_server.errors import ConfigError, InputError, IntegrityError
from auditor_server.fsutil import atomic_write, atomic_write_json, sha256_file
from auditor_server.manifests import read_manifest

__all__ = [
    "COMMON_WORDS",
    "DEFAULT_MAX_LISTED",
    "DEFAULT_MAX_SPANS",
    "DEFAULT_MIN_CHARS",
    "DEFAULT_MIN_WORDS",
    "MANIFEST_FILE",
    "NEVER_INDEXED",
    "VERBATIM_FORMAT",
    "ClassHits",
    "Occurrence",
    "SearchOptions",
    "VerbatimIndex",
    "VerbatimMatch",
    "open_for_serving",
    "token_char_range",
    "tokenize",
]

log = logging.getLogger(__name__)

VERBATIM_FORMAT: Final = "auditor-sandbox-verbatim/v1"
MANIFEST_FILE: Final = "verbatim.json"
NEVER_INDEXED: Final = frozenset({"private"})
"""Classes whose text is never put into a verbatim index: withheld from every role."""

DEFAULT_MIN_WORDS: Final = 6
DEFAULT_MIN_CHARS: Final = 30
DEFAULT_MIN_RARE_WORDS: Final = 2
DEFAULT_MAX_SPANS: Final = 16
DEFAULT_MAX_LISTED: Final = 5
"""Records listed per span and class (the count covers all of them)."""
MAX_QUERY_CHARS: Final = 200_000
"""Longer texts are refused (the service's own limits are far lower)."""

_WINDOW: Final = 256
"""Bytes of the text compared per suffix-array probe before widening (see ``longest``)."""
_TOKEN_END: Final = 0xFE
_RECORD_END: Final = 0xFF
_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\w")
_CLASS_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")

COMMON_WORDS: Final = frozenset(
    """a about after all also an and any are as at be been before being but by can could
    did do does for from had has have he her here him his how i if in into is it its just
    may me more most my no not now of on one only or other our out over said she should so
    some such than that the their them then there these they this those through to too two
    up upon us very was we were what when where which while who will with would you your
    s t""".split()  # noqa: SIM905 (a word list reads better as prose)
)
"""Function words too frequent to make a span evidence on their own (compared case-folded)."""


# --- tokens -------------------------------------------------------------------------------


def tokenize(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` code-point offsets of the tokens of ``text``: words and single
    punctuation marks (anything that is neither a word character nor whitespace)."""
    return [m.span() for m in _TOKEN.finditer(text)]


def _encode(text: str) -> bytes:
    """The tokens of ``text`` in UTF-8, each followed by 0xFE.

    Tokens hold no whitespace, so joining them with a space and turning every space into
    0xFE afterwards does it in three C loops.
    """
    found = _TOKEN.findall(text)
    if not found:
        return b""
    return (" ".join(found) + " ").encode("utf-8").replace(b" ", bytes([_TOKEN_END]))


def token_char_range(text: str, first_token: int, n_tokens: int) -> tuple[int, int]:
    """Code-point offsets in ``text`` of its tokens ``first_token .. first_token+n_tokens-1``.

    Raises:
        IntegrityError: ``text`` has fewer tokens (the index and the text disagree).
    """
    found = list(islice(_TOKEN.finditer(text), first_token, first_token + n_tokens))
    if n_tokens < 1 or len(found) != n_tokens:
        raise IntegrityError("verbatim index and catalog text disagree")
    return found[0].start(), found[-1].end()


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Occurrence:
    """Where a span occurs in one record: its tokens ``token_start ..`` (``token_count``)."""

    ordinal: int
    """The record's catalog ordinal."""
    token_start: int
    token_count: int


@dataclass(frozen=True, slots=True)
class ClassHits:
    """The records of one data class that contain a span."""

    data_class: str
    records: int
    """How many records of the class contain the span (listed or not)."""
    listed: tuple[Occurrence, ...]
    """Up to ``max_listed`` of them, lowest ordinal first, one occurrence each."""


@dataclass(frozen=True, slots=True)
class VerbatimMatch:
    """One maximal span of the auditor's text found verbatim in training records."""

    start: int
    """Code-point offset into ``prompt + completion`` (inclusive)."""
    end: int
    """Code-point offset into ``prompt + completion`` (exclusive)."""
    words: int
    region: str
    """``prompt``, ``completion`` or ``both``: where the span lies."""
    hits: tuple[ClassHits, ...]
    """One entry per class that holds it, in the order the classes were asked for."""

    @property
    def length_chars(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class SearchOptions:
    """What counts as a span worth returning (see the module docstring for the defaults)."""

    min_words: int = DEFAULT_MIN_WORDS
    min_chars: int = DEFAULT_MIN_CHARS
    min_rare_words: int = DEFAULT_MIN_RARE_WORDS
    max_spans: int = DEFAULT_MAX_SPANS
    max_listed: int = DEFAULT_MAX_LISTED

    def __post_init__(self) -> None:
        if min(self.min_words, self.max_spans, self.max_listed) < 1:
            raise ConfigError("min_words, max_spans and max_listed must be at least 1")
        if min(self.min_chars, self.min_rare_words) < 0:
            raise ConfigError("min_chars and min_rare_words must not be negative")


# --- the query text -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Query:
    """The auditor's text as tokens: char offsets, byte offsets into the encoded form."""

    text: str
    encoded: bytes
    char_spans: list[tuple[int, int]]
    byte_starts: list[int]
    byte_ends: list[int]
    """Byte offset just after each token's 0xFE."""
    is_word: list[bool]
    is_rare: list[bool]

    @classmethod
    def of(cls, text: str) -> _Query:
        spans = tokenize(text)
        starts, ends, words, rare = [], [], [], []
        at = 0
        for s, e in spans:
            piece = text[s:e]
            starts.append(at)
            at += len(piece.encode("utf-8")) + 1
            ends.append(at)
            word = _WORD.match(piece) is not None
            words.append(word)
            rare.append(word and piece.casefold() not in COMMON_WORDS)
        return cls(text, _encode(text), spans, starts, ends, words, rare)


# --- one class ------------------------------------------------------------------------------


class _ClassArray:
    """The token stream, suffix array and record table of one data class."""

    def __init__(
        self,
        name: str,
        stream: mmap.mmap | bytes,
        sa: NDArray[np.integer],
        records: NDArray[np.int64],
    ) -> None:
        self.name = name
        self._stream = stream
        self._sa_np = sa
        # Indexing a memoryview gives a Python int without a numpy scalar per binary-search
        # step: the query's inner loop is those steps.
        raw = np.ascontiguousarray(sa).data.cast("B")
        self._view = raw.cast("i") if sa.dtype == np.int32 else raw.cast("q")
        self._sa: Sequence[int] = self._view
        self._starts = np.ascontiguousarray(records[:, 0])
        self._ordinals = np.ascontiguousarray(records[:, 1])

    def __len__(self) -> int:
        return len(self._sa)

    def close(self) -> None:
        self._view.release()
        if isinstance(self._stream, mmap.mmap):
            self._stream.close()

    def longest(self, suffix: bytes) -> int:
        """Bytes of the longest prefix of ``suffix`` that starts some token run of the class.

        The longest common prefix with any suffix of a sorted array is reached at one of
        the two neighbours of the insertion point. Most prefixes match little, so the
        search first compares only :data:`_WINDOW` bytes and widens the window (doubling)
        only while a neighbour matches all of it: same answer, far fewer bytes copied.
        """
        window = _WINDOW
        while True:
            best = self._longest_within(suffix[:window])
            if best < window or window >= len(suffix):
                return best
            window *= 2

    def _longest_within(self, prefix: bytes) -> int:
        sa, stream, m = self._sa, self._stream, len(prefix)
        lo, hi = 0, len(sa)
        while lo < hi:
            mid = (lo + hi) >> 1
            p = sa[mid]
            if stream[p : p + m] < prefix:
                lo = mid + 1
            else:
                hi = mid
        best = 0
        for i in (lo - 1, lo):
            if 0 <= i < len(sa):
                p = sa[i]
                best = max(best, _common_prefix(prefix, stream[p : p + m]))
        return best

    def holds(self, pattern: bytes) -> bool:
        """Whether some token run of the class starts with ``pattern``."""
        sa, stream, m = self._sa, self._stream, len(pattern)
        lo, hi = 0, len(sa)
        while lo < hi:
            mid = (lo + hi) >> 1
            p = sa[mid]
            if stream[p : p + m] < pattern:
                lo = mid + 1
            else:
                hi = mid
        return lo < len(sa) and stream[sa[lo] : sa[lo] + m] == pattern

    def hits(self, pattern: bytes, n_tokens: int, max_listed: int) -> ClassHits | None:
        """The records holding ``pattern`` (whole tokens, each ended by 0xFE)."""
        m, stream = len(pattern), self._stream

        def key(i: int) -> bytes:
            p = self._sa[i]
            return stream[p : p + m]

        positions = range(len(self._sa))
        lo = bisect.bisect_left(positions, pattern, key=key)
        hi = bisect.bisect_right(positions, pattern, lo=lo, key=key)
        if lo == hi:
            return None
        occ = np.asarray(self._sa_np[lo:hi], dtype=np.int64)
        which = np.searchsorted(self._starts, occ, side="right") - 1
        records = np.unique(which)
        listed = []
        for r in records[:max_listed].tolist():
            first = int(occ[which == r].min())
            start = int(self._starts[r])
            token_start = stream[start:first].count(_TOKEN_END)
            listed.append(Occurrence(int(self._ordinals[r]), token_start, n_tokens))
        return ClassHits(self.name, len(records), tuple(listed))


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix of two byte strings (in C: big-int xor)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    x = int.from_bytes(a[:n], "big") ^ int.from_bytes(b[:n], "big")
    return n - (x.bit_length() + 7) // 8


# --- the index ------------------------------------------------------------------------------


class VerbatimIndex:
    """Per-class suffix arrays over token streams; :meth:`search` finds verbatim spans.

    Immutable once open and safe to share between threads (reads only).
    """

    def __init__(self, arrays: dict[str, _ClassArray], *, corpus_id: str | None) -> None:
        self._arrays = arrays
        self.corpus_id = corpus_id
        """The catalog manifest hash of the corpus the index was built from."""

    @property
    def classes(self) -> tuple[str, ...]:
        """Data classes with a suffix array, sorted."""
        return tuple(sorted(self._arrays))

    def suffixes(self, data_class: str) -> int:
        """Entries of the class's suffix array (0 for a class not indexed)."""
        arr = self._arrays.get(data_class)
        return 0 if arr is None else len(arr)

    def close(self) -> None:
        for arr in self._arrays.values():
            arr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- query ------------------------------------------------------------------------------

    def search(
        self,
        prompt: str,
        completion: str,
        classes: Iterable[str],
        options: SearchOptions | None = None,
    ) -> list[VerbatimMatch]:
        """Maximal spans of ``prompt + completion`` found verbatim in records of ``classes``.

        Only the arrays of ``classes`` are read (classes not indexed contribute nothing),
        so nothing about any other class can change the answer. Spans are sorted by
        position; a span held by several classes is one match with a hit per class.

        Raises:
            InputError: the text is longer than :data:`MAX_QUERY_CHARS`.
        """
        options = options or SearchOptions()
        text = prompt + completion
        if len(text) > MAX_QUERY_CHARS:
            raise InputError(f"verbatim search takes at most {MAX_QUERY_CHARS} characters")
        wanted = [c for c in dict.fromkeys(classes) if c in self._arrays]
        query = _Query.of(text)
        if not wanted or not query.char_spans:
            return []
        found: dict[tuple[int, int], list[ClassHits]] = {}
        for name in wanted:
            arr = self._arrays[name]
            for first, last in _maximal_runs(arr, query):
                if not _long_enough(query, first, last, options):
                    continue
                pattern = query.encoded[query.byte_starts[first] : query.byte_ends[last]]
                held = arr.hits(pattern, last - first + 1, options.max_listed)
                if held is not None:
                    found.setdefault((first, last), []).append(held)
        prompt_end = len(prompt)
        matches = []
        for (first, last), hits in found.items():
            start, end = query.char_spans[first][0], query.char_spans[last][1]
            region = (
                "prompt" if end <= prompt_end else "completion" if start >= prompt_end else "both"
            )
            matches.append(
                VerbatimMatch(
                    start=start,
                    end=end,
                    words=sum(query.is_word[first : last + 1]),
                    region=region,
                    hits=tuple(sorted(hits, key=_class_order(wanted))),
                )
            )
        matches.sort(key=lambda m: (m.region == "prompt", -m.length_chars, m.start, m.end))
        kept = matches[: options.max_spans]
        return sorted(kept, key=lambda m: (m.start, m.end))

    # --- persistence ------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        records: Iterable[tuple[int, str, str]],
        directory: Path,
        *,
        corpus_id: str | None,
        exclude: Collection[str] = NEVER_INDEXED,
    ) -> VerbatimIndex:
        """Index ``(ordinal, data_class, text)`` records (ordinals increasing) into
        ``directory`` and open the result.

        Records of ``exclude`` are skipped before anything is derived from them.
        ``verbatim.json`` is removed first and written last; every file is written
        atomically, so a crash at any point leaves no index that opens.

        Raises:
            ConfigError: a data class name that is not a plain lowercase identifier.
        """
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MANIFEST_FILE).unlink(missing_ok=True)
        streams: dict[str, list[bytes]] = {}
        table: dict[str, list[tuple[int, int]]] = {}
        sizes: dict[str, int] = {}
        for ordinal, data_class, text in records:
            if data_class in exclude:
                continue
            _check_class_name(data_class)
            encoded = _encode(text) + bytes([_RECORD_END])
            streams.setdefault(data_class, []).append(encoded)
            table.setdefault(data_class, []).append((sizes.get(data_class, 0), ordinal))
            sizes[data_class] = sizes.get(data_class, 0) + len(encoded)
        entries: dict[str, dict[str, object]] = {}
        written: set[str] = set()
        for name in sorted(streams):
            stream = b"".join(streams.pop(name))
            sa = _token_suffix_array(stream)
            rows = np.asarray(table[name], dtype=np.int64).reshape(-1, 2)
            files = {
                "tokens": directory / f"{name}.tokens",
                "sa": directory / f"{name}.sa.npy",
                "records": directory / f"{name}.records.npy",
            }
            _save_bytes(files["tokens"], stream)
            _save_array(files["sa"], sa)
            _save_array(files["records"], rows)
            written.update(p.name for p in files.values())
            entries[name] = {
                "records": len(rows),
                "bytes": len(stream),
                "suffixes": len(sa),
                "files": {k: {"file": p.name, "sha256": sha256_file(p)} for k, p in files.items()},
            }
        for stale in directory.iterdir():
            if stale.is_file() and stale.name != MANIFEST_FILE and stale.name not in written:
                stale.unlink()
        manifest = {"format": VERBATIM_FORMAT, "corpus_id": corpus_id, "classes": entries}
        atomic_write_json(directory / MANIFEST_FILE, manifest)
        return cls.open(directory, verify=False)

    @classmethod
    def open(cls, directory: Path, *, verify: bool = True) -> VerbatimIndex:
        """Open an index written by :meth:`build`; files are memory-mapped.

        Raises:
            ConfigError: no ``verbatim.json`` (not a finished index) or another format.
            IntegrityError: a file's checksum, shape or size differs from the manifest.
        """
        manifest = read_manifest(
            directory / MANIFEST_FILE,
            fmt=VERBATIM_FORMAT,
            what="verbatim index",
            rebuild="`auditor-server verbatim --index INDEX_DIR`",
        )
        arrays: dict[str, _ClassArray] = {}
        try:
            for name, entry in dict(manifest.get("classes", {})).items():
                _check_class_name(name)
                arrays[name] = _open_class(directory, name, entry, verify=verify)
        except BaseException:
            for arr in arrays.values():
                arr.close()
            raise
        corpus_id = manifest.get("corpus_id")
        return cls(arrays, corpus_id=corpus_id if isinstance(corpus_id, str) else None)


def open_for_serving(directory: Path, *, corpus_id: str) -> VerbatimIndex | None:
    """The verbatim index in ``directory`` for a server over the corpus ``corpus_id``, or
    None (logged once, here) when the index was built before verbatim evidence existed:
    such an index still serves, its Attribute answers say no verbatim search was made.

    Raises:
        ConfigError: the verbatim index was built from another corpus.
        IntegrityError: its files fail their checksums.
    """
    if not (directory / MANIFEST_FILE).exists():
        log.warning(
            "%s has no verbatim index: Attribute answers carry no verbatim spans; build it "
            "with `auditor-server verbatim --index INDEX_DIR`",
            directory.parent,
        )
        return None
    index = VerbatimIndex.open(directory)
    if index.corpus_id != corpus_id:
        index.close()
        raise ConfigError(
            f"{directory} was built from another corpus; rebuild it with "
            "`auditor-server verbatim --index INDEX_DIR`"
        )
    return index


def _maximal_runs(arr: _ClassArray, query: _Query) -> Iterator[tuple[int, int]]:
    """``(first, last)`` token indexes of each maximal run of ``query`` found in ``arr``,
    starting at a word.

    A run is kept only when it ends later than every earlier one (one that ends no later
    lies inside an earlier run, since every suffix of a match is a match). After a run
    ``(k, last)``, the starts that could pass ``last`` are those ``j`` for which tokens
    ``j .. last+1`` occur, and that holds for every ``j`` from some ``j*`` on: ``j*`` is
    found by bisection (:func:`_first_extending`) and the starts before it are skipped.
    Without that, a long copied passage costs one long binary search per word inside it
    (measured 150 ms for 8,000 copied characters on the demo index).
    """
    reach = -1
    n = len(query.char_spans)
    k = 0
    while k < n:
        if not query.is_word[k]:
            k += 1
            continue
        start = query.byte_starts[k]
        matched = arr.longest(query.encoded[start:])
        last = bisect.bisect_right(query.byte_ends, start + matched) - 1
        if last < k or last <= reach:
            k += 1
            continue
        reach = last
        yield k, last
        if reach == n - 1:
            return  # every later run ends no later: none can be maximal
        k = _first_extending(arr, query, k + 1, last)


def _first_extending(arr: _ClassArray, query: _Query, lo: int, last: int) -> int:
    """The smallest ``j`` in ``[lo, last + 1]`` such that tokens ``j .. last+1`` occur in
    ``arr`` (true for every larger ``j`` once true for one), or ``last + 2`` if none."""
    end = query.byte_ends[last + 1]

    def occurs(j: int) -> bool:
        return arr.holds(query.encoded[query.byte_starts[j] : end])

    hi = last + 1
    if not occurs(hi):
        return last + 2
    while lo < hi:
        mid = (lo + hi) // 2
        if occurs(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _class_order(wanted: list[str]) -> Callable[[ClassHits], int]:
    return lambda hits: wanted.index(hits.data_class)


def _long_enough(query: _Query, first: int, last: int, options: SearchOptions) -> bool:
    words = sum(query.is_word[first : last + 1])
    rare = sum(query.is_rare[first : last + 1])
    chars = query.char_spans[last][1] - query.char_spans[first][0]
    return (
        words >= options.min_words and chars >= options.min_chars and rare >= options.min_rare_words
    )


def _token_suffix_array(stream: bytes) -> NDArray[np.integer]:
    """Suffix array of ``stream`` restricted to token starts (a match must start at one)."""
    from pydivsufsort import divsufsort

    if not stream:
        return np.empty(0, dtype=np.int32)
    full = np.asarray(divsufsort(stream))
    data = np.frombuffer(stream, dtype=np.uint8)
    starts = np.empty(len(data), dtype=bool)
    starts[0] = True
    np.greater_equal(data[:-1], _TOKEN_END, out=starts[1:])  # after 0xFE or 0xFF
    starts &= data != _RECORD_END
    dtype = np.int32 if len(stream) < 2**31 else np.int64
    return np.ascontiguousarray(full[starts[full]], dtype=dtype)


def _save_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def _save_array(path: Path, arr: NDArray[np.integer]) -> None:
    data = np.ascontiguousarray(arr)
    atomic_write(path, lambda fh: np.save(fh, data, allow_pickle=False))


def _open_class(directory: Path, name: str, entry: object, *, verify: bool) -> _ClassArray:
    manifest_path = directory / MANIFEST_FILE
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
        raise IntegrityError(f"{manifest_path}: class {name!r} is malformed")
    files = entry["files"]
    paths: dict[str, Path] = {}
    for kind, suffix in (("tokens", ".tokens"), ("sa", ".sa.npy"), ("records", ".records.npy")):
        item = files.get(kind)
        path = directory / f"{name}{suffix}"
        if not isinstance(item, dict) or item.get("file") != path.name:
            raise IntegrityError(f"{manifest_path}: {kind} of {name!r} names another file")
        if verify and (not path.is_file() or sha256_file(path) != item.get("sha256")):
            raise IntegrityError(f"{path}: checksum differs from {MANIFEST_FILE}")
        paths[kind] = path
    try:
        sa = np.load(paths["sa"], mmap_mode="r", allow_pickle=False)
        rows = np.load(paths["records"], mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise IntegrityError(
            f"{directory}: unreadable verbatim arrays of {name!r} ({exc})"
        ) from exc
    size = paths["tokens"].stat().st_size
    if (
        sa.ndim != 1
        or sa.dtype not in (np.dtype(np.int32), np.dtype(np.int64))
        or len(sa) != entry.get("suffixes")
        or rows.ndim != 2
        or rows.shape[1] != 2
        or rows.dtype != np.int64
        or len(rows) != entry.get("records")
        or size != entry.get("bytes")
    ):
        raise IntegrityError(f"{directory}: verbatim arrays of {name!r} are not those recorded")
    stream: mmap.mmap | bytes
    if size:
        with open(paths["tokens"], "rb") as fh:
            stream = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    else:
        stream = b""
    return _ClassArray(name, stream, np.asarray(sa), np.asarray(rows, dtype=np.int64))


def _check_class_name(name: str) -> None:
    """Class names become file names: allow plain lowercase identifiers only."""
    if not isinstance(name, str) or not _CLASS_NAME.fullmatch(name):
        raise ConfigError(f"data class {name!r} is not a plain lowercase identifier")
