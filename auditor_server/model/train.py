"""Train the sandbox's small GPT-2 on a corpus, from scratch, on CPU, and save it atomically.

The demo lab needs a model that demonstrably learned from *its* corpus (so attribution has
something true to find) and that anyone can rebuild offline in minutes. This trainer:

1. reads the corpus JSONL (:func:`auditor_server.corpus.records.read_corpus`),
2. trains a byte-level BPE tokenizer on all texts (or copies a given model's tokenizer, so a
   model retrained on part of the corpus tokenizes exactly like the original),
3. trains ``GPT2LMHeadModel`` from a :class:`~auditor_server.model.presets.ModelPreset`
   with AdamW, linear warmup + cosine decay, seeded, each document followed by
   ``<|endoftext|>`` and *packed* into fixed-length blocks (re-shuffled every epoch so block
   boundaries move and every fact is seen whole in most epochs),
4. writes a standard Hugging Face directory (safetensors, tokenizer, ``training_summary.json``
   and the final AdamW state, :mod:`auditor_server.model.optimizer_state`) into a temporary
   sibling of ``out_dir`` and renames it into place only when complete.

Training is deterministic on CPU: the same corpus, preset, epochs, seed and tokenizer with the
same torch build and the same number of torch threads give byte-identical weights, tokenizer
and optimizer state (the tests check it on the ``tiny`` preset). The thread count matters:
matrix products split their sums differently across threads, so 1 and 2 threads give weights
that differ in the last bits; ``training_summary.json`` records ``torch_threads``.

It also offers :func:`evaluate_recall`, which measures what the model memorized on the demo
question file, the precondition for every attribution demo.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
import transformers
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from auditor_server.attribution.snapshots import ids_digest
from auditor_server.corpus.records import Record, read_corpus
from auditor_server.errors import ConfigError, InputError
from auditor_server.fsutil import sha256_file
from auditor_server.model.generation import encode_prompt
from auditor_server.model.loading import TOKENIZER_FILES, LoadedModel
from auditor_server.model.optimizer_state import save_optimizer_state
from auditor_server.model.presets import ModelPreset, get_preset
from auditor_server.model.tokenizer import train_tokenizer

__all__ = [
    "SUMMARY_FILE",
    "RecallReport",
    "TrainSummary",
    "evaluate_recall",
    "train_model",
]

logger = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"
"""Name of the JSON file written next to the weights describing how they were trained."""

_IGNORE = -100  # label value cross-entropy skips (padding of the last block)


@dataclass(frozen=True)
class TrainSummary:
    """What :func:`train_model` did; also written to ``training_summary.json``."""

    out_dir: Path
    """The finished model directory."""
    preset: str
    """Name of the preset used."""
    epochs: int
    """Passes over the corpus actually run."""
    steps: int
    """Optimizer steps."""
    final_loss: float
    """Mean training loss (nats/token) over the last epoch."""
    seconds: float
    """Wall-clock time of the whole call (tokenizer, training, saving)."""
    num_parameters: int
    """Model parameters (tied input/output embedding counted once)."""
    tokens_seen: int
    """Target tokens the model was trained on, summed over epochs."""
    initial_loss: float = math.nan
    """Mean loss over the first steps; compare with :attr:`final_loss` to see learning."""
    epoch_losses: tuple[float, ...] = ()
    """Mean training loss of each epoch, in order."""
    tokenizer_source: str | None = None
    """The model directory whose tokenizer was copied, or ``None`` when one was trained."""
    optimizer_state_sha256: str | None = None
    """sha256 of ``optimizer_state.safetensors`` (the final AdamW moments)."""
    withheld_records: int = 0
    """Corpus records kept in place but blanked out of training (``withheld_ids``)."""


def _bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is *fast* here (native support), not merely possible."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _withheld_positions(records: Sequence[Record], ids: Collection[str]) -> frozenset[int]:
    """Corpus positions of the withheld record ids; every id must name a record."""
    wanted = set(ids)
    positions = frozenset(i for i, r in enumerate(records) if r.id in wanted)
    missing = wanted - {records[i].id for i in positions}
    if missing:
        raise InputError(
            f"{len(missing)} withheld id(s) are not in the corpus, e.g. {sorted(missing)[0]!r}"
        )
    if positions and len(positions) == len(records):
        raise InputError("every corpus record is withheld: there is nothing to train on")
    return positions


def _encode_documents(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    """Token ids of every document followed by ``<|endoftext|>`` (the document separator)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the trained tokenizer has no EOS token")  # pragma: no cover
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    return [[*enc.ids, int(eos)] for enc in encodings]


