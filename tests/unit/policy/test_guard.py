"""The withheld-text guard: normalization, shingle sets, what is withheld, persistence and
the build integration, checked against a brute-force oracle on the normalized strings."""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from auditor_server.attribution import layout
from auditor_server.attribution.build import build_guard, ensure_guard
from auditor_server.attribution.engine import AttributionEngine
from auditor_server.cli import main as cli_main
from auditor_server.corpus.catalog import Catalog
from auditor_server.corpus.demo_sources import private_records
from auditor_server.corpus.records import Record, Source
from auditor_server.errors import ConfigError, IntegrityError
from auditor_server.policy.guard import (
    DEFAULT_BOILERPLATE_RECORDS,
    DEFAULT_SHINGLE_CHARS,
    GUARD_FORMAT,
    KEY_FILE,
    MANIFEST_FILE,
    ShingleSets,
    WithheldGuard,
    _Directory,
    normalize,
    normalize_with_map,
)

K = DEFAULT_SHINGLE_CHARS
KEY = b"\x01" * 32


def _windows(text: str, k: int = K) -> set[str]:
    norm = normalize(text)
    return {norm[i : i + k] for i in range(len(norm) - k + 1)}


# --- normalization ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variants", "expected"),
    [
        (["Dana.Whit@Example.com", "dana whit @ example . com", "DANA-WHIT@EXAMPLE.COM"], None),
        (
            [
                "(212) 555-0142",
                "212\u200b555\u20130142",
                "\uff12\uff11\uff12 \uff15\uff15\uff15 \uff10\uff11\uff14\uff12",
                "212.555.0142",
                "\u0662\u0661\u0662-\u0665\u0665\u0665-\u0660\u0661\u0664\u0662",  # Arabic-Indic
                "2\u00a01\u00a02 5\ufeff5\u00ad5 0142",
            ],
            "2125550142",
        ),
        (["Ilić", "Ilic\u0301", "ILIĆ", "Ilic"], "ilic"),
        (["Straße", "STRASSE", "strasse"], "strasse"),
        (["ﬁne", "fine", "ＦＩＮＥ"], "fine"),
    ],
)
def test_formatting_variants_normalize_alike(variants: list[str], expected: str | None) -> None:
    forms = {normalize(v) for v in variants}
    assert len(forms) == 1, forms
    if expected is not None:
        assert forms == {expected}


def test_other_scripts_are_kept_and_symbols_dropped() -> None:
    assert normalize("Привет, мир! 東京 – 2024 ✓ 🙂") == "приветмир東京2024"
    assert normalize(" \t\n.,;:!?()[]{}<>@#$%^&*_-+=/\\|~`'\"") == ""


def test_map_points_at_the_original_characters() -> None:
    text = "A ﬁ-B\u200b２!"
    norm, origin = normalize_with_map(text)
    assert norm == normalize(text) == "afib2"
    assert origin == [0, 2, 2, 4, 6]
    assert [normalize(text[i]) for i in sorted(set(origin))] == ["a", "fi", "b", "2"]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_normalization_is_per_character(a: str, b: str) -> None:
    assert normalize(a + b) == normalize(a) + normalize(b)
    norm, origin = normalize_with_map(a + b)
    assert norm == normalize(a + b)
    assert origin == sorted(origin) and len(origin) == len(norm)
    assert "".join(normalize((a + b)[i]) for i in sorted(set(origin))) == norm


# --- shingle sets and guards ----------------------------------------------------------------

PRIVATE = [
    "Customer: Hi, this is Dana Whitaker. My phone is (212) 555-0142.",
    "Agent: Thanks. Your ticket 40012 is at 14 Orchard Lane; thanks for the help.",
]
PUBLIC = [
    "Customer: Hi, this is the public help page. Thanks for the help!",
    "Orchard Lane is a street in the old town.",
]


@pytest.fixture(scope="module")
def sets() -> ShingleSets:
    corpus = [("private", t) for t in PRIVATE] + [("public", t) for t in PUBLIC]
    return ShingleSets.build(corpus, key=KEY)


