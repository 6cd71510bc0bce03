"""Featurize throughput of ``auditor-server build`` with 1 and 2 processes, and on one GPU.

What it answers: how many rows (token windows) per second the build's featurize stage
computes for a GPT-2-small-sized and a ~1B-parameter model (random weights), launched by
``torchrun`` (gloo on CPU, each rank a model replica; NCCL/one GPU with ``--device cuda``),
next to a plain training forward+backward of the same windows in the same batches.

Per model and process count, the real CLI runs twice into a fresh directory:

* ``build s``: the whole build (torchrun start, model load, ingest, tokenize, featurize,
  preconditioner and index fit, manifest);
* ``resumed s``: the same command again, every shard reused: everything but featurization;
  ``build-resumed s`` is their difference;
* ``featurize s``: the featurize stage alone, from the files the first build wrote: the last
  shard's mtime minus the last write before the first shard (the verbatim index, written
  after the model load and tokenization, just before the shard loop). The rows/s and the
  ratio use it: ``build-resumed`` also carries whatever else differs between a fresh and a
  resumed build (ingest, guard, verbatim index, and a preconditioner fit that we saw take
  21 s right after featurizing vs 4 s in the resumed build, OpenBLAS threads on 2 cores).

The baseline (``plain``) is ``featurize_throughput.plain_step`` (HF ``labels=`` loss,
parameter gradients, eval mode) over the very windows the build featurized, cut into the
same shards and length-sorted batches, in this process, with torch's default threads, run
after the builds so that no model replica competes for memory. Models are random-weight
GPT-2 configurations written as local model directories with the demo model's tokenizer
(its vocabulary: 4096 tokens, so "gpt2-small" has 12x768 blocks but fewer than 124M
parameters); nothing is downloaded.

    PYTHONPATH=. .venv/bin/python bench/featurize_scale.py --out runs/bench/results/fs.json
    PYTHONPATH=. .venv/bin/python bench/featurize_scale.py --models gpt2-small --rows 64
    PYTHONPATH=. .venv/bin/python bench/featurize_scale.py --device cuda   # one GPU, 1 process
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from auditor_server.attribution.config import FeatureConfig
from auditor_server.attribution.featurize import Featurizer
from auditor_server.attribution.store import SHARD_DIR, plan_shards
from auditor_server.model.loading import TOKENIZER_FILES, load_model
from bench._common import add_omp_argument, apply_omp_wait_policy, machine, print_table
from bench.featurize_throughput import plain_step

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")

#: name -> (n_layer, n_embd, n_head); n_positions is 1024 for both.
MODELS = {"tiny": (2, 64, 2), "gpt2-small": (12, 768, 12), "1b": (24, 2048, 16)}
#: Rows featurized per model when --rows is not given: (CPU, GPU). "tiny" is a smoke test.
DEFAULT_ROWS = {"tiny": (64, 64), "gpt2-small": (256, 4096), "1b": (48, 1024)}


def make_model_dir(name: str, out: Path, tokenizer_dir: Path, seed: int) -> int:
    """Write a random-weight GPT-2 of size ``name`` (fp32) with ``tokenizer_dir``'s tokenizer
    into ``out``, unless a finished one is there; returns its parameter count."""
    n_layer, n_embd, n_head = MODELS[name]
    stamp = out / "bench-params.json"
    want = {"name": name, "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "seed": seed}
    if stamp.is_file():
        done = json.loads(stamp.read_text())
        if {k: done.get(k) for k in want} == want:
            return int(done["params"])
    shutil.rmtree(out, ignore_errors=True)
    src = json.loads((tokenizer_dir / "config.json").read_text())
    tok = load_model(tokenizer_dir).tokenizer
    config = GPT2Config(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_positions=1024,
        vocab_size=len(tok),
        bos_token_id=src.get("bos_token_id"),
        eos_token_id=src.get("eos_token_id"),
        pad_token_id=src.get("pad_token_id"),
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).to(torch.float32)
    params = sum(p.numel() for p in model.parameters())  # tied wte/lm_head once
    model.save_pretrained(out)
    del model
    gc.collect()
    for fname in TOKENIZER_FILES:
        if (tokenizer_dir / fname).is_file():
            shutil.copy2(tokenizer_dir / fname, out / fname)
    stamp.write_text(json.dumps({**want, "params": params}))
    return params


def corpus_slice(
    corpus: Path, tokenizer_dir: Path, features: FeatureConfig, rows: int, out: Path
) -> tuple[int, int]:
    """The first records of ``corpus`` holding at least ``rows`` windows, written to ``out``;
    returns (records, windows)."""
    featurizer = Featurizer(load_model(tokenizer_dir), features)
    lines: list[str] = []
    n_rows = 0
    with corpus.open() as fh:
        for line in fh:
            if not line.strip():
                continue
            _, table = featurizer.tokenize_records([json.loads(line)["text"]])
            lines.append(line if line.endswith("\n") else line + "\n")
            n_rows += len(table)
            if n_rows >= rows:
                break
    out.write_text("".join(lines))
    return len(lines), n_rows


def wait_for_load(limit: float, max_wait_s: float, poll_s: float = 30.0) -> float:
    """Block until the 1-minute load average is below ``limit`` (at most ``max_wait_s``)."""
    deadline = time.monotonic() + max_wait_s
    while True:
        load = os.getloadavg()[0]
        if load < limit or time.monotonic() >= deadline:
            return load
        print(f"  load {load:.2f} >= {limit}: waiting", flush=True)
        time.sleep(poll_s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_build(cmd: list[str], timeout: float) -> tuple[float, str]:
    """Wall seconds and stdout of one build command (raises on failure)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def shard_stamp_seconds(out_dir: Path) -> float:
    """Last shard's mtime minus the last non-shard write before the first shard finished."""
    shards = [p.stat().st_mtime for p in (out_dir / SHARD_DIR).glob("shard-*")]
    first, last = min(shards), max(shards)
    before = [
        p.stat().st_mtime
        for p in out_dir.rglob("*")
        if p.is_file() and SHARD_DIR not in p.relative_to(out_dir).parts[:1]
    ]
    start = max((t for t in before if t < first), default=first)
    return last - start


