"""The capture change of proposal 1, timed: the product's capture against the one it replaced.

Why this exists: ``featurize_throughput.py`` showed that capture saved less than its FLOP
count promises (no weight gradients should save ~1/3 of a step). The profile put the gap in
the loss, not in the hooks: the earlier capture built the loss graph (``masked_token_nll``
slices the logits, materializes ``log_softmax`` of the whole ``(batch, tokens, vocab)``
tensor and gathers from it), so the backward pass allocated and zero-filled several more
vocab-sized buffers (``SliceBackward`` zeros + copy, ``log_softmax_backward``, ``gather``
backward zeros + scatter). For a 50k vocabulary each buffer is ~200 MB per 1,024 tokens, and
on a CPU most of that cost is first-touch page faults and memory bandwidth, not arithmetic.

The product now starts the backward pass from the closed-form logit gradient
(``capture.logit_grad_and_nll``) and masks the *projected* input (``T x k_in``) instead of
the raw one (``T x d_in``). This script keeps the earlier capture (:class:`LossGraphCapture`,
:func:`loss_graph_featurize_batch`) as the baseline, checks both give the *same features*
(:func:`check_equal`), then times them next to a training step and a frozen forward+backward
with no hooks (the floor).

    PYTHONPATH=. .venv/bin/python bench/capture_variants.py --model runs/demo/model
"""

from __future__ import annotations

import argparse
import resource
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from auditor_server.attribution.capture import (
    GradientCapture,
    batch_tensors,
    featurize_batch,
    logit_grad_and_nll,
    masked_token_nll,
)
from auditor_server.attribution.config import FeatureConfig
from auditor_server.model.loading import load_model
from bench._common import add_omp_argument, apply_omp_wait_policy, interleaved, machine, print_table
from bench.featurize_throughput import (
    DEFAULT_CORPUS,
    DEFAULT_MODELS,
    _batch_tensors,
    _first_existing,
    _random_windows,
    demo_windows,
    gpt2_124m,
    plain_step,
)


class LossGraphCapture(GradientCapture):
    """The capture before proposal 1: masks each module's raw input (``T x d_in``) first."""

    def _forward_hook(self, index: int):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            assert self._mask is not None
            x = args[0].detach().to(torch.float32) * self._mask.unsqueeze(-1)
            self._inputs[index] = x @ self._p_in[index]
            if output.requires_grad:
                output.register_hook(self._grad_hook(index))

        return hook


def loss_graph_featurize_batch(
    capture: GradientCapture,
    sequences: Sequence[Sequence[int]],
    target_starts: Sequence[int],
    *,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``featurize_batch`` before proposal 1: back-propagates the summed loss graph."""
    model = capture.model
    device = next(model.parameters()).device
    ids, attn, loss_mask = (
        t.to(device) for t in batch_tensors(sequences, target_starts, pad_id=pad_id)
    )
    with capture.capture(attn):
        logits = model(input_ids=ids, attention_mask=attn).logits
        nll = masked_token_nll(logits, ids, loss_mask)
        nll.sum().backward()  # type: ignore[no-untyped-call]
    return capture.features().cpu(), nll.detach().cpu()


def check_equal(
    model: nn.Module, config: FeatureConfig, seqs: list[list[int]], pad_id: int
) -> float:
    """Max relative difference of features (and NLLs) between the product and the baseline.

    Uses a ragged batch with different target starts, so padding and query-style loss
    masks are covered, not only full training windows.
    """
    ragged = [s[: max(2, len(s) - 3 * i)] for i, s in enumerate(seqs[:4])]
    starts = [0, 1, 2, 0][: len(ragged)]
    ref, ref_nll = loss_graph_featurize_batch(
        LossGraphCapture(model, config), ragged, starts, pad_id=pad_id
    )
    new, new_nll = featurize_batch(GradientCapture(model, config), ragged, starts, pad_id=pad_id)
    err = float((ref - new).abs().max() / ref.abs().max())
    return max(err, float((ref_nll - new_nll).abs().max() / ref_nll.abs().max()))


def faults(fn: Callable[[], object]) -> Callable[[], int]:
    """Minor page faults of one call (first-touch cost of freshly mapped buffers)."""

    def run() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fn()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    return run


def frozen_step(capture: GradientCapture, seqs: Sequence[Sequence[int]], pad_id: int) -> None:
    """Capture's autograd work with no tracking hooks: the floor the hooks add to."""
    ids, attn, loss_mask = _batch_tensors(seqs, pad_id)
    model = capture.model
    emb = model.get_input_embeddings()  # type: ignore[operator]
    handle = emb.register_forward_hook(lambda m, a, o: o.detach().requires_grad_(True))
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        logits = model(input_ids=ids, attention_mask=attn).logits
        logits.backward(logit_grad_and_nll(logits, ids, loss_mask)[0])
    finally:
        handle.remove()
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)


