"""Tests for corpus record parsing, corpus reading and the manifest hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditor_server.corpus.records import (
    Record,
    Source,
    corpus_manifest_hash,
    parse_record,
    read_corpus,
)
from auditor_server.errors import CorpusError, InputError


def good(i: int = 0, **overrides: object) -> dict[str, object]:
    record: dict[str, object] = {
        "id": f"r{i}",
        "text": f"Some text number {i}.",
        "source": {
            "title": "A title",
            "publisher": "A publisher",
            "url": f"https://encyclopedia.example/{i}",
            "license": "CC-BY-SA-4.0",
            "data_class": "public",
        },
    }
    record.update(overrides)
    return record


def with_source(**changes: object) -> dict[str, object]:
    record = good()
    source = dict(record["source"])  # type: ignore[call-overload]
    for key, value in changes.items():
        if value is _DELETE:
            del source[key]
        else:
            source[key] = value
    record["source"] = source
    return record


_DELETE = object()


def line(obj: object) -> bytes:
    return json.dumps(obj).encode()


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_parse_round_trip() -> None:
    record = parse_record(line(good(3)), 1)
    assert record == Record(
        id="r3",
        text="Some text number 3.",
        source=Source(
            title="A title",
            publisher="A publisher",
            url="https://encyclopedia.example/3",
            license="CC-BY-SA-4.0",
            data_class="public",
        ),
    )
    assert record.to_json() == good(3)


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        (b"{not json", "record", "invalid JSON"),
        (b"[1, 2]", "record", "expected a JSON object, got array"),
        (b"\xff\xfe{}", "record", "not valid UTF-8"),
        (line({"text": "t", "source": good()["source"]}), "id", "missing"),
        (line({"id": "x", "source": good()["source"]}), "text", "missing"),
        (line({"id": "x", "text": "t"}), "source", "missing"),
        (line(with_source(url=_DELETE)), "source.url", "missing"),
        (line(with_source(data_class=_DELETE)), "source.data_class", "missing"),
        (line(good(id=7)), "id", "expected a string, got number"),
        (line(good(text=["a"])), "text", "expected a string, got array"),
        (line(good(source="wiki")), "source", "expected an object, got string"),
        (line(with_source(license=None)), "source.license", "expected a string, got null"),
        (line(with_source(title=True)), "source.title", "expected a string, got boolean"),
        (line(good(text="")), "text", "must not be empty"),
        (line(good(text=" \n\t ")), "text", "must not be empty"),
        (line(good(id="  ")), "id", "must not be empty"),
        (line(with_source(title="")), "source.title", "must not be empty"),
        (
            line(with_source(data_class="secret")),
            "source.data_class",
            r"unknown data class 'secret' \(expected public, proprietary or private\)",
        ),
        (line(good(extra=1)), "extra", "unexpected field"),
        (line(with_source(owner="me")), "source.owner", "unexpected field"),
        (b'{"id": "a", "id": "b", "text": "t", "source": {}}', "id", "more than once"),
    ],
)
def test_parse_rejects(raw: bytes, field: str, message: str) -> None:
    with pytest.raises(CorpusError, match=message) as info:
        parse_record(raw, 7)
    assert info.value.line == 7
    assert info.value.field == field
    assert str(info.value).startswith(f"line 7: field '{field}': ")


def test_cli_style_message_for_unknown_class() -> None:
    with pytest.raises(CorpusError) as info:
        parse_record(line(with_source(data_class="secret")), 7)
    assert str(info.value) == (
        "line 7: field 'source.data_class': unknown data class 'secret' "
        "(expected public, proprietary or private)"
    )


def test_read_corpus_keeps_order_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(line(good(0)) + b"\n\n  \n" + line(good(1)) + b"\r\n" + line(good(2)))
    records = read_corpus(path)
    assert [r.id for r in records] == ["r0", "r1", "r2"]


def test_read_corpus_error_line_counts_blank_lines(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", [line(good(0)), b"", b"", b"{oops"])
    with pytest.raises(CorpusError) as info:
        read_corpus(path)
    assert info.value.line == 4


def test_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "c.jsonl", [line(good(0)), line(good(1)), line(good(2, id="r0"))]
    )
    with pytest.raises(CorpusError, match=r"duplicate id 'r0' \(first seen on line 1\)") as info:
        read_corpus(path)
    assert info.value.line == 3
    assert info.value.field == "id"


def test_non_utf8_line_is_named(tmp_path: Path) -> None:
    bad = line(good(1)).replace(b"Some", b"S\xe9me")
    path = write_lines(tmp_path / "c.jsonl", [line(good(0)), bad])
    with pytest.raises(CorpusError, match="not valid UTF-8") as info:
        read_corpus(path)
    assert (info.value.line, info.value.field) == (2, "record")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_corpus_is_an_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match="no records"):
        read_corpus(path)


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found") as info:
        read_corpus(tmp_path / "nope.jsonl")
    assert not isinstance(info.value, CorpusError)


def test_unicode_text_survives(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(good(0, text="Zoë — naïve café ✓"), ensure_ascii=False) + "\n")
    assert read_corpus(path)[0].text == "Zoë — naïve café ✓"


def _records(n: int) -> list[Record]:
    return [parse_record(line(good(i)), i + 1) for i in range(n)]


def test_manifest_hash_is_stable_and_sensitive() -> None:
    records = _records(3)
    digest = corpus_manifest_hash(records)
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    assert corpus_manifest_hash(_records(3)) == digest
    assert corpus_manifest_hash(list(reversed(records))) != digest
    assert corpus_manifest_hash(records[:2]) != digest
    relabelled = [*records[:2], parse_record(line(with_source(data_class="private")), 3)]
    assert corpus_manifest_hash(relabelled) != digest


def test_manifest_hash_pinned() -> None:
    # Pins the canonical encoding: changing it silently would orphan every built index.
    assert corpus_manifest_hash(_records(2)) == (
        "sha256:163609fda801c30210574c72ef992014a8e53a48b0b9d512833e04ea5a4aa9ba"
    )


_text = st.text(min_size=1).filter(lambda s: s.strip() != "")


@given(
    record_id=_text,
    text=_text,
    title=_text,
    other=st.text(),
    data_class=st.sampled_from(["public", "proprietary", "private"]),
)
def test_any_valid_record_round_trips(
    record_id: str, text: str, title: str, other: str, data_class: str
) -> None:
    obj = {
        "id": record_id,
        "text": text,
        "source": {
            "title": title,
            "publisher": other,
            "url": other,
            "license": other,
            "data_class": data_class,
        },
    }
    raw = json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return  # lone surrogates are not valid UTF-8 and cannot appear in a real file
    assert parse_record(raw, 1).to_json() == obj
