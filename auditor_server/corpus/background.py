"""Background public text for the demo corpus: real public-domain prose when available.

A model trained only on planted facts and passages learns a strange language; mixing in
ordinary English makes the demo closer to a real lab's corpus and makes attribution harder in
an honest way (most training data is irrelevant to any one query). The lab box has no network
at run time, so ``scripts/fetch_background.sh DIR`` unpacks Debian packages into ``DIR`` ahead
of time and this module reads what it finds there:

* ``r-cran-janeaustenr``: Jane Austen's six novels, stored as an R lazy-load database
  (``janeaustenr/data/Rdata.rdx`` + ``Rdata.rdb``): the ``.rdx`` is a gzip'd RDS index
  of ``(offset, length)`` per object; each ``.rdb`` chunk is a 4-byte length followed by a
  zlib stream of an XDR-serialized character vector (one element per text line), which the
  ``rdata`` package parses.
* ``dict-devil``: Ambrose Bierce's *The Devil's Dictionary* as a dictd database
  (``devil.dict.dz`` is dictzip, i.e. gzip-compatible; ``devil.index`` gives base64 offsets).
* any ``*.txt`` file directly inside ``DIR`` (paragraphs separated by blank lines), for labs
  that drop in their own public-domain text.

``sword-text-web`` (World English Bible) is also in Debian, but as a compressed SWORD module
whose verse index needs a dedicated reader; it is not read here.

When nothing usable is found, :func:`synthetic_background` makes plain filler paragraphs
instead, and the demo summary says so.
"""

from __future__ import annotations

import gzip
import logging
import random
import re
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BackgroundParagraph",
    "load_background",
    "read_austen",
    "read_devil",
    "read_plain_text",
    "synthetic_background",
]

logger = logging.getLogger(__name__)

MIN_CHARS = 160
"""Shorter paragraphs (chapter headings, one-line dialogue) carry too little text to be useful."""

MAX_CHARS = 900
"""Longer paragraphs are skipped to keep the demo corpus small and its records comparable."""

_UNSAFE = re.compile(r"@|https?://|www\.|\d{3}-\d{4}")
"""Background must never look like private data (emails, urls, phone numbers)."""

AUSTEN_TITLES: dict[str, str] = {
    "emma": "Emma",
    "mansfieldpark": "Mansfield Park",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
    "prideprejudice": "Pride and Prejudice",
    "sensesensibility": "Sense and Sensibility",
}


@dataclass(frozen=True, slots=True)
class BackgroundParagraph:
    """One paragraph of background text and its provenance.

    Attributes:
        key: Short stable id fragment, unique within the background set (``austen-emma-0042``).
        text: The paragraph, whitespace-collapsed.
        title: Title of the work.
        publisher: Who published it / where it came from.
        url: An example address for the paragraph.
        license: Licence terms (public domain for the Debian sources).
        origin: Which package or source kind supplied it (for the demo summary).
    """

    key: str
    text: str
    title: str
    publisher: str
    url: str
    license: str
    origin: str


def _clean(text: str) -> str:
    """Collapse whitespace and drop Gutenberg ``_italic_`` markers."""
    return re.sub(r"\s+", " ", text.replace("_", "")).strip()


def _usable(text: str) -> bool:
    """Keep paragraphs of a useful length that cannot be mistaken for private data."""
    return MIN_CHARS <= len(text) <= MAX_CHARS and not _UNSAFE.search(text)


def _paragraphs_from_lines(lines: list[str]) -> list[str]:
    """Join text lines into paragraphs at blank lines."""
    paragraphs: list[str] = []
    current: list[str] = []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs


