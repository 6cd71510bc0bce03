"""The trainer's final AdamW state, saved beside the weights, so "one more training step" can
be reproduced later (counterfactual attribution tests: tail-patching a model with one
optimizer step on a proponent record, as the training optimizer would have taken it).

Two files in the model directory, written by :func:`save_optimizer_state` into the trainer's
staging directory (so they appear atomically with the model):

* ``optimizer_state.safetensors``: per parameter, ``exp_avg/<name>`` and ``exp_avg_sq/<name>``
  (float32), keyed by the model's ``named_parameters()`` names (tied weights once);
* ``optimizer_state.json``: step count, the learning rate the next step would use and the
  one the last step used, betas, eps, per-parameter weight decay, gradient clipping, whether
  gradients came from bf16 autocast, the sha256 of the tensor file and the ``model_hash``
  of the weights this state belongs to.

Provenance: these files are *not* part of ``model_hash`` (see
:func:`auditor_server.model.loading.model_weight_files`): that hash names the weights that
answer queries, and nothing the service answers depends on the optimizer. Instead the state
is bound to those weights: :func:`load_optimizer_state` refuses (``IntegrityError``) a
tensor file whose checksum differs from the JSON's, or a state recorded for other weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from auditor_server.errors import ConfigError, IntegrityError
from auditor_server.fsutil import sha256_file
from auditor_server.model.loading import (
    OPTIMIZER_STATE_FILE,
    OPTIMIZER_STATE_META_FILE,
    hash_model_files,
)

__all__ = [
    "OPTIMIZER_STATE_FILE",
    "OPTIMIZER_STATE_FORMAT",
    "OPTIMIZER_STATE_META_FILE",
    "OptimizerState",
    "load_optimizer_state",
    "save_optimizer_state",
]

OPTIMIZER_STATE_FORMAT = "auditor-sandbox/adamw-state/v1"
_AVG = "exp_avg/"
_SQ = "exp_avg_sq/"


@dataclass(frozen=True)
class OptimizerState:
    """AdamW moments and settings at the end of training, keyed by parameter name."""

    step: int
    """Optimizer steps taken (AdamW's bias-correction counter)."""
    lr: float
    """Learning rate the *next* step would use (the schedule's value after the last step)."""
    last_lr: float
    """Learning rate the last training step used."""
    betas: tuple[float, float]
    eps: float
    weight_decay: dict[str, float]
    """Decoupled weight decay per parameter (the trainer exempts biases and norms)."""
    grad_clip: float
    """Global gradient-norm clip the trainer applied before each step (0: none)."""
    bf16_autocast: bool
    """Whether training gradients were computed under bf16 autocast."""
    exp_avg: dict[str, torch.Tensor]
    exp_avg_sq: dict[str, torch.Tensor]
    model_hash: str
    """``model_hash`` of the weights this state belongs to."""

    def make_adamw(self, model: torch.nn.Module, *, lr: float | None = None) -> torch.optim.AdamW:
        """An AdamW over ``model``'s parameters holding this state: its next ``step()`` is the
        step training would have taken next (gradient clipping is the caller's, see
        :attr:`grad_clip`).

        Args:
            model: A model with the same parameter names and shapes (e.g. the loaded one).
            lr: Learning rate to use instead of :attr:`lr`.

        Raises:
            ConfigError: Parameter names or shapes differ from the saved state.
        """
        params = dict(model.named_parameters())
        check_names(self, params)
        groups: dict[float, list[torch.nn.Parameter]] = {}
        for name, param in params.items():
            groups.setdefault(self.weight_decay[name], []).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": ps, "weight_decay": wd} for wd, ps in groups.items()],
            lr=self.lr if lr is None else lr,
            betas=self.betas,
            eps=self.eps,
        )
        for name, param in params.items():
            optimizer.state[param] = {
                "step": torch.tensor(float(self.step)),
                "exp_avg": self.exp_avg[name].to(param.device, param.dtype).clone(),
                "exp_avg_sq": self.exp_avg_sq[name].to(param.device, param.dtype).clone(),
            }
        return optimizer


def check_names(state: OptimizerState, params: Mapping[str, torch.Tensor]) -> None:
    """Raise ConfigError unless ``params`` has exactly the state's names and shapes."""
    if set(params) != set(state.exp_avg):
        missing = sorted(set(state.exp_avg) - set(params))[:3]
        extra = sorted(set(params) - set(state.exp_avg))[:3]
        raise ConfigError(
            f"optimizer state does not match the model's parameters (missing in model: "
            f"{missing}, not in state: {extra})"
        )
    for name, param in params.items():
        if tuple(param.shape) != tuple(state.exp_avg[name].shape):
            raise ConfigError(
                f"optimizer state for {name} has shape {tuple(state.exp_avg[name].shape)}, "
                f"the model's parameter {tuple(param.shape)}"
            )