def test_sets_hold_exactly_the_distinct_shingles_of_each_class(sets: ShingleSets) -> None:
    assert sets.classes == ("private", "public")
    assert sets.count("private") == len(set().union(*map(_windows, PRIVATE)))
    assert sets.count("public") == len(set().union(*map(_windows, PUBLIC)))
    assert sets.count("proprietary") == 0
    assert sets.nbytes == 8 * (sets.count("private") + sets.count("public"))


def test_shingles_never_span_two_records() -> None:
    built = ShingleSets.build([("private", "aaaaabbbbb"), ("private", "cccccddddd")], key=KEY)
    guard = built.guard_for(frozenset({"private"}))
    assert len(guard) == 2
    assert guard.touches("aaaaabbbbb") and guard.touches("cccccddddd")
    assert not guard.touches("bbbbbccccc")


def test_guard_is_withheld_minus_disclosed(sets: ShingleSets) -> None:
    guard = sets.guard_for(frozenset({"private"}))
    withheld = set().union(*map(_windows, PRIVATE)) - set().union(*map(_windows, PUBLIC))
    assert len(guard) == len(withheld)
    assert 8 * len(withheld) <= guard.nbytes <= 8.25 * len(withheld) + 16
    assert guard.shingle_chars == K
    for shingle in withheld:
        assert guard.touches(shingle)
    # Text the public records share with the private ones is not withheld.
    for shared in ("Customer: Hi, this is", "thanks for the help", "Orchard Lane"):
        assert shared.lower() in (PRIVATE[0] + PRIVATE[1]).lower()
        assert not guard.touches(shared)
    assert guard.touches("this is Dana Whitaker")
    assert guard.touches("call 212 555 0142")
    assert guard.touches("ticket #40012")
    assert guard.touches("at 14 Orchard")


def test_guard_cache_and_empty_sets(sets: ShingleSets) -> None:
    assert sets.guard_for(frozenset({"private"})) is sets.guard_for(frozenset({"private"}))
    for nothing in (frozenset(), frozenset({"proprietary"})):
        empty = sets.guard_for(nothing)
        assert len(empty) == 0 and empty.nbytes <= 16
        assert not empty.touches(PRIVATE[0]) and not empty.completes("Dana Whit", "aker")
    everything = sets.guard_for(frozenset({"private", "public"}))
    assert everything.touches(PUBLIC[1])  # withholding public too blocks public text


def test_formatting_does_not_hide_withheld_text(sets: ShingleSets) -> None:
    guard = sets.guard_for(frozenset({"private"}))
    for disguised in (
        "D A N A   W H I T A K E R",
        "dana.whitaker",
        "DANA\u200bWHITAKER",
        "ｄａｎａ ｗｈｉｔａｋｅｒ",
        "2\u20131\u20132\u20135\u20135\u20135\u20130\u20131\u20134\u20132",
        "\u0662\u0661\u0662\u0665\u0665\u0665\u0660\u0661\u0664\u0662",
    ):
        assert guard.touches(disguised), disguised


def _completes_oracle(withheld: set[str], context: str, addition: str) -> bool:
    """Brute force: any withheld window of normalize(context + addition) that includes a
    character produced by ``addition``."""
    head, joined = len(normalize(context)), normalize(context + addition)
    return any(
        joined[i : i + K] in withheld for i in range(max(0, head - K + 1), len(joined) - K + 1)
    )


def test_completes_matches_the_oracle_on_chats() -> None:
    chats = [r.text for r in private_records(6, random.Random(1))]
    built = ShingleSets.build([("private", c) for c in chats[:3]], key=KEY)
    guard = built.guard_for(frozenset({"private"}))
    withheld = set().union(*map(_windows, chats[:3]))
    rng = random.Random(0)
    checked = hits = 0
    for chat in chats:  # half withheld, half not
        for _ in range(60):
            cut = rng.randrange(len(chat))
            end = min(len(chat), cut + rng.randrange(1, 6))
            context = chat[rng.randrange(cut + 1) : cut]
            addition = chat[cut:end]
            expected = _completes_oracle(withheld, context, addition)
            assert guard.completes(context, addition) == expected, (context, addition)
            checked += 1
            hits += expected
    assert 0 < hits < checked


