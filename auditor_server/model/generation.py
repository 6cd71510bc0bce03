"""Tokenize (prompt, completion) pairs, score completions and generate text.

The attribution *measurement* is ``log p(completion | prompt)``; scoring and gradient
capture must agree on exactly which tokens belong to the completion, so both use
:func:`encode_pair`. Prompt and completion are tokenized separately and concatenated: a
joint tokenization could merge the last prompt character with the first completion
character into one token, and then no token boundary would match the text boundary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from auditor_server.errors import InputError
from auditor_server.model.loading import LoadedModel

__all__ = [
    "GREEDY_BELOW_TEMPERATURE",
    "MAX_BANNED_CANDIDATES",
    "MAX_NEW_TOKENS_LIMIT",
    "MAX_TEMPERATURE",
    "Banned",
    "GenerationRequest",
    "GenerationResult",
    "ScoreResult",
    "adds_bos",
    "encode_pair",
    "encode_prompt",
    "generate",
    "generate_constrained",
    "generate_many",
    "score",
    "score_many",
]

#: Upper bound on ``max_new_tokens``; generation is a probe, not a writing service.
MAX_NEW_TOKENS_LIMIT = 1024
#: Upper bound on ``temperature``; beyond this sampling is indistinguishable from uniform.
MAX_TEMPERATURE = 10.0
#: Temperatures below this decode greedily. Sampling at, say, 1e-38 divides logits into
#: float32 infinities (NaN probabilities); below 1e-4 a logit gap of 0.01 is already a factor
#: e^100 between tokens, so greedy is what such a temperature means anyway.
GREEDY_BELOW_TEMPERATURE = 1e-4
#: Candidates a constrained decoding step tries before it gives up and ends the text: a
#: bound on the work one step can cost, and a model whose 64 likeliest continuations are all
#: withheld text has nothing else to say there.
MAX_BANNED_CANDIDATES = 64
#: Trailing tokens decoded to find a candidate's text (a UTF-8 character is ≤ 4 bytes).
_DECODE_WINDOW = 8

_BOS_PROBE = "a"


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether ``tokenizer`` prepends its BOS token to ordinary text (Llama does, GPT-2 not).

    Decided by behaviour rather than by config flags, whose names differ between tokenizer
    classes and ``transformers`` versions: encode a probe with and without special tokens
    and check whether the only difference is a leading BOS.
    """
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        return False
    with_special = tokenizer(_BOS_PROBE, add_special_tokens=True)["input_ids"]
    plain = tokenizer(_BOS_PROBE, add_special_tokens=False)["input_ids"]
    return len(with_special) > len(plain) and with_special[0] == bos_id and plain[:1] != [bos_id]


