"""Memory and per-request cost of the withheld-text guard on a large private corpus.

Why: the guard (``auditor_server.policy.guard``) must hold a hash of every distinct withheld
shingle in the server process, and it is consulted on every Generate step and every
Score/Attribute text. Its docstring bounds the memory at 8 bytes per distinct shingle (≤ 8
bytes per private character); this measures the real figure on support-chat-like text of
``--chars`` characters (default 10^7; run 10^8 once where memory allows), and the time a
request pays for it.

**Corpus.** Synthetic support chats in the demo's layout (``corpus/demo_sources.py``) but
with far more variety, so that de-duplication is not flattered: customers' names, emails,
phone numbers, street addresses, ticket and order numbers drawn from large random pools, and
one to three free-text sentences per chat from a 4,000-word vocabulary (about half of the
characters). A public corpus of a tenth the size, from the same vocabulary and the same
agent boilerplate, is the disclosed class the guard subtracts.

**Baselines, same process.** Memory: a Python ``set`` of the same 64-bit hashes (what a
straightforward implementation would hold), measured as the growth of anonymous RSS. Build:
the same build with ``boilerplate_records=0`` (no count of template shingles, the guard
before that rule), run after the peak RSS was read.
Time: ``touches()`` on 2,000 characters against ``scrub()`` of the same text (the other check
every returned text goes through) and against hashing the same windows then looking them up
in the Python set; ``completes()`` per decoding step against one KV-cached decoding step of
a GPT-2 with the demo preset's shape (2 layers, 256 wide, 4,096 tokens; random weights, so
no token is ever refused and both loops decode the same tokens), and the whole
``generate_constrained`` against ``generate`` for 64 tokens, interleaved.

    PYTHONPATH=. .venv/bin/python bench/guard_memory.py                 # 10^7 chars, ~1 min
    PYTHONPATH=. .venv/bin/python bench/guard_memory.py --chars 100000000   # ~6 GiB peak
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import string
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from auditor_server.model.generation import generate, generate_constrained
from auditor_server.model.loading import LoadedModel, load_model
from auditor_server.policy.guard import ShingleSets, normalize
from auditor_server.policy.scrub import scrub
from bench._common import (
    Timing,
    add_omp_argument,
    apply_omp_wait_policy,
    fmt_bytes,
    interleaved,
    machine,
    print_table,
    rss_bytes,
)

# --- synthetic corpus ----------------------------------------------------------------------

_ONSETS = [
    "b",
    "br",
    "c",
    "ch",
    "d",
    "f",
    "g",
    "h",
    "j",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "sh",
    "st",
    "t",
    "th",
    "v",
    "w",
    "z",
    "",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "y"]
_CODAS = ["", "n", "r", "s", "l", "th", "m", "ck", "nd", "x"]
_TLDS = ["com", "net", "org", "io", "co.uk", "de", "fr", "example"]
_ISSUES = [
    (
        "My invoice for {month} shows a charge of ${amount}.",
        "I have refunded ${amount} to the card ending {card4}.",
    ),
    (
        "I cannot log in since the password reset on {month} {day}.",
        "I have sent a new reset link to {email}.",
    ),
    (
        "My order {order} never arrived at {house} {street}.",
        "A replacement for order {order} ships to {house} {street} tomorrow.",
    ),
    (
        "Please update my address to {house} {street}, {city}.",
        "Your address is now {house} {street}, {city}.",
    ),
    (
        "The app crashes when I open the {feature} screen.",
        "Engineering ticket {ticket2} tracks the {feature} crash; I added you to it.",
    ),
    ("I was charged twice for plan {plan}.", "The duplicate charge for plan {plan} is reversed."),
    ("Can you export my data before I cancel?", "The export link went to {email}."),
]
_AGENT_LINES = [
    "Sorry about that, {first}. Can you confirm the email on the account?",
    "Thanks for waiting, {first}. Which email is the account under?",
    "Happy to help, {first}. What email did you sign up with?",
]
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


class ChatMaker:
    """Support chats with personal data from large random pools (seeded, deterministic)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.first = self._names(6_000)
        self.last = self._names(40_000)
        self.agents = self._names(300)
        self.domains = [f"{self._word(2)}.{self.rng.choice(_TLDS)}" for _ in range(3_000)]
        kinds = ["Street", "Road", "Lane", "Avenue", "Way"]
        self.streets = [f"{self._word(2).title()} {self.rng.choice(kinds)}" for _ in range(20_000)]
        self.cities = [self._word(3).title() for _ in range(5_000)]
        self.features = [self._word(2) for _ in range(400)]
        self.vocab = [self._word(self.rng.choice([1, 1, 2, 2, 3])) for _ in range(4_000)]

    def _word(self, syllables: int) -> str:
        r = self.rng
        return (
            "".join(
                r.choice(_ONSETS) + r.choice(_VOWELS) + r.choice(_CODAS) for _ in range(syllables)
            )
            or "a"
        )

    def _names(self, n: int) -> list[str]:
        return [self._word(self.rng.choice([2, 2, 3])).title() for _ in range(n)]

    def sentence(self) -> str:
        words = self.rng.choices(self.vocab, k=self.rng.randint(6, 18))
        return " ".join(words).capitalize() + self.rng.choice([".", ".", "?", "!"])

    def chat(self, number: int) -> str:
        r = self.rng
        first, last = r.choice(self.first), r.choice(self.last)
        email = (
            f"{first.lower()}{r.choice(['.', '_', ''])}{last.lower()}{r.randint(1, 999)}"
            f"@{r.choice(self.domains)}"
        )
        fields = {
            "email": email,
            "house": r.randint(1, 9999),
            "street": r.choice(self.streets),
            "city": r.choice(self.cities),
            "order": f"{r.choice(string.ascii_uppercase)}{r.randint(10**6, 10**7 - 1)}",
            "month": r.choice(_MONTHS),
            "day": r.randint(1, 28),
            "amount": f"{r.randint(5, 900)}.{r.randint(0, 99):02d}",
            "card4": f"{r.randint(0, 9999):04d}",
            "feature": r.choice(self.features),
            "plan": r.choice(self.features).title(),
            "ticket2": f"ENG-{r.randint(1000, 99999)}",
            "first": first,
        }
        phone = f"({r.randint(201, 989)}) {r.randint(200, 999)}-{r.randint(0, 9999):04d}"
        problem, answer = r.choice(_ISSUES)
        lines = [
            f"Support chat #{40000 + number * 7 + r.randint(0, 6)}",
            f"Customer: Hi, this is {first} {last}. {problem.format(**fields)} {self.sentence()}",
            f"Agent ({r.choice(self.agents)}): {r.choice(_AGENT_LINES).format(**fields)}",
            f"Customer: Sure, it's {email}. {self.sentence()}",
            "Agent: Thanks. And a phone number in case we need to call you back?",
            f"Customer: {phone}.",
            f"Agent: {answer.format(**fields)}",
            f"Customer: {' '.join(self.sentence() for _ in range(r.randint(0, 2)))}Thanks!",
        ]
        return "\n".join(lines)

    def public(self) -> str:
        """A help-centre style paragraph: the vocabulary plus the agents' boilerplate."""
        r = self.rng
        parts = [self.sentence() for _ in range(r.randint(2, 6))]
        parts.insert(
            r.randrange(len(parts) + 1),
            "Thanks. And a phone number in case we need to call you back?",
        )
        return " ".join(parts)