_SECRET = "abab1ab1a b.1 bbab1ab a1bb1aa1ab"
_NOISE = st.text(alphabet="ab1 .\u200b", max_size=6)
_SECRET_GUARD = ShingleSets.build([("private", _SECRET)], key=KEY).guard_for(frozenset({"private"}))


@settings(max_examples=400, deadline=None)
@given(_NOISE, st.integers(0, len(_SECRET)), st.integers(0, 14), st.integers(0, 8), _NOISE)
def test_completes_matches_the_oracle_on_random_text(
    before: str, start: int, ctx_len: int, add_len: int, after: str
) -> None:
    """Contexts and additions cut from the secret with noise around them, so that both
    answers occur often (a random text over this alphabet would almost never match)."""
    context = before + _SECRET[start : start + ctx_len]
    addition = _SECRET[start + ctx_len : start + ctx_len + add_len] + after
    assert _SECRET_GUARD.completes(context, addition) == _completes_oracle(
        _windows(_SECRET), context, addition
    )


def test_completes_ignores_what_the_context_already_held(sets: ShingleSets) -> None:
    guard = sets.guard_for(frozenset({"private"}))
    secret = "this is Dana Whitaker"
    assert guard.touches(secret)
    assert not guard.completes(secret, ".")  # adds no letter or digit
    assert not guard.completes(secret, " and")  # "whitakeran" is no private shingle
    assert guard.completes("this is Dana Whit", "aker")
    # Only the tail matters: a long context with the secret's start at its end still counts,
    # and separators between the parts do not hide it.
    assert guard.completes("x" * 100_000 + " Dana Whit", "aker")
    assert guard.completes("Dana Whit" + " " * 5_000, "aker")
    assert not guard.completes("Dana Whit" + "x", "aker")


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 1000, 200_000])
def test_bucket_directory_finds_exactly_the_members(n: int) -> None:
    """The guard's lookup (top-bit buckets, then a vectorized binary search in each) agrees
    with ``np.isin`` probe by probe, at bucket edges and at the extremes of the hash range."""
    rng = np.random.default_rng(n)
    extremes = np.array([0, 1, 2**63, 2**64 - 2, 2**64 - 1], dtype=np.uint64)
    hashes = np.unique(
        np.concatenate([rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64), extremes[: n and 5]])
    )
    directory = _Directory(hashes)
    bits = directory._bits
    edges = np.array([(i << (64 - bits)) if bits else 0 for i in range(4)], dtype=np.uint64)
    probes = np.concatenate(
        [
            hashes[rng.integers(0, max(len(hashes), 1), size=min(len(hashes), 300))],
            rng.integers(0, 2**64 - 1, size=300, dtype=np.uint64),
            extremes,
            edges,
            edges - np.uint64(1),
            hashes[: min(len(hashes), 50)] + np.uint64(1),
        ]
    )
    expected = np.isin(probes, hashes)
    for probe, member in zip(probes.tolist(), expected.tolist(), strict=True):
        assert directory.any_of(np.array([probe], dtype=np.uint64)) == member, hex(probe)
    assert directory.any_of(probes) == bool(expected.any())
    assert directory.any_of_few(probes.tolist()) == bool(expected.any())
    assert directory.any_of_few(probes[~expected].tolist()) is False
    assert directory.any_of(probes[~expected]) is False
    assert directory.nbytes <= 8 * len(hashes) // 32 + 16


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=90), st.sampled_from([6, 10, 17, 64]))
def test_python_and_numpy_hashing_agree(text: str, k: int) -> None:
    """Short strings are hashed in plain Python, long ones with numpy: same values."""
    hasher = ShingleSets({}, key=KEY, shingle_chars=k)._hasher
    norm = normalize(text) + text  # raw text too: any code point, astral ones included
    assert hasher.windows_small(norm) == hasher.windows(norm).tolist()


_MIXED_GUARD = ShingleSets.build(
    [("private", t) for t in PRIVATE] + [("public", t) for t in PUBLIC], key=KEY
).guard_for(frozenset({"private"}))
_MIXED_WITHHELD = set().union(*map(_windows, PRIVATE)) - set().union(*map(_windows, PUBLIC))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([*PRIVATE, *PUBLIC, " ", "x", "Dana Whitaker"]), max_size=6))
def test_touches_matches_the_oracle_on_short_and_long_texts(parts: list[str]) -> None:
    """Texts below and above the 64-character switch between the Python and numpy paths."""
    text = "".join(parts)
    assert _MIXED_GUARD.touches(text) == bool(_windows(text) & _MIXED_WITHHELD)


