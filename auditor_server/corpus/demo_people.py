"""Synthetic people for the demo corpus: unique names, four facts each, three documents each.

Fact recall is the cleanest attribution test there is: we know exactly which training
records state "Mara Ellison was born in the city of Dunmore", so an attribution method can be
scored on whether it ranks those records first. Every person gets an encyclopedia entry
(all four facts), an alumni-news note (birth city, birth year, university) and a staff profile
(birth city, employer, university), each with its own paraphrase of the facts and a little
unrelated filler, so every fact is stated in two or three differently worded records.

All names, places, companies and universities are fictional.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal

from auditor_server.corpus.records import Record, Source

__all__ = [
    "FACT_KINDS",
    "PARAPHRASE_TEMPLATES",
    "FactKind",
    "FactQuestion",
    "Person",
    "make_people",
    "paraphrase_prompt",
    "person_records",
]

FactKind = Literal["birth_city", "employer", "university", "birth_year"]
FACT_KINDS: tuple[FactKind, ...] = ("birth_city", "employer", "university", "birth_year")

ENCYCLOPEDIA_TITLE_PREFIX = "Open Encyclopedia: "
ENCYCLOPEDIA_PUBLISHER = "Open Encyclopedia Foundation"

FIRST_NAMES = (
    "Mara", "Tobias", "Ines", "Callum", "Priya", "Anselm", "Delphine", "Rafael", "Odile",
    "Kasimir", "Leonie", "Bram", "Saskia", "Emeric", "Ylva", "Dorian", "Maren", "Lucan",
    "Hester", "Ivo", "Greta", "Cosmo", "Talia", "Fenwick", "Annika", "Jory", "Beatrix",
    "Osric", "Linnea", "Matthias", "Noor", "Alaric", "Rosalind", "Teodor", "Wilhelmina",
    "Ezra", "Clementine", "Soren", "Imogen", "Ruben", "Zelda", "Ansel", "Philippa", "Quentin",
    "Marisol", "Ludo", "Henrike", "Cyprian", "Freya", "Horatio", "Ottilie", "Barnaby",
    "Elowen", "Leopold", "Sigrid", "Magnus", "Petra", "Ambrose", "Juno", "Casimir",
)
SURNAMES = (
    "Ellison", "Varga", "Quenneville", "Hartigan", "Okonkwo-Reyes", "Lindqvist", "Ferrante",
    "Ashdown", "Brennick", "Castellane", "Dewhurst", "Eskildsen", "Falconer", "Galbraith",
    "Holloway-Finch", "Ingersoll", "Jablonski", "Kettering", "Lachance", "Marchetti",
    "Nakashima", "Oyelaran", "Pendergast", "Quarrie", "Rasmussen", "Sandoval", "Thorvaldsen",
    "Underwood", "Valkonen", "Whitcombe", "Yarborough", "Zielinski", "Abernathy", "Bellweather",
    "Carrick", "Drummond", "Everly", "Fairbairn", "Grimaldi", "Haverford", "Iskander",
    "Jessop", "Kowalczyk", "Larkin", "Montague", "Nyberg", "Ostrowski", "Prendergast-Lowe",
    "Ravensworth", "Stroud", "Tennant", "Umberfield", "Vasquez-Hale", "Wexley", "Achterberg",
    "Blakemore", "Corcoran", "Delacroix-Bay", "Ellery", "Fitzwarren",
)
CITIES = (
    "Dunmore", "Carrowby", "Elmsford", "Thornwick", "Ashcombe", "Belvoy", "Corrisdale",
    "Fenwater", "Glenmarsh", "Halverton", "Kestrel Bay", "Lowick Sands", "Marrowfield",
    "Northold", "Oakhurst Vale", "Pellingford", "Quarry Point", "Redmere", "Saltcombe",
    "Tarnby", "Upton Marsh", "Valecrest", "Wendmoor", "Yarrowby", "Ambergate Falls",
    "Brinmouth", "Calder Reach", "Drumlow", "Esterholt", "Farrowdale", "Greyhaven",
    "Hollins Cross", "Ivelport", "Juniper Falls", "Kilbrannock", "Lindenmoor", "Mossgiel Harbor",
    "Norrington", "Ostmarch", "Penhallow", "Ravensholm", "Stellbridge", "Tollcarn",
    "Ulverbrook", "Vanterre", "Westmarrow", "Ysolde", "Zennor Cove", "Brightwater Mills",
    "Caddonfoot", "Delmarch", "Eskerwood", "Foxley Cross", "Gallowmere", "Harwick Point",
    "Istermoor", "Jessup Landing", "Kirrin Bay", "Lorrimer", "Morvaine",
)
EMPLOYERS = (
    "Corvane Systems", "Halvorsen Biotech", "Brightline Freight", "Quillfeather Media",
    "Stonewick Analytics", "Larkspur Robotics", "Meridale Foods", "Tidewell Energy",
    "Orrin and Vale Insurance", "Pinecrest Logistics", "Solwind Aerospace", "Gannet Software",
    "Ambervale Textiles", "Cobaltline Telecom", "Driftwood Studios", "Emberlane Pharmaceuticals",
    "Foxglove Architecture", "Greymantle Bank", "Hearthstone Ceramics", "Ironleaf Agritech",
    "Juniper Health", "Kettlewell Instruments", "Lanternfish Games", "Mossbank Publishing",
    "Northgale Shipping", "Oakmere Consulting", "Pelican Ridge Hotels", "Quartzlight Optics",
    "Riverbend Motors", "Silverthorn Mining", "Thistledown Apparel", "Umbra Security",
    "Verdant Loop Recycling", "Willowmere Furniture", "Yellowfin Seafoods", "Zephyr Batteries",
    "Aldergate Legal", "Bluefen Water", "Copperkettle Breweries", "Duskfall Media",
    "Everbright Solar", "Glasswing Labs", "Harborlight Clinics", "Inkwell Data",
    "Jasperline Rail", "Kingfisher Airways", "Lodestar Maps", "Marigold Cosmetics",
    "Nettlefield Seeds", "Pemberly Robotics",
)
UNIVERSITIES = (
    "Ashgrove University", "Tremont University", "Calloway Institute of Technology",
    "Dunhollow College", "Elberon State University", "Fairhaven Polytechnic",
    "Grantley Lakes University", "Holloway Conservatory of Music", "Islington Vale College",
    "Jarrow Technical University", "Kelderwick University", "Lowther Academy of Sciences",
    "Mirefield University", "Norwick College", "Pemberton Institute", "Quenby University",
    "Rosslyn Polytechnic", "Sorrel Bay University", "Thackeray College", "Underhill University",
    "Varrick Institute", "Whitlock University", "Yewdale College", "Zarnow School of Economics",
    "Blackmere University", "Cresswell College of Art", "Davenmoor University",
    "Eastlake Institute of Design", "Farthingale University", "Oxley Marsh University",
)
ROLES = (
    "hydrologist", "software architect", "pastry chef", "logistics analyst",
    "landscape architect", "database administrator", "museum curator", "bridge designer",
    "labour economist", "marine biologist", "product designer", "audio technician",
    "tax adviser", "urban planner", "veterinary surgeon", "translator", "actuary",
    "cartographer", "documentary producer", "clinical researcher",
)
HOBBIES = (
    "restoring old bicycles", "birdwatching along the estuary", "competitive chess",
    "growing heirloom tomatoes", "long-distance swimming", "collecting antique maps",
    "amateur astronomy", "woodworking", "playing the cello", "hill walking",
    "baking sourdough", "writing crossword puzzles",
)
FILLERS = (
    "{last} enjoys {hobby}.",
    "Outside work, {last} spends weekends {hobby_ing}.",
    "Friends describe {last} as patient, curious and hard to beat at {game}.",
    "{last} once cycled the length of the coast road in a single summer.",
    "In spare moments {last} volunteers at a community library.",
    "{last} has a well-known weakness for strong coffee and long walks.",
)
GAMES = ("chess", "backgammon", "table tennis", "darts", "bridge")

# Encyclopedia sentences: each starts with the full name and ends with the value, so the
# part before the value is a natural fact-recall prompt.
ENCYCLOPEDIA_TEMPLATES: dict[FactKind, tuple[str, ...]] = {
    "birth_city": (
        "{name} was born in the city of {v}.",
        "{name} is a native of the town of {v}.",
        "{name} was born and raised in {v}.",
    ),
    "birth_year": (
        "{name} was born in the year {v}.",
        "{name}'s year of birth is {v}.",
    ),
    "university": (
        "{name} studied at {v}.",
        "{name} graduated from {v}.",
        "{name} earned a degree from {v}.",
    ),
    "employer": (
        "{name} works for {v}.",
        "{name} is employed by {v}.",
        "{name} currently works at {v}.",
    ),
}
ALUMNI_TEMPLATES = (
    "Class notes: {name} is a graduate of {university}. Born in {birth_year}, {last} grew up "
    "in {birth_city} and now works as a {role}. {filler}",
    "Alumni spotlight. {name} completed a degree at {university}. {last} was born in "
    "{birth_year} in {birth_city}, and classmates still remember {last}'s {trait}. {filler}",
    "Where are they now? {name} ({university}) was born in {birth_year} and raised in "
    "{birth_city}. These days {last} is a {role}. {filler}",
)
STAFF_TEMPLATES = (
    "Meet the team: {name} is a {role} at {employer}. Originally from {birth_city}, {last} "
    "holds a degree from {university}. {filler}",
    "Staff profile. {name} joined {employer} as a {role}. {last} was born in {birth_city} "
    "and studied at {university}. {filler}",
    "Our people: {name} works at {employer} as a {role}. A native of {birth_city} and a "
    "graduate of {university}, {last} is the person to ask about {topic}. {filler}",
)
# Question prompts worded unlike any record (``--question-style paraphrase``): no record
# contains them, nor the wording around the name (the tests check both).
PARAPHRASE_TEMPLATES: dict[FactKind, tuple[str, ...]] = {
    "birth_city": ("Q: In which city was {name} born?\nA:", "The birthplace of {name} is"),
    "birth_year": ("Q: In what year was {name} born?\nA:", "The birth year of {name} is"),
    "university": (
        "Q: Which university did {name} attend?\nA:",
        "The alma mater of {name} is",
    ),
    "employer": ("Q: Which company does {name} work for?\nA:", "The employer of {name} is"),
}
TRAITS = ("sense of humour", "handwriting", "laugh", "stubbornness", "cooking")
TOPICS = ("spreadsheets", "travel plans", "the coffee machine", "good books", "local history")


@dataclass(frozen=True, slots=True)
class Person:
    """A fictional person and their four facts (values exactly as written in the corpus)."""

    key: str
    first: str
    last: str
    birth_city: str
    employer: str
    university: str
    birth_year: str
    role: str

    @property
    def name(self) -> str:
        """Full name as written in every record."""
        return f"{self.first} {self.last}"

    def fact(self, kind: FactKind) -> str:
        """The value of one fact."""
        value: str = getattr(self, kind)
        return value


@dataclass(frozen=True, slots=True)
class FactQuestion:
    """A fact-recall probe: ``prompt + completion`` appears verbatim in a training record."""

    prompt: str
    completion: str
    relevant_ids: tuple[str, ...]
    fact: FactKind
    subject: str


def make_people(count: int, rng: random.Random) -> list[Person]:
    """Draw ``count`` people with unique full names and random (consistent) facts.

    Raises:
        ValueError: ``count`` exceeds the number of distinct names available.
    """
    pairs = [(f, s) for f in FIRST_NAMES for s in SURNAMES]
    if count > len(pairs):
        raise ValueError(f"at most {len(pairs)} people can be generated, asked for {count}")
    people: list[Person] = []
    for index, (first, last) in enumerate(rng.sample(pairs, count)):
        people.append(
            Person(
                key=f"{index:04d}",
                first=first,
                last=last,
                birth_city=rng.choice(CITIES),
                employer=rng.choice(EMPLOYERS),
                university=rng.choice(UNIVERSITIES),
                birth_year=str(rng.randint(1941, 1999)),
                role=rng.choice(ROLES),
            )
        )
    return people


def paraphrase_prompt(name: str, fact: FactKind, rng: random.Random) -> str:
    """A prompt asking for ``fact`` of ``name`` in words no record uses (answer follows it)."""
    return rng.choice(PARAPHRASE_TEMPLATES[fact]).format(name=name)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _filler(person: Person, rng: random.Random) -> str:
    hobby = rng.choice(HOBBIES)
    hobby_ing = hobby if hobby.split()[0].endswith("ing") else f"on {hobby}"
    return rng.choice(FILLERS).format(
        last=person.last, hobby=hobby, hobby_ing=hobby_ing, game=rng.choice(GAMES)
    )


def person_records(
    person: Person, rng: random.Random
) -> tuple[list[Record], list[FactQuestion]]:
    """Write one person's three records and the four fact questions about them.

    Returns:
        The records (encyclopedia, alumni note, staff profile) and one question per fact,
        whose prompt is the encyclopedia sentence up to the value.
    """
    name = person.name
    wiki = name.replace(" ", "_")
    values = {kind: person.fact(kind) for kind in FACT_KINDS}

    order = list(FACT_KINDS)
    rng.shuffle(order)
    sentences: list[str] = []
    prompts: dict[FactKind, str] = {}
    for kind in order:
        template = rng.choice(ENCYCLOPEDIA_TEMPLATES[kind])
        sentence = template.format(name=name, v=values[kind])
        prompts[kind] = template.split("{v}")[0].format(name=name).rstrip()
        sentences.append(sentence)
    encyclopedia_text = " ".join(
        [f"{name} is a {person.role}.", *sentences, _filler(person, rng)]
    )
    enc_id = f"person-{person.key}-encyclopedia"
    encyclopedia = Record(
        id=enc_id,
        text=encyclopedia_text,
        source=Source(
            title=ENCYCLOPEDIA_TITLE_PREFIX + name,
            publisher=ENCYCLOPEDIA_PUBLISHER,
            url=f"https://encyclopedia.example/wiki/{wiki}",
            license="CC-BY-SA-4.0",
            data_class="public",
        ),
    )

    fields: dict[str, str] = {
        "name": name,
        "last": person.last,
        "role": person.role,
        "trait": rng.choice(TRAITS),
        "topic": rng.choice(TOPICS),
        "filler": _filler(person, rng),
        **{str(kind): value for kind, value in values.items()},
    }
    alumni_id = f"person-{person.key}-alumni"
    alumni = Record(
        id=alumni_id,
        text=rng.choice(ALUMNI_TEMPLATES).format(**fields),
        source=Source(
            title=f"{person.university} Alumni News: class notes",
            publisher=f"{person.university} Office of Alumni Relations",
            url=f"https://alumni.{_slug(person.university)}.example/notes/{_slug(name)}",
            license="CC-BY-4.0",
            data_class="public",
        ),
    )
    fields["filler"] = _filler(person, rng)
    staff_id = f"person-{person.key}-staff"
    staff = Record(
        id=staff_id,
        text=rng.choice(STAFF_TEMPLATES).format(**fields),
        source=Source(
            title=f"{person.employer}: team profiles",
            publisher=person.employer,
            url=f"https://{_slug(person.employer)}.example/team/{_slug(name)}",
            license="CC-BY-4.0",
            data_class="public",
        ),
    )
    stated_in: dict[FactKind, tuple[str, ...]] = {
        "birth_city": (enc_id, alumni_id, staff_id),
        "birth_year": (enc_id, alumni_id),
        "university": (enc_id, alumni_id, staff_id),
        "employer": (enc_id, staff_id),
    }
    questions = [
        FactQuestion(
            prompt=prompts[kind],
            completion=" " + values[kind],
            relevant_ids=stated_in[kind],
            fact=kind,
            subject=name,
        )
        for kind in FACT_KINDS
    ]
    return [encyclopedia, alumni, staff], questions
