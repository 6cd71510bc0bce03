"""Per-example projected gradients of linear layers, without ever forming a weight gradient.

For a linear map ``y = x W`` (``nn.Linear`` or HF's ``Conv1D``) the gradient of an example's
loss with respect to ``W`` is ``Σ_t g_t x_tᵀ`` over its tokens, where ``x_t`` is the layer input
and ``g_t = ∂L/∂y_t``. Projecting both sides with fixed random matrices gives the LoGra-style
factorized feature ``(G·P_out)ᵀ (X·P_in)`` of size ``k_out × k_in`` per module: two thin
matmuls and one small batched product per example. We capture ``X`` in a forward hook and
``G`` in a hook on the module's output tensor, so one forward+backward over a batch yields
every example's features at once. Model parameters are frozen during capture, so autograd
computes only activation gradients, never the (large) weight gradients.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from auditor_server.attribution.config import FeatureConfig
from auditor_server.errors import ConfigError


@dataclass(frozen=True)
class TrackedModule:
    """A linear layer whose projected gradient is part of every row."""

    name: str
    module: nn.Module
    d_in: int
    d_out: int


def linear_dims(module: nn.Module) -> tuple[int, int] | None:
    """(d_in, d_out) of a linear-like module, or None for anything else.

    HF GPT-2 implements its projections as ``Conv1D`` whose weight is stored transposed
    (d_in × d_out) relative to ``nn.Linear`` (d_out × d_in); both are linear maps of the
    last axis, so both are tracked.
    """
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        d_in, d_out = module.weight.shape
        return int(d_in), int(d_out)
    return None


def select_modules(model: nn.Module, config: FeatureConfig) -> list[TrackedModule]:
    """The tracked modules of ``model``, in a stable (registration) order.

    Raises:
        ConfigError: when the patterns select no linear module.
    """
    tracked: list[TrackedModule] = []
    for name, module in model.named_modules():
        dims = linear_dims(module)
        if dims is None or not name:
            continue
        if not any(fnmatch.fnmatchcase(name, pat) for pat in config.include):
            continue
        if any(fnmatch.fnmatchcase(name, pat) for pat in config.exclude):
            continue
        tracked.append(TrackedModule(name=name, module=module, d_in=dims[0], d_out=dims[1]))
    if not tracked:
        raise ConfigError(
            f"no Linear/Conv1D module matches include={list(config.include)} "
            f"exclude={list(config.exclude)}"
        )
    return tracked


def projection_matrix(seed: int, module_name: str, side: str, rows: int, cols: int) -> torch.Tensor:
    """A seeded Gaussian projection, scaled so projected norms match the original in expectation.

    The generator seed mixes the global seed with the module name and side, so each module has
    its own independent projection and adding a module does not change the others.
    """
    digest = hashlib.sha256(f"{seed}\x00{module_name}\x00{side}".encode()).digest()
    gen = torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little"))
    matrix = torch.randn(rows, cols, generator=gen, dtype=torch.float32)
    return matrix.div_(cols**0.5)


class GradientCapture:
    """Hooks that turn one backward pass into per-example projected features.

    Use :meth:`capture` as a context manager around a forward+backward; afterwards
    :meth:`features` returns a ``(batch, n_modules, k_out*k_in)`` tensor.
    """

    def __init__(self, model: nn.Module, config: FeatureConfig) -> None:
        self.model = model
        self.config = config
        self.modules = select_modules(model, config)
        device = next(model.parameters()).device
        self._p_in = [
            projection_matrix(config.seed, m.name, "in", m.d_in, config.proj_in).to(device)
            for m in self.modules
        ]
        self._p_out = [
            projection_matrix(config.seed, m.name, "out", m.d_out, config.proj_out).to(device)
            for m in self.modules
        ]
        self._embedding = self._embedding_block(model, config, device)
        self._inputs: list[torch.Tensor | None] = [None] * len(self.modules)
        self._feats: list[torch.Tensor | None] = [None] * len(self.modules)
        self._mask: torch.Tensor | None = None

    def _embedding_block(
        self, model: nn.Module, config: FeatureConfig, device: torch.device
    ) -> _EmbeddingBlock | None:
        """Where the input embedding's gradient goes, when the config asks for it.

        A matrix shared with a tracked output layer adds into that layer's block under the
        same projections (vocabulary side = the layer's output side), so the block projects
        the gradient of the one shared matrix; an unshared embedding gets its own block.
        """
        if not config.input_embeddings:
            return None
        embedding = model.get_input_embeddings()  # type: ignore[operator]
        if not isinstance(embedding, nn.Embedding):
            raise ConfigError("input_embeddings needs an nn.Embedding input layer")
        output = model.get_output_embeddings()  # type: ignore[operator]
        for i, m in enumerate(self.modules):
            if output is not None and m.module is output and output.weight is embedding.weight:
                return _EmbeddingBlock(
                    i, vocab_proj=self._p_out[i], dim_proj=self._p_in[i], tied=True
                )
        name = next(n for n, mod in model.named_modules() if mod is embedding)
        vocab, dim = embedding.weight.shape
        self.modules.append(TrackedModule(name=name, module=embedding, d_in=vocab, d_out=dim))
        self._p_in.append(
            projection_matrix(config.seed, name, "in", vocab, config.proj_in).to(device)
        )
        self._p_out.append(
            projection_matrix(config.seed, name, "out", dim, config.proj_out).to(device)
        )
        i = len(self.modules) - 1
        return _EmbeddingBlock(i, vocab_proj=self._p_in[i], dim_proj=self._p_out[i], tied=False)

    @property
    def module_names(self) -> list[str]:
        """Qualified names of the tracked modules, in feature order."""
        return [m.name for m in self.modules]

    @property
    def dim(self) -> int:
        """Width of one flattened row."""
        return len(self.modules) * self.config.dims_per_module

    @contextmanager
    def capture(self, token_mask: torch.Tensor) -> Iterator[None]:
        """Install hooks for one forward+backward.

        Args:
            token_mask: ``(batch, seq)`` 1 for real tokens, 0 for padding; padded positions
                contribute nothing to any feature.
        """
        self._mask = token_mask.to(dtype=torch.float32)
        self._inputs = [None] * len(self.modules)
        self._feats = [None] * len(self.modules)
        block = self._embedding
        handles = [
            m.module.register_forward_hook(self._forward_hook(i))
            for i, m in enumerate(self.modules)
            if block is None or block.tied or i != block.index
        ]
        embeddings = self.model.get_input_embeddings()  # type: ignore[operator]
        handles.append(
            embeddings.register_forward_hook(
                _make_output_require_grad if block is None else self._embedding_hook(block)
            )
        )
        requires_grad = [p.requires_grad for p in self.model.parameters()]
        for p in self.model.parameters():
            p.requires_grad_(False)
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for p, flag in zip(self.model.parameters(), requires_grad, strict=True):
                p.requires_grad_(flag)
            self._inputs = [None] * len(self.modules)

    def _forward_hook(self, index: int):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            assert self._mask is not None
            # Mask after projecting: zeroing a token's k_in projected values is the same as
            # zeroing its d_in inputs (the feature sums g_t x_tᵀ over tokens), without a
            # (tokens x d_in) masked copy of every module's input.
            x_proj = args[0].detach().to(torch.float32) @ self._p_in[index]
            self._inputs[index] = x_proj.mul_(self._mask.unsqueeze(-1))
            if output.requires_grad:
                output.register_hook(self._grad_hook(index))  # type: ignore[no-untyped-call]

        return hook

    def _grad_hook(self, index: int):  # type: ignore[no-untyped-def]
        def hook(grad: torch.Tensor) -> None:
            x_proj = self._inputs[index]
            assert x_proj is not None, "gradient arrived for a module with no captured input"
            g_proj = grad.to(torch.float32) @ self._p_out[index]
            # (B, T, k_out)ᵀ · (B, T, k_in) -> (B, k_out, k_in), summed over tokens.
            feat = torch.bmm(g_proj.transpose(1, 2), x_proj).flatten(1)
            prev = self._feats[index]
            # A module called twice in one forward (weight sharing) accumulates, like a gradient.
            self._feats[index] = feat if prev is None else prev + feat
            self._inputs[index] = None

        return hook

    def _embedding_hook(self, block: _EmbeddingBlock):  # type: ignore[no-untyped-def]
        def hook(
            module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> torch.Tensor:
            assert self._mask is not None
            # One-hot input: its projection is the projection matrix's row for each token.
            onehot_proj = block.vocab_proj[args[0]] * self._mask.unsqueeze(-1)
            out = output.detach().requires_grad_(True)

            def grad_hook(grad: torch.Tensor) -> None:
                g_proj = grad.to(torch.float32) @ block.dim_proj
                if block.tied:  # output layer orientation: (vocab side)ᵀ · (hidden side)
                    feat = torch.bmm(onehot_proj.transpose(1, 2), g_proj).flatten(1)
                else:  # a layer of its own: (output = hidden side)ᵀ · (input = one-hot side)
                    feat = torch.bmm(g_proj.transpose(1, 2), onehot_proj).flatten(1)
                prev = self._feats[block.index]
                self._feats[block.index] = feat if prev is None else prev + feat

            out.register_hook(grad_hook)  # type: ignore[no-untyped-call]
            return out

        return hook

    def features(self) -> torch.Tensor:
        """``(batch, n_modules, dims_per_module)`` features of the last captured pass.

        Raises:
            RuntimeError: if a tracked module received no gradient (e.g. it is not on the
                path from the loss), which would silently zero part of every row.
        """
        missing = [m.name for m, f in zip(self.modules, self._feats, strict=True) if f is None]
        if missing:
            raise RuntimeError(f"no gradient reached tracked module(s): {', '.join(missing)}")
        return torch.stack([f for f in self._feats if f is not None], dim=1)


@dataclass(frozen=True)
class _EmbeddingBlock:
    """The feature block the input embedding's gradient goes into, and its projections."""

    index: int
    vocab_proj: torch.Tensor
    """(vocab, k): the projection of the one-hot token side."""
    dim_proj: torch.Tensor
    """(hidden, k): the projection of the gradient at the embedding's output."""
    tied: bool
    """The block is a tied output layer's (orientation: vocabulary side first)."""


def _make_output_require_grad(
    module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor
) -> torch.Tensor:
    # With every parameter frozen nothing would require grad; marking the embedding output
    # lets autograd propagate activation gradients through the network (and only those).
    return output.detach().requires_grad_(True)


def masked_token_nll(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    """Per-example summed next-token NLL over positions where ``loss_mask`` is 1.

    ``loss_mask[b, t]`` marks that token ``t`` is a *target* (predicted from position t-1).
    Summing (not averaging) keeps each example's gradient independent of its batch-mates
    and of padding.
    """
    logp = torch.log_softmax(logits[:, :-1].to(torch.float32), dim=-1)
    targets = input_ids[:, 1:]
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (nll * loss_mask[:, 1:].to(nll.dtype)).sum(dim=1)


def logit_grad_and_nll(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``∂/∂logits`` of ``masked_token_nll(...).sum()`` and the per-example NLL, in closed form.

    Capture needs only the gradient at the logits, and for a summed token NLL it is
    ``softmax(z_t) - onehot(target_t)`` at each counted position, 0 elsewhere. Building it
    directly in one ``(batch, seq, vocab)`` buffer (log-softmax, NLL gathered from it, then
    ``exp_`` / scatter / mask in place) replaces the loss graph, whose backward allocates
    and fills several more vocab-sized buffers (slice, gather and log-softmax backward);
    with a 50k vocabulary each is ~200 MB per 1,024 tokens.
    """
    with torch.no_grad():
        buf = torch.log_softmax(logits.to(torch.float32), dim=-1)
        # Position t predicts token t+1; the last position predicts nothing.
        targets = torch.roll(input_ids, -1, dims=1).unsqueeze(-1)
        weight = torch.roll(loss_mask, -1, dims=1).to(buf.dtype)
        weight[:, -1] = 0
        nll = -(buf.gather(-1, targets).squeeze(-1) * weight).sum(dim=1)
        grad = buf.exp_()
        grad.scatter_add_(-1, targets, torch.full_like(weight, -1.0).unsqueeze(-1))
        grad.mul_(weight.unsqueeze(-1))
    return grad.to(logits.dtype), nll


def batch_tensors(
    sequences: Sequence[Sequence[int]], target_starts: Sequence[int], *, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``ids``, ``attention_mask`` and loss mask of a ragged batch.

    The loss mask counts token ``t`` (predicted from position ``t-1``) from
    ``max(target_start, 1)`` to the end of its sequence; padding is never counted.
    """
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(sequences), width), dtype=torch.long)
    loss_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for b, (seq, start) in enumerate(zip(sequences, target_starts, strict=True)):
        ids[b, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        attn[b, : len(seq)] = 1
        loss_mask[b, max(start, 1) : len(seq)] = 1
    return ids, attn, loss_mask


def featurize_batch(
    capture: GradientCapture,
    sequences: Sequence[Sequence[int]],
    target_starts: Sequence[int],
    *,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected per-example gradients of a batch of token sequences.

    Args:
        capture: hooks bound to the model.
        sequences: token ids of each example (ragged; right-padded here).
        target_starts: index of the first token counted in each example's loss (0 for a
            training window: every predicted token; the completion start for a query).
        pad_id: id used for padding (masked out everywhere).

    Returns:
        ``(batch, n_modules, dims_per_module)`` float32 features and the ``(batch,)`` summed
        NLL of each example's counted tokens (for a query: −log p(completion | prompt), so
        no second forward pass is needed to report it), both on CPU.
    """
    model = capture.model
    device = next(model.parameters()).device
    ids, attn, loss_mask = (
        t.to(device) for t in batch_tensors(sequences, target_starts, pad_id=pad_id)
    )
    with capture.capture(attn):
        logits = model(input_ids=ids, attention_mask=attn).logits
        grad, nll = logit_grad_and_nll(logits, ids, loss_mask)
        logits.backward(grad)
    return capture.features().cpu(), nll.cpu()
