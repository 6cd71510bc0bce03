"""Distractor mentions for the demo corpus: records that name a person but state none of
their facts.

Every fact question begins with its subject's full name, and without these records only the
subject's own three records contain that name, so a retriever that matches the name alone
ranks the records that state the fact first: a fact-tracing score then says nothing about
attribution. For a subset of people (the *fair* subjects) the corpus therefore also holds
short community who's-who notes (club profiles, society pages, concert programme notes), one
person each, written like the encyclopedia entries (the full name opens every sentence) but
about other things: a rowing seat, prize onions, a cello recital. Never a birth city, birth
year, university or employer. Matching the name finds these before the records that teach
the fact; only the fact does not.

The notes are short, so they add little training time (see ``SIZES`` in
:mod:`auditor_server.corpus.demo` for the measured sizes and their effect on a name-only
BM25 search).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from auditor_server.corpus.demo_people import Person
from auditor_server.corpus.records import Record, Source

__all__ = ["MENTION_SOURCES", "mention_records"]

# Each template is about one person, {p0} their full name, which opens every sentence: four
# times in a short text, as often as in their encyclopedia entry and in fewer words, so a
# name-only BM25 search ranks ten of these above the entry. None of the words may be (or
# contain) a city, employer, university or year of the people lists; the tests check every
# generated record against every fact value.
_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("clubs", "{p0} rows for the harbour club. {p0} sits at stroke. {p0} won the spring "
              "regatta. {p0} holds the course record."),
    ("clubs", "{p0} captains the chess club. {p0} drew with the county champion. {p0} plays "
              "on board one. {p0} coaches the juniors."),
    ("clubs", "{p0} runs the {weekday} park run. {p0} paces the slow group. {p0} marshals the "
              "hill. {p0} bakes for the volunteers."),
    ("clubs", "{p0} swims in the sea. {p0} founded the winter swim club. {p0} swims on "
              "{weekday}. {p0} thanks the lifeboat crew."),
    ("clubs", "{p0} bowls for the green club. {p0} won the pairs cup. {p0} rolls the green on "
              "{weekday}. {p0} keeps the score book."),
    ("society", "{p0} chairs the allotment society. {p0} grows prize onions. {p0} judged the "
                "autumn show. {p0} edits the newsletter."),
    ("society", "{p0} keeps bees on the common. {p0} sells honey on {weekday}. {p0} visits "
                "schools. {p0} sits on the parish council."),
    ("society", "{p0} runs the repair cafe. {p0} mends toasters and lamps. {p0} teaches "
                "soldering. {p0} opens the cafe on {weekday}."),
    ("society", "{p0} looks after the village hall. {p0} books the rooms. {p0} paints the stage "
                "sets. {p0} keeps the keys."),
    ("music", "{p0} plays the cello in the town orchestra. {p0} gives a recital on {weekday}. "
              "{p0} teaches beginners. {p0} tunes pianos too."),
    ("music", "{p0} sings tenor in the choir. {p0} organised the carol concert. {p0} leads "
              "the walks. {p0} never misses a rehearsal."),
    ("music", "{p0} plays trumpet in the brass band. {p0} wrote the band's march. {p0} plays "
              "at the fair. {p0} polishes the valves."),
)

MENTION_SOURCES: dict[str, tuple[str, str, str]] = {
    "clubs": (
        "Lantern Street Sports Association: member profiles",
        "Lantern Street Sports Association",
        "sports",
    ),
    "society": ("Brookside Residents: who's who", "Brookside Residents' Association", "whoswho"),
    "music": ("The Weekly Almanac: programme notes", "The Weekly Almanac", "almanac"),
}
"""Record kind -> (title, publisher, host name of its URL)."""

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def mention_records(
    people: Sequence[Person], mentions_each: int, rng: random.Random
) -> list[Record]:
    """``mentions_each`` notes about each of ``people``, none stating any of their facts.

    A person's notes all use different templates while there are templates left (twelve),
    chosen in a seeded order; records come in a seeded order too.

    Args:
        people: The fair subjects.
        mentions_each: Notes about each of them.
        rng: The only source of randomness (same state -> same records).
    """
    plan: list[tuple[Person, tuple[str, str]]] = []
    for person in people:
        templates: list[tuple[str, str]] = []
        while len(templates) < mentions_each:
            batch = list(_TEMPLATES)
            rng.shuffle(batch)
            templates.extend(batch)
        plan.extend((person, t) for t in templates[:mentions_each])
    rng.shuffle(plan)
    records: list[Record] = []
    for number, (person, (kind, template)) in enumerate(plan):
        title, publisher, host = MENTION_SOURCES[kind]
        records.append(
            Record(
                id=f"mention-{number:04d}",
                text=template.format(p0=person.name, weekday=rng.choice(_WEEKDAYS)),
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
