"""Shared helpers of the benchmark scripts: timing, machine description, small model builders.

Every benchmark compares the product's code path with a baseline measured *in the same
process, on the same inputs, interleaved*: the sandbox's machines are shared and noisy (two
cores, other jobs), so an absolute figure measured minutes apart from its baseline says
little, while a ratio of interleaved medians is stable.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch


class StageTimer:
    """Seconds per named stage, accumulated across calls until :meth:`reset` (one thread)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def reset(self) -> None:
        self.seconds = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with its wall time added to stage ``name`` on every call."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

        return timed


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated runs of one callable."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quantile(self, q: float) -> float:
        """Nearest-rank quantile (``q`` in [0, 1]); enough for ~100 samples."""
        ordered = sorted(self.samples)
        idx = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return ordered[idx]


def interleaved(
    fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1
) -> dict[str, Timing]:
    """Time each callable ``repeats`` times, alternating between them.

    Alternating (A B A B ...) rather than running A's repeats then B's means that a burst of
    load from another process, CPU frequency changes or allocator warm-up hit both sides
    alike; the order of the callables is rotated every round so none always runs first.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - t0)
    return {n: Timing(s) for n, s in samples.items()}


def machine() -> str:
    """One line naming the CPU, cores, torch threads, date and load, for result tables.

    The load average is part of it because these machines are shared: a figure taken while
    other jobs held the cores is only comparable with its same-run baseline.
    """
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    omp = os.environ.get("OMP_WAIT_POLICY", "default")
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads, OMP_WAIT_POLICY {omp}), {date}, load avg {load}"
    )


def rss_bytes() -> int:
    """Anonymous resident memory of this process (Linux), falling back to peak RSS.

    Anonymous, not total: memory-mapped files (the fp16 store, as the engine maps it) sit in
    the page cache, which the kernel can drop; what an index build adds to anonymous memory
    is what a server must really hold.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def fmt_bytes(n: float) -> str:
    """Human-readable byte count (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A GitHub-markdown table, so output can be pasted into the docs as is."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def add_omp_argument(parser: argparse.ArgumentParser) -> None:
    """``--omp-wait-policy`` (default PASSIVE), applied by :func:`apply_omp_wait_policy`."""
    parser.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        help="OMP_WAIT_POLICY to run under unless the environment already sets one "
        "('default': the OpenMP runtime's own busy-wait-then-sleep policy)",
    )


def apply_omp_wait_policy(policy: str) -> None:
    """Re-execute this script with ``OMP_WAIT_POLICY=policy`` unless one is already set.

    Why: torch and FAISS each load an OpenMP runtime whose idle threads busy-wait after
    every parallel region. On a shared 2-core machine those spinning threads take the
    cores from the threads (or processes) with real work: we measured 2-7x slower and far
    noisier training steps and captures, and 2-10x slower FAISS k-means/PQ training, under
    the default policy. The runtimes read the variable once, when they load, hence the
    re-exec rather than setting it here.
    """
    if policy == "default" or "OMP_WAIT_POLICY" in os.environ:
        return
    env = dict(os.environ, OMP_WAIT_POLICY=policy)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


#: Built indexes the scripts use when none is named: the demo pipeline's, else the bench ones.
DEFAULT_INDEXES = ("runs/demo/index", "runs/bench/index-demo", "runs/bench/index")


def default_index() -> Path:
    """The first finished index of :data:`DEFAULT_INDEXES`."""
    for d in DEFAULT_INDEXES:
        if (Path(d) / "manifest.json").exists():
            return Path(d)
    raise SystemExit("no built index found; pass --index")


def default_questions(index_dir: Path) -> Path:
    """The question file of an index's corpus, by the layouts ``scripts/demo.sh`` and the
    bench README use (the manifest records the corpus hash, not its path)."""
    for cand in (
        index_dir.parent / "corpus.questions.jsonl",
        index_dir.parent / f"{index_dir.name.removeprefix('index-')}-corpus.questions.jsonl",
        Path("runs/demo/corpus.questions.jsonl"),
    ):
        if cand.is_file():
            return cand
    raise SystemExit("no question file found; pass --questions")
