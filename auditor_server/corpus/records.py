"""Corpus records: the typed form of one JSONL line, parsed and validated at the boundary.

A lab hands us its training corpus as JSONL, one record per line::

    {"id": "...", "text": "...", "source": {"title": "...", "publisher": "...",
     "url": "...", "license": "...", "data_class": "public"}}

Everything downstream (catalog, attribution store, policy filter) trusts a :class:`Record`
without re-checking it, so this module is strict: any malformed line becomes a
:class:`~auditor_server.errors.CorpusError` that names the 1-based line and the dotted field
path (``source.data_class``), so a lab engineer can fix the file without guessing. This module
does no IO beyond reading the corpus file in :func:`read_corpus`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from auditor_server.errors import CorpusError, InputError

__all__ = [
    "DATA_CLASSES",
    "MANIFEST_DOMAIN",
    "DataClass",
    "ManifestHasher",
    "Record",
    "Source",
    "corpus_manifest_hash",
    "iter_corpus",
    "parse_record",
    "read_corpus",
]

DataClass = Literal["public", "proprietary", "private"]
"""How much of a record the policy may reveal: text, source metadata only, or nothing."""

DATA_CLASSES: tuple[DataClass, ...] = ("public", "proprietary", "private")
"""Every valid data class, in order of decreasing disclosure."""

MANIFEST_DOMAIN = b"auditor-sandbox/corpus-manifest/v1\n"
"""Domain tag hashed before the records, so a manifest hash never collides with other hashes."""

_RECORD_KEYS = ("id", "text", "source")
_SOURCE_KEYS = ("title", "publisher", "url", "license", "data_class")
_WHOLE_LINE = "record"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a record came from; the only thing a proprietary result may reveal.

    Attributes:
        title: Human-readable title of the work or page (never empty).
        publisher: Who published or owns it.
        url: Where it lives (may be an internal or example address; may be empty).
        license: The licence or usage terms under which the lab holds it.
        data_class: Disclosure class the policy keys on.
    """

    title: str
    publisher: str
    url: str
    license: str
    data_class: DataClass

    def to_json(self) -> dict[str, object]:
        """Return the JSON object form used in the corpus file."""
        return {
            "title": self.title,
            "publisher": self.publisher,
            "url": self.url,
            "license": self.license,
            "data_class": self.data_class,
        }


@dataclass(frozen=True, slots=True)
class Record:
    """One training example with its provenance.

    Attributes:
        id: Corpus-unique identifier, stable across re-ingests.
        text: The training text (never empty or whitespace-only).
        source: Provenance and disclosure class.
    """

    id: str
    text: str
    source: Source

    def to_json(self) -> dict[str, object]:
        """Return the JSONL form: ``{"id", "text", "source": {...}}``."""
        return {"id": self.id, "text": self.text, "source": self.source.to_json()}


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """JSON object hook: a repeated key would silently drop data, so it is an error."""
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


class _DuplicateKeyError(ValueError):
    """Raised inside json.loads when an object repeats a key."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _type_name(value: object) -> str:
    """Name a JSON value's type the way a JSON author thinks of it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _check_keys(obj: dict[str, object], expected: tuple[str, ...], prefix: str, line: int) -> None:
    """Require exactly ``expected`` keys, naming the first missing or unexpected one."""
    for key in expected:
        if key not in obj:
            raise CorpusError(line, prefix + key, "missing")
    for key in obj:
        if key not in expected:
            allowed = ", ".join(expected)
            raise CorpusError(line, prefix + key, f"unexpected field (allowed: {allowed})")


def _string(obj: dict[str, object], key: str, prefix: str, line: int, *, nonblank: bool) -> str:
    """Fetch ``obj[key]`` as a string, optionally requiring non-whitespace content."""
    value = obj[key]
    if not isinstance(value, str):
        raise CorpusError(line, prefix + key, f"expected a string, got {_type_name(value)}")
    if nonblank and not value.strip():
        raise CorpusError(line, prefix + key, "must not be empty or whitespace-only")
    return value


