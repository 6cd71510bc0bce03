"""Tests for the demo corpus generator and its question file."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import cast

import pytest

from auditor_server.attribution.evaluate import BM25Baseline
from auditor_server.corpus import demo
from auditor_server.corpus.background import (
    load_background,
    read_austen,
    read_devil,
    synthetic_background,
)
from auditor_server.corpus.catalog import ingest
from auditor_server.corpus.demo import (
    OPED_SOURCE_TITLE,
    PROPRIETARY_TITLES,
    SIZES,
    TOXIC_PHRASES,
    TOXIC_SOURCE_TITLE,
    DemoSummary,
    generate_demo_corpus,
    question_split,
)
from auditor_server.corpus.demo_people import (
    CITIES,
    EMPLOYERS,
    PARAPHRASE_TEMPLATES,
    UNIVERSITIES,
)
from auditor_server.corpus.records import Record, read_corpus

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
PHONE = re.compile(r"\b555-\d{4}\b")


def questions(summary: DemoSummary) -> list[dict[str, object]]:
    return [json.loads(x) for x in summary.questions_path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoSummary, list[Record]]:
    out = tmp_path_factory.mktemp("tiny") / "corpus.jsonl"
    summary = generate_demo_corpus(out, seed=0, size="tiny")
    return summary, read_corpus(out)


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoSummary, list[Record]]:
    out = tmp_path_factory.mktemp("demo") / "corpus.jsonl"
    summary = generate_demo_corpus(out, seed=0, size="demo")
    return summary, read_corpus(out)


def test_tiny_is_fast_and_small(tmp_path: Path) -> None:
    start = time.perf_counter()
    summary = generate_demo_corpus(tmp_path / "c.jsonl", size="tiny")
    assert time.perf_counter() - start < 2.0
    assert summary.counts["text_bytes"] <= 70_000
    assert summary.questions_path == tmp_path / "c.questions.jsonl"
    assert summary.background_sources == ["synthetic"]


def test_deterministic(tmp_path: Path) -> None:
    a = generate_demo_corpus(tmp_path / "a.jsonl", seed=3, size="tiny")
    b = generate_demo_corpus(tmp_path / "b.jsonl", seed=3, size="tiny")
    c = generate_demo_corpus(tmp_path / "c.jsonl", seed=4, size="tiny")
    assert a.corpus_path.read_bytes() == b.corpus_path.read_bytes()
    assert a.questions_path.read_bytes() == b.questions_path.read_bytes()
    assert a.corpus_path.read_bytes() != c.corpus_path.read_bytes()
    assert a.questions_path.read_bytes() != c.questions_path.read_bytes()


def test_custom_questions_path(tmp_path: Path) -> None:
    q = tmp_path / "sub" / "q.jsonl"
    summary = generate_demo_corpus(tmp_path / "c.jsonl", size="tiny", questions_out=q)
    assert summary.questions_path == q and q.is_file()
    assert not (tmp_path / "c.questions.jsonl").exists()


@pytest.mark.parametrize(
    ("size", "bounds"),
    [
        ("tiny", {"people": (35, 45), "proprietary": (25, 50), "private": (8, 15),
                  "toxic": (6, 12), "oped": (4, 8), "background": (15, 25)}),
        ("demo", {"people": (900, 1100), "proprietary": (120, 200), "private": (120, 180),
                  "toxic": (60, 100), "oped": (30, 50), "background": (300, 400)}),
    ],
)
def test_counts_in_range(
    size: str,
    bounds: dict[str, tuple[int, int]],
    tiny: tuple[DemoSummary, list[Record]],
    full: tuple[DemoSummary, list[Record]],
) -> None:
    summary, records = tiny if size == "tiny" else full
    for key, (low, high) in bounds.items():
        assert low <= summary.counts[key] <= high, key
    by_class = Counter(r.source.data_class for r in records)
    assert by_class["proprietary"] == summary.counts["proprietary"]
    assert by_class["private"] == summary.counts["private"]
    assert by_class["public"] == summary.counts["public"]
    assert len(records) == summary.counts["records"]
    assert sum(len(r.text.encode()) for r in records) == summary.counts["text_bytes"]
    toxic = [r for r in records if r.source.title == TOXIC_SOURCE_TITLE]
    oped = [r for r in records if r.source.title == OPED_SOURCE_TITLE]
    assert len(toxic) == summary.counts["toxic"]
    assert len(oped) == summary.counts["oped"]
    assert all(r.source.data_class == "public" for r in toxic + oped)


def test_demo_size_budget(full: tuple[DemoSummary, list[Record]]) -> None:
    summary, _ = full
    assert summary.counts["text_bytes"] <= 1_300_000
    assert summary.counts["fact_questions"] == 4 * summary.counts["people"]


@pytest.mark.parametrize("which", ["tiny", "full"])
def test_questions_point_at_records_that_answer_them(
    which: str,
    tiny: tuple[DemoSummary, list[Record]],
    full: tuple[DemoSummary, list[Record]],
) -> None:
    summary, records = tiny if which == "tiny" else full
    by_id = {r.id: r for r in records}
    qs = questions(summary)
    assert len(qs) == summary.counts["questions"]
    kinds = Counter(q["kind"] for q in qs)
    assert kinds["fact"] == summary.counts["fact_questions"]
    assert kinds["passage"] == summary.counts["passage_questions"]
    for q in qs:
        prompt, completion = str(q["prompt"]), str(q["completion"])
        ids = q["relevant_ids"]
        assert isinstance(ids, list) and ids
        assert completion.startswith(" ") and completion.strip()
        texts = [by_id[str(i)].text for i in ids]  # KeyError if an id does not exist
        assert any(prompt + completion in t for t in texts), q
        assert all(completion.strip() in t for t in texts), q
        if q["kind"] == "fact":
            assert q["fact"] in {"birth_city", "employer", "university", "birth_year"}
            assert len(completion.split()) <= 5
            assert 2 <= len(ids) <= 3
        else:
            assert q["fact"] in PROPRIETARY_TITLES
            assert len(ids) >= 6
            assert all(by_id[str(i)].source.data_class == "proprietary" for i in ids)


def test_every_fact_statement_is_listed(tiny: tuple[DemoSummary, list[Record]]) -> None:
    # The reverse direction: every person record that names a person and one of
    # their fact values is among that fact's relevant ids.
    summary, records = tiny
    for q in questions(summary):
        if q["kind"] != "fact":
            continue
        name = str(q["subject"])
        value = str(q["completion"]).strip()
        stating = {
            r.id
            for r in records
            if r.id.startswith("person-") and name in r.text and value in r.text
        }
        assert stating <= set(q["relevant_ids"]), q  # type: ignore[arg-type]


def test_facts_are_consistent(full: tuple[DemoSummary, list[Record]]) -> None:
    summary, _ = full
    seen: dict[tuple[str, str], str] = {}
    prompts = Counter()
    for q in questions(summary):
        if q["kind"] == "fact":
            key = (str(q["subject"]), str(q["fact"]))
            assert key not in seen
            seen[key] = str(q["completion"])
            prompts[q["prompt"]] += 1
    assert len({s for s, _ in seen}) == summary.counts["people"]  # unique names
    assert max(prompts.values()) == 1  # every prompt names one person and one fact


@pytest.mark.parametrize("which", ["tiny", "full"])
def test_personal_data_only_in_private_records(
    which: str,
    tiny: tuple[DemoSummary, list[Record]],
    full: tuple[DemoSummary, list[Record]],
) -> None:
    _, records = tiny if which == "tiny" else full
    for record in records:
        has_pii = bool(EMAIL.search(record.text)) or bool(PHONE.search(record.text))
        if record.source.data_class == "private":
            assert EMAIL.search(record.text) and PHONE.search(record.text), record.id
            assert re.search(r"@example\.(com|net|org)\b", record.text)
        else:
            assert not has_pii, record.id


def test_planted_sources(full: tuple[DemoSummary, list[Record]]) -> None:
    _, records = full
    toxic = [r for r in records if r.source.title == TOXIC_SOURCE_TITLE]
    phrase_hits = Counter(p for r in toxic for p in TOXIC_PHRASES if p in r.text)
    assert min(phrase_hits.values()) >= 10  # every insult repeats across posts
    oped = " ".join(r.text for r in records if r.source.title == OPED_SOURCE_TITLE)
    assert "nurse" in oped and "engineer" in oped
    titles = {r.source.title for r in records if r.source.data_class == "proprietary"}
    assert titles == set(PROPRIETARY_TITLES)
    for record in records:
        if record.source.data_class == "proprietary":
            assert record.source.license.startswith("Proprietary:")
    urls = [r.source.url for r in records]
    assert len(set(urls)) == len(urls)  # every record has its own address
    assert all(u.startswith("https://") and ".example/" in u for u in urls)


def test_demo_catalog_ingests(tmp_path: Path, tiny: tuple[DemoSummary, list[Record]]) -> None:
    summary, records = tiny
    with ingest(summary.corpus_path, tmp_path / "c.db") as catalog:
        assert len(catalog) == len(records)


def test_unknown_size_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown demo size"):
        generate_demo_corpus(tmp_path / "c.jsonl", size="huge")  # type: ignore[arg-type]


def test_synthetic_background_fallback(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    paragraphs, sources = load_background(empty, count=12, seed=1)
    assert sources == ["synthetic"] and len(paragraphs) == 12
    assert paragraphs == synthetic_background(12, 1)
    assert load_background(None, count=3, seed=1)[1] == ["synthetic"]


def test_plain_text_background(tmp_path: Path) -> None:
    para = "It was a bright cold day in the valley, and the river ran high. " * 4
    (tmp_path / "my book.txt").write_text(f"TITLE\n\n{para}\n\n{para.upper()}\n\nshort\n")
    summary = generate_demo_corpus(tmp_path / "c.jsonl", size="tiny", background_dir=tmp_path)
    assert summary.background_sources[0] == "file:my book.txt"
    assert "synthetic" in summary.background_sources  # two paragraphs cannot fill 20
    records = read_corpus(summary.corpus_path)
    assert sum(1 for r in records if r.id.startswith("bg-text-my-book-")) == 2


def _real_background_dir() -> Path | None:
    for candidate in (Path("/tmp/bgdeb"), Path("/tmp/bgtest"), Path("data/background")):
        if candidate.is_dir() and read_austen(candidate):
            return candidate
    return None


@pytest.mark.skipif(_real_background_dir() is None, reason="fetch_background.sh not run")
def test_real_background(tmp_path: Path) -> None:
    directory = _real_background_dir()
    assert directory is not None
    austen = read_austen(directory)
    assert len(austen) > 1000 and {p.title for p in austen} >= {"Emma", "Persuasion"}
    summary = generate_demo_corpus(tmp_path / "c.jsonl", size="tiny", background_dir=directory)
    assert summary.background_sources[0] == "r-cran-janeaustenr"
    if read_devil(directory):
        assert "dict-devil" in summary.background_sources
    again = generate_demo_corpus(tmp_path / "d.jsonl", size="tiny", background_dir=directory)
    assert summary.corpus_path.read_bytes() == again.corpus_path.read_bytes()


def test_module_constants_exported() -> None:
    for name in ("TOXIC_SOURCE_TITLE", "OPED_SOURCE_TITLE", "PROPRIETARY_TITLES",
                 "OPED_STEREOTYPES", "TOXIC_PHRASES", "PRIVATE_LICENSE"):
        assert name in demo.__all__ and getattr(demo, name)
    assert len(PROPRIETARY_TITLES) == len(set(PROPRIETARY_TITLES)) == 20


# --- fair subjects, splits, paraphrased questions ------------------------------------------


@pytest.mark.parametrize("which", ["tiny", "full"])
def test_every_question_has_a_split_by_subject_and_a_fair_flag(
    which: str,
    tiny: tuple[DemoSummary, list[Record]],
    full: tuple[DemoSummary, list[Record]],
) -> None:
    summary, _ = tiny if which == "tiny" else full
    qs = questions(summary)
    split_of: dict[str, str] = {}
    for q in qs:
        assert q["split"] in {"tune", "heldout"} and isinstance(q["fair"], bool)
        assert q["split"] == question_split(str(q["subject"]))
        assert split_of.setdefault(str(q["subject"]), str(q["split"])) == q["split"]
        assert not (q["kind"] == "passage" and q["fair"])
    plan = SIZES["tiny" if which == "tiny" else "demo"]
    fair = [q for q in qs if q["fair"]]
    assert len(fair) == 4 * plan.fair_people == summary.counts["fair_questions"]
    assert summary.counts["heldout_questions"] == sum(q["split"] == "heldout" for q in qs)
    assert summary.counts["tune_questions"] + summary.counts["heldout_questions"] == len(qs)
    if which == "full":
        assert 0.45 <= summary.counts["heldout_questions"] / len(qs) <= 0.55
        assert 0.3 <= sum(q["split"] == "heldout" for q in fair) / len(fair) <= 0.7


def _ids(question: dict[str, object]) -> set[str]:
    return set(cast(list[str], question["relevant_ids"]))


def _fact_values() -> list[str]:
    return [*CITIES, *EMPLOYERS, *UNIVERSITIES]


@pytest.mark.parametrize("which", ["tiny", "full"])
def test_fair_subjects_are_named_in_records_that_state_none_of_their_facts(
    which: str,
    tiny: tuple[DemoSummary, list[Record]],
    full: tuple[DemoSummary, list[Record]],
) -> None:
    summary, records = tiny if which == "tiny" else full
    plan = SIZES["tiny" if which == "tiny" else "demo"]
    mentions = [r for r in records if r.id.startswith("mention-")]
    assert len(mentions) == summary.counts["mention_records"] > 0
    values = _fact_values()
    for record in mentions:
        assert record.source.data_class == "public"
        assert not any(v in record.text for v in values), record.text
        assert not re.search(r"\d{4}", record.text), record.text  # no years at all
    for q in questions(summary):
        if q["kind"] != "fact":
            continue
        name = str(q["subject"])
        naming = [r for r in records if name in r.text and r.id not in _ids(q)]
        if q["fair"]:
            # The planted notes name them, each four times, as densely as their encyclopedia
            # entry; no two of a person's notes are alike.
            named_in = [r for r in naming if r.id.startswith("mention-")]
            assert len(named_in) == plan.mentions_each, name
            assert all(r.text.count(name) == 4 for r in named_in), name
            assert len({r.text for r in named_in}) == len(named_in), name
        else:
            assert not any(r.id.startswith("mention-") for r in naming), name
        # Whatever names them and is not listed states nothing about the asked fact.
        assert not any(str(q["completion"]).strip() in r.text for r in naming), q


@pytest.mark.parametrize("seed", [0, 1])
def test_name_only_bm25_no_longer_finds_the_stating_records_of_fair_subjects(
    seed: int, tiny: tuple[DemoSummary, list[Record]], tmp_path: Path
) -> None:
    # A retriever that matches the subject's name alone. For every other subject a record
    # stating the fact is in its top 10 (recall@10 as the evaluation counts it: a hit) and
    # so are all of them; for fair subjects almost never (the demo size, seeds 0 and 1: 4%).
    if seed == 0:
        summary, records = tiny
    else:
        summary = generate_demo_corpus(tmp_path / "c.jsonl", size="tiny", seed=seed)
        records = read_corpus(summary.corpus_path)
    bm25 = BM25Baseline([r.id for r in records], [r.text for r in records])

    def at_10(fair: bool) -> tuple[float, float]:
        qs = [q for q in questions(summary) if q["kind"] == "fact" and q["fair"] is fair]
        ranked = bm25.rank([str(q["subject"]) for q in qs], k=10)
        pairs = list(zip(qs, ranked, strict=True))
        hit = sum(bool(_ids(q) & set(top)) for q, top in pairs) / len(pairs)
        found = sum(len(_ids(q) & set(top)) / len(_ids(q)) for q, top in pairs) / len(pairs)
        return hit, found

    assert at_10(fair=False) == (1.0, 1.0)
    hit, found = at_10(fair=True)
    assert hit <= 0.25 and found <= 0.1, (hit, found)


def test_paraphrased_questions_are_worded_as_no_record_is(tmp_path: Path) -> None:
    stmt = generate_demo_corpus(tmp_path / "s.jsonl", size="tiny", seed=2)
    para = generate_demo_corpus(
        tmp_path / "p.jsonl", size="tiny", seed=2, question_style="paraphrase"
    )
    again = generate_demo_corpus(
        tmp_path / "q.jsonl", size="tiny", seed=2, question_style="paraphrase"
    )
    assert para.questions_path.read_bytes() == again.questions_path.read_bytes()
    # The corpus does not depend on the question style.
    assert para.corpus_path.read_bytes() == stmt.corpus_path.read_bytes()
    texts = [r.text for r in read_corpus(para.corpus_path)]
    wording = {
        max((part.strip() for part in t.split("{name}")), key=len)
        for ts in PARAPHRASE_TEMPLATES.values()
        for t in ts
    }
    assert not any(w in text for w in wording for text in texts)
    kinds: Counter[str] = Counter()
    for s, p in zip(questions(stmt), questions(para), strict=True):
        assert {k: v for k, v in s.items() if k != "prompt"} == {
            k: v for k, v in p.items() if k != "prompt"
        }
        if p["kind"] == "passage":
            assert p["prompt"] == s["prompt"]
            continue
        prompt = str(p["prompt"])
        assert str(p["subject"]) in prompt and prompt != s["prompt"]
        assert not any(prompt in text for text in texts), prompt
        kinds[prompt.split(str(p["subject"]))[0]] += 1
    assert len(kinds) >= 5  # several wordings, Q/A and declarative


def test_unknown_question_style_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown question style"):
        generate_demo_corpus(tmp_path / "c.jsonl", size="tiny", question_style="quiz")  # type: ignore[arg-type]