def test_another_key_gives_other_hashes_and_the_same_answers() -> None:
    corpus = [("private", PRIVATE[0]), ("public", PUBLIC[0])]
    a = ShingleSets.build(corpus, key=b"a" * 32)
    b = ShingleSets.build(corpus, key=b"b" * 32)
    ga, gb = a.guard_for(frozenset({"private"})), b.guard_for(frozenset({"private"}))
    assert a.key_id != b.key_id
    assert not set(ga._hashes.tolist()) & set(gb._hashes.tolist())
    for text in [*PRIVATE, *PUBLIC, "Dana Whitaker", "(212) 555-0142"]:
        assert ga.touches(text) == gb.touches(text)


@pytest.mark.parametrize("k", [6, 12, 64])
def test_other_shingle_lengths(k: int) -> None:
    text = "abcdefghijklmnopqrstuvwxyz0123456789" * 2
    built = ShingleSets.build([("private", text)], key=KEY, shingle_chars=k)
    guard = built.guard_for(frozenset({"private"}))
    assert guard.shingle_chars == k and len(guard) == len(_windows(text, k))
    assert guard.touches(text[:k]) and not guard.touches(text[: k - 1])


@pytest.mark.parametrize(
    ("kwargs", "corpus"),
    [
        ({"shingle_chars": 5}, [("private", "x")]),
        ({"shingle_chars": 65}, [("private", "x")]),
        ({"key": b""}, [("private", "x")]),
        ({}, [("../etc", "x")]),
        ({}, [("Private", "x")]),
    ],
)
def test_bad_arguments_are_config_errors(
    kwargs: dict[str, object], corpus: list[tuple[str, str]]
) -> None:
    args: dict[str, object] = {"key": KEY, **kwargs}
    with pytest.raises(ConfigError):
        ShingleSets.build(corpus, **args)  # type: ignore[arg-type]


# --- persistence ----------------------------------------------------------------------------


def test_save_load_roundtrip_is_memory_mapped_and_keeps_the_key_private(
    sets: ShingleSets, tmp_path: Path
) -> None:
    sets.save(tmp_path / "g")
    manifest = json.loads((tmp_path / "g" / MANIFEST_FILE).read_text())
    assert manifest["key_id"] == sets.key_id and KEY.hex() not in json.dumps(manifest)
    assert manifest["classes"]["private"]["count"] == sets.count("private")
    assert stat.S_IMODE((tmp_path / "g" / KEY_FILE).stat().st_mode) == 0o600
    loaded = ShingleSets.load(tmp_path / "g")
    assert isinstance(loaded._arrays["private"], np.memmap)
    original, again = (
        sets.guard_for(frozenset({"private"})),
        loaded.guard_for(frozenset({"private"})),
    )
    for text in [*PRIVATE, *PUBLIC, "Dana Whitaker", "ticket 40012"]:
        assert original.touches(text) == again.touches(text)
    assert np.array_equal(original._hashes, again._hashes)


@pytest.mark.parametrize("damage", ["array", "key", "manifest", "missing-array"])
def test_damaged_guard_is_refused(sets: ShingleSets, tmp_path: Path, damage: str) -> None:
    directory = tmp_path / "g"
    sets.save(directory)
    if damage == "array":
        path = directory / "private.npy"
        data = bytearray(path.read_bytes())
        data[-3] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "key":
        (directory / KEY_FILE).write_bytes(os.urandom(32))
    elif damage == "manifest":
        (directory / MANIFEST_FILE).write_text("{not json")
    else:
        (directory / "public.npy").unlink()
    with pytest.raises(IntegrityError):
        ShingleSets.load(directory)