def save_optimizer_state(
    model_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    last_lr: float,
    grad_clip: float,
    bf16_autocast: bool,
) -> str:
    """Write ``optimizer``'s AdamW state for ``model`` into ``model_dir``.

    The weights, config and tokenizer must already be in ``model_dir`` (the state records
    their ``model_hash``). Called on the trainer's staging directory, which is published by
    one rename, so the files need no atomic write of their own.

    Returns:
        The sha256 (``"sha256:<hex>"``) of the tensor file.

    Raises:
        ConfigError: The optimizer is not an AdamW over exactly ``model``'s parameters, or a
            parameter has no state (was never stepped).
    """
    if not isinstance(optimizer, torch.optim.AdamW):
        raise ConfigError(f"expected an AdamW optimizer, got {type(optimizer).__name__}")
    group_of: dict[int, dict[str, Any]] = {
        id(p): group for group in optimizer.param_groups for p in group["params"]
    }
    tensors: dict[str, torch.Tensor] = {}
    weight_decay: dict[str, float] = {}
    steps: set[int] = set()
    group0: dict[str, Any] | None = None
    for name, param in model.named_parameters():
        group = group_of.get(id(param))
        state = optimizer.state.get(param)
        if group is None or not state:
            raise ConfigError(f"parameter {name} has no optimizer state")
        if group.get("amsgrad") or group.get("maximize"):
            raise ConfigError("amsgrad/maximize AdamW states are not supported")
        group0 = group0 or group
        tensors[_AVG + name] = state["exp_avg"].detach().to("cpu", torch.float32).contiguous()
        tensors[_SQ + name] = state["exp_avg_sq"].detach().to("cpu", torch.float32).contiguous()
        weight_decay[name] = float(group["weight_decay"])
        steps.add(int(float(state["step"])))
    if group0 is None or len(steps) != 1:
        raise ConfigError(f"expected one step count for every parameter, got {sorted(steps)}")
    tensor_path = model_dir / OPTIMIZER_STATE_FILE
    save_file(tensors, str(tensor_path), metadata={"format": OPTIMIZER_STATE_FORMAT})
    digest = sha256_file(tensor_path)
    meta = {
        "format": OPTIMIZER_STATE_FORMAT,
        "optimizer": "AdamW",
        "step": steps.pop(),
        "lr": float(group0["lr"]),
        "last_lr": float(last_lr),
        "betas": [float(b) for b in group0["betas"]],
        "eps": float(group0["eps"]),
        "weight_decay": weight_decay,
        "grad_clip": float(grad_clip),
        "bf16_autocast": bool(bf16_autocast),
        "tensors": OPTIMIZER_STATE_FILE,
        "tensors_sha256": digest,
        "model_hash": hash_model_files(model_dir)[0],
    }
    (model_dir / OPTIMIZER_STATE_META_FILE).write_text(
        json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return digest


def load_optimizer_state(model_dir: Path | str) -> OptimizerState | None:
    """The AdamW state saved with a model, keyed by its parameter names; ``None`` if absent.

    Raises:
        IntegrityError: The tensor file is missing or does not match its recorded checksum,
            the state was recorded for other weights (``model_hash``), or the files are
            malformed or disagree.
        ConfigError: The metadata is not a format this version reads.
    """
    model_dir = Path(model_dir)
    meta_path = model_dir / OPTIMIZER_STATE_META_FILE
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{meta_path}: unreadable optimizer state metadata: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != OPTIMIZER_STATE_FORMAT:
        raise ConfigError(f"{meta_path}: not an {OPTIMIZER_STATE_FORMAT} file")
    try:
        return _load(model_dir, meta, meta_path)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IntegrityError(f"{meta_path}: malformed optimizer state: {exc!r}") from None


def _load(model_dir: Path, meta: dict[str, Any], meta_path: Path) -> OptimizerState:
    tensor_path = model_dir / str(meta["tensors"])
    if not tensor_path.is_file():
        raise IntegrityError(f"{tensor_path} is missing (its metadata is in {meta_path})")
    if sha256_file(tensor_path) != meta["tensors_sha256"]:
        raise IntegrityError(f"{tensor_path} does not match the checksum in {meta_path}")
    model_hash = hash_model_files(model_dir)[0]
    if model_hash != meta["model_hash"]:
        raise IntegrityError(
            f"the optimizer state in {model_dir} was saved for other weights "
            f"({meta['model_hash']}; the directory's are {model_hash})"
        )
    tensors = load_file(str(tensor_path))
    exp_avg = {k[len(_AVG) :]: v for k, v in tensors.items() if k.startswith(_AVG)}
    exp_avg_sq = {k[len(_SQ) :]: v for k, v in tensors.items() if k.startswith(_SQ)}
    weight_decay = {str(k): float(v) for k, v in meta["weight_decay"].items()}
    same = set(exp_avg) == set(exp_avg_sq) == set(weight_decay)
    if not same or len(tensors) != 2 * len(exp_avg):
        raise IntegrityError(f"{tensor_path} and {meta_path} name different parameters")
    betas = [float(b) for b in meta["betas"]]
    settings = [float(meta["lr"]), float(meta["last_lr"]), float(meta["eps"]), *betas]
    if len(betas) != 2 or not all(math.isfinite(v) for v in settings):
        raise IntegrityError(f"{meta_path}: invalid optimizer settings")
    return OptimizerState(
        step=int(meta["step"]),
        lr=float(meta["lr"]),
        last_lr=float(meta["last_lr"]),
        betas=(betas[0], betas[1]),
        eps=float(meta["eps"]),
        weight_decay=weight_decay,
        grad_clip=float(meta["grad_clip"]),
        bf16_autocast=bool(meta["bf16_autocast"]),
        exp_avg=exp_avg,
        exp_avg_sq=exp_avg_sq,
        model_hash=str(meta["model_hash"]),
    )
