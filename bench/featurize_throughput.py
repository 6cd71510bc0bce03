"""Examples/s of gradient feature capture vs. a plain training forward+backward.

Why this comparison: building the gradient store costs one forward+backward per batch of
windows, so the natural yardstick is what the lab already pays to *train* on those windows.
Capture freezes the parameters (no weight gradients: roughly a third of a training step's
FLOPs) but adds hooks and two thin projections per tracked module; it should therefore cost
about as much as a training step, or less. Targets: >= 0.7x a training step's examples/s on
the demo model (small matrices, where per-module overheads weigh most) and >= 1.0x on a
GPT-2-small-sized model (124M parameters, where the saved weight gradients dominate).

Both sides run the same model, in eval mode (no dropout), on the same batches, timed
interleaved in one process; the figure is the ratio of medians. The baseline is the
trainer's step (HF ``labels=`` loss, parameter gradients); capture is the product's
``featurize_batch`` (summed next-token NLL over every predicted token, frozen parameters).

    PYTHONPATH=. .venv/bin/python bench/featurize_throughput.py --model runs/demo/model
    PYTHONPATH=. .venv/bin/python bench/featurize_throughput.py --skip-124m --profile
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from auditor_server.attribution.capture import GradientCapture, batch_tensors, featurize_batch
from auditor_server.attribution.config import FeatureConfig
from auditor_server.attribution.featurize import Featurizer
from auditor_server.model.loading import load_model
from bench._common import add_omp_argument, apply_omp_wait_policy, interleaved, machine, print_table

DEFAULT_MODELS = ("runs/demo/model", "runs/bench/demo-model", "runs/bench/model")
DEFAULT_CORPUS = ("runs/demo/corpus.jsonl",)


@dataclass
class Case:
    """One (model, window length, batch size) configuration and its contenders."""

    label: str
    span: int
    batch: int
    contenders: dict[str, Callable[[], object]]
    model: nn.Module


def _batch_tensors(
    seqs: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and loss mask of training windows (every predicted
    token counted), built by the product's own ``batch_tensors``."""
    return batch_tensors(seqs, [0] * len(seqs), pad_id=pad_id)


def plain_step(model: nn.Module, seqs: Sequence[Sequence[int]], pad_id: int) -> None:
    """A training step's forward+backward, as ``model/train.py`` runs it.

    Parameter gradients on (fresh, ``set_to_none``), Hugging Face's own causal-LM loss via
    ``labels`` (padding ignored): the cost the lab already pays per batch when training.
    """
    ids, attn, _ = _batch_tensors(seqs, pad_id)
    labels = ids.masked_fill(attn == 0, -100)
    for p in model.parameters():
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, attention_mask=attn, labels=labels).loss.backward()


def capture_step(capture: GradientCapture, seqs: Sequence[Sequence[int]], pad_id: int) -> None:
    """The product's per-batch featurization (what ``Featurizer`` calls for every batch)."""
    featurize_batch(capture, seqs, [0] * len(seqs), pad_id=pad_id)


def cycle(
    batches: list[list[list[int]]], fn: Callable[[list[list[int]]], None]
) -> Callable[[], None]:
    """A zero-argument callable that processes the next batch on each call."""
    state = {"i": 0}

    def run() -> None:
        fn(batches[state["i"] % len(batches)])
        state["i"] += 1

    return run


def gpt2_124m(seed: int) -> nn.Module:
    """GPT-2 small's architecture with random weights, built from a config (no download)."""
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=12,
        n_embd=768,
        n_head=12,
        vocab_size=50257,
        n_positions=1024,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config)
    model.eval()
    return model


def demo_windows(
    model_dir: Path, corpus: Path, span: int, count: int, seed: int
) -> list[list[int]]:
    """``count`` full-length windows of real corpus text, as the store would cut them."""
    lm = load_model(model_dir)
    texts = []
    with corpus.open() as fh:
        for line in fh:
            texts.append(json.loads(line)["text"])
    rng = np.random.default_rng(seed)
    rng.shuffle(texts)
    featurizer = Featurizer(lm, FeatureConfig(span_tokens=span, span_stride=span))
    out: list[list[int]] = []
    for start in range(0, len(texts), 64):
        ids, rows = featurizer.tokenize_records(texts[start : start + 64])
        for r in range(len(rows)):
            if rows.tok_end[r] - rows.tok_start[r] == span:
                rec = ids[int(rows.record[r])]
                out.append(featurizer.window(rec, int(rows.tok_start[r]), int(rows.tok_end[r])))
                if len(out) == count:
                    return out
    if not out:
        raise SystemExit(f"{corpus}: no record has {span} tokens")
    while len(out) < count:  # short corpus: reuse windows
        out.extend(out[: count - len(out)])
    return out