def test_unfinished_guard_is_not_a_guard(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a finished guard"):
        ShingleSets.load(tmp_path)


# --- build integration ----------------------------------------------------------------------


def _record(i: int, text: str, data_class: str) -> Record:
    return Record(
        id=f"r{i}",
        text=text,
        source=Source(title="t", publisher="p", url="", license="x", data_class=data_class),  # type: ignore[arg-type]
    )


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    records = [_record(i, t, "private") for i, t in enumerate(PRIVATE)]
    records += [_record(10 + i, t, "public") for i, t in enumerate(PUBLIC)]
    Catalog.create(tmp_path / layout.CATALOG, records).close()
    return tmp_path


def test_ensure_guard_builds_once_and_reuses_an_intact_guard(index_dir: Path) -> None:
    with Catalog.open(index_dir / layout.CATALOG) as catalog:
        first = ensure_guard(index_dir, catalog)
        key = (index_dir / layout.GUARD / KEY_FILE).read_bytes()
        assert first.corpus_id == catalog.manifest_hash
        again = ensure_guard(index_dir, catalog)
        assert (index_dir / layout.GUARD / KEY_FILE).read_bytes() == key  # reused, not rebuilt
        assert again.key_id == first.key_id
        # Damage makes the next ensure rebuild it (with a fresh key).
        (index_dir / layout.GUARD / "private.npy").write_bytes(b"garbage")
        rebuilt = ensure_guard(index_dir, catalog)
        assert rebuilt.key_id != first.key_id
        assert ShingleSets.load(index_dir / layout.GUARD).key_id == rebuilt.key_id
        # Asking for another shingle length rebuilds too.
        assert ensure_guard(index_dir, catalog, shingle_chars=12).shingle_chars == 12
        assert ensure_guard(index_dir, catalog).shingle_chars == 12
        assert build_guard(index_dir, catalog).shingle_chars == K


def test_cli_guard_command_rebuilds_with_the_requested_length(index_dir: Path) -> None:
    result = CliRunner().invoke(
        cli_main, ["guard", "--index", str(index_dir), "--shingle-chars", "8"]
    )
    assert result.exit_code == 0, result.output
    assert "8-character shingles" in result.output
    assert ShingleSets.load(index_dir / layout.GUARD).shingle_chars == 8
    bad = CliRunner().invoke(cli_main, ["guard", "--index", str(index_dir / layout.GUARD)])
    assert bad.exit_code == 3 and "has no catalog.sqlite" in bad.output


def test_engine_loads_the_guard_lazily(index_dir: Path, tmp_path: Path) -> None:
    prop = AttributionEngine.__dict__["shingle_sets"].func
    assert prop(SimpleNamespace(index_dir=index_dir)) is None
    with Catalog.open(index_dir / layout.CATALOG) as catalog:
        ensure_guard(index_dir, catalog)
    loaded = prop(SimpleNamespace(index_dir=index_dir))
    assert isinstance(loaded, ShingleSets)
    assert isinstance(loaded.guard_for(frozenset({"private"})), WithheldGuard)
    assert loaded.guard_for(frozenset({"private"})).touches("Dana Whitaker")


# --- boilerplate: template text of a withheld class -------------------------------------------

N = DEFAULT_BOILERPLATE_RECORDS
_NAMES = [
    f"{a} {b}"
    for a in ("Alma", "Bertil", "Carys", "Desmond")
    for b in ("Abbott", "Coutts", "Oakes", "Penrose", "Upjohn")
]


def _chat(i: int, *, name: str | None = None, phone: str | None = None) -> str:
    """A support chat: template lines around one customer's name, email and phone."""
    name = name or _NAMES[i % len(_NAMES)]
    email = f"{name.lower().replace(' ', '.')}{i}@example.com"
    phone = phone or f"(303) 555-{1000 + i:04d}"
    return (
        f"Support chat #{40000 + i}\nCustomer: Hi, this is {name}.\n"
        "Agent: Sorry about that. Can you confirm the email on the account?\n"
        f"Customer: Sure, it's {email}.\nCustomer: {phone}.\n"
        "Customer: Great, thanks for the help."
    )


_TEMPLATE = (
    "Sorry about that.",
    "Can you confirm the email on the account?",
    "Great, thanks for the help.",
    "Customer: Hi, this is",
)


def _guard(texts: list[str], *, boilerplate_records: int = N) -> WithheldGuard:
    built = ShingleSets.build(
        [("private", t) for t in texts], key=KEY, boilerplate_records=boilerplate_records
    )
    return built.guard_for(frozenset({"private"}))


def test_template_repeated_across_many_withheld_records_is_not_withheld() -> None:
    chats = [_chat(i) for i in range(N)]
    guard, before = _guard(chats), _guard(chats, boilerplate_records=0)
    for template in _TEMPLATE:
        assert before.touches(template), template  # the old guard blocked it
        assert not guard.touches(template), template
    for i in range(N):  # every record's own identifiers still are
        name = _NAMES[i % len(_NAMES)]
        assert guard.touches(f"ask {name.lower().replace(' ', '.')}{i}@example.com today")
        assert guard.touches(f"call 303 555 {1000 + i}") and guard.touches(f"(303) 555-{1000 + i}")
        assert guard.completes("Support chat #", f"{40000 + i}")
    # One record fewer than the threshold: the template is withheld as before.
    assert _guard(chats[: N - 1]).touches("Great, thanks for the help.")


def test_repeated_identifiers_with_digits_stay_withheld_and_digit_free_ones_do_not() -> None:
    """A frequent customer: the same name and phone in 2N chats. The phone (digits) stays
    withheld; the name alone (no digit, in >= N records) does not: the documented cost."""
    chats = [_chat(i, name="Mireille Nordqvist", phone="(212) 555-0142") for i in range(2 * N)]
    guard = _guard(chats)
    for phone in ("(212) 555-0142", "2125550142", "tel. 212.555.0142", "customer: (212) 555-01"):
        assert guard.touches(phone), phone
    assert guard.completes("Customer: (212) 555-01", "42")
    assert guard.touches("mireille.nordqvist3@example.com")  # the email's digits
    assert not guard.touches("I met Mireille Nordqvist")  # the trade-off, pinned
    assert _guard(chats, boilerplate_records=0).touches("I met Mireille Nordqvist")


def test_a_name_in_fewer_than_n_records_stays_withheld() -> None:
    rare = [_chat(i, name="Mireille Nordqvist") for i in range(N - 1)]
    others = [_chat(100 + i, name=f"Ulrich Vickery{'x' * i}") for i in range(N)]
    guard = _guard(rare + others)
    assert guard.touches("I met Mireille Nordqvist")
    assert not guard.touches("Great, thanks for the help.")
    assert not _guard([*rare, _chat(99, name="Mireille Nordqvist"), *others]).touches(
        "I met Mireille Nordqvist"
    )


def test_identical_records_count_once() -> None:
    guard = _guard([_chat(1)] * (3 * N))
    assert guard.touches("Great, thanks for the help.")  # one chat, stored 3N times
    assert guard.touches("this is Alma Coutts")


def test_non_ascii_numerals_count_as_digits() -> None:
    """A number character that normalization keeps as is (Tamil ten, category No) counts as a
    digit, so a repeated identifier written with it stays withheld."""
    assert normalize("\u0bf0") == "\u0bf0"
    chats = [_chat(i) + "\nRef: abc\u0bf0defghijk" for i in range(N)]
    assert _guard(chats).touches("ref abc\u0bf0defg")


def test_proprietary_repetition_is_not_boilerplate_by_default() -> None:
    """A licensed passage reprinted in many records stays withheld from a role that may not
    see proprietary text; the rule applies to other classes only when asked."""
    passage = "On the night the harbour froze, Ilse Varga climbed the lighthouse stairs"
    corpus = [("proprietary", f"Reprint {i}: {passage}") for i in range(2 * N)]
    corpus += [("private", _chat(i)) for i in range(N)]
    both = frozenset({"private", "proprietary"})
    built = ShingleSets.build(corpus, key=KEY)
    assert built.boilerplate_count("proprietary") == 0 and built.boilerplate_count("private")
    assert built.guard_for(both).touches(passage)
    wider = ShingleSets.build(corpus, key=KEY, boilerplate_classes=("private", "proprietary"))
    assert not wider.guard_for(both).touches(passage)


def _boilerplate_oracle(texts: list[str], k: int, n: int) -> set[str]:
    counts: dict[str, int] = {}
    for text in {normalize(t) for t in texts}:
        for w in {text[i : i + k] for i in range(len(text) - k + 1)}:
            if not any(ch.isdigit() for ch in w):
                counts[w] = counts.get(w, 0) + 1
    return {w for w, c in counts.items() if c >= n}


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.text(alphabet="ab1 .", min_size=0, max_size=16), min_size=1, max_size=12),
    st.integers(1, 4),
    st.sampled_from([6, 7]),
    st.integers(4, 40),
)
def test_boilerplate_matches_the_oracle(texts: list[str], n: int, k: int, chunk: int) -> None:
    """Against a brute-force count, with batches small enough that records are spread over
    many of them (the cross-batch merge) and the same texts drawn often (dedup, counts)."""
    import auditor_server.policy.guard as guard_module

    saved = guard_module._CHUNK_CHARS
    guard_module._CHUNK_CHARS = chunk  # type: ignore[misc]
    try:
        built = ShingleSets.build(
            [("private", t) for t in texts], key=KEY, shingle_chars=k, boilerplate_records=n
        )
    finally:
        guard_module._CHUNK_CHARS = saved  # type: ignore[misc]
    expected = _boilerplate_oracle(texts, k, n)
    assert built.boilerplate_count("private") == len(expected)
    hasher = built._hasher
    assert set(built._boilerplate["private"].tolist()) == {
        hasher.windows_small(w)[0] for w in expected
    }
    guard = built.guard_for(frozenset({"private"}))
    withheld = set().union(*(_windows(t, k) for t in texts)) - expected
    assert len(guard) == len(withheld)


