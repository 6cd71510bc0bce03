"""``score_many`` and ``generate_many``: a batch answers each request exactly as it would be
answered alone (the engine scheduler batches concurrent auditors' Score and Generate calls,
so any difference would make an answer depend on who else was asking)."""

from __future__ import annotations

from typing import Any

import pytest

from auditor_server.errors import InputError
from auditor_server.model.generation import (
    GenerationRequest,
    encode_prompt,
    generate_constrained,
    generate_many,
    score,
    score_many,
)
from auditor_server.model.loading import LoadedModel
from tests.fixtures.tiny_models import TINY_CONTEXT, TINY_SENTENCES

#: Prompts of very different lengths (the empty one is conditioned on BOS/EOS alone), so
#: batches need real padding.
PROMPTS = ("The capital of France is", "Ada", "", TINY_SENTENCES[4] + " " + TINY_SENTENCES[2])


def _alone(lm: LoadedModel, request: GenerationRequest) -> Any:
    return generate_constrained(
        lm,
        request.prompt,
        max_new_tokens=request.max_new_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        seed=request.seed,
        banned=request.banned,
    )


def _banning(letter: str) -> Any:
    def banned(context: str, addition: str) -> bool:
        return letter in addition

    return banned


def _first_letter(text: str) -> str:
    return next(c for c in text if c.isalpha())


# --- score_many -------------------------------------------------------------------------


def test_score_many_equals_score_for_mixed_lengths(
    arch: str, tiny_lms: dict[str, LoadedModel]
) -> None:
    lm = tiny_lms[arch]
    pairs = [
        (PROMPTS[0], " Paris"),
        (PROMPTS[1], " Lovelace was born in London"),
        (PROMPTS[2], "The quick brown fox"),
        (PROMPTS[3], " Cambridge"),
    ]
    batched = score_many(lm, pairs)
    for pair, got in zip(pairs, batched, strict=True):
        want = score(lm, *pair)
        assert got.num_tokens == want.num_tokens
        assert got.logprob == pytest.approx(want.logprob, abs=1e-5)
        assert got.token_logprobs == pytest.approx(want.token_logprobs, abs=1e-5)


def test_score_many_refuses_a_batch_with_a_bad_pair(tiny_lms: dict[str, LoadedModel]) -> None:
    with pytest.raises(InputError):
        score_many(tiny_lms["gpt2"], [("a", " b"), ("a", "")])
    assert score_many(tiny_lms["gpt2"], []) == []


# --- generate_many ------------------------------------------------------------------------


def _requests(**kwargs: Any) -> list[GenerationRequest]:
    """One request per prompt, each with its own length limit (rows end at different steps)."""
    return [
        GenerationRequest(prompt, max_new_tokens=4 + 7 * i, **kwargs)
        for i, prompt in enumerate(PROMPTS)
    ]


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({}, id="greedy"),
        pytest.param({"temperature": 1.3}, id="sampled"),
        pytest.param({"temperature": 0.8, "top_p": 0.7}, id="nucleus"),
    ],
)
def test_each_row_of_a_batch_is_what_it_would_be_alone(
    arch: str, tiny_lms: dict[str, LoadedModel], settings: dict[str, Any]
) -> None:
    lm = tiny_lms[arch]
    requests = _requests(**settings)
    if "temperature" in settings:  # each row its own seed, so rows draw differently
        requests = [
            GenerationRequest(r.prompt, r.max_new_tokens, seed=11 + i, **settings)
            for i, r in enumerate(requests)
        ]
    batched = generate_many(lm, requests)
    alone = [_alone(lm, r) for r in requests]
    assert batched == alone
    assert any(len(r.text) > 10 for r in alone)  # the test decodes something


def test_settings_differ_per_row_within_one_batch(
    arch: str, tiny_lms: dict[str, LoadedModel]
) -> None:
    lm = tiny_lms[arch]
    requests = [
        GenerationRequest(PROMPTS[0], max_new_tokens=12),
        GenerationRequest(PROMPTS[0], max_new_tokens=12, temperature=1.0, seed=3),
        GenerationRequest(PROMPTS[0], max_new_tokens=12, temperature=1.0, seed=4),
        GenerationRequest(PROMPTS[1], max_new_tokens=1),
        GenerationRequest(PROMPTS[3], max_new_tokens=20, temperature=0.5, top_p=0.5, seed=3),
    ]
    batched = generate_many(lm, requests)
    assert batched == [_alone(lm, r) for r in requests]
    assert batched[1].text != batched[2].text  # seeds are per row, not shared