def build_case(
    args: argparse.Namespace, model_dir: Path, corpus: Path, out_dir: Path, procs: int
) -> dict[str, Any]:
    """A fresh build and its resumed rerun under ``torchrun --nproc_per_node=procs``."""
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [
        str(TORCHRUN),
        f"--nproc_per_node={procs}",
        f"--master_port={_free_port()}",
        "-m",
        "auditor_server.cli",
        "build",
        "--model",
        str(model_dir),
        "--corpus",
        str(corpus),
        "--out",
        str(out_dir),
        "--device",
        args.device,
        "--dtype",
        "float32",
        "--proj-in",
        str(args.proj_in),
        "--proj-out",
        str(args.proj_out),
        "--span-tokens",
        str(args.span_tokens),
        "--span-stride",
        str(args.span_stride),
        "--batch-size",
        str(args.batch_size),
        "--shard-rows",
        str(args.shard_rows),
        "--no-progress",
    ]
    load_before = machine()
    build_s, out = run_build(cmd, args.timeout)
    stamp_s = shard_stamp_seconds(out_dir)
    resumed_s, out2 = run_build(cmd, args.timeout)
    m = re.search(r"indexed ([\d,]+) rows .*?(\d+) shards computed, (\d+) reused", out, re.S)
    m2 = re.search(r"(\d+) shards computed, (\d+) reused", out2)
    if m is None or m2 is None or int(m2.group(1)) != 0:
        raise RuntimeError(f"unexpected build output:\n{out}\n---\n{out2}")
    return {
        "procs": procs,
        "command": " ".join(cmd),
        "rows": int(m.group(1).replace(",", "")),
        "shards": int(m.group(2)),
        "build_s": build_s,
        "resumed_s": resumed_s,
        "build_minus_resumed_s": build_s - resumed_s,
        "featurize_s": stamp_s,  # shard stamps
        "machine_before": load_before,
        "machine_after": machine(),
    }


