"""Load a local Hugging Face causal LM, offline, and fingerprint its files.

Everything the lab serves is tied to *which* model answered: the index snapshot id and
every signed response carry ``model_hash`` and ``tokenizer_hash``. The hashes are computed
over file bytes (not over loaded tensors), so they can be checked without loading the
weights and do not depend on the torch version, device or dtype used to load them.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from auditor_server.errors import ConfigError

__all__ = [
    "OPTIMIZER_STATE_FILE",
    "OPTIMIZER_STATE_META_FILE",
    "TOKENIZER_FILES",
    "LoadedModel",
    "hash_model_files",
    "load_model",
    "model_weight_files",
]

logger = logging.getLogger(__name__)

#: Files that define a tokenizer's behaviour; those present are hashed, in this order.
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)

#: The trainer's AdamW state (``auditor_server.model.optimizer_state``): safetensors like the
#: weights, but never read by ``from_pretrained``, so not a weight file and not in
#: ``model_hash``; its metadata file records the ``model_hash`` it belongs to instead.
OPTIMIZER_STATE_FILE = "optimizer_state.safetensors"
OPTIMIZER_STATE_META_FILE = "optimizer_state.json"

#: Files of which at least one must exist for the directory to hold a usable tokenizer.
_TOKENIZER_VOCAB_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")

_MODEL_DOMAIN = b"auditor-sandbox/model-files/v1\x00"
_TOKENIZER_DOMAIN = b"auditor-sandbox/tokenizer-files/v1\x00"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class LoadedModel:
    """A model and tokenizer ready for scoring, generation and gradient capture."""

    model: PreTrainedModel
    """The causal LM, in eval mode, on :attr:`device`, float32 unless asked otherwise."""
    tokenizer: PreTrainedTokenizerBase
    """Its tokenizer; a pad token is guaranteed (falls back to EOS), ``padding_side="right"``
    so positions of real tokens do not shift when examples are batched."""
    model_dir: Path
    """The resolved directory the model was loaded from."""
    model_hash: str
    """``"sha256:<hex>"`` over ``config.json`` and the weight files (see
    :func:`hash_model_files`)."""
    tokenizer_hash: str
    """``"sha256:<hex>"`` over the tokenizer files present (see :data:`TOKENIZER_FILES`)."""
    device: torch.device
    """Where the model lives; inputs must be moved here."""

    @property
    def max_positions(self) -> int | None:
        """The model's context length, or ``None`` when its config does not say."""
        return max_positions(self.model)


def max_positions(model: PreTrainedModel) -> int | None:
    """Return the context length from ``model.config``, or ``None`` if unknown.

    GPT-2 calls it ``n_positions``; ``transformers`` maps ``max_position_embeddings`` onto it,
    so one attribute covers GPT-2, Llama and GPT-NeoX.
    """
    value = getattr(model.config, "max_position_embeddings", None)
    if value is None:
        value = getattr(model.config, "n_positions", None)
    return int(value) if value is not None else None


def model_weight_files(model_dir: Path) -> list[Path]:
    """List the files holding a model's weights, in canonical (sorted-by-name) order.

    Safetensors files are preferred; PyTorch ``.bin`` checkpoints are used only when no
    safetensors exist, mirroring which files ``from_pretrained`` would actually read. Shard
    index files are included because they decide which tensor comes from which shard. The
    trainer's optimizer state (:data:`OPTIMIZER_STATE_FILE`) is safetensors too but holds no
    weights, so it is left out.

    Raises:
        ConfigError: The directory holds no weight files.
    """
    safetensors = sorted(
        p for p in model_dir.glob("*.safetensors") if p.is_file() and p.name != OPTIMIZER_STATE_FILE
    )
    if safetensors:
        index = model_dir / "model.safetensors.index.json"
        files = safetensors + ([index] if index.is_file() else [])
    else:
        files = sorted(p for p in model_dir.glob("pytorch_model*.bin") if p.is_file())
        index = model_dir / "pytorch_model.bin.index.json"
        if files and index.is_file():
            files.append(index)
    if not files:
        raise ConfigError(
            f"{model_dir} holds no model weights (expected model.safetensors, sharded "
            "model-*.safetensors or pytorch_model.bin); point --model at a directory written "
            "by save_pretrained() or train one with `auditor-server train-model`"
        )
    return sorted(files, key=lambda p: p.name)