def _pack_epoch(
    docs: list[list[int]],
    block_size: int,
    generator: torch.Generator,
    withheld: frozenset[int] = frozenset(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle documents, concatenate and cut into ``block_size`` blocks.

    A document whose index is in ``withheld`` keeps its place in the stream, but its tokens
    become EOS inputs with ignored labels: nothing of its text reaches the model, and every
    other token keeps the block, batch and optimizer step it would have had. The random draws
    do not depend on ``withheld``, so an empty set packs exactly as before.

    Returns:
        ``(input_ids, labels)`` of shape (blocks, block_size); the tail of the last block is
        padded with EOS and labelled ``-100`` so no token is dropped and none is invented.
    """
    eos = int(docs[0][-1])
    order = torch.randperm(len(docs), generator=generator).tolist()
    stream = torch.tensor([tok for i in order for tok in docs[i]], dtype=torch.long)
    targets = stream.clone()
    if withheld:
        blanked = torch.tensor([i in withheld for i in order for _ in docs[i]], dtype=torch.bool)
        stream[blanked] = eos
        targets[blanked] = _IGNORE
    blocks = math.ceil(stream.numel() / block_size)
    pad = blocks * block_size - stream.numel()
    labels = torch.cat([targets, torch.full((pad,), _IGNORE, dtype=torch.long)])
    inputs = torch.cat([stream, torch.full((pad,), eos, dtype=torch.long)])
    perm = torch.randperm(blocks, generator=generator)
    return inputs.view(blocks, block_size)[perm], labels.view(blocks, block_size)[perm]


def _lr_lambda(total_steps: int, preset: ModelPreset) -> Any:
    warmup = max(1, int(total_steps * preset.warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return preset.min_lr_fraction + (1.0 - preset.min_lr_fraction) * cosine

    return factor


def _optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    grad_clip: float,
) -> None:
    """Clip, step, schedule, zero: one update (a seam tests patch to simulate a crash)."""
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to clobber anything unless asked; checked before minutes of training."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} exists and is not a directory")
    if out_dir.exists() and not overwrite and any(out_dir.iterdir()):
        raise ConfigError(
            f"{out_dir} already exists; choose a new output directory or pass overwrite=True"
        )


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the finished ``staging`` dir to ``out_dir``, replacing an old model if present.

    With no previous model this is one atomic rename. Replacing an existing directory takes
    two renames (old aside, new in); a crash between them leaves the old model beside
    ``out_dir`` under a hidden ``.replaced-`` name, never a partial one at ``out_dir``.
    """
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.replaced-", dir=out_dir.parent))
        old.rmdir()
        out_dir.rename(old)
        staging.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out_dir)


def train_model(
    corpus_path: Path,
    out_dir: Path,
    *,
    preset: str = "demo",
    epochs: int | None = None,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    device: str = "cpu",
    tokenizer_dir: Path | None = None,
    withheld_ids: Collection[str] = (),
) -> TrainSummary:
    """Train a tokenizer and a GPT-2 from scratch on a corpus and save them to ``out_dir``.

    Args:
        corpus_path: Corpus JSONL (fields ``id``, ``text``, ``source``).
        out_dir: Directory to create. It appears only once training and saving succeeded.
        preset: Name of a :data:`~auditor_server.model.presets.PRESETS` entry.
        epochs: Override the preset's number of epochs.
        seed: Seeds weight init, document shuffling and therefore the whole run.
        progress: Show a tqdm progress bar (stderr).
        overwrite: Replace an existing ``out_dir`` (only after the new model is complete).
        device: Torch device to train on; the demo is sized for ``"cpu"``.
        tokenizer_dir: Use the tokenizer of this model directory (its files are copied
            byte for byte) instead of training one on the corpus: leave-k-out retraining
            must tokenize the remaining records exactly as the full model did.
        withheld_ids: Record ids trained *as if absent* while every other token keeps its
            block, batch and step (see :func:`_pack_epoch`). Removing records from the file
            instead gives a new data order in every epoch and fewer steps, so the comparison
            with the full run would mix what the records taught with a different run; a
            counterfactual retraining withholds in place. A trained tokenizer sees only the
            records that are not withheld.

    Returns:
        A :class:`TrainSummary` (also written as ``training_summary.json``).

    Raises:
        ConfigError: Unknown preset, ``out_dir`` exists without ``overwrite``, bad epochs,
            ``tokenizer_dir`` without a tokenizer.
        InputError: The corpus is missing or unreadable, a withheld id is not in it, or
            every record is withheld.
        CorpusError: A corpus record is invalid.
    """
    started = time.perf_counter()
    corpus_path = Path(corpus_path)
    out_dir = Path(out_dir).expanduser().absolute()
    spec = get_preset(preset)
    n_epochs = spec.epochs if epochs is None else epochs
    if n_epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {n_epochs}")
    _check_out_dir(out_dir, overwrite)
    if tokenizer_dir is not None:
        tokenizer_dir = Path(tokenizer_dir).expanduser().absolute()
        if not (tokenizer_dir / "tokenizer.json").is_file():
            raise ConfigError(f"{tokenizer_dir} has no tokenizer.json to train with")
    try:
        torch_device = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"invalid device {device!r}: {exc}") from None
    records = read_corpus(corpus_path)
    texts = [r.text for r in records]
    withheld = _withheld_positions(records, withheld_ids)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        summary = _train_into(
            staging,
            texts,
            spec,
            n_epochs=n_epochs,
            seed=seed,
            progress=progress,
            device=torch_device,
            out_dir=out_dir,
            started=started,
            tokenizer_dir=tokenizer_dir,
            withheld=withheld,
        )
        extra = {
            "corpus_path": str(corpus_path),
            "corpus_sha256": sha256_file(corpus_path),
            "corpus_records": len(records),
            "withheld_ids_sha256": ids_digest(withheld_ids) if withheld else None,
            "seed": seed,
            "device": str(torch_device),
            "torch_threads": torch.get_num_threads(),
            "preset_settings": asdict(spec),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
        }
        payload = {**asdict(summary), "out_dir": str(out_dir), **extra}
        (staging / SUMMARY_FILE).write_text(
            json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "trained model",
        extra={
            "out_dir": str(out_dir),
            "preset": spec.name,
            "steps": summary.steps,
            "final_loss": summary.final_loss,
            "seconds": summary.seconds,
        },
    )
    return summary


