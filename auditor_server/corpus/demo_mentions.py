"""Distractor mentions for the demo corpus: records that name a person but state none of
their facts.

Every fact question begins with its subject's full name, and without these records only the
subject's own three records contain that name, so a retriever that matches the name alone
ranks the records that state the fact first: a fact-tracing score then says nothing about
attribution. For a subset of people (the *fair* subjects) the corpus therefore also holds
short community-news records (club results, committee minutes, event listings, news in
brief) that mention them by full name and again by surname, alone or beside other fair
subjects, but never with a birth city, birth year, university or employer. Matching the
name finds these as readily as the records that teach the fact; only the fact does not.

The records are short, so they add little training time (see ``SIZES`` in
:mod:`auditor_server.corpus.demo` for the measured sizes).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from auditor_server.corpus.demo_people import Person
from auditor_server.corpus.records import Record, Source

__all__ = ["MENTION_SOURCES", "mention_records"]

# Each template names 1-3 people: {p0}..{p2} full names, {l0}..{l2} surnames. Every person
# named appears by full name and twice more by surname, in a short text: as a local paper
# writes, and dense enough in the name that a name match ranks these records level with the
# ones stating facts. None of the words may be (or contain) a city, employer, university or
# year of the people lists; the tests check every generated record against every fact value.
_TEMPLATES: dict[int, tuple[tuple[str, str], ...]] = {
    1: (
        ("news", "{p0} wins the harbour swim. {l0} finished in under an hour; {l0} said the "
                 "water was cold."),
        ("news", "Letters: {p0} thanks the neighbours who found {l0}'s lost dog. Real "
                 "community spirit, writes {l0}."),
        ("news", "{p0} is volunteer of the year at the community garden. {l0} will spend "
                 "{l0}'s prize on tools."),
        ("listing", "{weekday} at the {venue}: {p0} shows slides of the old drove roads, "
                    "and {l0} takes questions. Tea by {l0}."),
        ("results", "Allotment show: {p0} won first prize for onions. {l0} credits the rain; "
                    "{l0} will enter again."),
    ),
    2: (
        ("results", "Tennis ladder, week {n}: {p0} beat {p1}. {l0} is now third, {l1} sixth; "
                    "{l0} plays {l1} again soon."),
        ("results", "{p0} and {p1} won the pairs at the bowls club. {l1} said {l0} played "
                    "perfectly; {l0} thanked {l1}."),
        ("results", "City chess league, round {n}: {p0} drew with {p1}. {l0} leads, {l1} is "
                    "second; {l1} meets {l0} in the last round."),
        ("listing", "{weekday}: a talk on {talk} by {p0}, chaired by {p1}. {l0} brings "
                    "slides, {l1} the tea; {l0} and {l1} take questions."),
        ("minutes", "Minutes: {p0} proposed moving the compost bins; {p1} seconded. {l0} to "
                    "write to the landowner, {l1} to find a van; {l0} and {l1} report back."),
        ("news", "{p0} and {p1} raised {amount} for the lifeboat crew. {l0} swam, {l1} "
                 "rowed; {l0} and {l1} thank all who gave."),
    ),
    3: (
        ("results", "Quiz night: first place to {p0}, {p1} and {p2}. {l0} knew the flags, {l1} "
                    "the rivers, {l2} the films; {l0}, {l1} and {l2} shared the prize."),
        ("minutes", "Residents' meeting: {p0} reported on {issue}; {p1} and {p2} will get "
                    "quotes. {l2} chairs next time, {l0} takes notes, {l1} books the hall; "
                    "{l0}, {l1} and {l2} report back."),
    ),
}
_SIZE_WEIGHTS = {1: 2, 2: 5, 3: 1}

MENTION_SOURCES: dict[str, tuple[str, str, str]] = {
    "news": ("Community Bulletin: news in brief", "Community Bulletin", "bulletin"),
    "listing": ("The Weekly Almanac: what's on", "The Weekly Almanac", "almanac"),
    "results": ("Lantern Street Sports Association: results", "Lantern Street Sports "
                "Association", "sports"),
    "minutes": ("Brookside Residents: minutes", "Brookside Residents' Association", "minutes"),
}
"""Record kind -> (title, publisher, host name of its URL)."""

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_VENUES = ("parish hall", "scout hut", "reading room")
_AMOUNTS = ("four hundred pounds", "nearly a thousand pounds", "six hundred pounds")
_TALKS = ("canal boats", "moths of the heath", "old shop signs", "the winter sky")
_ISSUES = ("the roadworks", "the bus shelter", "parking at the school")


def mention_records(
    people: Sequence[Person], mentions_each: int, rng: random.Random
) -> list[Record]:
    """Records that together mention each of ``people`` ``mentions_each`` times.

    A record names 1-3 distinct people, each by full name and again by surname. No record
    states a fact of anyone.

    Args:
        people: The fair subjects.
        mentions_each: Records naming each of them.
        rng: The only source of randomness (same state -> same records).
    """
    remaining = {p.key: mentions_each for p in people}
    by_key = {p.key: p for p in people}
    records: list[Record] = []
    sizes = list(_SIZE_WEIGHTS)
    weights = [_SIZE_WEIGHTS[s] for s in sizes]
    while any(remaining.values()):
        open_keys = [k for k, n in remaining.items() if n]
        rng.shuffle(open_keys)
        open_keys.sort(key=lambda k: -remaining[k])  # stable: random among equals
        size = min(rng.choices(sizes, weights)[0], len(open_keys))
        chosen = [by_key[k] for k in open_keys[:size]]
        rng.shuffle(chosen)
        for person in chosen:
            remaining[person.key] -= 1
        kind, template = rng.choice(_TEMPLATES[size])
        fields = {
            "weekday": rng.choice(_WEEKDAYS),
            "venue": rng.choice(_VENUES),
            "amount": rng.choice(_AMOUNTS),
            "talk": rng.choice(_TALKS),
            "issue": rng.choice(_ISSUES),
            "n": str(rng.randint(2, 30)),
        }
        for i, person in enumerate(chosen):
            fields[f"p{i}"] = person.name
            fields[f"l{i}"] = person.last
        title, publisher, host = MENTION_SOURCES[kind]
        number = len(records)
        records.append(
            Record(
                id=f"mention-{number:04d}",
                text=template.format(**fields),
                source=Source(
                    title=title,
                    publisher=publisher,
                    url=f"https://{host}.example/{kind}/{number:04d}",
                    license="CC-BY-4.0",
                    data_class="public",
                ),
            )
        )
    return records
