"""Train a small byte-level BPE tokenizer for the demo model and the test fixtures.

The demo lab has no downloadable tokenizer (the sandbox runs offline), so it trains its own
on the corpus. Byte-level BPE is used because it can encode *any* string an auditor sends
(no unknown tokens), and because word-initial spaces become part of the following token,
so a prompt and a completion tokenized separately concatenate to the same ids as the joint
text -- the property :func:`auditor_server.model.generation.encode_pair` relies on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from auditor_server.errors import ConfigError, InputError

__all__ = ["SPECIAL_TOKEN", "train_tokenizer"]

logger = logging.getLogger(__name__)

SPECIAL_TOKEN = "<|endoftext|>"  # noqa: S105 -- a vocabulary token, not a secret
"""The single special token (GPT-2 convention): document separator, BOS, EOS, PAD and UNK."""

#: 256 byte symbols plus the special token: the smallest vocabulary that can encode anything.
_MIN_VOCAB = 257


def train_tokenizer(
    texts: Iterable[str], *, vocab_size: int, out_dir: Path
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer and save it as a standard Hugging Face tokenizer.

    The result is written to ``out_dir`` as ``tokenizer.json``, ``tokenizer_config.json`` and
    ``special_tokens_map.json`` (the last one explicitly, because recent ``transformers``
    releases stopped writing it but older ones read it), so that
    ``AutoTokenizer.from_pretrained(out_dir, local_files_only=True)`` loads it with any
    supported ``transformers`` version.

    Args:
        texts: Training texts; consumed once.
        vocab_size: Target vocabulary size including the 256 byte symbols and the special
            token. BPE may stop earlier on a small corpus (no more pairs to merge).
        out_dir: Directory to write into (created if missing).

    Returns:
        The trained tokenizer (pad token set, ``padding_side="right"``).

    Raises:
        ConfigError: ``vocab_size`` is too small to hold the byte alphabet.
        InputError: ``texts`` is empty.
    """
    if vocab_size < _MIN_VOCAB:
        raise ConfigError(
            f"vocab_size must be at least {_MIN_VOCAB} (256 bytes + {SPECIAL_TOKEN}), "
            f"got {vocab_size}"
        )
    seen = 0

    def _counting(items: Iterable[str]) -> Iterable[str]:
        nonlocal seen
        for item in items:
            seen += 1
            yield item

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_counting(texts), trainer=trainer)
    if seen == 0:
        raise InputError("cannot train a tokenizer on an empty set of texts")

    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
        unk_token=SPECIAL_TOKEN,
        padding_side="right",
    )
    save_tokenizer(fast, Path(out_dir))
    logger.info("trained tokenizer", extra={"vocab_size": tok.get_vocab_size(), "texts": seen})
    return fast


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> None:
    """Save ``tokenizer`` portably: class name and special-token map older releases read.

    ``transformers`` 5 records ``tokenizer_class: "TokenizersBackend"``, which 4.x cannot
    resolve, and no longer writes ``special_tokens_map.json``; both are patched here so a
    model directory trained by the sandbox loads with every supported version.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    special = {name: SPECIAL_TOKEN for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps(special, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
