"""Size and training presets for the small GPT-2 the sandbox trains on its demo corpus.

The demo only works if the model actually *memorizes* the planted facts and passages:
attribution can only find the records behind an answer the model knows. The ``demo`` preset
is tuned for that on a 2-core CPU within a few minutes (figures below); ``tiny`` exists so
tests can run the whole trainer in seconds.

Measured on the demo corpus (seed 0, synthetic background: 3,787 records, ~1.07 MB text,
~207k tokens/epoch with the 4,096-token vocabulary), 2-core AMD EPYC (AVX512-BF16):

* ``demo``: 2.66M parameters, ~14.5k tokens/s with bf16 autocast, ~14 s/epoch, 24 epochs in
  ~6 min on an otherwise idle machine. Greedy recall: ~71% of the 4,000 fact questions
  (first word), 19-20 of 20 passages reproduced word for word.
* Peak learning rate is the sensitive knob (same 24 epochs): 5e-4 -> 24%, 7e-4 -> 41%,
  1e-3 -> 71%, 1.5e-3 -> 61%, 2e-3 -> 53%, 3e-3 -> 43% fact recall. Facts are learned late
  (loss plateaus near 0.6 nats for ~10 epochs, then falls), so epochs matter most: at 2e-3,
  28 epochs gave 58% vs. 53% for 24. Four layers are ~1.5x slower per epoch and were only
  slightly better per epoch (15% vs. 13% after 12 epochs at 2e-3), so two layers with more
  epochs win in a fixed time. Passages (6-10 reprints each) are memorized by every setting.
* With the real background text (``scripts/fetch_background.sh``: Austen and the Devil's
  Dictionary, ~221k tokens/epoch) the same ``demo`` preset recalls far fewer facts: 948 of
  4,000 (23.7%) on that corpus, 917 (22.9%) on the corpus with the fair-fact notes (4,087
  records, ~230k tokens/epoch); 20 of 20 passages either way (2026-12-01, shared machine:
  26-29 min of training under other jobs' load).

This module imports nothing heavy, so CLIs can list presets without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from auditor_server.errors import ConfigError

__all__ = ["PRESETS", "ModelPreset", "get_preset"]


@dataclass(frozen=True, kw_only=True)
class ModelPreset:
    """Architecture and optimisation settings for the demo trainer.

    Consumed by :func:`auditor_server.model.train.train_model`; every field is recorded in the
    model's ``training_summary.json`` so a model directory says how it was made.
    """

    name: str
    """Preset name, recorded in ``training_summary.json``."""
    vocab_size: int
    """Target byte-level BPE vocabulary (256 bytes + ``<|endoftext|>`` + merges). Larger
    vocabularies make sequences shorter (faster epochs) but the embedding and output layers
    bigger; names split into fewer tokens are easier to memorize."""
    n_layer: int
    """Transformer blocks."""
    n_head: int
    """Attention heads per block; must divide ``n_embd``."""
    n_embd: int
    """Hidden size."""
    n_positions: int
    """Context length of the model. Equal to ``block_size`` by default, because learned
    absolute position embeddings beyond the trained length stay random."""
    block_size: int
    """Tokens per training sequence: documents are joined with ``<|endoftext|>`` and cut into
    blocks of this length (packing: no padding is wasted on the CPU)."""
    epochs: int
    """Passes over the corpus. Memorization needs many passes; this dominates training time."""
    batch_size: int
    """Sequences per optimizer step."""
    lr: float
    """Peak AdamW learning rate, reached after warmup."""
    warmup_fraction: float = 0.05
    """Fraction of all steps spent warming the learning rate up linearly from 0."""
    min_lr_fraction: float = 0.1
    """Cosine decay ends at ``lr * min_lr_fraction`` instead of 0, so the last epochs still
    learn."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay. Zero by default: decay fights memorization."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables); guards the high peak LR."""
    dropout: float = 0.0
    """Dropout for embeddings, attention and residuals. Zero: we *want* memorization."""
    bf16_autocast: bool = True
    """Run forward/backward under bfloat16 autocast where the CPU supports bf16 natively
    (about 2x faster on AVX512-BF16/AMX CPUs); weights and optimizer stay float32 and the
    saved model is float32. Ignored on CPUs without native bf16."""

    def __post_init__(self) -> None:
        """Reject inconsistent presets early, before minutes of training are spent."""
        if self.n_embd % self.n_head:
            raise ConfigError(f"preset {self.name}: n_head={self.n_head} must divide n_embd")
        if not 0 < self.block_size <= self.n_positions:
            raise ConfigError(
                f"preset {self.name}: block_size must be in 1..n_positions ({self.n_positions})"
            )
        if self.vocab_size < 257:
            raise ConfigError(f"preset {self.name}: vocab_size must be at least 257")
        for field in ("n_layer", "n_head", "n_embd", "epochs", "batch_size"):
            if getattr(self, field) < 1:
                raise ConfigError(f"preset {self.name}: {field} must be positive")
        if not self.lr > 0:
            raise ConfigError(f"preset {self.name}: lr must be positive")
        if not 0 <= self.warmup_fraction < 1 or not 0 <= self.min_lr_fraction <= 1:
            raise ConfigError(f"preset {self.name}: warmup/min-lr fractions must be in [0, 1)")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"preset {self.name}: dropout must be in [0, 1)")


PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset(
        name="tiny",
        vocab_size=512,
        n_layer=2,
        n_head=2,
        n_embd=64,
        n_positions=64,
        block_size=64,
        epochs=4,
        batch_size=8,
        lr=3e-3,
    ),
    "demo": ModelPreset(
        name="demo",
        vocab_size=4096,
        n_layer=2,
        n_head=4,
        n_embd=256,
        n_positions=128,
        block_size=128,
        epochs=24,
        batch_size=16,
        lr=1e-3,
    ),
}
"""Named presets: ``tiny`` for tests and CI (seconds), ``demo`` for the demo corpus."""


def get_preset(name: str) -> ModelPreset:
    """Look up a preset by name.

    Raises:
        ConfigError: No preset has that name (the message lists the valid ones).
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model preset {name!r}; choose one of {', '.join(sorted(PRESETS))}"
        ) from None
