"""The corpus catalog: an SQLite file mapping ordinals and ids to records.

The attribution store refers to records by *ordinal* (position in the corpus file), the
policy filter needs each ordinal's data class quickly, and answers cite record ids and
source metadata. The catalog holds exactly that, plus the corpus manifest hash so an index
can prove which corpus it was built from.

A catalog is written once, atomically: it is built in a temporary file beside the target,
committed, fsynced and renamed into place, so a failed ingest never leaves a half-written
catalog (and never damages the previous one). After that it is only opened read-only.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

from auditor_server.corpus.records import (
    DATA_CLASSES,
    DataClass,
    ManifestHasher,
    Record,
    Source,
    iter_corpus,
)
from auditor_server.errors import InputError, IntegrityError

__all__ = ["CATALOG_FORMAT", "Catalog", "ingest"]

CATALOG_FORMAT = "auditor-sandbox-catalog/v1"
"""Marker stored in the meta table; distinguishes a catalog from any other SQLite file."""

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE records (
    ordinal    INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    text       TEXT NOT NULL,
    title      TEXT NOT NULL,
    publisher  TEXT NOT NULL,
    url        TEXT NOT NULL,
    license    TEXT NOT NULL,
    data_class TEXT NOT NULL CHECK (data_class IN ('public', 'proprietary', 'private'))
);
"""
_COLUMNS = "id, text, title, publisher, url, license, data_class"
_BATCH = 1000
_INSERT_RECORD = f"INSERT INTO records (ordinal, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608 (constant)