def test_a_banned_callback_constrains_only_its_own_row(
    arch: str, tiny_lms: dict[str, LoadedModel]
) -> None:
    lm = tiny_lms[arch]
    plain = _requests()
    # Ban a letter the row would otherwise produce, so the constraint must bite.
    letter = _first_letter(_alone(lm, GenerationRequest(PROMPTS[0], max_new_tokens=16)).text)
    constrained = GenerationRequest(PROMPTS[0], max_new_tokens=16, banned=_banning(letter))
    sampled = GenerationRequest(
        PROMPTS[3], max_new_tokens=16, temperature=1.0, seed=2, banned=_banning(letter)
    )
    requests = [plain[0], constrained, *plain[1:], sampled]
    batched = generate_many(lm, requests)
    alone = [_alone(lm, r) for r in requests]
    assert batched == alone
    for request, result in zip(requests, batched, strict=True):
        if request.banned is None:
            assert result.banned_tokens == 0
        else:
            assert letter not in result.text
    assert batched[1].banned_tokens > 0  # the constraint did bite in its row


def test_rows_near_the_context_limit_are_cut_there(
    arch: str, tiny_lms: dict[str, LoadedModel]
) -> None:
    lm = tiny_lms[arch]
    long_prompt = " ".join(TINY_SENTENCES * 3)
    while len(encode_prompt(lm.tokenizer, long_prompt)) > TINY_CONTEXT - 3:
        long_prompt = long_prompt[: len(long_prompt) - 5]
    requests = [
        GenerationRequest(long_prompt, max_new_tokens=30),
        GenerationRequest(PROMPTS[1], max_new_tokens=30),
    ]
    assert generate_many(lm, requests) == [_alone(lm, r) for r in requests]


def test_a_single_request_and_an_empty_batch(tiny_lms: dict[str, LoadedModel]) -> None:
    lm = tiny_lms["gpt2"]
    request = GenerationRequest(PROMPTS[0], max_new_tokens=8, temperature=1.0, seed=9)
    assert generate_many(lm, [request]) == [_alone(lm, request)]
    assert generate_many(lm, []) == []


def test_a_bad_request_refuses_the_batch(tiny_lms: dict[str, LoadedModel]) -> None:
    with pytest.raises(InputError):
        generate_many(
            tiny_lms["gpt2"],
            [GenerationRequest("a", max_new_tokens=4), GenerationRequest("a", max_new_tokens=0)],
        )


class _FakeGuard:
    """What the engine needs of a ``WithheldGuard``: a size and ``completes``."""

    def __init__(self, size: int, letter: str) -> None:
        self.size = size
        self.completes = _banning(letter)

    def __len__(self) -> int:
        return self.size


def test_engine_generate_many_applies_each_rows_guard(tiny_lms: dict[str, LoadedModel]) -> None:
    from auditor_server.attribution.engine import AttributionEngine

    engine = AttributionEngine.__new__(AttributionEngine)
    engine.lm = tiny_lms["gpt2"]
    letter = _first_letter(engine.generate_constrained(PROMPTS[0], guard=None).text)
    requests: list[tuple[str, dict[str, Any]]] = [
        (PROMPTS[0], {"guard": _FakeGuard(1, letter), "max_new_tokens": 16}),
        (PROMPTS[0], {"guard": _FakeGuard(0, letter), "max_new_tokens": 16}),  # empty guard
        (PROMPTS[0], {"guard": None, "max_new_tokens": 16, "temperature": 1.0, "seed": 5}),
    ]
    batched = engine.generate_many(requests)
    alone = [engine.generate_constrained(prompt, **kwargs) for prompt, kwargs in requests]
    assert batched == alone
    assert batched[0].banned_tokens > 0 and batched[1].banned_tokens == 0
    assert [r.logprob for r in engine.score_many([("a", " b"), ("The", " capital")])] == (
        pytest.approx([engine.score("a", " b").logprob, engine.score("The", " capital").logprob])
    )
