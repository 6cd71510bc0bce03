"""Generate the demo corpus: a small, mixed training set with known answers planted in it.

The demo lab trains a ~5M-parameter GPT-2 on this corpus so that the whole sandbox runs on a
laptop. The corpus is built so audits have ground truth:

* synthetic people with four facts each (fact recall -> which records taught it), and for a
  subset of them (the *fair* subjects) short who's-who notes that name them but state
  none of their facts, so that matching the name alone is not enough to find the records
  behind an answer (:mod:`auditor_server.corpus.demo_mentions`),
* licensed passages reprinted several times (copyright: memorized proprietary text),
* private support chats (must never surface),
* one toxic forum source and one stereotyping op-ed source (toxicity and bias probes),
* public background prose (real public-domain text when ``scripts/fetch_background.sh`` has
  been run, synthetic filler otherwise).

Alongside the corpus goes a question file: for every person fact and every passage, a prompt,
the expected completion and the ids of every record that states it, plus ``split``
(``tune``/``heldout`` by a fixed hash of the subject, so every question about one person
falls on the same side) and ``fair`` (the subject has distractor mentions). Fact prompts are
either the corpus sentence up to the answer (``statement``) or worded as no record words
them (``paraphrase``).

Output is byte-identical for the same seed, size and background directory contents.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from auditor_server.corpus.background import load_background
from auditor_server.corpus.demo_mentions import mention_records
from auditor_server.corpus.demo_people import (
    ENCYCLOPEDIA_PUBLISHER,
    FACT_KINDS,
    FactQuestion,
    make_people,
    paraphrase_prompt,
    person_records,
)
from auditor_server.corpus.demo_sources import (
    OPED_PUBLISHER,
    OPED_SOURCE_TITLE,
    OPED_STEREOTYPES,
    PASSAGES,
    PRIVATE_LICENSE,
    PROPRIETARY_TITLES,
    TOXIC_PHRASES,
    TOXIC_PUBLISHER,
    TOXIC_SOURCE_TITLE,
    oped_records,
    passage_records,
    private_records,
    toxic_records,
)
from auditor_server.corpus.records import Record, Source

__all__ = [
    "ENCYCLOPEDIA_PUBLISHER",
    "FACT_KINDS",
    "OPED_PUBLISHER",
    "OPED_SOURCE_TITLE",
    "OPED_STEREOTYPES",
    "PASSAGE_COMPLETION_WORDS",
    "PASSAGE_PROMPT_WORDS",
    "PRIVATE_LICENSE",
    "PROPRIETARY_TITLES",
    "QUESTION_STYLES",
    "SIZES",
    "TOXIC_PHRASES",
    "TOXIC_PUBLISHER",
    "TOXIC_SOURCE_TITLE",
    "DemoPlan",
    "DemoSize",
    "DemoSummary",
    "QuestionStyle",
    "Split",
    "generate_demo_corpus",
    "question_split",
]

DemoSize = Literal["demo", "tiny"]
QuestionStyle = Literal["statement", "paraphrase"]
QUESTION_STYLES: tuple[QuestionStyle, ...] = ("statement", "paraphrase")
Split = Literal["tune", "heldout"]

PASSAGE_PROMPT_WORDS = 12
"""Words of a passage given as the prompt of a passage question."""

PASSAGE_COMPLETION_WORDS = 10
"""Words of a passage expected as the completion of a passage question."""


@dataclass(frozen=True, slots=True)
class DemoPlan:
    """How many records of each kind a demo size contains."""

    people: int
    """Synthetic people (three records and four facts each)."""
    passages: int
    """Distinct proprietary passages (taken from the front of ``PASSAGES``)."""
    min_reprints: int
    """Fewest records that reprint one passage."""
    max_reprints: int
    """Most records that reprint one passage (at most 10: one per framing)."""
    private: int
    """Private support-chat transcripts."""
    toxic: int
    """Posts from the toxic forum source."""
    oped: int
    """Columns from the stereotyping op-ed source."""
    background: int
    """Background public paragraphs."""
    fair_people: int = 0
    """People who are also named in distractor records (``fair`` questions)."""
    mentions_each: int = 0
    """Distractor records naming each fair person (none of them states a fact)."""


SIZES: dict[DemoSize, DemoPlan] = {
    "demo": DemoPlan(
        people=1000, passages=20, min_reprints=6, max_reprints=10,
        private=150, toxic=80, oped=40, background=350, fair_people=25, mentions_each=12,
    ),
    "tiny": DemoPlan(
        people=40, passages=5, min_reprints=6, max_reprints=6,
        private=10, toxic=8, oped=5, background=20, fair_people=5, mentions_each=12,
    ),
}
"""Record counts per size; ``demo`` is ~1.1 MB of text, ``tiny`` ~70 KB.