def plain_case(args: argparse.Namespace, model_dir: Path, corpus: Path) -> dict[str, Any]:
    """Seconds of ``plain_step`` over the build's windows, shards and length-sorted batches."""
    features = FeatureConfig(
        span_tokens=args.span_tokens, span_stride=args.span_stride, batch_size=args.batch_size
    )
    lm = load_model(model_dir, device=args.device, dtype=torch.float32)
    lm.model.train(False)
    featurizer = Featurizer(lm, features)
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines() if line.strip()]
    ids, rows = featurizer.tokenize_records(texts)
    batches: list[list[list[int]]] = []
    for spec in plan_shards(len(rows), args.shard_rows):  # as Featurizer.featurize_rows
        order = sorted(
            range(spec.start, spec.stop),
            key=lambda r: (int(rows.tok_end[r] - rows.tok_start[r]), r),
        )
        for b in range(0, len(order), args.batch_size):
            batches.append(
                [
                    featurizer.window(
                        ids[int(rows.record[r])], int(rows.tok_start[r]), int(rows.tok_end[r])
                    )
                    for r in order[b : b + args.batch_size]
                ]
            )
    pad = lm.tokenizer.pad_token_id
    pad_id = int(pad) if pad is not None else 0
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    plain_step(lm.model, batches[0], pad_id)  # warm-up (allocator, kernels)
    sync()
    load_before = machine()
    t0 = time.perf_counter()
    for batch in batches:
        plain_step(lm.model, batch, pad_id)
    sync()
    seconds = time.perf_counter() - t0
    del lm, featurizer
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {
        "rows": len(rows),
        "batches": len(batches),
        "threads": torch.get_num_threads(),
        "plain_s": seconds,
        "machine_before": load_before,
        "machine_after": machine(),
    }


