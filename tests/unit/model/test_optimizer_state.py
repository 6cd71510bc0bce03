"""The trainer's saved AdamW state: it round-trips, continues training exactly, and is bound to
the weights it belongs to (without being part of their ``model_hash``)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from auditor_server.errors import ConfigError, IntegrityError
from auditor_server.model.loading import hash_model_files, load_model
from auditor_server.model.optimizer_state import (
    OPTIMIZER_STATE_FILE,
    OPTIMIZER_STATE_META_FILE,
    load_optimizer_state,
    save_optimizer_state,
)


def _fake_grads(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * 0.01


@pytest.fixture
def stepped(tmp_path: Path, tiny_dirs: dict[str, Path]) -> tuple[Path, torch.nn.Module, object]:
    """A tiny GPT-2 directory whose weights and optimizer state come from three AdamW steps."""
    d = tmp_path / "m"
    shutil.copytree(tiny_dirs["gpt2"], d)
    model = load_model(d).model
    params = list(model.named_parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for _, p in params if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=1e-3,
        betas=(0.9, 0.95),
    )
    for step in range(3):
        _fake_grads(model, step)
        opt.step()
        opt.zero_grad()
    model.save_pretrained(str(d), safe_serialization=True)
    save_optimizer_state(d, model, opt, last_lr=2e-3, grad_clip=1.0, bf16_autocast=False)
    return d, model, opt


def test_round_trip_and_next_step_is_the_training_optimizers(
    stepped: tuple[Path, torch.nn.Module, torch.optim.Optimizer],
) -> None:
    d, model, opt = stepped
    state = load_optimizer_state(d)
    assert state is not None
    names = [n for n, _ in model.named_parameters()]
    assert sorted(state.exp_avg) == sorted(names) == sorted(state.exp_avg_sq)
    assert "lm_head.weight" not in state.exp_avg  # tied to the input embedding: saved once
    assert state.step == 3 and state.lr == 1e-3 and state.last_lr == 2e-3
    assert state.betas == (0.9, 0.95) and state.eps == 1e-8 and state.grad_clip == 1.0
    assert state.weight_decay["transformer.h.0.attn.c_attn.weight"] == 0.1
    assert state.weight_decay["transformer.h.0.ln_1.bias"] == 0.0
    assert state.model_hash == hash_model_files(d)[0]
    for name, p in model.named_parameters():
        assert torch.equal(state.exp_avg[name], opt.state[p]["exp_avg"])
        assert torch.equal(state.exp_avg_sq[name], opt.state[p]["exp_avg_sq"])

    # One more step: the original optimizer and the restored one move the weights identically.
    restored = copy.deepcopy(model)
    again = state.make_adamw(restored)
    _fake_grads(model, 99)
    _fake_grads(restored, 99)
    opt.step()
    again.step()
    after = dict(restored.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, after[name]), name


def test_optimizer_state_is_outside_model_hash_but_bound_to_it(
    stepped: tuple[Path, torch.nn.Module, torch.optim.Optimizer], tiny_dirs: dict[str, Path]
) -> None:
    d, _, _ = stepped
    with_state = hash_model_files(d)
    moved = d.parent / "without"
    shutil.copytree(d, moved)
    (moved / OPTIMIZER_STATE_FILE).unlink()
    (moved / OPTIMIZER_STATE_META_FILE).unlink()
    assert hash_model_files(moved) == with_state
    assert load_optimizer_state(moved) is None
    assert load_optimizer_state(tiny_dirs["gpt2"]) is None
    assert load_model(d).model_hash == with_state[0]

    # The state of these weights, copied next to other weights, is refused.
    other = d.parent / "other"
    shutil.copytree(tiny_dirs["gpt2"], other)
    for name in (OPTIMIZER_STATE_FILE, OPTIMIZER_STATE_META_FILE):
        shutil.copyfile(d / name, other / name)
    with pytest.raises(IntegrityError, match="saved for other weights"):
        load_optimizer_state(other)

    # A flipped byte in the moments is refused.
    tensors = d / OPTIMIZER_STATE_FILE
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0x01
    tensors.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match the checksum"):
        load_optimizer_state(d)


def test_malformed_metadata_is_refused(
    stepped: tuple[Path, torch.nn.Module, torch.optim.Optimizer],
) -> None:
    d = stepped[0]
    meta_path = d / OPTIMIZER_STATE_META_FILE
    meta = json.loads(meta_path.read_text())
    del meta["betas"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="malformed"):
        load_optimizer_state(d)
    meta_path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ConfigError, match="not an"):
        load_optimizer_state(d)


def test_make_adamw_refuses_another_architecture(
    stepped: tuple[Path, torch.nn.Module, torch.optim.Optimizer], tiny_lms: dict[str, object]
) -> None:
    state = load_optimizer_state(stepped[0])
    assert state is not None
    with pytest.raises(ConfigError, match="does not match the model's parameters"):
        state.make_adamw(tiny_lms["llama"].model)  # type: ignore[attr-defined]
