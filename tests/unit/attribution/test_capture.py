"""The factorized capture must equal the projection of the true per-example weight gradient."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from auditor_server.attribution.capture import (
    GradientCapture,
    featurize_batch,
    masked_token_nll,
    projection_matrix,
    select_modules,
)
from auditor_server.attribution.config import FeatureConfig
from auditor_server.errors import ConfigError
from auditor_server.model.loading import load_model
from tests.fixtures.tiny_models import make_tiny_model_dir


def _reference_features(model, capture, seq, target_start, config):
    """Project the full weight gradient of one example, computed the slow, obvious way."""
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    ids = torch.tensor([seq])
    logits = model(input_ids=ids).logits
    mask = torch.zeros_like(ids)
    mask[0, max(target_start, 1) :] = 1
    loss = masked_token_nll(logits, ids, mask).sum()
    loss.backward()
    out = []
    for m in capture.modules:
        grad = m.module.weight.grad
        grad = grad if isinstance(m.module, torch.nn.Linear) else grad.T  # -> (d_out, d_in)
        p_in = projection_matrix(config.seed, m.name, "in", m.d_in, config.proj_in)
        p_out = projection_matrix(config.seed, m.name, "out", m.d_out, config.proj_out)
        out.append((p_out.T @ grad @ p_in).flatten())
    return out, loss.item()


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_capture_matches_projected_per_example_gradient(tmp_path: Path, arch: str) -> None:
    lm = load_model(make_tiny_model_dir(tmp_path, arch))
    model = lm.model
    # Tied output embeddings also receive the input-embedding gradient, which is not a linear
    # use of the weight; compare the untied modules only.
    config = FeatureConfig(proj_in=4, proj_out=3, exclude=("lm_head", "embed_out"))
    capture = GradientCapture(model, config)
    seqs = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23]]
    starts = [0, 0, 2]
    feats, nll = featurize_batch(capture, seqs, starts, pad_id=0)
    assert feats.shape == (3, len(capture.modules), 12)
    for b, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
        ref, ref_nll = _reference_features(model, capture, seq, start, config)
        assert float(nll[b]) == pytest.approx(ref_nll, rel=1e-5)
        for i, expected in enumerate(ref):
            scale = expected.abs().max().clamp_min(1e-12)
            assert (feats[b, i] - expected).abs().max() / scale < 1e-4, capture.modules[i].name


def test_padding_and_batch_mates_do_not_change_features(tmp_path: Path) -> None:
    lm = load_model(make_tiny_model_dir(tmp_path, "gpt2"))
    capture = GradientCapture(lm.model, FeatureConfig(proj_in=4, proj_out=4))
    alone, nll_alone = featurize_batch(capture, [[3, 4, 5]], [0], pad_id=0)
    padded, nll_padded = featurize_batch(
        capture, [[3, 4, 5], list(range(10, 40))], [0, 0], pad_id=0
    )
    torch.testing.assert_close(alone[0], padded[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(nll_alone[0], nll_padded[0], rtol=1e-5, atol=1e-6)


def test_capture_restores_requires_grad_and_hooks(tmp_path: Path) -> None:
    lm = load_model(make_tiny_model_dir(tmp_path, "llama"))
    before = [p.requires_grad for p in lm.model.parameters()]
    capture = GradientCapture(lm.model, FeatureConfig())
    featurize_batch(capture, [[1, 2, 3, 4]], [0], pad_id=0)
    assert [p.requires_grad for p in lm.model.parameters()] == before
    assert all(not m.module._forward_hooks for m in capture.modules)


def test_gpt2_conv1d_modules_are_tracked(tmp_path: Path) -> None:
    lm = load_model(make_tiny_model_dir(tmp_path, "gpt2"))
    names = [m.name for m in select_modules(lm.model, FeatureConfig())]
    assert any(n.endswith("attn.c_attn") for n in names)  # a Conv1D in HF GPT-2
    assert any(n.endswith("mlp.c_fc") for n in names)


def test_module_patterns_and_empty_selection(tmp_path: Path) -> None:
    lm = load_model(make_tiny_model_dir(tmp_path, "llama"))
    only_mlp = select_modules(lm.model, FeatureConfig(include=("*.mlp.*",)))
    assert only_mlp and all(".mlp." in m.name for m in only_mlp)
    with pytest.raises(ConfigError, match="no Linear/Conv1D module matches"):
        select_modules(lm.model, FeatureConfig(include=("nothing.*",)))


def test_projection_is_seeded_per_module() -> None:
    a = projection_matrix(0, "layer.0", "in", 16, 4)
    assert torch.equal(a, projection_matrix(0, "layer.0", "in", 16, 4))
    assert not torch.equal(a, projection_matrix(1, "layer.0", "in", 16, 4))
    assert not torch.equal(a, projection_matrix(0, "layer.1", "in", 16, 4))


def test_closed_form_logit_gradient_equals_autograd() -> None:
    from auditor_server.attribution.capture import logit_grad_and_nll

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 7, 11, generator=gen, requires_grad=True)
    ids = torch.randint(0, 11, (3, 7), generator=gen)
    mask = torch.zeros(3, 7, dtype=torch.long)
    mask[0, 1:] = 1
    mask[1, 4:6] = 1  # a gap in the middle (padding or prompt tokens after the target)
    mask[2, 3:] = 1
    nll = masked_token_nll(logits, ids, mask)
    nll.sum().backward()
    grad, closed_nll = logit_grad_and_nll(logits.detach(), ids, mask)
    torch.testing.assert_close(closed_nll, nll.detach())
    assert logits.grad is not None
    torch.testing.assert_close(grad, logits.grad)
    # The last position predicts nothing and masked positions contribute nothing.
    assert torch.count_nonzero(grad[:, -1]) == 0
    assert torch.count_nonzero(grad[1, :3]) == 0


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_input_embedding_capture_matches_the_whole_matrix_gradient(
    tmp_path: Path, arch: str
) -> None:
    """With input embeddings captured, a tied output layer's block is the projection of the
    shared matrix's *whole* gradient (both uses), and an untied embedding has its own block."""
    lm = load_model(make_tiny_model_dir(tmp_path, arch))
    model = lm.model
    config = FeatureConfig(proj_in=4, proj_out=3, input_embeddings=True)
    capture = GradientCapture(model, config)
    embedding = model.get_input_embeddings()
    tied = model.get_output_embeddings().weight is embedding.weight
    names = capture.module_names
    assert tied == (len(names) == len(select_modules(model, config)))
    assert any(m.module is embedding for m in capture.modules) != tied
    seqs = [[5, 6, 7, 8, 9, 10, 5], [12, 13, 14]]
    feats, _ = featurize_batch(capture, seqs, [0, 1], pad_id=0)
    for b, (seq, start) in enumerate(zip(seqs, [0, 1], strict=True)):
        ref, _ = _reference_features(model, capture, seq, start, config)
        for i, expected in enumerate(ref):
            scale = expected.abs().max().clamp_min(1e-12)
            assert (feats[b, i] - expected).abs().max() / scale < 1e-4, names[i]
    without = GradientCapture(model, FeatureConfig(proj_in=4, proj_out=3))
    plain, _ = featurize_batch(without, seqs, [0, 1], pad_id=0)
    out_index = next(
        i for i, m in enumerate(capture.modules) if m.module is model.get_output_embeddings()
    )
    assert not torch.allclose(plain[:, out_index], feats[:, out_index]) or not tied