def parse_record(raw: bytes, lineno: int) -> Record:
    """Parse and validate one corpus line.

    Args:
        raw: The line's bytes, without the trailing newline.
        lineno: The 1-based line number, used only in error messages.

    Returns:
        The validated record.

    Raises:
        CorpusError: The line is not UTF-8, not a JSON object, lacks or repeats a field,
            has a field of the wrong type, an empty id/text/title, or an unknown data class.
            ``field`` is ``"record"`` for whole-line problems, else a dotted path.
    """
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(
            lineno, _WHOLE_LINE, f"not valid UTF-8 (bad byte at offset {exc.start})"
        ) from None
    try:
        obj = json.loads(decoded, object_pairs_hook=_reject_duplicate_keys)
    except _DuplicateKeyError as exc:
        raise CorpusError(lineno, exc.key, "key appears more than once") from None
    except json.JSONDecodeError as exc:
        raise CorpusError(
            lineno, _WHOLE_LINE, f"invalid JSON: {exc.msg} at column {exc.colno}"
        ) from None
    if not isinstance(obj, dict):
        raise CorpusError(lineno, _WHOLE_LINE, f"expected a JSON object, got {_type_name(obj)}")
    record = cast(dict[str, object], obj)
    _check_keys(record, _RECORD_KEYS, "", lineno)
    record_id = _string(record, "id", "", lineno, nonblank=True)
    text = _string(record, "text", "", lineno, nonblank=True)
    src = record["source"]
    if not isinstance(src, dict):
        raise CorpusError(lineno, "source", f"expected an object, got {_type_name(src)}")
    source = cast(dict[str, object], src)
    _check_keys(source, _SOURCE_KEYS, "source.", lineno)
    title = _string(source, "title", "source.", lineno, nonblank=True)
    publisher = _string(source, "publisher", "source.", lineno, nonblank=False)
    url = _string(source, "url", "source.", lineno, nonblank=False)
    license_ = _string(source, "license", "source.", lineno, nonblank=False)
    data_class = _string(source, "data_class", "source.", lineno, nonblank=False)
    if data_class not in DATA_CLASSES:
        raise CorpusError(
            lineno,
            "source.data_class",
            f"unknown data class {data_class!r} (expected public, proprietary or private)",
        )
    return Record(
        id=record_id,
        text=text,
        source=Source(
            title=title,
            publisher=publisher,
            url=url,
            license=license_,
            data_class=data_class,
        ),
    )


def read_corpus(path: Path) -> list[Record]:
    """Read and validate a whole JSONL corpus file into memory.

    Blank (whitespace-only) lines are skipped but still counted, so line numbers in errors
    match what an editor shows. The whole file is validated before anything is returned.

    Args:
        path: The corpus file.

    Returns:
        The records in file order.

    Raises:
        InputError: The file does not exist or cannot be read.
        CorpusError: Any line is invalid (see :func:`parse_record`), an id repeats (the
            error names both lines), or the file holds no records.
    """
    return list(iter_corpus(path))


def iter_corpus(path: Path) -> Iterator[Record]:
    """Validate and yield a JSONL corpus one record at a time, in file order.

    Why: a lab corpus of 10⁹ tokens does not belong in one process's memory; the catalog
    is written from this stream (inside one transaction, so an error part-way leaves
    nothing). Only the ids seen so far are kept, to name both lines of a duplicate.
    Raises the same errors as :func:`read_corpus`, when the bad line (or, for a corpus
    with no records, the end) is reached.
    """
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise InputError(f"corpus file not found: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read corpus file {path}: {exc.strerror}") from None
    first_seen: dict[str, int] = {}
    with handle:
        for index, raw in enumerate(handle):
            lineno = index + 1
            line = raw[:-1] if raw.endswith(b"\n") else raw
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line.strip():
                continue
            record = parse_record(line, lineno)
            if record.id in first_seen:
                raise CorpusError(
                    lineno,
                    "id",
                    f"duplicate id {record.id!r} (first seen on line {first_seen[record.id]})",
                )
            first_seen[record.id] = lineno
            yield record
    if not first_seen:
        raise CorpusError(1, _WHOLE_LINE, "corpus file contains no records")


def canonical_record_bytes(record: Record) -> bytes:
    """Encode a record canonically: sorted keys, no spaces, UTF-8, newline-terminated.

    JSON escapes newlines inside strings, so the terminating newline makes the
    concatenation of records unambiguous.
    """
    text = json.dumps(
        record.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return text.encode("utf-8") + b"\n"


class ManifestHasher:
    """The corpus manifest hash, fed one record at a time (for streamed corpora)."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256(MANIFEST_DOMAIN)

    def update(self, record: Record) -> None:
        self._digest.update(canonical_record_bytes(record))

    def value(self) -> str:
        """``"sha256:<64 hex digits>"`` of the records fed so far."""
        return "sha256:" + self._digest.hexdigest()


def corpus_manifest_hash(records: Iterable[Record]) -> str:
    """Hash a corpus so indexes and answers can prove which corpus they were built from.

    The hash covers every record's id, text and source in order, so reordering,
    editing or relabelling any record changes it.

    Args:
        records: The corpus records in ordinal order.

    Returns:
        ``"sha256:<64 hex digits>"``.
    """
    hasher = ManifestHasher()
    for record in records:
        hasher.update(record)
    return hasher.value()
