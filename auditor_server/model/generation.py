"""Tokenize (prompt, completion) pairs, score completions and generate text.

The attribution *measurement* is ``log p(completion | prompt)``; scoring and gradient
capture must agree on exactly which tokens belong to the completion, so both use
:func:`encode_pair`. Prompt and completion are tokenized separately and concatenated: a
joint tokenization could merge the last prompt character with the first completion
character into one token, and then no token boundary would match the text boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from auditor_server.errors import InputError
from auditor_server.model.loading import LoadedModel

__all__ = [
    "MAX_NEW_TOKENS_LIMIT",
    "MAX_TEMPERATURE",
    "ScoreResult",
    "adds_bos",
    "encode_pair",
    "encode_prompt",
    "generate",
    "score",
]

#: Upper bound on ``max_new_tokens``; generation is a probe, not a writing service.
MAX_NEW_TOKENS_LIMIT = 1024
#: Upper bound on ``temperature``; beyond this sampling is indistinguishable from uniform.
MAX_TEMPERATURE = 10.0

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


def _sample(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> int:
    """Pick the next token: argmax at temperature 0, else nucleus sampling."""
    if temperature == 0.0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
        choice = torch.multinomial(sorted_probs.cpu(), 1, generator=generator)
        return int(order[choice.to(order.device)].item())
    return int(torch.multinomial(probs.cpu(), 1, generator=generator).item())


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

    Decoding is a plain loop over the model with a KV cache rather than
    ``model.generate``, so that sampling draws from a private, seeded generator (never the
    global torch RNG other requests share) and the same seed gives the same text.

    Args:
        lm: Loaded model and tokenizer.
        prompt: Text to continue; tokenized as in :func:`encode_pair`.
        max_new_tokens: Upper bound on generated tokens (1..:data:`MAX_NEW_TOKENS_LIMIT`);
            generation also stops at EOS and at the model's context length.
        temperature: 0 for greedy decoding, else the softmax temperature (≤ 10).
        top_p: Nucleus-sampling mass in (0, 1]; ignored when greedy.
        seed: Seed for sampling; ``None`` draws a fresh one (non-reproducible).

    Returns:
        The decoded continuation, special tokens removed.

    Raises:
        InputError: Arguments out of range, or the prompt does not fit the context.
    """
    _validate_generate_args(max_new_tokens, temperature, top_p)
    tokenizer = lm.tokenizer
    ids = encode_prompt(tokenizer, prompt)
    if not ids:
        raise InputError("prompt is empty and the tokenizer has no BOS/EOS token to start from")
    limit = lm.max_positions
    if limit is not None:
        if len(ids) >= limit:
            raise InputError(
                f"prompt is {len(ids)} tokens; the model's context of {limit} leaves no room "
                "to generate"
            )
        max_new_tokens = min(max_new_tokens, limit - len(ids))

    generator: torch.Generator | None = None
    if temperature > 0.0:
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)

    eos_id = tokenizer.eos_token_id
    new_ids: list[int] = []
    input_ids = torch.tensor([ids], dtype=torch.long, device=lm.device)
    past = None
    for _ in range(max_new_tokens):
        out = lm.model(input_ids=input_ids, past_key_values=past, use_cache=True)
        past = out.past_key_values
        token = _sample(out.logits[0, -1], temperature, top_p, generator)
        if eos_id is not None and token == eos_id:
            break
        new_ids.append(token)
        input_ids = torch.tensor([[token]], dtype=torch.long, device=lm.device)
    return str(tokenizer.decode(new_ids, skip_special_tokens=True))