def make_cases(args: argparse.Namespace) -> list[Case]:
    """Every configured (model, span, batch) case, with its plain and capture contenders."""
    cases: list[Case] = []
    config = FeatureConfig()
    model_dir = _first_existing(args.model, DEFAULT_MODELS)
    corpus = _first_existing(args.corpus, DEFAULT_CORPUS)
    if model_dir is not None and not args.skip_demo:
        lm = load_model(model_dir)
        pad = lm.tokenizer.pad_token_id
        pad_id = int(pad) if pad is not None else 0
        limit = int(getattr(lm.model.config, "n_positions", 1 << 30))
        for span in args.spans:
            if span > limit:
                print(f"skip {model_dir} at {span} tokens: context is {limit}", file=sys.stderr)
                continue
            batch = args.batch_size
            if corpus is not None:
                windows = demo_windows(model_dir, corpus, span, batch * args.batches, args.seed)
            else:
                windows = _random_windows(len(lm.tokenizer), span, batch * args.batches, args.seed)
            batches = [windows[i : i + batch] for i in range(0, len(windows), batch)]
            capture = GradientCapture(lm.model, config)
            cases.append(
                Case(
                    label=f"demo ({model_dir}, {_n_params(lm.model) / 1e6:.1f}M, "
                    f"{len(capture.modules)} modules)",
                    span=span,
                    batch=batch,
                    contenders={
                        "plain fwd+bwd": cycle(
                            batches, lambda s, m=lm.model, p=pad_id: plain_step(m, s, p)
                        ),
                        "capture": cycle(
                            batches, lambda s, c=capture, p=pad_id: capture_step(c, s, p)
                        ),
                    },
                    model=lm.model,
                )
            )
    if not args.skip_124m:
        model = gpt2_124m(args.seed)
        capture = GradientCapture(model, config)
        for span in args.spans:
            batch = max(1, min(args.batch_size, args.large_batch_tokens // span))
            windows = _random_windows(50257, span, batch * args.batches, args.seed)
            batches = [windows[i : i + batch] for i in range(0, len(windows), batch)]
            cases.append(
                Case(
                    label=f"gpt2-124m (random, {_n_params(model) / 1e6:.0f}M, "
                    f"{len(capture.modules)} modules)",
                    span=span,
                    batch=batch,
                    contenders={
                        "plain fwd+bwd": cycle(batches, lambda s, m=model: plain_step(m, s, 0)),
                        "capture": cycle(batches, lambda s, c=capture: capture_step(c, s, 0)),
                    },
                    model=model,
                )
            )
    return cases


def _first_existing(given: Path | None, defaults: Sequence[str]) -> Path | None:
    if given is not None:
        if not given.exists():
            raise SystemExit(f"{given} does not exist")
        return given
    for d in defaults:
        if Path(d).exists():
            return Path(d)
    return None


def _random_windows(vocab: int, span: int, count: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (count, span), generator=gen).tolist()


def _n_params(model: nn.Module) -> int:
    # Tied weights (GPT-2's lm_head/wte) count once, as parameters() yields them once.
    return sum(p.numel() for p in model.parameters())


def profile(case: Case, top: int) -> None:
    """Print the top operators by self CPU time of one call of each contender."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for name, fn in case.contenders.items():
        fn()  # warm
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        print(f"\n--- profile: {case.label}, {case.span} tokens x {case.batch}: {name}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        help="demo model dir (default: runs/demo/model, else runs/bench/model)",
    )
    parser.add_argument(
        "--corpus",
        type=Path,
        help="corpus JSONL for real windows "
        "(default: runs/demo/corpus.jsonl; random tokens without one)",
    )
    parser.add_argument("--spans", type=int, nargs="+", default=[32, 128])
    parser.add_argument(
        "--batch-size", type=int, default=32, help="windows per batch (the store's default batch)"
    )
    parser.add_argument(
        "--large-batch-tokens",
        type=int,
        default=1024,
        help="cap on tokens per batch for the 124M model (keeps a step ~seconds)",
    )
    parser.add_argument("--batches", type=int, default=2, help="distinct batches cycled through")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-124m", action="store_true")
    parser.add_argument("--profile", action="store_true", help="torch.profiler top ops per case")
    parser.add_argument("--profile-top", type=int, default=18)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    add_omp_argument(parser)
    args = parser.parse_args(argv)
    apply_omp_wait_policy(args.omp_wait_policy)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine())
    cases = make_cases(args)
    rows: list[list[str]] = []
    records = []
    for case in cases:
        timings = interleaved(case.contenders, repeats=args.repeats, warmup=args.warmup)
        plain = timings["plain fwd+bwd"].median
        cap = timings["capture"].median
        ratio = plain / cap
        rows.append(
            [
                case.label,
                f"{case.span}x{case.batch}",
                f"{case.batch / plain:.1f}",
                f"{case.batch / cap:.1f}",
                f"{ratio:.2f}x",
            ]
        )
        records.append(
            {
                "case": case.label,
                "span": case.span,
                "batch": case.batch,
                "plain_s": timings["plain fwd+bwd"].samples,
                "capture_s": timings["capture"].samples,
                "ratio": ratio,
            }
        )
        print(
            f"{case.label} {case.span}x{case.batch}: plain {plain * 1e3:.0f} ms, "
            f"capture {cap * 1e3:.0f} ms, ratio {ratio:.2f}x",
            flush=True,
        )
        if args.profile:
            profile(case, args.profile_top)
    print()
    print_table(["model", "tokens x batch", "plain ex/s", "capture ex/s", "capture/plain"], rows)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "cases": records}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