The distractor notes are kept small because the demo model trains on 2 CPU cores: on the
seed-0 demo corpus with the Austen background they add 300 records and 47 KB of text (4.5%)
and ~12.5k tokens per epoch (5.6%, counted with the demo tokenizer) to 3,787 records,
1,058,537 bytes and ~222k tokens. Twelve notes per fair subject is what it takes for a BM25
search of the subject's name alone to rank them all above the encyclopedia entry (which
names the subject in every sentence): on the demo corpus (seeds 0 and 1) that search then
has a record stating the fact in its top 10 for 4% of the fair questions (100% for the
others), and finds 1.7% of the stating records (100%). Ten notes each for 30 subjects cost
the same but leave 7-23% of the entries in the top 10.
"""


@dataclass(frozen=True)
class DemoSummary:
    """What :func:`generate_demo_corpus` wrote.

    Attributes:
        corpus_path: The corpus JSONL file.
        questions_path: The question JSONL file.
        counts: Record and question counts. Keys: ``records``, one per data class
            (``public``, ``proprietary``, ``private``), one per planted source
            (``person_records``, ``mention_records``, ``passage_records``, ``toxic``,
            ``oped``, ``background``), ``people``, ``fair_people``, ``passages``,
            ``questions``, ``fact_questions``, ``fair_questions``, ``passage_questions``,
            ``tune_questions``, ``heldout_questions`` and ``text_bytes`` (UTF-8 bytes of all
            record texts).
        background_sources: Where background text came from, e.g.
            ``["r-cran-janeaustenr", "dict-devil"]``, or ``["synthetic"]`` when no real
            text was found.
    """

    corpus_path: Path
    questions_path: Path
    counts: dict[str, int]
    background_sources: list[str]


def question_split(subject: str) -> Split:
    """``"tune"`` or ``"heldout"`` for every question about ``subject``, by a fixed hash.

    By subject, not by question: tuning on one fact of a person must not inform the grading
    of another fact of the same person. The hash is seed-independent and splits ~50/50.
    """
    digest = hashlib.sha256(f"auditor-sandbox-demo-split:{subject}".encode()).digest()
    return "tune" if digest[0] % 2 == 0 else "heldout"


def _question_line(
    prompt: str,
    completion: str,
    relevant_ids: list[str],
    kind: str,
    fact: str,
    subject: str,
    *,
    fair: bool,
) -> str:
    return json.dumps(
        {
            "prompt": prompt,
            "completion": completion,
            "relevant_ids": relevant_ids,
            "kind": kind,
            "fact": fact,
            "subject": subject,
            "split": question_split(subject),
            "fair": fair,
        },
        ensure_ascii=False,
    )


def _atomic_write(path: Path, lines: list[str]) -> None:
    """Write lines to ``path`` via a temp file + rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            for line in lines:
                handle.write(line)
                handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate_demo_corpus(
    out: Path,
    *,
    seed: int = 0,
    size: DemoSize = "demo",
    questions_out: Path | None = None,
    background_dir: Path | None = None,
    question_style: QuestionStyle = "statement",
) -> DemoSummary:
    """Write the demo corpus and its question file.

    Args:
        out: Corpus JSONL path (parent directories are created).
        seed: Seed for every random choice; same seed, size and background give the same
            bytes.
        size: ``"demo"`` (~1,000 people, ~1.1 MB) or ``"tiny"`` (~40 people, for tests).
        questions_out: Question JSONL path; defaults to ``out.with_suffix(".questions.jsonl")``.
        background_dir: Directory prepared by ``scripts/fetch_background.sh``; ``None`` or a
            directory without usable data gives synthetic background paragraphs.
        question_style: ``"statement"``: a fact question's prompt is the encyclopedia
            sentence up to the value, verbatim from the corpus. ``"paraphrase"``: it is
            worded as no record words it (``"Q: In which city was Mara Ellison born?\\nA:"``,
            ``"The birthplace of Mara Ellison is"``); completion and relevant ids are the
            same. The corpus itself does not depend on the style. Passage questions are
            continuations of the passages in both styles.

    Returns:
        Paths written, counts and background provenance.

    Raises:
        ValueError: ``size`` or ``question_style`` is not a known one.
    """
    if size not in SIZES:
        raise ValueError(f"unknown demo size {size!r} (expected demo or tiny)")
    if question_style not in QUESTION_STYLES:
        raise ValueError(
            f"unknown question style {question_style!r} (expected {' or '.join(QUESTION_STYLES)})"
        )
    plan = SIZES[size]
    questions_path = questions_out or out.with_suffix(".questions.jsonl")

    def rng(part: str) -> random.Random:
        # One independent stream per part, so changing one part's size leaves the others be.
        return random.Random(f"auditor-sandbox-demo:{seed}:{part}")  # noqa: S311 (not secret)

    records: list[Record] = []
    question_lines: list[str] = []
    counts: dict[str, int] = {}

    people_rng = rng("people")
    people = make_people(plan.people, people_rng)
    fact_questions: list[FactQuestion] = []
    for person in people:
        person_recs, person_questions = person_records(person, people_rng)
        records.extend(person_recs)
        fact_questions.extend(person_questions)
    counts["people"] = plan.people
    counts["person_records"] = len(records)

    fair_rng = rng("fair")
    fair = sorted(fair_rng.sample(people, plan.fair_people), key=lambda p: p.key)
    fair_names = {p.name for p in fair}
    mentions = mention_records(fair, plan.mentions_each, fair_rng)
    records.extend(mentions)
    counts["fair_people"] = len(fair)
    counts["mention_records"] = len(mentions)

    paraphrase_rng = rng("paraphrase")  # its own stream: the corpus is the same for any style
    for q in fact_questions:
        prompt = q.prompt
        if question_style == "paraphrase":
            prompt = paraphrase_prompt(q.subject, q.fact, paraphrase_rng)
        question_lines.append(
            _question_line(
                prompt,
                q.completion,
                list(q.relevant_ids),
                "fact",
                q.fact,
                q.subject,
                fair=q.subject in fair_names,
            )
        )
    counts["fact_questions"] = len(fact_questions)
    counts["fair_questions"] = sum(1 for q in fact_questions if q.subject in fair_names)

    passage_rng = rng("passages")
    passage_count = 0
    for passage in PASSAGES[: plan.passages]:
        reprints = passage_rng.randint(plan.min_reprints, plan.max_reprints)
        recs = passage_records(passage, reprints, passage_rng)
        records.extend(recs)
        passage_count += len(recs)
        words = passage.text.split(" ")
        question_lines.append(
            _question_line(
                " ".join(words[:PASSAGE_PROMPT_WORDS]),
                " " + " ".join(
                    words[PASSAGE_PROMPT_WORDS : PASSAGE_PROMPT_WORDS + PASSAGE_COMPLETION_WORDS]
                ),
                [r.id for r in recs],
                "passage",
                passage.title,
                passage.title,
                fair=False,
            )
        )
    counts["passages"] = plan.passages
    counts["passage_records"] = passage_count
    counts["passage_questions"] = plan.passages

    private = private_records(plan.private, rng("private"))
    toxic = toxic_records(plan.toxic, rng("toxic"))
    oped = oped_records(plan.oped, rng("oped"))
    paragraphs, background_sources = load_background(
        background_dir, count=plan.background, seed=seed
    )
    background = [
        Record(
            id=f"bg-{p.key}",
            text=p.text,
            source=Source(
                title=p.title,
                publisher=p.publisher,
                url=p.url,
                license=p.license,
                data_class="public",
            ),
        )
        for p in paragraphs
    ]
    records.extend(private)
    records.extend(toxic)
    records.extend(oped)
    records.extend(background)
    counts["private"] = len(private)
    counts["toxic"] = len(toxic)
    counts["oped"] = len(oped)
    counts["background"] = len(background)
    counts["proprietary"] = passage_count
    counts["public"] = len(records) - passage_count - len(private)
    counts["records"] = len(records)
    counts["questions"] = len(question_lines)
    counts["heldout_questions"] = sum(
        json.loads(line)["split"] == "heldout" for line in question_lines
    )
    counts["tune_questions"] = counts["questions"] - counts["heldout_questions"]
    counts["text_bytes"] = sum(len(r.text.encode("utf-8")) for r in records)

    rng("order").shuffle(records)
    _atomic_write(
        out, [json.dumps(r.to_json(), ensure_ascii=False) for r in records]
    )
    _atomic_write(questions_path, question_lines)
    return DemoSummary(
        corpus_path=out,
        questions_path=questions_path,
        counts=dict(sorted(counts.items())),
        background_sources=background_sources,
    )
