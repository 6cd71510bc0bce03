"""Tests for the SQLite catalog and all-or-nothing ingest."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditor_server.corpus.catalog import Catalog, ingest
from auditor_server.corpus.records import (
    Record,
    Source,
    corpus_manifest_hash,
    iter_corpus,
    read_corpus,
)
from auditor_server.errors import CorpusError, InputError

CLASSES = ("public", "proprietary", "private")


def make_record(i: int) -> Record:
    return Record(
        id=f"rec-{i}",
        text=f"Text of record {i}. Zoë was here.",
        source=Source(
            title=f"Title {i}",
            publisher="Publisher",
            url=f"https://encyclopedia.example/{i}",
            license="CC-BY-SA-4.0",
            data_class=CLASSES[i % 3],  # type: ignore[arg-type]
        ),
    )


def write_corpus(path: Path, records: list[Record], extra: list[bytes] | None = None) -> Path:
    lines = [json.dumps(r.to_json(), ensure_ascii=False).encode() for r in records]
    path.write_bytes(b"\n".join(lines + (extra or [])) + b"\n")
    return path


def leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_round_trip(tmp_path: Path) -> None:
    records = [make_record(i) for i in range(7)]
    corpus = write_corpus(tmp_path / "corpus.jsonl", records)
    with ingest(corpus, tmp_path / "catalog.db") as catalog:
        assert len(catalog) == 7
        assert list(catalog) == records
        assert catalog.record_at(4) == records[4]
        assert catalog.get("rec-5") == records[5]
        assert catalog.ordinal_of("rec-6") == 6
        assert catalog.ids() == [r.id for r in records]
        assert catalog.data_classes() == [r.source.data_class for r in records]
        assert catalog.manifest_hash == corpus_manifest_hash(records)
        with pytest.raises(KeyError):
            catalog.get("rec-99")
        with pytest.raises(KeyError):
            catalog.ordinal_of("rec-99")
        with pytest.raises(IndexError):
            catalog.record_at(7)
    assert leftovers(tmp_path, {"corpus.jsonl", "catalog.db"}) == []


def test_iteration_crosses_batches(tmp_path: Path) -> None:
    records = [make_record(i) for i in range(2501)]
    with Catalog.create(tmp_path / "c.db", records) as catalog:
        assert [r.id for r in catalog] == [r.id for r in records]


def test_reopen_read_only(tmp_path: Path) -> None:
    records = [make_record(i) for i in range(3)]
    Catalog.create(tmp_path / "c.db", records).close()
    with Catalog.open(tmp_path / "c.db") as catalog:
        assert list(catalog) == records
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            catalog._conn.execute("DELETE FROM records")


def test_open_missing_or_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        Catalog.open(tmp_path / "missing.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(InputError, match="not a corpus catalog"):
        Catalog.open(junk)
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    conn.execute("CREATE TABLE records (x)")
    conn.commit()
    conn.close()
    with pytest.raises(InputError, match="not a corpus catalog"):
        Catalog.open(other)


BAD_LINES: list[tuple[bytes, str]] = [
    (b"{broken json", "record"),
    (b'{"id": "z", "text": "t", "source": {"title": "t", "publisher": "p", '
     b'"license": "l", "data_class": "public"}}', "source.url"),
    (b'{"id": 5, "text": "t", "source": {}}', "id"),
    (b'{"id": "z", "text": "t", "source": {"title": "t", "publisher": "p", "url": "u", '
     b'"license": "l", "data_class": "secret"}}', "source.data_class"),
    (b'{"id": "rec-1", "text": "t", "source": {"title": "t", "publisher": "p", "url": "u", '
     b'"license": "l", "data_class": "public"}}', "id"),
    (b'{"id": "z", "text": "   ", "source": {"title": "t", "publisher": "p", "url": "u", '
     b'"license": "l", "data_class": "public"}}', "text"),
    (b'{"id": "z", "text": "caf\xe9", "source": {}}', "record"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_LINES)
def test_failed_ingest_leaves_nothing(tmp_path: Path, bad: bytes, field: str) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", [make_record(i) for i in range(3)], [bad])
    with pytest.raises(CorpusError) as info:
        ingest(corpus, tmp_path / "catalog.db")
    assert (info.value.line, info.value.field) == (4, field)
    assert leftovers(tmp_path, {"corpus.jsonl"}) == []


def test_empty_corpus_ingest_fails(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b"")
    with pytest.raises(CorpusError, match="no records"):
        ingest(corpus, tmp_path / "catalog.db")
    assert not (tmp_path / "catalog.db").exists()


def test_failed_ingest_keeps_existing_catalog(tmp_path: Path) -> None:
    original = [make_record(i) for i in range(4)]
    db = tmp_path / "catalog.db"
    ingest(write_corpus(tmp_path / "good.jsonl", original), db).close()
    before = db.read_bytes()
    bad = write_corpus(tmp_path / "bad.jsonl", [make_record(9)], [b"{nope"])
    with pytest.raises(CorpusError):
        ingest(bad, db)
    assert db.read_bytes() == before
    with Catalog.open(db) as catalog:
        assert list(catalog) == original
    assert leftovers(tmp_path, {"good.jsonl", "bad.jsonl", "catalog.db"}) == []


def test_failure_while_writing_cleans_up(tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    original = [make_record(i) for i in range(4)]
    Catalog.create(db, original).close()
    before = db.read_bytes()
    # A lone surrogate cannot be encoded by sqlite3: the failure happens mid-insert,
    # after the temporary database file has been created.
    poisoned = [make_record(0), Record("bad", "\ud800", make_record(1).source)]
    with pytest.raises(UnicodeEncodeError):
        Catalog.create(db, poisoned)
    assert db.read_bytes() == before
    assert leftovers(tmp_path, {"catalog.db"}) == []
    fresh = tmp_path / "fresh.db"
    with pytest.raises(UnicodeEncodeError):
        Catalog.create(fresh, poisoned)
    assert not fresh.exists()
    assert leftovers(tmp_path, {"catalog.db"}) == []


def test_create_rejects_duplicates_and_empty(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="duplicate record id 'rec-1'"):
        Catalog.create(tmp_path / "c.db", [make_record(1), make_record(1)])
    with pytest.raises(InputError, match="no records"):
        Catalog.create(tmp_path / "c.db", [])
    assert leftovers(tmp_path, set()) == []


def test_missing_corpus_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        ingest(tmp_path / "nope.jsonl", tmp_path / "c.db")
    assert not (tmp_path / "c.db").exists()


def test_manifest_hash_matches_file(tmp_path: Path) -> None:
    records = [make_record(i) for i in range(5)]
    corpus = write_corpus(tmp_path / "corpus.jsonl", records)
    with ingest(corpus, tmp_path / "a.db") as a:
        assert a.manifest_hash == corpus_manifest_hash(read_corpus(corpus))
    reordered = write_corpus(tmp_path / "r.jsonl", list(reversed(records)))
    with ingest(reordered, tmp_path / "b.db") as b, Catalog.open(tmp_path / "a.db") as a:
        assert b.manifest_hash != a.manifest_hash


def test_a_streamed_corpus_makes_the_same_catalog_and_a_late_bad_line_leaves_nothing(
    tmp_path: Path,
) -> None:
    records = [make_record(i) for i in range(2500)]  # more than one insert batch
    corpus = write_corpus(tmp_path / "c.jsonl", records)
    consumed: list[str] = []

    def stream() -> Iterator[Record]:
        for record in iter_corpus(corpus):
            consumed.append(record.id)
            yield record

    with Catalog.create(tmp_path / "streamed.db", stream()) as catalog:
        assert catalog.manifest_hash == corpus_manifest_hash(read_corpus(corpus))
        assert len(catalog) == 2500 == len(consumed)
        assert catalog.texts(10, 13) == [r.text for r in records[10:13]]
        assert catalog.texts(2499, 9999) == [records[-1].text]
    bad = write_corpus(tmp_path / "bad.jsonl", records, extra=[b'{"id": "late"}'])
    with pytest.raises(CorpusError, match="line 2501"):
        Catalog.create(tmp_path / "bad.db", iter_corpus(bad))
    assert not (tmp_path / "bad.db").exists()
    assert leftovers(tmp_path, {"c.jsonl", "streamed.db", "bad.jsonl"}) == []