def _train_into(
    staging: Path,
    texts: list[str],
    spec: ModelPreset,
    *,
    n_epochs: int,
    seed: int,
    progress: bool,
    device: torch.device,
    out_dir: Path,
    started: float,
    tokenizer_dir: Path | None = None,
    withheld: frozenset[int] = frozenset(),
) -> TrainSummary:
    """Train tokenizer and model, saving both into ``staging``; the caller publishes it."""
    if tokenizer_dir is None:
        seen = [t for i, t in enumerate(texts) if i not in withheld]
        tokenizer = train_tokenizer(seen, vocab_size=spec.vocab_size, out_dir=staging)
    else:
        tokenizer = _copy_tokenizer(tokenizer_dir, staging)
    return _train_model_into(
        staging,
        tokenizer,
        texts,
        spec,
        n_epochs=n_epochs,
        seed=seed,
        progress=progress,
        device=device,
        out_dir=out_dir,
        started=started,
        tokenizer_dir=tokenizer_dir,
        withheld=withheld,
    )


def _copy_tokenizer(source: Path, staging: Path) -> PreTrainedTokenizerFast:
    """Copy ``source``'s tokenizer files into ``staging`` byte for byte and load them."""
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, staging / name)
    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(staging), local_files_only=True)
    except Exception as exc:
        raise ConfigError(f"cannot load the tokenizer of {source}: {exc}") from exc
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"the tokenizer of {source} has no EOS token to separate documents")
    return cast(PreTrainedTokenizerFast, tokenizer)