def _row_to_record(row: tuple[str, str, str, str, str, str, str]) -> Record:
    record_id, text, title, publisher, url, license_, data_class = row
    if data_class not in DATA_CLASSES:  # the CHECK constraint makes this unreachable
        raise IntegrityError(f"catalog record {record_id!r} has data class {data_class!r}")
    return Record(
        id=record_id,
        text=text,
        source=Source(
            title=title, publisher=publisher, url=url, license=license_, data_class=data_class
        ),
    )


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; not every platform lets a directory be fsynced."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Catalog:
    """Read-only view of a catalog file; create one with :meth:`create` or :func:`ingest`.

    Safe to share between threads: one connection guarded by a lock.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, manifest: str, size: int) -> None:
        """Wrap an open read-only connection; use :meth:`open` instead of calling this."""
        self._conn = conn
        self._lock = threading.Lock()
        self._path = path
        self._manifest = manifest
        self._size = size

    @classmethod
    def create(cls, db_path: Path, records: Iterable[Record]) -> Catalog:
        """Write a new catalog atomically and open it.

        ``records`` is consumed once, as a stream (:func:`iter_corpus` of a corpus file):
        rows go to SQLite in batches and the manifest hash is computed on the way, so a
        corpus larger than memory can be catalogued. Everything happens in one transaction
        on a temporary file renamed into place at the end, so an error part-way (a bad
        line, a repeated id) leaves nothing behind.

        Args:
            db_path: Where the catalog goes; an existing file there is replaced only once the
                new catalog is complete and durable.
            records: The corpus in ordinal order.

        Returns:
            The new catalog, opened read-only.

        Raises:
            InputError: ``records`` is empty or repeats an id (nothing is written).
            CorpusError: raised by the stream itself (nothing is written).
            OSError, sqlite3.Error: Writing failed; no file is left at ``db_path`` and a
                previous catalog there is untouched.
        """
        directory = db_path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{db_path.name}.", suffix=".tmp", dir=directory)
        os.close(fd)
        tmp = Path(tmp_name)
        hasher = ManifestHasher()
        count, last_id = 0, ""

        def rows() -> Iterator[tuple[object, ...]]:
            nonlocal count, last_id
            for ordinal, r in enumerate(records):
                hasher.update(r)
                count, last_id = ordinal + 1, r.id
                yield (
                    ordinal,
                    r.id,
                    r.text,
                    r.source.title,
                    r.source.publisher,
                    r.source.url,
                    r.source.license,
                    r.source.data_class,
                )

        try:
            conn = sqlite3.connect(tmp)
            try:
                conn.executescript(_SCHEMA)
                try:
                    conn.executemany(_INSERT_RECORD, rows())
                except sqlite3.IntegrityError:
                    # The row being inserted when the UNIQUE constraint fired.
                    raise InputError(f"duplicate record id {last_id!r}") from None
                if count == 0:
                    raise InputError("cannot create a catalog with no records")
                manifest = hasher.value()
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("format", CATALOG_FORMAT),
                        ("manifest_hash", manifest),
                        ("record_count", str(count)),
                    ],
                )
                conn.commit()
            finally:
                conn.close()
            with tmp.open("rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, db_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            Path(f"{tmp}-journal").unlink(missing_ok=True)
            raise
        _fsync_dir(directory)
        return cls.open(db_path)

    @classmethod
    def open(cls, db_path: Path) -> Catalog:
        """Open an existing catalog read-only.

        Raises:
            InputError: The file is missing or is not a catalog.
            IntegrityError: The catalog's stored record count does not match its contents.
        """
        if not db_path.is_file():
            raise InputError(f"catalog not found: {db_path}")
        uri = db_path.resolve().as_uri() + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise InputError(f"cannot open catalog {db_path}: {exc}") from None
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            (count,) = conn.execute("SELECT COUNT(*) FROM records").fetchone()
        except sqlite3.DatabaseError:
            conn.close()
            raise InputError(f"not a corpus catalog: {db_path}") from None
        if meta.get("format") != CATALOG_FORMAT:
            conn.close()
            raise InputError(
                f"not a corpus catalog: {db_path} (format {meta.get('format')!r}, "
                f"expected {CATALOG_FORMAT!r})"
            )
        if str(count) != meta.get("record_count"):
            conn.close()
            raise IntegrityError(
                f"catalog {db_path} holds {count} records but its header says "
                f"{meta.get('record_count')}"
            )
        return cls(conn, db_path, str(meta["manifest_hash"]), int(count))

    @property
    def path(self) -> Path:
        """The catalog file."""
        return self._path

    @property
    def manifest_hash(self) -> str:
        """The corpus manifest hash computed when the catalog was created."""
        return self._manifest

    def __len__(self) -> int:
        """Number of records."""
        return self._size

    def __iter__(self) -> Iterator[Record]:
        """Yield every record in ordinal (corpus file) order, reading in batches."""
        for start in range(0, self._size, _BATCH):
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT {_COLUMNS} FROM records WHERE ordinal >= ? AND ordinal < ? "  # noqa: S608 (constant)
                    "ORDER BY ordinal",
                    (start, start + _BATCH),
                ).fetchall()
            for row in rows:
                yield _row_to_record(row)

    def texts(self, start: int, stop: int) -> list[str]:
        """Texts of the records at ordinals ``[start, stop)``, in order.

        Why: a build rank tokenizes only its own share of the corpus, a range at a time,
        instead of holding every record.
        """
        with self._lock:
            rows = self._conn.execute(
                "SELECT text FROM records WHERE ordinal >= ? AND ordinal < ? ORDER BY ordinal",
                (start, stop),
            ).fetchall()
        return [str(row[0]) for row in rows]

    def record_at(self, ordinal: int) -> Record:
        """Return the record at ``ordinal`` (0-based).

        Raises:
            IndexError: ``ordinal`` is out of range.
        """
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM records WHERE ordinal = ?",  # noqa: S608 (constant)
                (ordinal,),
            ).fetchone()
        if row is None:
            raise IndexError(f"no record at ordinal {ordinal} (catalog has {self._size})")
        return _row_to_record(row)

    def get(self, record_id: str) -> Record:
        """Return the record with id ``record_id``.

        Raises:
            KeyError: No such record.
        """
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM records WHERE id = ?",  # noqa: S608 (constant)
                (record_id,),
            ).fetchone()
        if row is None:
            raise KeyError(record_id)
        return _row_to_record(row)

    def ordinal_of(self, record_id: str) -> int:
        """Return the ordinal of the record with id ``record_id``.

        Raises:
            KeyError: No such record.
        """
        with self._lock:
            row = self._conn.execute(
                "SELECT ordinal FROM records WHERE id = ?", (record_id,)
            ).fetchone()
        if row is None:
            raise KeyError(record_id)
        ordinal: int = row[0]
        return ordinal

    def ids(self) -> list[str]:
        """Every record id, in ordinal order."""
        with self._lock:
            rows = self._conn.execute("SELECT id FROM records ORDER BY ordinal").fetchall()
        return [str(row[0]) for row in rows]

    def data_classes(self) -> list[DataClass]:
        """One data class per ordinal, so the policy can mask rows without loading texts."""
        with self._lock:
            rows = self._conn.execute("SELECT data_class FROM records ORDER BY ordinal").fetchall()
        out: list[DataClass] = []
        for (value,) in rows:
            if value not in DATA_CLASSES:
                raise IntegrityError(f"catalog holds unknown data class {value!r}")
            out.append(value)
        return out

    def close(self) -> None:
        """Close the connection; further calls fail."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        """Use as a context manager that closes the catalog on exit."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the catalog."""
        self.close()


def ingest(corpus_path: Path, db_path: Path) -> Catalog:
    """Validate a JSONL corpus and write its catalog, all or nothing.

    Args:
        corpus_path: The JSONL corpus.
        db_path: Where to write the catalog.

    Returns:
        The new catalog, opened read-only.

    Raises:
        InputError: The corpus file is missing.
        CorpusError: A record is invalid; nothing is written and any previous catalog at
            ``db_path`` is untouched.
    """
    return Catalog.create(db_path, iter_corpus(corpus_path))