def _read_rdb_character_vector(rdb: bytes, offset: int, length: int) -> list[str]:
    """Decode one object of an R lazy-load database as a list of strings."""
    import rdata  # optional server dependency; imported lazily

    chunk = rdb[offset : offset + length]
    serialized = zlib.decompress(chunk[4:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns that a bare stream is "assumed RDS"
        parsed = rdata.parser.parse_data(serialized)
    converted = rdata.conversion.convert(parsed)
    return [str(line) for line in converted]


def read_austen(root: Path) -> list[BackgroundParagraph]:
    """Read Jane Austen's novels from an unpacked ``r-cran-janeaustenr`` package.

    Args:
        root: Directory to search (recursively) for ``janeaustenr/data/Rdata.rdx``.

    Returns:
        Usable paragraphs in novel order (empty if the package or ``rdata`` is missing,
        or the data cannot be decoded; the reason is logged).
    """
    index_files = sorted(root.rglob("janeaustenr/data/Rdata.rdx"))
    if not index_files:
        return []
    index_path = index_files[0]
    try:
        import rdata
    except ImportError:
        logger.warning("janeaustenr data found but the 'rdata' package is not installed")
        return []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            index = rdata.read_rds(index_path)
        variables = index["variables"]
        rdb = index_path.with_suffix(".rdb").read_bytes()
        out: list[BackgroundParagraph] = []
        for name in sorted(variables):
            slug = str(name)
            if slug not in AUSTEN_TITLES:
                continue  # e.g. the tidy austen_books data frame duplicates the novels
            offset, length = (int(v) for v in variables[name])
            lines = _read_rdb_character_vector(rdb, offset, length)
            for number, paragraph in enumerate(_paragraphs_from_lines(lines)):
                text = _clean(paragraph)
                if not _usable(text):
                    continue
                out.append(
                    BackgroundParagraph(
                        key=f"austen-{slug}-{number:05d}",
                        text=text,
                        title=AUSTEN_TITLES[slug],
                        publisher="Project Gutenberg (via the janeaustenr R package)",
                        url=f"https://gutenberg.example/austen/{slug}#p{number}",
                        license="Public domain",
                        origin="r-cran-janeaustenr",
                    )
                )
        return out
    except (OSError, KeyError, ValueError, TypeError, zlib.error) as exc:
        logger.warning("could not decode janeaustenr data at %s: %s", index_path, exc)
        return []


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_number(text: str) -> int:
    """Decode dictd's base64 numbering (most significant digit first)."""
    value = 0
    for char in text:
        value = value * 64 + _B64.index(char)
    return value


def read_devil(root: Path) -> list[BackgroundParagraph]:
    """Read *The Devil's Dictionary* from an unpacked ``dict-devil`` package.

    Args:
        root: Directory to search (recursively) for ``devil.index`` and ``devil.dict.dz``.

    Returns:
        One paragraph per usable dictionary entry, in index order (empty if absent).
    """
    index_files = sorted(root.rglob("devil.index"))
    if not index_files:
        return []
    index_path = index_files[0]
    dict_path = index_path.with_name("devil.dict.dz")
    try:
        body = gzip.decompress(dict_path.read_bytes())
        entries = index_path.read_text(encoding="utf-8").splitlines()
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
        logger.warning("could not read dict-devil data at %s: %s", index_path, exc)
        return []
    out: list[BackgroundParagraph] = []
    seen: set[str] = set()
    for entry in entries:
        parts = entry.split("\t")
        if len(parts) != 3 or parts[0].startswith("00database"):
            continue
        headword = parts[0]
        try:
            start, size = _dictd_number(parts[1]), _dictd_number(parts[2])
        except ValueError:
            continue
        raw = body[start : start + size].decode("utf-8", errors="replace")
        text = _clean(raw)
        slug = re.sub(r"[^a-z0-9]+", "-", headword.lower()).strip("-")
        if not slug or slug in seen or not _usable(text):
            continue
        seen.add(slug)
        out.append(
            BackgroundParagraph(
                key=f"devil-{slug}",
                text=text,
                title="The Devil's Dictionary",
                publisher="Ambrose Bierce (Internet Wiretap edition, via Debian dict-devil)",
                url=f"https://gutenberg.example/bierce/devils-dictionary#{slug}",
                license="Public domain",
                origin="dict-devil",
            )
        )
    return out


def read_plain_text(root: Path) -> list[BackgroundParagraph]:
    """Read ``*.txt`` files placed directly in ``root`` (UTF-8, blank-line paragraphs).

    Args:
        root: The background directory.

    Returns:
        Usable paragraphs, files in name order.
    """
    out: list[BackgroundParagraph] = []
    for path in sorted(root.glob("*.txt")):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            logger.warning("skipping background file %s: %s", path, exc)
            continue
        stem = re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-") or "text"
        for number, paragraph in enumerate(_paragraphs_from_lines(lines)):
            text = _clean(paragraph)
            if not _usable(text):
                continue
            out.append(
                BackgroundParagraph(
                    key=f"text-{stem}-{number:05d}",
                    text=text,
                    title=path.stem,
                    publisher="Public-domain text supplied by the lab",
                    url=f"https://public-texts.example/{stem}#p{number}",
                    license="Public domain (as supplied)",
                    origin=f"file:{path.name}",
                )
            )
    return out


_SYN_SUBJECTS = (
    "The spring market",
    "The old stone bridge",
    "The river ferry",
    "The village choir",
    "The autumn harvest",
    "The lighthouse path",
    "The county fair",
    "The canal towpath",
    "The winter storm",
    "The public garden",
    "The night train",
    "The hill farm",
)
_SYN_SENTENCES = (
    "Visitors often remark on how quiet the mornings are before the shops open.",
    "Most people agree that the best time to walk there is just after a light rain.",
    "Local records mention repairs to the roof after a long and difficult winter.",
    "The bakers start work well before dawn, and the smell of bread drifts along the lane.",
    "Children gather by the water to race paper boats whenever the current is gentle.",
    "A painted sign by the gate lists the opening hours, though few people read it.",
    "Farmers bring apples, cheese and honey, and the prices rarely change from year to year.",
    "In the evening the light turns gold over the fields and the swallows fly low.",
    "Older residents tell stories about the great flood, each version a little different.",
    "The path is steep in places, so walkers are advised to wear sturdy boots.",
    "On clear nights the stars are bright enough to read the outline of the hills.",
    "A small museum keeps maps, tools and photographs donated by local families.",
    "The bells ring on the hour, and the sound carries across the valley.",
    "Most visitors stay for a single afternoon, but some return every summer.",
    "Volunteers repaint the benches each spring and plant flowers along the wall.",
    "The wind off the sea can be sharp, even in the middle of the warmest month.",
)


def synthetic_background(count: int, seed: int) -> list[BackgroundParagraph]:
    """Generate plain, fact-free filler paragraphs when no real text is available.

    Args:
        count: How many paragraphs to make.
        seed: Seed for the deterministic generator.

    Returns:
        ``count`` paragraphs of four to six everyday sentences each.
    """
    rng = random.Random(f"synthetic-background:{seed}")  # noqa: S311 (reproducible, not secret)
    out: list[BackgroundParagraph] = []
    for number in range(count):
        subject = rng.choice(_SYN_SUBJECTS)
        sentences = rng.sample(_SYN_SENTENCES, rng.randint(4, 6))
        text = f"{subject} is a familiar sight in the district. " + " ".join(sentences)
        out.append(
            BackgroundParagraph(
                key=f"synthetic-{number:05d}",
                text=text,
                title="Lakeside Almanac (synthetic background)",
                publisher="Open Almanac Project",
                url=f"https://almanac.example/notes/{number}",
                license="CC0-1.0",
                origin="synthetic",
            )
        )
    return out


def load_background(
    background_dir: Path | None, *, count: int, seed: int
) -> tuple[list[BackgroundParagraph], list[str]]:
    """Pick ``count`` background paragraphs, real text first, synthetic as a fallback.

    Real sources are mixed in fixed proportions (Austen about three quarters when the
    dictionary is also present) and sampled with a seeded generator, so the same
    directory contents and seed always give the same paragraphs.

    Args:
        background_dir: Directory prepared by ``scripts/fetch_background.sh``, or ``None``.
        count: Number of paragraphs wanted.
        seed: Seed for sampling.

    Returns:
        The paragraphs (in source order) and the list of origins used, e.g.
        ``["r-cran-janeaustenr", "dict-devil"]`` or ``["synthetic"]``.
    """
    pools: list[list[BackgroundParagraph]] = []
    if background_dir is not None and background_dir.is_dir():
        pools = [
            pool
            for pool in (
                read_austen(background_dir),
                read_devil(background_dir),
                read_plain_text(background_dir),
            )
            if pool
        ]
    if not pools:
        return synthetic_background(count, seed), ["synthetic"]
    rng = random.Random(f"background:{seed}")  # noqa: S311 (reproducible, not secret)
    # Austen (the first and richest pool) gets the lion's share; others split the rest.
    weights = [3.0] + [1.0] * (len(pools) - 1)
    total = sum(weights)
    wanted = [int(count * w / total) for w in weights]
    wanted[0] += count - sum(wanted)
    chosen: list[BackgroundParagraph] = []
    shortfall = 0
    for pool, want in zip(pools, wanted, strict=True):
        take = min(len(pool), want + shortfall)
        shortfall = want + shortfall - take
        picks = sorted(rng.sample(range(len(pool)), take))
        chosen.extend(pool[i] for i in picks)
    if shortfall:
        chosen.extend(synthetic_background(shortfall, seed))
    origins: list[str] = []
    for paragraph in chosen:
        if paragraph.origin not in origins:
            origins.append(paragraph.origin)
    return chosen, origins