def _context_token(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """Token that stands for "start of document" when there is no prompt to condition on."""
    if tokenizer.bos_token_id is not None:
        return int(tokenizer.bos_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    return None


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Prompt ids as the model saw documents start in training, never empty if avoidable.

    BOS is prepended when the tokenizer normally adds it. An empty prompt without BOS gets
    the BOS/EOS token as context (GPT-2 separates documents with ``<|endoftext|>``), because
    the first completion token can only be scored given at least one preceding token.
    """
    ids = [int(i) for i in tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    if adds_bos(tokenizer):
        ids = [int(tokenizer.bos_token_id), *ids]
    if not ids:
        context = _context_token(tokenizer)
        if context is not None:
            ids = [context]
    return ids


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str
) -> tuple[list[int], int]:
    """Tokenize ``prompt`` and ``completion`` separately and concatenate them.

    Args:
        tokenizer: The model's tokenizer.
        prompt: Conditioning text; may be empty (then BOS/EOS is used as the context).
        completion: The text whose likelihood is measured; must produce at least one token.
            Leading whitespace belongs to the completion (``" Paris"``), as in training text.

    Returns:
        ``(input_ids, completion_start)``: ``input_ids[completion_start:]`` are exactly the
        completion's tokens and ``completion_start >= 1`` whenever the tokenizer has a BOS or
        EOS token.

    Raises:
        InputError: The completion is empty or tokenizes to nothing.
    """
    if not completion:
        raise InputError("completion must not be empty: there is nothing to score")
    prompt_ids = encode_prompt(tokenizer, prompt)
    completion_ids = [int(i) for i in tokenizer(completion, add_special_tokens=False)["input_ids"]]
    if not completion_ids:
        raise InputError(f"completion {completion!r} produced no tokens")
    return prompt_ids + completion_ids, len(prompt_ids)


@dataclass(frozen=True)
class ScoreResult:
    """Log-likelihood of a completion given a prompt."""

    logprob: float
    """``log p(completion | prompt)``: natural log, summed over the completion's tokens."""
    num_tokens: int
    """How many completion tokens were scored."""
    token_logprobs: list[float]
    """Per-token log-probabilities, in order; they sum to :attr:`logprob`."""


def _check_length(lm: LoadedModel, length: int, what: str) -> None:
    limit = lm.max_positions
    if limit is not None and length > limit:
        raise InputError(f"{what} is {length} tokens, longer than the model's context of {limit}")


@torch.no_grad()
def score(lm: LoadedModel, prompt: str, completion: str) -> ScoreResult:
    """Compute ``log p(completion | prompt)`` under the model.

    Args:
        lm: Loaded model and tokenizer.
        prompt: Conditioning text.
        completion: Text to score (see :func:`encode_pair`).

    Returns:
        The summed and per-token log-probabilities of the completion's tokens.

    Raises:
        InputError: Empty completion, no context token available for an empty prompt, or
            prompt + completion longer than the model's context.
    """
    ids, start = encode_pair(lm.tokenizer, prompt, completion)
    if start == 0:
        raise InputError("prompt is empty and the tokenizer has no BOS/EOS token to condition on")
    _check_length(lm, len(ids), "prompt + completion")
    input_ids = torch.tensor([ids], dtype=torch.long, device=lm.device)
    logits = lm.model(input_ids=input_ids).logits[0].float()
    # logits[t] predicts token t + 1, so completion tokens ids[start:] come from logits[start-1:-1].
    logprobs = torch.log_softmax(logits[start - 1 : -1], dim=-1)
    targets = input_ids[0, start:]
    token_lp = logprobs.gather(1, targets.unsqueeze(1)).squeeze(1)
    values = [float(v) for v in token_lp.tolist()]
    return ScoreResult(
        logprob=float(token_lp.sum().item()), num_tokens=len(values), token_logprobs=values
    )


def _pad_id(lm: LoadedModel) -> int:
    """Token placed where a batch row has no token; masked out, so any id will do."""
    tokenizer = lm.tokenizer
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


@torch.no_grad()
def score_many(lm: LoadedModel, pairs: Sequence[tuple[str, str]]) -> list[ScoreResult]:
    """:func:`score` for several pairs in one forward pass.

    The service's Score requests from concurrent auditors are run together by the engine
    scheduler: on a small model one forward costs mostly its fixed overhead, so one padded
    forward over eight pairs costs little more than one over a single pair. Rows are padded
    on the *right* with an attention mask: a real token attends only to the real tokens
    before it, at the positions it has alone, so each pair's log-probabilities equal
    :func:`score`'s up to float rounding (the batched matrix products may sum in another
    order; the tests bound the difference by 1e-5). One pair is scored by :func:`score`
    itself.

    Raises:
        InputError: any pair :func:`score` would refuse (the first one found); the caller
            that must answer each pair on its own scores them one by one then.
    """
    if len(pairs) == 1:
        return [score(lm, *pairs[0])]
    encoded: list[tuple[list[int], int]] = []
    for prompt, completion in pairs:
        ids, start = encode_pair(lm.tokenizer, prompt, completion)
        if start == 0:
            raise InputError(
                "prompt is empty and the tokenizer has no BOS/EOS token to condition on"
            )
        _check_length(lm, len(ids), "prompt + completion")
        encoded.append((ids, start))
    if not encoded:
        return []
    width = max(len(ids) for ids, _ in encoded)
    pad = _pad_id(lm)
    input_ids = torch.tensor(
        [ids + [pad] * (width - len(ids)) for ids, _ in encoded], dtype=torch.long, device=lm.device
    )
    mask = torch.tensor(
        [[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in encoded],
        dtype=torch.long,
        device=lm.device,
    )
    positions = torch.arange(width, device=lm.device).unsqueeze(0).expand(len(encoded), -1)
    logits = lm.model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits
    results = []
    for row, (ids, start) in enumerate(encoded):
        logprobs = torch.log_softmax(logits[row, start - 1 : len(ids) - 1].float(), dim=-1)
        targets = input_ids[row, start : len(ids)]
        token_lp = logprobs.gather(1, targets.unsqueeze(1)).squeeze(1)
        values = [float(v) for v in token_lp.tolist()]
        results.append(
            ScoreResult(
                logprob=float(token_lp.sum().item()), num_tokens=len(values), token_logprobs=values
            )
        )
    return results


def _validate_generate_args(max_new_tokens: int, temperature: float, top_p: float) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise InputError(f"max_new_tokens must be an integer, got {max_new_tokens!r}")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise InputError(
            f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}, got {max_new_tokens}"
        )
    if not (math.isfinite(temperature) and 0.0 <= temperature <= MAX_TEMPERATURE):
        raise InputError(f"temperature must be in [0, {MAX_TEMPERATURE}], got {temperature}")
    if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
        raise InputError(f"top_p must be in (0, 1], got {top_p}")


def _finite(logits: torch.Tensor) -> torch.Tensor:
    """float32 logits with NaN as -inf and ±inf clamped, so argmax and softmax are defined."""
    return torch.nan_to_num(logits.float(), nan=float("-inf"))


def _greedy_candidates(logits: torch.Tensor) -> Iterator[int]:
    """Tokens by descending logit: the argmax first (exactly what plain greedy decoding
    takes, ties included), then the rest of the top :data:`MAX_BANNED_CANDIDATES`, computed
    only if the caller asks for a second candidate."""
    logits = _finite(logits)
    first = int(torch.argmax(logits).item())
    yield first
    k = min(MAX_BANNED_CANDIDATES + 1, logits.numel())
    for token in torch.topk(logits, k).indices.tolist():
        if token != first:
            yield int(token)


def _sampled_candidates(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> Iterator[int]:
    """Nucleus samples: the first draw is the plain sampler's, token for token, for a given
    generator state; each further candidate is drawn with the previous ones' probability set
    to zero. Ends when the nucleus is used up.

    Falls back to greedy order if the probabilities are not finite (a model that emits NaN
    or +inf logits), so sampling never hands ``torch.multinomial`` a NaN.
    """
    probs = torch.softmax(_finite(logits) / temperature, dim=-1)
    if not bool(torch.isfinite(probs).all()) or not float(probs.sum()) > 0.0:
        yield from _greedy_candidates(logits)
        return
    order: torch.Tensor | None = None
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        weights = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs)).cpu()
        order = order.cpu()
    else:
        weights = probs.cpu()
    while float(weights.sum()) > 0.0:
        choice = int(torch.multinomial(weights, 1, generator=generator).item())
        yield int(order[choice].item()) if order is not None else choice
        weights[choice] = 0.0


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class GenerationResult:
    """What :func:`generate_constrained` produced."""

    text: str
    """The decoded continuation, special tokens removed."""
    banned_tokens: int
    """How many candidate tokens ``banned`` refused (0 without a ``banned`` callback)."""


#: ``banned(context, addition)``: whether the text ``addition`` may not follow ``context``.
Banned = Callable[[str, str], bool]


class _IncrementalText:
    """The generated text, kept up to date token by token for the ``banned`` callback.

    The text a candidate token adds is ``decode(ids + [t])`` minus ``decode(ids)``. With
    byte-level BPE one character can span several tokens: while it is incomplete its bytes
    decode to U+FFFD, and the token that completes it *changes* already decoded text. So the
    addition is everything after the longest common prefix of the two decodings, and the
    context it is checked against ends at that prefix. Only the last :data:`_DECODE_WINDOW`
    tokens are decoded (a character is at most 4 bytes, so a change never reaches further
    back), which keeps each check independent of how much was generated.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self.text = ""
        self._window: list[int] = []
        self._window_text = ""

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))

    def candidate(self, token: int) -> tuple[int, str]:
        """``(kept, addition)``: the new text is ``self.text[:kept] + addition``."""
        after = self._decode([*self._window, token])
        common = _common_prefix(self._window_text, after)
        return len(self.text) - (len(self._window_text) - common), after[common:]

    def accept(self, token: int, kept: int, addition: str) -> None:
        self.text = self.text[:kept] + addition
        self._window = [*self._window, token][-_DECODE_WINDOW:]
        self._window_text = self._decode(self._window)


@torch.no_grad()
def generate(
    lm: LoadedModel,
    prompt: str,
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> str:
    """Continue ``prompt`` and return only the newly generated text.

    :func:`generate_constrained` without a ``banned`` callback; see there for the arguments.
    """
    return generate_constrained(
        lm,
        prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        banned=None,
    ).text


@torch.no_grad()
def generate_constrained(
    lm: LoadedModel,
    prompt: str,
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    banned: Banned | None = None,
) -> GenerationResult:
    """Continue ``prompt``, never emitting a token whose text ``banned`` refuses.

    Decoding is a plain loop over the model with a KV cache rather than
    ``model.generate``, so that sampling draws from a private, seeded generator (never the
    global torch RNG other requests share) and the same seed gives the same text.

    Before a token is accepted, ``banned(context, addition)`` is asked, with ``context`` the
    prompt followed by the text generated so far and ``addition`` the text the token adds
    (see :class:`_IncrementalText`). A refused token is replaced: greedy decoding takes the
    next most likely token, sampling draws again with the refused token's probability set to
    zero. Up to :data:`MAX_BANNED_CANDIDATES` candidates are tried per step; if all are
    refused (or a sampled step's nucleus is used up) generation stops there. EOS is never
    refused. When nothing is refused the text is exactly the unconstrained one, for a given
    seed too. The withheld-text guard passes ``WithheldGuard.completes`` here: because the
    context includes the prompt, a withheld stretch split between an auditor's prompt (the
    previous answer fed back) and the new tokens is caught as well.

    Args:
        lm: Loaded model and tokenizer.
        prompt: Text to continue; tokenized as in :func:`encode_pair`.
        max_new_tokens: Upper bound on generated tokens (1..:data:`MAX_NEW_TOKENS_LIMIT`);
            generation also stops at EOS and at the model's context length.
        temperature: 0 for greedy decoding, else the softmax temperature (≤ 10).
            Temperatures below :data:`GREEDY_BELOW_TEMPERATURE` decode greedily: dividing
            logits by such a value overflows float32 and sampling there is greedy anyway.
        top_p: Nucleus-sampling mass in (0, 1]; ignored when greedy.
        seed: Seed for sampling; ``None`` draws a fresh one (non-reproducible).
        banned: ``(context, addition) -> bool``; ``None`` constrains nothing.

    Returns:
        The decoded continuation (special tokens removed) and how many tokens were refused.

    Raises:
        InputError: Arguments out of range, or the prompt does not fit the context.
    """
    request = GenerationRequest(
        prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        banned=banned,
    )
    return _decode_alone(lm, _Row(lm, request))


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt for :func:`generate_many`, with :func:`generate_constrained`'s arguments."""

    prompt: str
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    banned: Banned | None = None


class _Row:
    """One request's decoding state: its prompt ids, sampler, guard bookkeeping and output.

    :func:`generate_constrained` and :func:`generate_many` share it, so a row of a batch
    chooses its tokens by exactly the code a request decoded alone does; only the logits it
    is handed come from a batched forward.
    """

    def __init__(self, lm: LoadedModel, request: GenerationRequest) -> None:
        _validate_generate_args(request.max_new_tokens, request.temperature, request.top_p)
        tokenizer = lm.tokenizer
        ids = encode_prompt(tokenizer, request.prompt)
        if not ids:
            raise InputError("prompt is empty and the tokenizer has no BOS/EOS token to start from")
        max_new_tokens = request.max_new_tokens
        limit = lm.max_positions
        if limit is not None:
            if len(ids) >= limit:
                raise InputError(
                    f"prompt is {len(ids)} tokens; the model's context of {limit} leaves no "
                    "room to generate"
                )
            max_new_tokens = min(max_new_tokens, limit - len(ids))
        self.request = request
        self.ids = ids
        self.max_new_tokens = max_new_tokens
        self.greedy = request.temperature < GREEDY_BELOW_TEMPERATURE
        self.generator: torch.Generator | None = None
        if not self.greedy:
            self.generator = torch.Generator()
            if request.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(request.seed)
        self.eos_id = tokenizer.eos_token_id
        self._tokenizer = tokenizer
        self.new_ids: list[int] = []
        self._generated = _IncrementalText(tokenizer) if request.banned is not None else None
        self.refused = 0
        self.done = False

    @property
    def length(self) -> int:
        """Tokens in the row so far, prompt included."""
        return len(self.ids) + len(self.new_ids)

    def choose(self, logits: torch.Tensor) -> int | None:
        """Take the next token from this row's last-position ``logits``.

        Returns the token to feed back, or None when the row has ended (EOS, every
        candidate refused); :attr:`done` is also set once ``max_new_tokens`` are reached,
        and then the returned token is the last one, not to be fed back.
        """
        request = self.request
        banned, generated = request.banned, self._generated
        candidates = (
            _greedy_candidates(logits)
            if self.greedy
            else _sampled_candidates(logits, request.temperature, request.top_p, self.generator)
        )
        token: int | None = None
        for tried, candidate in enumerate(candidates):
            if tried >= MAX_BANNED_CANDIDATES:
                break
            if banned is None or generated is None or candidate == self.eos_id:
                token = candidate
                break
            kept, addition = generated.candidate(candidate)
            if banned(request.prompt + generated.text[:kept], addition):
                self.refused += 1
                continue
            generated.accept(candidate, kept, addition)
            token = candidate
            break
        if token is None or (self.eos_id is not None and token == self.eos_id):
            self.done = True
            return None
        self.new_ids.append(token)
        if len(self.new_ids) >= self.max_new_tokens:
            self.done = True
        return token

    def result(self) -> GenerationResult:
        text = str(self._tokenizer.decode(self.new_ids, skip_special_tokens=True))
        return GenerationResult(text=text, banned_tokens=self.refused)


def _decode_alone(lm: LoadedModel, row: _Row) -> GenerationResult:
    """The single-request loop: unpadded forwards, exactly as it ran before batching."""
    input_ids = torch.tensor([row.ids], dtype=torch.long, device=lm.device)
    past = None
    while True:
        out = lm.model(input_ids=input_ids, past_key_values=past, use_cache=True)
        past = out.past_key_values
        token = row.choose(out.logits[0, -1])
        if token is None or row.done:
            return row.result()
        input_ids = torch.tensor([[token]], dtype=torch.long, device=lm.device)


@torch.no_grad()
def generate_many(lm: LoadedModel, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
    """:func:`generate_constrained` for several requests, decoded together.

    Why: on the small models this service runs, a decoding step costs mostly the forward's
    fixed overhead (≈2 ms on one core, whether it carries one row or eight), and a campaign's
    concurrent probes are mostly Generate calls; decoding them as one batch is what lets
    concurrent auditors (or one auditor's concurrent workers) share the engine instead of
    queueing for it.

    How: prompts are padded on the *left* with an attention mask, and each row gets its own
    ``position_ids`` (0 at its first real token), so a row's tokens see the same context at
    the same positions as when decoded alone; one KV cache holds all rows. Every row keeps
    its own ``max_new_tokens``, temperature/top_p, seeded generator, ``banned`` callback and
    refusal count, and chooses its token by the same code as :func:`generate_constrained`
    (:class:`_Row`). A row that ends (EOS, length, all candidates refused) is dropped from
    the batch and the cache, so the others do not pay for it.

    Equality with decoding alone: tokens are chosen identically from the logits, but the
    logits of a padded batch are not bit-for-bit those of a single unpadded row (matrix
    products over another batch shape may sum in another order; masked positions add exact
    zeros to the attention softmax). The difference is float rounding, ~1e-6 on the tests'
    models; it changes a greedy token only where two logits tie within that, and a sampled
    one only where a draw lands within that of a bucket edge. The tests check text equality
    for greedy, seeded sampling and constrained rows. A single request is decoded by
    :func:`generate_constrained`'s own loop, so it is exact.

    Raises:
        InputError: any request :func:`generate_constrained` would refuse (the first found);
            a caller that must answer each request on its own runs them one by one then.
    """
    rows = [_Row(lm, request) for request in requests]
    if len(rows) <= 1:
        return [_decode_alone(lm, row) for row in rows]
    device = lm.device
    width = max(len(row.ids) for row in rows)
    pad = _pad_id(lm)
    input_ids = torch.tensor(
        [[pad] * (width - len(row.ids)) + row.ids for row in rows], dtype=torch.long, device=device
    )
    mask = torch.tensor(
        [[0] * (width - len(row.ids)) + [1] * len(row.ids) for row in rows],
        dtype=torch.long,
        device=device,
    )
    positions = torch.tensor(
        [[0] * (width - len(row.ids)) + list(range(len(row.ids))) for row in rows],
        dtype=torch.long,
        device=device,
    )
    active = list(range(len(rows)))
    past: Any = None
    while True:
        out = lm.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=past,
            use_cache=True,
        )
        past = out.past_key_values
        last = out.logits[:, -1]
        keep: list[int] = []
        fed: list[int] = []
        for slot, index in enumerate(active):
            row = rows[index]
            token = row.choose(last[slot])
            if token is not None and not row.done:
                keep.append(slot)
                fed.append(token)
        if not keep:
            break
        if len(keep) < len(active):
            selected = torch.tensor(keep, dtype=torch.long, device=device)
            past.batch_select_indices(selected)
            mask = mask.index_select(0, selected)
            active = [active[slot] for slot in keep]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        positions = torch.tensor(
            [[rows[index].length - 1] for index in active], dtype=torch.long, device=device
        )
        input_ids = torch.tensor([[token] for token in fed], dtype=torch.long, device=device)
    return [row.result() for row in rows]
