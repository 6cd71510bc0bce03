"""``generate_constrained``: refused tokens are replaced, nothing changes when nothing is
refused, and the withheld-text guard stops a chained extraction of memorized private text."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from auditor_server.model.generation import (
    MAX_BANNED_CANDIDATES,
    _IncrementalText,
    _sampled_candidates,
    generate,
    generate_constrained,
)
from auditor_server.model.loading import LoadedModel, load_model
from auditor_server.policy.guard import ShingleSets, WithheldGuard, normalize
from tests.fixtures.tiny_models import make_tiny_model_dir

PROMPT = "The capital of France is"


def _never(context: str, addition: str) -> bool:
    return False


# --- the decoding loop ------------------------------------------------------------------


def test_without_refusals_the_text_is_the_unconstrained_one(
    arch: str, tiny_lms: dict[str, LoadedModel]
) -> None:
    lm = tiny_lms[arch]
    for kwargs in (
        {},
        {"temperature": 1.3, "seed": 11},
        {"temperature": 0.8, "top_p": 0.7, "seed": 5},
    ):
        plain = generate(lm, PROMPT, max_new_tokens=12, **kwargs)  # type: ignore[arg-type]
        for banned in (None, _never):
            result = generate_constrained(
                lm,
                PROMPT,
                max_new_tokens=12,
                banned=banned,
                **kwargs,  # type: ignore[arg-type]
            )
            assert result.text == plain
            assert result.banned_tokens == 0


def _reference_greedy_without(lm: LoadedModel, prompt: str, letter: str, n: int) -> str:
    """Greedy decoding without KV cache that skips, in logit order, every token whose text
    contains ``letter`` (the same rule as the callback below, computed independently)."""
    tok = lm.tokenizer
    ids = list(tok(prompt, add_special_tokens=False)["input_ids"])
    if lm.model.config.model_type == "llama":
        ids = [tok.bos_token_id, *ids]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            logits = lm.model(torch.tensor([ids + new])).logits[0, -1]
            chosen = None
            for t in torch.argsort(logits, descending=True).tolist()[:MAX_BANNED_CANDIDATES]:
                if t == tok.eos_token_id:
                    chosen = t
                    break
                before = tok.decode(new, skip_special_tokens=True)
                after = tok.decode([*new, t], skip_special_tokens=True)
                if letter not in after[len(before) :]:
                    chosen = t
                    break
            if chosen is None or chosen == tok.eos_token_id:
                break
            new.append(chosen)
    return str(tok.decode(new, skip_special_tokens=True))


def test_greedy_takes_the_next_best_token_that_is_not_refused(
    arch: str, tiny_lms: dict[str, LoadedModel]
) -> None:
    lm = tiny_lms[arch]
    plain = generate(lm, PROMPT, max_new_tokens=16)
    letter = next(ch for ch in plain if ch.isalpha())  # a letter greedy decoding does emit
    seen: list[tuple[str, str]] = []

    def no_letter(context: str, addition: str) -> bool:
        seen.append((context, addition))
        return letter in addition

    result = generate_constrained(lm, PROMPT, max_new_tokens=16, banned=no_letter)
    assert letter not in result.text
    assert result.banned_tokens > 0
    assert result.text == _reference_greedy_without(lm, PROMPT, letter, 16)
    # Every check saw the prompt, then exactly the text accepted so far.
    assert all(context.startswith(PROMPT) for context, _ in seen)
    assert seen[-1][0] in {PROMPT + result.text[:i] for i in range(len(result.text) + 1)}


def test_sampling_redraws_without_the_refused_token_and_stays_reproducible(
    tiny_lms: dict[str, LoadedModel],
) -> None:
    lm = tiny_lms["gpt2"]
    kwargs = {"max_new_tokens": 24, "temperature": 1.5, "seed": 3}
    plain = generate(lm, PROMPT, **kwargs)  # type: ignore[arg-type]
    letter = next(ch for ch in plain if ch.isalpha())

    def no_letter(context: str, addition: str) -> bool:
        return letter in addition

    first = generate_constrained(lm, PROMPT, banned=no_letter, **kwargs)  # type: ignore[arg-type]
    again = generate_constrained(lm, PROMPT, banned=no_letter, **kwargs)  # type: ignore[arg-type]
    assert letter not in first.text
    assert first.banned_tokens > 0
    assert first == again


def test_refusing_everything_stops_generation_and_eos_is_never_refused(
    arch: str, tiny_lms: dict[str, LoadedModel]
) -> None:
    lm = tiny_lms[arch]
    calls: list[str] = []

    def everything(context: str, addition: str) -> bool:
        calls.append(addition)
        return True

    result = generate_constrained(lm, PROMPT, max_new_tokens=8, banned=everything)
    assert result.text == ""
    # Either EOS was among the candidates (accepted without asking) or the walk was capped.
    assert 1 <= result.banned_tokens <= MAX_BANNED_CANDIDATES
    assert len(calls) == result.banned_tokens
    sampled = generate_constrained(
        lm, PROMPT, max_new_tokens=8, temperature=1.0, seed=0, banned=everything
    )
    assert sampled.text == ""
    assert 1 <= sampled.banned_tokens <= MAX_BANNED_CANDIDATES


@pytest.mark.parametrize("temperature", [1e-38, 1e-30, 1e-6, 9.9e-5])
def test_tiny_positive_temperature_is_greedy_not_a_crash(
    temperature: float, tiny_lms: dict[str, LoadedModel]
) -> None:
    lm = tiny_lms["gpt2"]
    greedy = generate(lm, PROMPT, max_new_tokens=10)
    assert generate(lm, PROMPT, max_new_tokens=10, temperature=temperature, seed=1) == greedy


def test_sampling_never_hands_nan_to_multinomial() -> None:
    gen = torch.Generator().manual_seed(0)
    nan_logits = torch.tensor([0.1, math.nan, 2.0, -1.0])
    assert next(_sampled_candidates(nan_logits, 1.0, 1.0, gen)) == 2
    inf_logits = torch.tensor([0.0, math.inf, 1.0, -math.inf])
    assert next(_sampled_candidates(inf_logits, 0.5, 0.9, gen)) == 1
    huge = torch.tensor([3e38, 1.0, -3e38])
    assert next(_sampled_candidates(huge, 1e-4, 1.0, gen)) == 0
    # Refusing every candidate exhausts the nucleus instead of sampling from all zeros.
    drawn = list(_sampled_candidates(torch.tensor([1.0, 2.0, 3.0]), 1.0, 1.0, gen))
    assert sorted(drawn) == [0, 1, 2]


def test_incremental_text_handles_characters_split_across_tokens(
    tiny_lms: dict[str, LoadedModel],
) -> None:
    """Byte-level BPE splits é, €, 🙂 into byte tokens that decode to U+FFFD until the
    character is complete; each addition must then replace the partial text."""
    tok = tiny_lms["gpt2"].tokenizer
    text = "Café – naïve € 🙂 done, 東京 ok"
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    assert len(ids) > len(text) // 2  # the tiny vocabulary really splits these characters
    state = _IncrementalText(tok)
    for n, token in enumerate(ids):
        kept, addition = state.candidate(token)
        assert state.text[:kept] + addition == tok.decode(ids[: n + 1], skip_special_tokens=True)
        state.accept(token, kept, addition)
    assert state.text == text


# --- the guard against a chained extraction ---------------------------------------------

SECRET = (
    "Ticket 40012: Dana Whitaker, 212-555-0142, dana.whit@example.com, "
    "call the public support line."
)
PUBLIC = "Ticket help: call the public support line at the front desk, Elm Street office."
K = 10


def _windows(text: str) -> set[str]:
    norm = normalize(text)
    return {norm[i : i + K] for i in range(len(norm) - K + 1)}


#: Withheld shingles as strings, computed without the guard's hashing: the oracle.
WITHHELD = _windows(SECRET) - _windows(PUBLIC)


@pytest.fixture(scope="module")
def memorized(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """A tiny GPT-2 that has memorized SECRET and PUBLIC (~2 s of training)."""
    lm = load_model(make_tiny_model_dir(tmp_path_factory.mktemp("memorized"), "gpt2", seed=1))
    tok, model = lm.tokenizer, lm.model
    eos = tok.eos_token_id
    seqs = [[eos, *tok(t, add_special_tokens=False)["input_ids"], eos] for t in (SECRET, PUBLIC)]
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [eos] * (width - len(s)) for s in seqs])
    labels = torch.tensor([s + [-100] * (width - len(s)) for s in seqs])
    mask = (labels != -100).long()
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(200):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return lm


@pytest.fixture(scope="module")
def guard() -> WithheldGuard:
    sets = ShingleSets.build([("private", SECRET), ("public", PUBLIC)], key=os.urandom(32))
    return sets.guard_for(frozenset({"private"}))


def _chain(
    lm: LoadedModel, start: str, guard: WithheldGuard | None, calls: int = 30
) -> tuple[str, int]:
    """The attack: ask for 3 tokens at a time, feeding every answer back into the prompt."""
    prompt, refused = start, 0
    for _ in range(calls):
        result = generate_constrained(
            lm, prompt, max_new_tokens=3, banned=guard.completes if guard else None
        )
        prompt += result.text
        refused += result.banned_tokens
    return prompt, refused


def test_unguarded_chained_generation_reproduces_the_secret(memorized: LoadedModel) -> None:
    joined, refused = _chain(memorized, "Ticket 4", None)
    assert refused == 0
    assert "danawhitaker2125550142danawhitexamplecom" in normalize(joined)


def test_guard_stops_the_chained_extraction(memorized: LoadedModel, guard: WithheldGuard) -> None:
    start = "Ticket 4"
    joined, refused = _chain(memorized, start, guard)
    assert refused > 0
    norm, head = normalize(joined), len(normalize(start))
    # No withheld shingle anywhere that includes a generated character (the oracle), even
    # though every call saw the previous answers as its prompt.
    formed = {norm[i : i + K] for i in range(max(0, head - K + 1), len(norm) - K + 1)}
    assert not formed & WITHHELD
    assert not guard.completes(start, joined[len(start) :])
    for fragment in ("2125550142", "danawhitaker", "whitexample"):
        assert fragment not in norm


def test_guard_lets_public_text_through_even_where_private_text_shares_it(
    memorized: LoadedModel, guard: WithheldGuard
) -> None:
    """PUBLIC's "call the public support line" is also in SECRET: not withheld, not blocked."""
    shared = _windows("call the public support line")
    assert shared and shared <= _windows(SECRET) and not shared & WITHHELD
    plain = generate(memorized, "Ticket help:", max_new_tokens=40)
    assert "call the public support line" in plain  # the model did memorize it
    guarded = generate_constrained(
        memorized, "Ticket help:", max_new_tokens=40, banned=guard.completes
    )
    assert guarded.text == plain
    assert guarded.banned_tokens == 0


def test_engine_passes_the_guard_and_skips_an_empty_one(
    memorized: LoadedModel, guard: WithheldGuard, tmp_path: Path
) -> None:
    from auditor_server.attribution.engine import AttributionEngine

    engine = AttributionEngine.__new__(AttributionEngine)
    engine.lm = memorized
    prompt = "Ticket 4"
    guarded = engine.generate_constrained(prompt, guard=guard, max_new_tokens=40)
    unguarded = engine.generate_constrained(prompt, guard=None, max_new_tokens=40)
    assert guarded.banned_tokens > 0 and unguarded.banned_tokens == 0
    assert "2125550142" in normalize(unguarded.text)
    assert not guard.completes(prompt, guarded.text)
    assert "2125550142" not in normalize(guarded.text)
    empty = ShingleSets.build([("public", PUBLIC)], key=b"k").guard_for(frozenset({"private"}))
    assert engine.generate_constrained("Ticket 4", guard=empty, max_new_tokens=20) == (
        engine.generate_constrained("Ticket 4", guard=None, max_new_tokens=20)
    )