def corpus(maker: ChatMaker, chars: int, kind: str) -> Iterator[str]:
    total = number = 0
    while total < chars:
        text = maker.chat(number) if kind == "private" else maker.public()
        total += len(text)
        number += 1
        yield text


# --- measurements ----------------------------------------------------------------------------


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cold_caches(fns: dict[str, Any], *, repeats: int) -> dict[str, Timing]:
    """Time each callable right after sweeping a 64 MiB buffer (not timed), in rotation.

    Why: in the server a guard lookup follows a model forward pass, which evicts the guard's
    hashes and numpy's own state from the caches and TLB. Warm repeated calls flatter any
    lookup whose cost is memory latency (a binary search touches ~25 pages per probe).
    """
    sweep = np.zeros(64 * 2**20 // 8)
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sweep += 1.0
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - t0)
    return {n: Timing(v) for n, v in samples.items()}


def demo_shaped_model(workdir: Path, texts: Sequence[str]) -> LoadedModel:
    """A random GPT-2 with the demo preset's shape and a tokenizer trained on chat text."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from auditor_server.model.presets import get_preset
    from auditor_server.model.tokenizer import train_tokenizer

    preset = get_preset("demo")
    tok = train_tokenizer(texts, vocab_size=preset.vocab_size, out_dir=workdir)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok),
            n_positions=preset.n_positions,
            n_embd=preset.n_embd,
            n_layer=preset.n_layer,
            n_head=preset.n_head,
            bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    )
    model.save_pretrained(str(workdir), safe_serialization=True)
    return load_model(workdir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chars", type=int, default=10**7, help="private characters")
    parser.add_argument("--shingle-chars", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per contender")
    parser.add_argument("--no-set", action="store_true", help="skip the Python-set baseline")
    parser.add_argument("--no-model", action="store_true", help="skip the decoding baseline")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    add_omp_argument(parser)
    args = parser.parse_args(argv)
    apply_omp_wait_policy(args.omp_wait_policy)
    print(machine())
    figures: dict[str, Any] = {"machine": machine(), "chars": args.chars}

    maker = ChatMaker(args.seed)
    t0 = time.perf_counter()
    private = list(corpus(maker, args.chars, "private"))
    public = list(corpus(maker, args.chars // 10, "public"))
    gen_s = time.perf_counter() - t0
    n_private = sum(map(len, private))
    n_norm = sum(len(normalize(t)) for t in private[:2000]) / sum(map(len, private[:2000]))
    gc.collect()
    rss_corpus, peak_corpus = rss_bytes(), peak_rss()
    print(
        f"corpus: {len(private):,} chats, {n_private:,} chars ({n_norm:.0%} letters/digits), "
        f"public {sum(map(len, public)):,} chars; made in {gen_s:.1f} s; "
        f"RSS {fmt_bytes(rss_corpus)}"
    )

    key = os.urandom(32)
    t0 = time.perf_counter()
    sets = ShingleSets.build(
        [("private", t) for t in private] + [("public", t) for t in public],
        key=key,
        shingle_chars=args.shingle_chars,
    )
    build_s = time.perf_counter() - t0
    peak_build = peak_rss()
    # The same build without counting boilerplate (after the peak was read: ru_maxrss only
    # grows), to show what the count costs.
    t0 = time.perf_counter()
    plain = ShingleSets.build(
        [("private", t) for t in private] + [("public", t) for t in public],
        key=key,
        shingle_chars=args.shingle_chars,
        boilerplate_records=0,
    )
    plain_build_s = time.perf_counter() - t0
    plain_withheld = len(plain.guard_for(frozenset({"private"})))
    del plain
    t0 = time.perf_counter()
    guard = sets.guard_for(frozenset({"private"}))
    guard_for_s = time.perf_counter() - t0
    gc.collect()
    rss_guard = rss_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        sets.save(Path(tmp) / "guard")
        save_s = time.perf_counter() - t0
        disk = sum(p.stat().st_size for p in (Path(tmp) / "guard").iterdir())
        t0 = time.perf_counter()
        ShingleSets.load(Path(tmp) / "guard").guard_for(frozenset({"private"}))
        load_s = time.perf_counter() - t0

    rows = [
        [
            "distinct private shingles",
            f"{sets.count('private'):,}",
            f"{sets.count('private') / n_private:.3f} per char",
        ],
        ["distinct public shingles", f"{sets.count('public'):,}", ""],
        [
            f"boilerplate (no digit, in >= {sets.boilerplate_records} chats)",
            f"{sets.boilerplate_count('private'):,}",
            "not withheld",
        ],
        [
            "withheld shingles (private − public − boilerplate)",
            f"{len(guard):,}",
            f"{plain_withheld:,} without the boilerplate rule",
        ],
        [
            "guard memory (nbytes)",
            fmt_bytes(guard.nbytes),
            f"{guard.nbytes / n_private:.2f} bytes per private char",
        ],
        [
            "build time (normalize + hash + sort + boilerplate count)",
            f"{build_s:.1f} s",
            f"{n_private / build_s / 1e6:.1f} M private chars/s; "
            f"{plain_build_s:.1f} s without the count",
        ],
        ["guard_for (union − disclosed)", f"{guard_for_s:.2f} s", ""],
        [
            "save / load+verify+guard_for",
            f"{save_s:.2f} s / {load_s:.2f} s",
            f"{fmt_bytes(disk)} on disk",
        ],
        [
            "RSS: corpus held / peak during build / after",
            fmt_bytes(rss_corpus),
            f"{fmt_bytes(peak_build)} peak (was {fmt_bytes(peak_corpus)}) / {fmt_bytes(rss_guard)}",
        ],
    ]
    figures.update(
        private_shingles=sets.count("private"),
        public_shingles=sets.count("public"),
        withheld=len(guard),
        boilerplate=sets.boilerplate_count("private"),
        withheld_without_boilerplate_rule=plain_withheld,
        build_without_boilerplate_s=plain_build_s,
        guard_nbytes=guard.nbytes,
        build_s=build_s,
        guard_for_s=guard_for_s,
        save_s=save_s,
        load_s=load_s,
        disk_bytes=disk,
        rss_corpus=rss_corpus,
        peak_build=peak_build,
        rss_guard=rss_guard,
    )

    hashes = guard._hashes  # the guard's own array: the set baseline holds the same values
    py_set: set[int] | None = None
    if not args.no_set:
        gc.collect()
        before = rss_bytes()
        py_set = set(hashes.tolist())
        gc.collect()
        set_bytes = rss_bytes() - before
        rows.append(
            [
                "baseline: Python set of the same hashes",
                fmt_bytes(set_bytes),
                f"{set_bytes / max(guard.nbytes, 1):.1f}× the guard",
            ]
        )
        figures["set_bytes"] = set_bytes
    print()
    print_table(["guard of a private corpus", "value", "note"], rows)

    # --- per request ------------------------------------------------------------------------
    rng = random.Random(args.seed + 1)
    unseen = ChatMaker(args.seed + 99)  # same layout, other people: the common, clean case
    text = ""
    while len(text) < 2000:
        text += unseen.chat(rng.randrange(10**6)) + "\n"
    text = text[:2000]
    leaked = ""
    while len(leaked) < 2000:
        leaked += rng.choice(private) + "\n"
    leaked = leaked[:2000]
    assert guard.touches(leaked)
    hasher = guard._hasher
    contenders: dict[str, Any] = {
        "touches(2,000 chars, clean)": lambda: guard.touches(text),
        "touches(2,000 chars, private)": lambda: guard.touches(leaked),
        "scrub(same 2,000 chars)": lambda: scrub(text),
        "baseline: same windows, plain np.searchsorted": lambda: bool(
            (
                hashes[
                    np.minimum(
                        np.searchsorted(hashes, w := hasher.windows(normalize(text))),
                        len(hashes) - 1,
                    )
                ]
                == w
            ).any()
        ),
    }
    if py_set is not None:
        s = py_set
        contenders["baseline: same windows in a Python set"] = lambda: any(
            h in s for h in hasher.windows(normalize(text)).tolist()
        )
    context = text
    steps = [text[i : i + rng.randint(1, 6)] for i in range(0, 1800, 7)]
    it = iter(range(10**9))

    def one_step() -> bool:
        return guard.completes(context, steps[next(it) % len(steps)])

    contenders["completes(context, token text)"] = one_step
    warm = interleaved(contenders, repeats=args.repeats, warmup=5)
    cold = cold_caches(contenders, repeats=max(20, args.repeats // 4))
    per = [
        [
            name,
            f"{warm[name].median * 1e6:.1f}",
            f"{warm[name].quantile(0.9) * 1e6:.1f}",
            f"{cold[name].median * 1e6:.1f}",
        ]
        for name in contenders
    ]
    figures["per_request_us"] = {n: t.median * 1e6 for n, t in warm.items()}
    figures["per_request_cold_us"] = {n: t.median * 1e6 for n, t in cold.items()}

    if not args.no_model:
        import torch

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        with tempfile.TemporaryDirectory() as tmp:
            lm = demo_shaped_model(Path(tmp), private[:3000])
            # The demo model's context is 128 tokens: a short prompt leaves room for 64 new.
            prompt = leaked[:100]
            n_new = 64
            steps_run = [0]
            lm.model.register_forward_pre_hook(
                lambda *_: steps_run.__setitem__(0, steps_run[0] + 1)
            )

            def plain() -> str:
                return generate(lm, prompt, max_new_tokens=n_new)

            def guarded() -> str:
                return generate_constrained(
                    lm, prompt, max_new_tokens=n_new, banned=guard.completes
                ).text

            assert plain() == guarded()  # random weights: nothing refused, same tokens
            steps_run[0] = 0
            plain()
            n_steps = steps_run[0]
            dec = interleaved(
                {"generate": plain, "generate_constrained": guarded},
                repeats=max(10, args.repeats // 10),
                warmup=2,
            )
            plain_step = dec["generate"].median / n_steps
            guarded_step = dec["generate_constrained"].median / n_steps
            per.append(
                [
                    "baseline: one decoding step (demo-shaped GPT-2, KV cache)",
                    f"{plain_step * 1e6:.1f}",
                    "",
                    "",
                ]
            )
            per.append(
                [
                    f"generate_constrained step ({n_steps} steps)",
                    f"{guarded_step * 1e6:.1f}",
                    f"{(guarded_step - plain_step) * 1e6:+.0f} µs "
                    f"({(guarded_step - plain_step) / plain_step:+.0%}) vs plain",
                    "",
                ]
            )
            figures.update(plain_step_us=plain_step * 1e6, guarded_step_us=guarded_step * 1e6)
    print()
    print_table(["per request", "p50 µs", "p90 µs", "cold caches p50 µs"], per)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