def _contenders(
    model: nn.Module, config: FeatureConfig, pad_id: int, batches: list[list[list[int]]]
) -> dict[str, Callable[[], object]]:
    """The timed variants, each taking the next batch in turn."""
    product = GradientCapture(model, config)
    before = LossGraphCapture(model, config)
    nxt = _cycler(batches)

    def capture() -> None:
        s = nxt()
        featurize_batch(product, s, [0] * len(s), pad_id=pad_id)

    def loss_graph_capture() -> None:
        s = nxt()
        loss_graph_featurize_batch(before, s, [0] * len(s), pad_id=pad_id)

    return {
        "plain": lambda: plain_step(model, nxt(), pad_id),
        "capture-before": loss_graph_capture,
        "capture": capture,
        "frozen-no-hooks": lambda: frozen_step(product, nxt(), pad_id),
    }


def _cycler(batches: list[list[list[int]]]) -> Callable[[], list[list[int]]]:
    """Returns the batches in turn, one per call."""
    state = {"i": 0}

    def nxt() -> list[list[int]]:
        state["i"] += 1
        return batches[state["i"] % len(batches)]

    return nxt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--spans", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--large-batch-tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-124m", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    add_omp_argument(parser)
    args = parser.parse_args(argv)
    apply_omp_wait_policy(args.omp_wait_policy)
    print(machine())
    config = FeatureConfig()
    setups: list[tuple[str, nn.Module, int, int, list[list[list[int]]]]] = []
    model_dir = _first_existing(args.model, DEFAULT_MODELS)
    corpus = _first_existing(args.corpus, DEFAULT_CORPUS)
    if model_dir is not None and not args.skip_demo:
        lm = load_model(model_dir)
        pad_id = int(lm.tokenizer.pad_token_id or 0)
        for span in args.spans:
            b = args.batch_size
            if corpus is not None:
                w = demo_windows(model_dir, corpus, span, 2 * b, args.seed)
            else:
                w = _random_windows(len(lm.tokenizer), span, 2 * b, args.seed)
            setups.append(("demo", lm.model, pad_id, span, [w[:b], w[b:]]))
    if not args.skip_124m:
        big = gpt2_124m(args.seed)
        for span in args.spans:
            b = max(1, min(args.batch_size, args.large_batch_tokens // span))
            w = _random_windows(50257, span, 2 * b, args.seed)
            setups.append(("gpt2-124m", big, 0, span, [w[:b], w[b:]]))
    rows = []
    for name, model, pad_id, span, batches in setups:
        err = check_equal(model, config, batches[0], pad_id)
        assert err < 1e-4, f"the product's features differ from the baseline's: {err:.2e}"
        fns = _contenders(model, config, pad_id, batches)
        t = interleaved(fns, repeats=args.repeats)
        pf = {k: faults(f)() for k, f in fns.items()}
        plain = t["plain"].median
        b = len(batches[0])
        for k in fns:
            rows.append(
                [
                    name,
                    f"{span}x{b}",
                    k,
                    f"{t[k].median * 1e3:.0f}",
                    f"{b / t[k].median:.1f}",
                    f"{plain / t[k].median:.2f}x",
                    f"{pf[k] * 4 / 1024:.0f}",
                ]
            )
        print(
            f"{name} {span}x{b}: max rel. feature diff {err:.1e}; "
            + ", ".join(f"{k} {t[k].median * 1e3:.0f} ms" for k in fns),
            flush=True,
        )
    print()
    print_table(
        ["model", "tokens x batch", "variant", "median ms", "ex/s", "vs plain", "faulted MiB"],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