def test_zero_disables_and_negative_is_refused() -> None:
    chats = [_chat(i) for i in range(N)]
    off = ShingleSets.build([("private", t) for t in chats], key=KEY, boilerplate_records=0)
    assert off.boilerplate_records == 0 and off.boilerplate_count("private") == 0
    assert len(off.guard_for(frozenset({"private"}))) == off.count("private")
    with pytest.raises(ConfigError, match="boilerplate_records"):
        ShingleSets.build([("private", "x")], key=KEY, boilerplate_records=-1)


def test_boilerplate_is_saved_checked_and_kept_on_save(tmp_path: Path) -> None:
    built = ShingleSets.build(
        [("private", _chat(i)) for i in range(N)] + [("public", "x" * 20)], key=KEY
    )
    directory = tmp_path / "g"
    built.save(directory)
    built.save(directory)  # a second save must not delete its own boilerplate file
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert manifest["format"] == GUARD_FORMAT and manifest["boilerplate_records"] == N
    entry = manifest["classes"]["private"]["boilerplate"]
    assert (
        entry["file"] == "private.boilerplate.npy"
        and entry["count"] == built.boilerplate_count("private") > 0
    )
    assert "boilerplate" not in manifest["classes"]["public"]
    loaded = ShingleSets.load(directory)
    assert loaded.boilerplate_records == N
    assert isinstance(loaded._boilerplate["private"], np.memmap)
    assert np.array_equal(
        loaded.guard_for(frozenset({"private"}))._hashes,
        built.guard_for(frozenset({"private"}))._hashes,
    )
    assert built.nbytes == 8 * (built.count("private") + built.count("public") + entry["count"])
    path = directory / "private.boilerplate.npy"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="checksum"):
        ShingleSets.load(directory)