def _train_model_into(
    staging: Path,
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str],
    spec: ModelPreset,
    *,
    n_epochs: int,
    seed: int,
    progress: bool,
    device: torch.device,
    out_dir: Path,
    started: float,
    tokenizer_dir: Path | None,
    withheld: frozenset[int],
) -> TrainSummary:
    docs = _encode_documents(tokenizer, texts)
    eos = int(docs[0][-1])
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=spec.n_positions,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        resid_pdrop=spec.dropout,
        embd_pdrop=spec.dropout,
        attn_pdrop=spec.dropout,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    module = cast(torch.nn.Module, model)
    module.to(device)
    module.train()
    num_parameters = sum(p.numel() for p in module.parameters())

    generator = torch.Generator().manual_seed(seed)
    total_tokens = sum(len(d) for d in docs)
    blocks_per_epoch = math.ceil(total_tokens / spec.block_size)
    steps_per_epoch = math.ceil(blocks_per_epoch / spec.batch_size)
    total_steps = steps_per_epoch * n_epochs

    decay = [p for n, p in module.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in module.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": spec.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=spec.lr,
        betas=(0.9, 0.95),
    )
    lr_factor = _lr_lambda(total_steps, spec)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    use_bf16 = spec.bf16_autocast and _bf16_supported(device)
    logger.info(
        "training",
        extra={
            "preset": spec.name,
            "parameters": num_parameters,
            "tokens_per_epoch": total_tokens,
            "steps": total_steps,
            "bf16_autocast": use_bf16,
        },
    )

    step_losses: list[float] = []
    epoch_losses: list[float] = []
    tokens_seen = 0
    bar = tqdm(total=total_steps, disable=not progress, unit="step", desc=f"train {spec.name}")
    try:
        for epoch in range(n_epochs):
            inputs, labels = _pack_epoch(docs, spec.block_size, generator, withheld)
            epoch_loss = 0.0
            epoch_tokens = 0
            for start in range(0, inputs.shape[0], spec.batch_size):
                x = inputs[start : start + spec.batch_size].to(device)
                y = labels[start : start + spec.batch_size].to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    if bool((y[:, 1:] != _IGNORE).any()):
                        loss = model(input_ids=x, labels=y).loss
                    else:  # every target withheld: the step happens, with zero gradient
                        loss = model(input_ids=x).logits.sum() * 0.0
                loss.backward()
                _optimizer_step(module, optimizer, scheduler, spec.grad_clip)
                value = float(loss.detach())
                # labels are shifted inside the model: targets are y[:, 1:]
                targets = int((y[:, 1:] != _IGNORE).sum())
                step_losses.append(value)
                epoch_loss += value * targets
                epoch_tokens += targets
                tokens_seen += targets
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{value:.3f}")
            epoch_losses.append(epoch_loss / max(1, epoch_tokens))
            logger.info("epoch done", extra={"epoch": epoch + 1, "loss": epoch_losses[-1]})
    finally:
        bar.close()

    module.eval()
    module.to("cpu")
    model.save_pretrained(str(staging), safe_serialization=True)
    # The optimizer's moments may still be on ``device``; they are copied to CPU on save.
    state_sha256 = save_optimizer_state(
        staging,
        module,
        optimizer,
        last_lr=spec.lr * lr_factor(total_steps - 1),
        grad_clip=spec.grad_clip,
        bf16_autocast=use_bf16,
    )
    head = step_losses[: max(1, min(10, len(step_losses) // 10))]
    return TrainSummary(
        out_dir=out_dir,
        preset=spec.name,
        epochs=n_epochs,
        steps=total_steps,
        final_loss=epoch_losses[-1],
        seconds=time.perf_counter() - started,
        num_parameters=num_parameters,
        tokens_seen=tokens_seen,
        initial_loss=sum(head) / len(head),
        epoch_losses=tuple(epoch_losses),
        tokenizer_source=None if tokenizer_dir is None else str(tokenizer_dir),
        optimizer_state_sha256=state_sha256,
        withheld_records=len(withheld),
    )


# ------------------------------------------------------------------------------ evaluation


@dataclass(frozen=True)
class RecallReport:
    """How much of the planted content a model reproduces under greedy decoding."""

    fact_total: int
    """Fact questions asked."""
    fact_correct: int
    """Fact questions whose greedy continuation starts with the answer's first word."""
    passage_total: int
    """Passage questions asked."""
    passage_exact: int
    """Passage questions whose greedy continuation reproduces the whole expected completion."""
    passage_first_word: int
    """Passage questions whose continuation starts with the expected first word."""
    passage_word_fraction: float
    """Mean fraction of the expected completion's words reproduced in order from the start."""

    @property
    def fact_accuracy(self) -> float:
        """``fact_correct / fact_total`` (0 when there are no fact questions)."""
        return self.fact_correct / self.fact_total if self.fact_total else 0.0

    @property
    def passage_accuracy(self) -> float:
        """``passage_exact / passage_total`` (0 when there are no passage questions)."""
        return self.passage_exact / self.passage_total if self.passage_total else 0.0


_WORD = re.compile(r"[\w'’-]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


@torch.no_grad()
def _greedy_batch(lm: LoadedModel, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations, batching prompts of equal token length (no padding needed)."""
    by_length: dict[int, list[tuple[int, list[int]]]] = {}
    for index, prompt in enumerate(prompts):
        ids = encode_prompt(lm.tokenizer, prompt)
        by_length.setdefault(len(ids), []).append((index, ids))
    outputs = [""] * len(prompts)
    limit = lm.max_positions or 1 << 30
    for length, group in by_length.items():
        steps = min(max_new_tokens, limit - length)
        for chunk_start in range(0, len(group), 256):
            chunk = group[chunk_start : chunk_start + 256]
            x = torch.tensor([ids for _, ids in chunk], dtype=torch.long, device=lm.device)
            new = torch.empty((len(chunk), 0), dtype=torch.long, device=lm.device)
            past = None
            for _ in range(max(0, steps)):
                out = lm.model(input_ids=x, past_key_values=past, use_cache=True)
                past = out.past_key_values
                x = out.logits[:, -1].argmax(-1, keepdim=True)
                new = torch.cat([new, x], dim=1)
            for (index, _), row in zip(chunk, new.tolist(), strict=True):
                eos = lm.tokenizer.eos_token_id
                if eos is not None and eos in row:
                    row = row[: row.index(eos)]
                outputs[index] = str(lm.tokenizer.decode(row, skip_special_tokens=True))
    return outputs


def evaluate_recall(
    lm: LoadedModel, questions_path: Path, *, max_fact_questions: int | None = None
) -> RecallReport:
    """Measure fact recall and passage continuation on a demo question file.

    Each line is ``{"prompt", "completion", "kind", ...}``; ``kind`` ``"fact"`` counts as
    correct when the first word generated greedily equals the completion's first word
    (punctuation ignored), ``"passage"`` when the generated words reproduce the completion.

    Args:
        lm: The model to evaluate.
        questions_path: ``*.questions.jsonl`` written by the demo corpus generator.
        max_fact_questions: Evaluate only the first N fact questions (for speed).

    Raises:
        InputError: The file is missing or a line is not a question object.
    """
    facts: list[tuple[str, str]] = []
    passages: list[tuple[str, str]] = []
    try:
        lines = Path(questions_path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read question file {questions_path}: {exc}") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            item = (str(obj["prompt"]), str(obj["completion"]))
            kind = obj["kind"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{questions_path}: line {lineno}: not a question: {exc}") from None
        if kind == "fact":
            facts.append(item)
        elif kind == "passage":
            passages.append(item)
    if max_fact_questions is not None:
        facts = facts[:max_fact_questions]

    fact_out = _greedy_batch(lm, [p for p, _ in facts], max_new_tokens=6)
    fact_correct = sum(
        1
        for (_, completion), got in zip(facts, fact_out, strict=True)
        if _words(got)[:1] == _words(completion)[:1]
    )
    passage_out = _greedy_batch(lm, [p for p, _ in passages], max_new_tokens=32)
    exact = first = 0
    fractions: list[float] = []
    for (_, completion), got in zip(passages, passage_out, strict=True):
        want, have = _words(completion), _words(got)
        matched = 0
        for a, b in zip(want, have, strict=False):
            if a != b:
                break
            matched += 1
        exact += matched == len(want)
        first += matched >= 1
        fractions.append(matched / len(want) if want else 0.0)
    return RecallReport(
        fact_total=len(facts),
        fact_correct=fact_correct,
        passage_total=len(passages),
        passage_exact=exact,
        passage_first_word=first,
        passage_word_fraction=sum(fractions) / len(fractions) if fractions else 0.0,
    )
