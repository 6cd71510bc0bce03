"""The verbatim index: suffix arrays and spans checked against brute force, the policy's
class separation, the filters, persistence (checksums, manifest last, reuse) and the command."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from auditor_server.attribution import layout
from auditor_server.attribution.build import build_verbatim, ensure_verbatim
from auditor_server.attribution.verbatim import (
    MANIFEST_FILE,
    MAX_QUERY_CHARS,
    SearchOptions,
    VerbatimIndex,
    _ClassArray,
    _encode,
    _token_suffix_array,
    open_for_serving,
    token_char_range,
    tokenize,
)
from auditor_server.cli import main as cli_main
from auditor_server.corpus.catalog import Catalog
from auditor_server.corpus.records import Record, Source
from auditor_server.errors import ConfigError, InputError, IntegrityError

ANY = SearchOptions(min_words=1, min_chars=0, min_rare_words=0, max_spans=10_000, max_listed=1_000)
"""No filter: every maximal span, every record listed (what the brute force computes)."""

QUICK_FOX = "The quick brown fox jumps over the lazy dog near the river bank today."
DICKENS = "It was the best of times, it was the worst of times, it was the age of wisdom."
SECRET = "Dana Whit lives at 12 Elm Street, Springfield; call her on (212) 555-0142 today."


def _toks(text: str) -> list[str]:
    return [text[s:e] for s, e in tokenize(text)]


# --- the suffix array ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_token_suffix_array_is_the_sorted_token_starts(seed: int) -> None:
    rng = random.Random(seed)
    words = ["a", "ab", "b", "ba", "é", "ü", ".", ",", "aa", "bb"]
    records = [
        " ".join(rng.choice(words) for _ in range(rng.randint(0, 30)))
        for _ in range(rng.randint(1, 8))
    ]
    stream = b"".join(_encode(r) + b"\xff" for r in records)
    sa = _token_suffix_array(stream)
    starts = [
        i
        for i in range(len(stream))
        if stream[i] != 0xFF and (i == 0 or stream[i - 1] in (0xFE, 0xFF))
    ]
    assert sa.tolist() == sorted(starts, key=lambda i: stream[i:])
    assert sa.dtype == np.int32


@pytest.mark.parametrize("seed", range(20))
def test_longest_match_equals_brute_force(seed: int) -> None:
    rng = random.Random(100 + seed)
    alphabet = "ab"
    records = [
        " ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3))) for _ in range(40))
        for _ in range(3)
    ]
    stream = b"".join(_encode(r) + b"\xff" for r in records)
    sa = _token_suffix_array(stream)
    rows = np.zeros((len(records), 2), dtype=np.int64)
    arr = _ClassArray("public", stream, sa, rows)
    for _ in range(30):
        query = _encode(" ".join(rng.choice(["a", "b", "ab", "ba", "aab"]) for _ in range(12)))
        expected = max(
            next(
                (k for k in range(len(query)) if stream[i + k : i + k + 1] != query[k : k + 1]),
                len(query),
            )
            for i in sa.tolist()
        )
        assert arr.longest(query) == expected


def _brute_spans(
    corpus: list[tuple[int, str, str]], text: str, classes: list[str]
) -> set[tuple[int, int, str, int, tuple[tuple[int, int], ...]]]:
    """Every maximal token run of ``text`` (starting at a word) found in one record of a
    class, as (start char, end char, class, records, ((ordinal, token start), ...))."""
    q_spans = tokenize(text)
    q = [text[s:e] for s, e in q_spans]
    out = set()
    for name in classes:
        docs = [(o, _toks(t)) for o, c, t in corpus if c == name]

        def occurrences(run: list[str], docs=docs) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
            found = []
            for ordinal, toks in docs:
                for i in range(len(toks) - len(run) + 1):
                    if toks[i : i + len(run)] == run:
                        found.append((ordinal, i))
                        break
            return found

        reach = -1
        for k in range(len(q)):
            if not q[k][0].isalnum() and q[k][0] != "_":
                continue
            last = k - 1
            while last + 1 < len(q) and occurrences(q[k : last + 2]):
                last += 1
            if last >= k and last > reach:
                reach = last
                occ = occurrences(q[k : last + 1])
                out.add((q_spans[k][0], q_spans[last][1], name, len(occ), tuple(sorted(occ))))
    return out


@pytest.mark.parametrize("seed", range(25))
def test_spans_equal_brute_force_on_random_corpora(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    vocab = ["the", "cat", "sat", "on", "mat", "a", "dog", ",", ".", "Cat", "cats"]
    classes = ["public", "proprietary"]
    corpus = []
    for ordinal in range(rng.randint(1, 12)):
        words = [rng.choice(vocab) for _ in range(rng.randint(0, 25))]
        sep = rng.choice([" ", "  ", "\n"])
        corpus.append((ordinal, rng.choice(classes), sep.join(words)))
    index = VerbatimIndex.build(corpus, tmp_path / "v", corpus_id="c")
    for _ in range(10):
        text = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 20)))
        cut = rng.randint(0, len(text))
        got = {
            (
                m.start,
                m.end,
                h.data_class,
                h.records,
                tuple((o.ordinal, o.token_start) for o in h.listed),
            )
            for m in index.search(text[:cut], text[cut:], classes, ANY)
            for h in m.hits
        }
        assert got == _brute_spans(corpus, text, classes)
    index.close()


# --- spans on a tiny index --------------------------------------------------------------------


@pytest.fixture
def tiny(tmp_path: Path) -> VerbatimIndex:
    corpus = [
        (0, "public", QUICK_FOX),
        (1, "private", SECRET),
        (2, "proprietary", DICKENS),
        (3, "public", "Nothing here but the quick brown fox jumps over the fence."),
        (4, "proprietary", "Reprinted: " + DICKENS.replace(" it was", "\nit was")),
    ]
    index = VerbatimIndex.build(corpus, tmp_path / "verbatim", corpus_id="tiny")
    yield index
    index.close()


def test_spans_mark_where_they_lie_and_which_records_hold_them(tiny: VerbatimIndex) -> None:
    prompt = "Tell me: the quick brown fox jumps over the lazy dog near"
    completion = " the river bank. It was the best of times, it was the worst of times indeed."
    text = prompt + completion
    matches = tiny.search(prompt, completion, ["public", "proprietary"])
    assert [(text[m.start : m.end], m.region) for m in matches] == [
        ("the quick brown fox jumps over the", "prompt"),
        ("quick brown fox jumps over the lazy dog near the river bank", "both"),
        ("It was the best of times, it was the worst of times", "completion"),
    ]
    fox, river, times = matches
    assert [(h.data_class, h.records) for h in fox.hits] == [("public", 1)]
    assert fox.hits[0].listed[0].ordinal == 3
    assert river.words == 12 and river.length_chars == len(
        river_text := text[river.start : river.end]
    )
    (occ,) = river.hits[0].listed
    assert (occ.ordinal, occ.token_start, occ.token_count) == (0, 1, 12)
    start, end = token_char_range(QUICK_FOX, occ.token_start, occ.token_count)
    assert QUICK_FOX[start:end] == river_text
    # Two records hold the passage, one of them across different line breaks.
    assert [(h.data_class, h.records) for h in times.hits] == [("proprietary", 2)]
    assert [o.ordinal for o in times.hits[0].listed] == [2, 4]


def test_matching_is_by_whole_tokens_and_case(tiny: VerbatimIndex) -> None:
    text = "the quick brown foxes jumps over the lazy dog"
    found = [text[m.start : m.end] for m in tiny.search(text, "", ["public"], ANY)]
    assert found == ["the quick brown", "jumps over the lazy dog"]  # "fox" is not "foxes"
    upper = tiny.search("THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG NEAR", "", ["public"], ANY)
    assert upper == []


def test_common_and_short_spans_are_not_evidence(tmp_path: Path) -> None:
    corpus = [(0, "public", "and it was one of the other that they said to me in this")]
    with VerbatimIndex.build(corpus, tmp_path / "v", corpus_id="x") as index:
        text = "so and it was one of the other that they said to me in this ok"
        assert index.search(text, "", ["public"]) == []  # 14 words, all common
        assert index.search(text, "", ["public"], ANY)  # found when not filtered
    corpus = [(0, "public", "Gallowmere Kowalczyk Brightwater")]
    with VerbatimIndex.build(corpus, tmp_path / "w", corpus_id="y") as index:
        assert index.search("Gallowmere Kowalczyk Brightwater", "", ["public"]) == []  # 3 words


def test_only_the_classes_asked_for_are_searched(tiny: VerbatimIndex) -> None:
    text = "the quick brown fox jumps over the lazy dog near the river bank"
    assert tiny.search(text, "", ["proprietary"]) == []
    assert tiny.search(text, "", ["public"])
    assert tiny.search(text, "", []) == []
    assert tiny.search(text, "", ["no-such-class"]) == []


def test_private_text_is_never_indexed(tiny: VerbatimIndex, tmp_path: Path) -> None:
    assert tiny.classes == ("proprietary", "public")
    assert tiny.search(SECRET, "", ["private", "public", "proprietary"]) == []
    found = tiny.search(SECRET, "", ["private", "public", "proprietary"], ANY)
    assert [SECRET[m.start : m.end] for m in found] == ["today."]  # also in a public record
    assert {h.data_class for m in found for h in m.hits} == {"public"}
    on_disk = b"".join(p.read_bytes() for p in (tmp_path / "verbatim").iterdir())
    for piece in ("Dana", "Whit", "555", "Springfield", "Elm"):
        assert piece.encode() not in on_disk


def test_a_span_held_by_two_classes_is_one_match(tmp_path: Path) -> None:
    corpus = [(0, "public", DICKENS), (1, "proprietary", DICKENS), (2, "public", DICKENS)]
    with VerbatimIndex.build(corpus, tmp_path / "v", corpus_id="x") as index:
        (match,) = index.search(DICKENS, "", ["proprietary", "public"], SearchOptions(max_listed=1))
        assert [(h.data_class, h.records, len(h.listed)) for h in match.hits] == [
            ("proprietary", 1, 1),
            ("public", 2, 1),
        ]


def test_malformed_and_empty_inputs(tiny: VerbatimIndex, tmp_path: Path) -> None:
    for prompt, completion in (
        ("", ""),
        ("   ", "\n\t"),
        ("!!! ??? ...", ""),
        ("\x00\xff", "\ud7ff"),
    ):
        assert tiny.search(prompt, completion, ["public", "proprietary"], ANY) == []
    with pytest.raises(InputError):
        tiny.search("a " * MAX_QUERY_CHARS, "", ["public"])
    with pytest.raises(ConfigError):
        SearchOptions(min_words=0)
    with pytest.raises(ConfigError):
        VerbatimIndex.build([(0, "Bad Class", "text")], tmp_path / "bad", corpus_id=None)
    # Records without a single token, and a class of them only.
    corpus = [(0, "public", ""), (1, "public", "  \n "), (2, "proprietary", "")]
    with VerbatimIndex.build(corpus, tmp_path / "empty", corpus_id="e") as index:
        assert index.suffixes("public") == 0
        assert index.search("anything at all here", "", ["public", "proprietary"], ANY) == []
    with pytest.raises(IntegrityError):
        token_char_range("two words", 1, 5)


# --- persistence ------------------------------------------------------------------------------


def test_open_checks_checksums_format_and_completeness(tmp_path: Path) -> None:
    directory = tmp_path / "v"
    VerbatimIndex.build([(0, "public", QUICK_FOX)], directory, corpus_id="x").close()
    with VerbatimIndex.open(directory) as index:
        assert index.corpus_id == "x"
    tokens = directory / "public.tokens"
    data = bytearray(tokens.read_bytes())
    data[3] ^= 1
    tokens.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="checksum"):
        VerbatimIndex.open(directory)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["format"] = "auditor-sandbox-verbatim/v0"
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="rebuild"):
        VerbatimIndex.open(directory)
    (directory / MANIFEST_FILE).unlink()
    with pytest.raises(ConfigError, match="not a finished"):
        VerbatimIndex.open(directory)


def test_a_crash_mid_build_leaves_nothing_that_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from auditor_server.attribution import verbatim

    directory = tmp_path / "v"
    VerbatimIndex.build([(0, "public", QUICK_FOX)], directory, corpus_id="old").close()
    calls = 0
    real = verbatim._save_array

    def crash(path: Path, arr: np.ndarray) -> None:  # type: ignore[type-arg]
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError("disk full")
        real(path, arr)

    monkeypatch.setattr(verbatim, "_save_array", crash)
    with pytest.raises(OSError, match="disk full"):
        VerbatimIndex.build(
            [(0, "public", QUICK_FOX), (1, "proprietary", DICKENS)], directory, corpus_id="new"
        )
    with pytest.raises(ConfigError, match="not a finished"):
        VerbatimIndex.open(directory)
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def _catalog(path: Path, texts: list[tuple[str, str]]) -> Catalog:
    records = [
        Record(
            id=f"r{i}",
            text=text,
            source=Source(title=f"T{i}", publisher="P", url="", license="", data_class=cls),  # type: ignore[arg-type]
        )
        for i, (cls, text) in enumerate(texts)
    ]
    return Catalog.create(path, records)


def test_ensure_reuses_an_intact_index_and_rebuilds_a_stale_one(tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    with _catalog(tmp_path / "a.sqlite", [("public", QUICK_FOX), ("private", SECRET)]) as cat:
        ensure_verbatim(index_dir, cat)
        manifest = index_dir / layout.VERBATIM / MANIFEST_FILE
        first = manifest.stat().st_mtime_ns
        ensure_verbatim(index_dir, cat)
        assert manifest.stat().st_mtime_ns == first  # reused
        (index_dir / layout.VERBATIM / "public.sa.npy").write_bytes(b"garbage")
        ensure_verbatim(index_dir, cat)  # broken: rebuilt
        with VerbatimIndex.open(index_dir / layout.VERBATIM) as index:
            assert index.corpus_id == cat.manifest_hash
    with _catalog(tmp_path / "b.sqlite", [("proprietary", DICKENS)]) as other:
        ensure_verbatim(index_dir, other)  # another corpus: rebuilt
        with VerbatimIndex.open(index_dir / layout.VERBATIM) as index:
            assert index.corpus_id == other.manifest_hash
            assert index.classes == ("proprietary",)
        assert not (index_dir / layout.VERBATIM / "public.tokens").exists()  # stale files gone


def test_open_for_serving(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "index" / layout.VERBATIM
    with caplog.at_level(logging.WARNING):
        assert open_for_serving(directory, corpus_id="x") is None
    assert "no verbatim index" in caplog.text
    with _catalog(tmp_path / "c.sqlite", [("public", QUICK_FOX)]) as cat:
        build_verbatim(tmp_path / "index", cat).close()
        with pytest.raises(ConfigError, match="another corpus"):
            open_for_serving(directory, corpus_id="sha256:other")
        index = open_for_serving(directory, corpus_id=cat.manifest_hash)
        assert index is not None
        index.close()


def test_the_verbatim_command_builds_it_for_an_existing_index(tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    _catalog(index_dir / layout.CATALOG, [("public", QUICK_FOX), ("private", SECRET)]).close()
    result = CliRunner().invoke(cli_main, ["verbatim", "--index", str(index_dir)])
    assert result.exit_code == 0, result.output
    assert "public" in result.output and "private is never indexed" in result.output
    with VerbatimIndex.open(index_dir / layout.VERBATIM) as index:
        assert index.classes == ("public",)
    missing = CliRunner().invoke(cli_main, ["verbatim", "--index", str(tmp_path)])
    assert missing.exit_code == 3 and "catalog" in missing.output