def test_an_old_format_guard_is_refused_and_rebuilt(index_dir: Path) -> None:
    with Catalog.open(index_dir / layout.CATALOG) as catalog:
        first = ensure_guard(index_dir, catalog)
        manifest_path = index_dir / layout.GUARD / MANIFEST_FILE
        manifest = json.loads(manifest_path.read_text())
        manifest["format"] = "auditor-sandbox-guard/v1"  # as written before boilerplate
        del manifest["boilerplate_records"]
        manifest_path.write_text(json.dumps(manifest))
        with pytest.raises(ConfigError, match="auditor-server guard"):
            ShingleSets.load(index_dir / layout.GUARD)
        rebuilt = ensure_guard(index_dir, catalog)
        assert rebuilt.key_id != first.key_id
        assert json.loads(manifest_path.read_text())["format"] == GUARD_FORMAT
        # Asking for another threshold rebuilds; asking for none reuses what is there.
        assert ensure_guard(index_dir, catalog, boilerplate_records=3).boilerplate_records == 3
        assert ensure_guard(index_dir, catalog).boilerplate_records == 3
        assert build_guard(index_dir, catalog).boilerplate_records == N


def test_cli_guard_command_takes_the_threshold(index_dir: Path) -> None:
    result = CliRunner().invoke(
        cli_main, ["guard", "--index", str(index_dir), "--boilerplate-records", "0"]
    )
    assert result.exit_code == 0, result.output
    assert "in >= 0 records): none" in result.output
    assert ShingleSets.load(index_dir / layout.GUARD).boilerplate_records == 0
    bad = CliRunner().invoke(
        cli_main, ["guard", "--index", str(index_dir), "--boilerplate-records", "-1"]
    )
    assert bad.exit_code == 2