def _hash_files(domain: bytes, files: list[Path]) -> str:
    """Hash ``files`` with their names and lengths framed, so no two file sets collide."""
    digest = hashlib.sha256(domain)
    for path in files:
        name = path.name.encode("utf-8")
        digest.update(struct.pack(">I", len(name)) + name)
        digest.update(struct.pack(">Q", path.stat().st_size))
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _check_model_dir(model_dir: Path) -> None:
    """Raise an actionable ConfigError unless ``model_dir`` looks like a local HF model dir."""
    if not model_dir.exists():
        raise ConfigError(f"model directory {model_dir} does not exist")
    if not model_dir.is_dir():
        raise ConfigError(f"model path {model_dir} is not a directory")
    if not (model_dir / "config.json").is_file():
        raise ConfigError(
            f"{model_dir} is not a Hugging Face model directory (no config.json); "
            "the sandbox loads models offline only, so pass a local directory written by "
            "save_pretrained(), not a hub name"
        )
    model_weight_files(model_dir)
    if not any((model_dir / name).is_file() for name in _TOKENIZER_VOCAB_FILES):
        raise ConfigError(
            f"{model_dir} has no tokenizer (expected one of {', '.join(_TOKENIZER_VOCAB_FILES)}); "
            "save the tokenizer next to the weights with tokenizer.save_pretrained(model_dir)"
        )


def hash_model_files(model_dir: Path) -> tuple[str, str]:
    """Fingerprint a model directory without loading its weights.

    ``model_hash`` covers ``config.json`` followed by :func:`model_weight_files`;
    ``tokenizer_hash`` covers the :data:`TOKENIZER_FILES` present. Each file contributes its
    name, byte length and bytes, so renaming, truncating or editing any byte changes the
    hash, while the directory's location, timestamps and unrelated files do not. Not every
    file is hashed: ``training_summary.json`` and the trainer's optimizer state
    (:data:`OPTIMIZER_STATE_FILE`, checked against this ``model_hash`` when loaded) describe
    how the weights were made but change no answer, so the hash names exactly what answers.

    Args:
        model_dir: A local Hugging Face model directory.

    Returns:
        ``(model_hash, tokenizer_hash)``, each ``"sha256:<64 hex>"``.

    Raises:
        ConfigError: The directory is missing or is not a model directory with a tokenizer.
    """
    model_dir = Path(model_dir)
    _check_model_dir(model_dir)
    model_files = [model_dir / "config.json", *model_weight_files(model_dir)]
    tokenizer_files = [model_dir / n for n in TOKENIZER_FILES if (model_dir / n).is_file()]
    return _hash_files(_MODEL_DOMAIN, model_files), _hash_files(_TOKENIZER_DOMAIN, tokenizer_files)


def _resolve_device(device: str) -> torch.device:
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"invalid device {device!r}: {exc}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use 'cpu'")
    return resolved


def load_model(
    model_dir: Path | str, *, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a local directory, never touching the network.

    Args:
        model_dir: Directory written by ``save_pretrained`` (weights, ``config.json`` and
            tokenizer files).
        device: Torch device string, e.g. ``"cpu"`` or ``"cuda:0"``.
        dtype: Parameter dtype. float32 is the default because attribution scores are
            gradients and half precision makes them noisy.

    Returns:
        The loaded model in eval mode with its tokenizer and file hashes.

    Raises:
        ConfigError: The directory is missing, is not a model directory, lacks a tokenizer,
            cannot be parsed, the tokenizer has neither pad nor EOS token, or the device
            is unavailable.
    """
    path = Path(model_dir).expanduser().resolve()
    _check_model_dir(path)
    torch_device = _resolve_device(device)
    model_hash, tokenizer_hash = hash_model_files(path)

    kwargs: dict[str, Any] = {"local_files_only": True}
    try:
        config = AutoConfig.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read {path / 'config.json'}: {exc}") from exc
    # Corrupt files surface as whatever the parser raises (safetensors raises its own
    # SafetensorError), so anything except interrupts becomes one actionable ConfigError.
    # transformers draws a "Loading weights" bar per load; a server or CLI loads once and the
    # bar only clutters logs (our own long work has its own progress bars).
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), config=config, dtype=dtype, **kwargs
        )
    except Exception as exc:
        raise ConfigError(f"cannot load model weights from {path}: {exc}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    except Exception as exc:
        raise ConfigError(f"cannot load tokenizer from {path}: {exc}") from exc

    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                f"tokenizer in {path} defines neither a pad nor an EOS token; add one to "
                "tokenizer_config.json so examples can be batched"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"

    # Through the nn.Module interface: transformers' decorated PreTrainedModel.to/eval confuse mypy.
    module = cast(torch.nn.Module, model)
    module.to(torch_device)
    module.eval()
    logger.info(
        "loaded model",
        extra={
            "model_dir": str(path),
            "model_type": config.model_type,
            "model_hash": model_hash,
            "device": str(torch_device),
        },
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_dir=path,
        model_hash=model_hash,
        tokenizer_hash=tokenizer_hash,
        device=torch_device,
    )