def mem_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["gpt2-small", "1b"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--procs", type=int, nargs="+", help="process counts (default: 1 2 on CPU, 1 on cuda)"
    )
    parser.add_argument(
        "--rows",
        type=int,
        nargs="+",
        help="rows per model, in --models order (default: 256/48 on CPU, 4096/1024 on GPU)",
    )
    parser.add_argument("--corpus", type=Path, default=Path("runs/demo/corpus.jsonl"))
    parser.add_argument(
        "--tokenizer-from", type=Path, default=Path("runs/demo/model"), help="model dir"
    )
    parser.add_argument("--scratch", type=Path, default=Path("runs/bench/featurize-scale"))
    parser.add_argument("--proj-in", type=int, default=16)
    parser.add_argument("--proj-out", type=int, default=16)
    parser.add_argument("--span-tokens", type=int, default=32)
    parser.add_argument("--span-stride", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-rows", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-load", type=float, default=2.5, help="wait for load below this")
    parser.add_argument("--max-wait-s", type=float, default=1200.0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="per build command")
    parser.add_argument("--keep-models", action="store_true", help="keep the model dirs")
    parser.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    add_omp_argument(parser)
    args = parser.parse_args(argv)
    apply_omp_wait_policy(args.omp_wait_policy)
    on_gpu = args.device == "cuda"
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    procs_list = args.procs or ([1] if on_gpu else [1, 2])
    rows_list = args.rows or [DEFAULT_ROWS[m][int(on_gpu)] for m in args.models]
    if len(rows_list) != len(args.models):
        raise SystemExit("--rows needs one count per model")
    print(machine())
    if not on_gpu:
        print("device: CPU only (gloo); pass --device cuda on a GPU machine for the GPU case")
    else:
        print(f"device: {torch.cuda.get_device_name(0)} (one GPU, NCCL, 1 process)")
    args.scratch.mkdir(parents=True, exist_ok=True)
    features = FeatureConfig(span_tokens=args.span_tokens, span_stride=args.span_stride)
    results: list[dict[str, Any]] = []
    table: list[list[str]] = []
    notes: list[str] = []
    for name, want_rows in zip(args.models, rows_list, strict=True):
        model_dir = args.scratch / f"model-{name}"
        t0 = time.perf_counter()
        params = make_model_dir(name, model_dir, args.tokenizer_from, args.seed)
        corpus = args.scratch / f"corpus-{name}.jsonl"
        n_records, n_rows = corpus_slice(
            args.corpus, args.tokenizer_from, features, want_rows, corpus
        )
        print(
            f"\n{name}: {params / 1e6:.1f}M params (dir ready in {time.perf_counter() - t0:.0f} s)"
            f", corpus {n_records} records, {n_rows} rows",
            flush=True,
        )
        entry: dict[str, Any] = {
            "model": name,
            "params": params,
            "config": dict(zip(("n_layer", "n_embd", "n_head"), MODELS[name], strict=True)),
            "records": n_records,
            "rows": n_rows,
            "builds": [],
        }
        print(f"  load before runs: {wait_for_load(args.max_load, args.max_wait_s):.2f}")
        for procs in procs_list:
            need = procs * params * 4 * 1.5  # fp32 replica + activations/hook buffers, rough
            if not on_gpu and need > mem_available():
                note = (
                    f"{name} x{procs} skipped: needs ~{need / 2**30:.1f} GiB, "
                    f"{mem_available() / 2**30:.1f} GiB available"
                )
                print("  " + note)
                notes.append(note)
                continue
            try:
                case = build_case(
                    args, model_dir, corpus, args.scratch / f"out-{name}-p{procs}", procs
                )
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                note = f"{name} x{procs} failed: {str(exc)[-1500:]}"
                print("  " + note)
                notes.append(note)
                continue
            entry["builds"].append(case)
            print(
                f"  {procs} proc: build {case['build_s']:.1f} s, resumed {case['resumed_s']:.1f} s"
                f" (difference {case['build_minus_resumed_s']:.1f} s), "
                f"featurize {case['featurize_s']:.1f} s (shard stamps), {case['rows']} rows\n"
                f"    {case['machine_after']}",
                flush=True,
            )
        plain = plain_case(args, model_dir, corpus)
        entry["plain"] = plain
        print(
            f"  plain fwd+bwd: {plain['plain_s']:.1f} s for {plain['rows']} rows "
            f"({plain['batches']} batches, {plain['threads']} threads)\n"
            f"    {plain['machine_after']}",
            flush=True,
        )
        plain_rate = plain["rows"] / plain["plain_s"]
        for case in entry["builds"]:
            rate = case["rows"] / case["featurize_s"]
            table.append(
                [
                    name,
                    f"{params / 1e6:.0f}M",
                    str(case["rows"]),
                    str(case["procs"]),
                    f"{case['build_s']:.1f}",
                    f"{case['resumed_s']:.1f}",
                    f"{case['build_minus_resumed_s']:.1f}",
                    f"{case['featurize_s']:.1f}",
                    f"{case['rows'] / case['build_s']:.2f}",
                    f"{rate:.2f}",
                    f"{plain_rate:.2f}",
                    f"{rate / plain_rate:.2f}x",
                ]
            )
        results.append(entry)
        if not args.keep_models:
            shutil.rmtree(model_dir, ignore_errors=True)
    print()
    print(machine())
    if table:
        print_table(
            [
                "model",
                "params",
                "rows",
                "procs",
                "build s",
                "resumed s",
                "build-resumed s",
                "featurize s",
                "build rows/s",
                "featurize rows/s",
                "plain fwd+bwd rows/s",
                "featurize/plain",
            ],
            table,
        )
    for note in notes:
        print(f"note: {note}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "device": args.device,
                    "settings": {
                        k: getattr(args, k)
                        for k in (
                            "proj_in",
                            "proj_out",
                            "span_tokens",
                            "span_stride",
                            "batch_size",
                            "shard_rows",
                            "seed",
                        )
                    },
                    "models": results,
                    "notes": notes,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