# --- false positives and protection on the demo corpus ----------------------------------------

EVERYDAY = (
    "Great, thanks for the help.",
    "Thanks for your help!",
    "Sorry about that.",
    "Can you confirm your email address?",
    "Can you confirm the email on the account?",
    "Is there a phone number we can call you back on?",
    "I need to change the email on my account.",
    "I'll call you back in five minutes.",
)
"""Everyday sentences sharing text with the chats' template (a handful of the 131 in
``bench/guard_false_positives.py``, the ones the tiny corpus can tell apart: its 10 chats
all share the template, while each issue line occurs in one or two chats)."""


def test_demo_everyday_text_passes_and_every_identifier_stays_protected(tmp_path: Path) -> None:
    """Both sides of the trade-off on the tiny demo corpus, so a regression of either fails:
    no false positive on everyday text, and every private email, phone and ticket stays
    protected in a neutral sentence and after the prompt its chat puts before it."""
    import re

    from auditor_server.corpus.demo import generate_demo_corpus
    from auditor_server.corpus.records import read_corpus

    summary = generate_demo_corpus(tmp_path / "c.jsonl", size="tiny", seed=3)
    records = [(r.source.data_class, r.text) for r in read_corpus(summary.corpus_path)]
    private = [t for c, t in records if c == "private"]
    assert len(private) >= N  # the template occurs in every chat, so in >= N of them
    built = ShingleSets.build(records, key=os.urandom(32))
    guard = built.guard_for(frozenset({"private"}))
    old = ShingleSets.build(records, key=KEY, boilerplate_records=0).guard_for(
        frozenset({"private"})
    )

    assert [s for s in EVERYDAY if guard.touches(s)] == []
    assert sum(old.touches(s) for s in EVERYDAY) >= len(EVERYDAY) - 1  # what it fixes

    def steered(prompt: str, piece: str) -> bool:
        return any(
            guard.completes(prompt + piece[:i], piece[i : i + 3]) for i in range(0, len(piece), 3)
        )

    for chat in private:
        email = re.search(r"Sure, it's (\S+@\S+?)\.$", chat, re.M)
        phone = re.search(r"^Customer: (\(\d{3}\) \d{3}-\d{4})\.$", chat, re.M)
        ticket = re.search(r"^Support chat #(\d+)$", chat, re.M)
        assert email and phone and ticket, chat
        for piece in (email[1], phone[1], re.sub(r"\D", "", phone[1])):
            assert guard.touches(f"For the record, {piece} came up in the notes."), piece
            assert steered("Looking through the notes I found ", piece), piece
        assert steered("Customer: Sure, it's ", email[1])
        assert steered("we need to call you back?\nCustomer: ", phone[1])
        assert steered("Support chat #", ticket[1])  # 5 digits: protected in its context

    assert all(guard.touches(t) for t in private)
    assert not any(guard.touches(t) for c, t in records if c != "private")
    prose = (
        "Ada Lovelace was born in London and worked on the Analytical Engine. The capital "
        "of France is Paris. Call the front desk if you need help with your account. "
        "Grace Hopper was born in 1906. My package never arrived at my address."
    )
    assert not guard.touches(prose)
