"""The shipped demo campaign through a real ``auditor-server serve``: probes/min with 1 and 4
workers, per suite, RPCs/s, and how long re-verifying the report takes.

What one run does:

1. Start ``auditor-server serve`` as a subprocess over ``--index`` (default
   ``runs/demo-final/index``, the trained demo model's index, 11,822 rows) with a fresh lab
   key, policy (one ``regulator`` role, default limits and disclosure, quota 10,000,000),
   auditor registry and state directory in a temporary directory — the same set-up as
   ``bench/service_latency.py``. **TLS by default** (``auditor-server tls-demo-certs``, as
   ``scripts/demo_serve.sh`` serves the demo); ``--insecure`` for plaintext gRPC.
2. Warm up once (not timed): a Generate, a Score and an Attribute against the server, and
   the client-side imports a campaign pays for once per process (the toxicity classifier,
   the report builder).
3. Run ``campaigns/demo/regulator.yaml`` (92 probes: 16 copyright, 50 bias, 12 privacy, 14
   toxicity) with ``auditor_client.campaign.runner.run_campaign`` and the overrides ``auditor
   campaign run --server --lab-key --key --auditor-id --tls-ca|--insecure`` would apply, each
   run into a fresh output directory, once with 1 worker and once with 4, ``--repeats`` times
   alternating which goes first; the table shows medians. Each run ends, as the CLI's does,
   with the ledger consistency proofs and the report (``report.json``, ``index.html``,
   ``report.md``) built and verified by the runner.
4. Per run: wall time of ``run_campaign`` (plan, check-in, probes, ledger proofs, report);
   the report build's share of it (the runner's ``_write_report``, timed by wrapping it
   here); per suite, from the checkpoints' ``started_ms``/``finished_ms``, its span (first
   start to last finish), the summed probe time and the exchanges (signed RPCs) its probes
   made; RPCs/s = every exchange the run stored (check-in, probes, tree head, consistency
   proofs) over the wall time; the server's and this process's CPU seconds. Then
   ``auditor_client.report.verify.verify_report`` on the produced ``report.json`` (timed,
   ``--verify-repeats`` times, median) and the sizes of ``report.json`` and ``index.html``.

Why 4 workers cannot scale much here (see ``bench/README.md`` section 5). The service runs
every model call on **one engine thread**; concurrent calls of one kind share a pass:
Attribute queries one featurize pass, Score queries one padded forward, Generate calls one
batched decode (``EngineScheduler``, ``generate_many``: each row keeps its own settings, seed
and withheld-text guard, and gets the text it would get alone). In-process, eight guarded
32-token Generates take ~0.2 s batched against ~0.6-0.8 s one by one. A campaign's 4 workers
(one auditor, so at most ``max_concurrent_per_auditor`` = 4 calls in flight) keep few calls
of any *one* kind queued, though: one instrumented run with 4 workers ran 43 Generates in 29
passes, 101 Scores in 63 and 75 Attributes in 51, and the engine thread's CPU fell only from
4.7 s (1 worker) to 4.0 s, most of it decoding (2.9 -> 2.6 s). That engine time is still a
floor under the probe phase. Around it, the **2 cores** are shared by the server's
per-request work (envelope check, fsync'd SQLite commits, disclosure, signing), the client
(signing, verifying each answer, the toxicity classifier, an fsync'd checkpoint per probe)
and the GIL in each process, and the closing ledger check and report (~1.5-2 s of a ~7-8 s
1-worker run) do not scale with workers at all. Measured 2026-12-01 on a shared host (load
0.7-3.5): 4 vs 1 workers 1.2-1.4× typically, with or without Generate/Score batching (server
CPU per run ~5-6 s at 1 worker, ~0.5-1 s less at 4 with batching); with ``--threads 1`` one
run gave 849 -> 1194 probes/min (1.41×) and 4.4/3.6 s server CPU. 2.5× needs more cores or
less CPU per probe (and batching across kinds or continuous batching of Generate), not more
workers.

    PYTHONPATH=. .venv/bin/python bench/campaign_throughput.py --repeats 3 \
        --json runs/bench/results/campaign_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from auditor_client.campaign import runner
from auditor_client.campaign.checkpoint import PROBES_DIR
from auditor_client.campaign.model import Campaign
from auditor_client.campaign.types import ProbeRecord
from auditor_client.report.verify import verify_report
from bench._common import add_omp_argument, apply_omp_wait_policy, fmt_bytes, machine, print_table
from bench.service_latency import Lab, Server, connect, make_lab

REPO = Path(__file__).resolve().parents[1]
SHIPPED_POLICY = REPO / "policy/default.yaml"
DEFAULT_INDEX = REPO / "runs/demo-final/index"
DEFAULT_CAMPAIGN = REPO / "campaigns/demo/regulator.yaml"
AUDITOR = "bench"


@dataclass
class SuiteStats:
    probes: int
    span_s: float
    """First probe start to last probe finish (ms resolution, from the checkpoints)."""
    busy_s: float
    """Sum of the probes' own durations."""
    exchanges: int
    refused: int

    @property
    def per_min(self) -> float:
        return 60.0 * self.probes / self.span_s if self.span_s else float("nan")


@dataclass
class RunStats:
    workers: int
    wall_s: float
    report_s: float
    ledger_s: float
    """The runner's closing ``_check_ledger``: final head + one consistency proof per
    distinct tree size seen in a receipt, one RPC after another."""
    probes_s: float
    """First probe start to last probe finish, all suites."""
    consistency_proofs: int
    probes: int
    exchanges: int
    server_cpu_s: float
    client_cpu_s: float
    suites: dict[str, SuiteStats]
    verify_s: list[float] = field(default_factory=list)
    verify_answers: int = 0
    report_json_bytes: int = 0
    index_html_bytes: int = 0
    report_md_bytes: int = 0

    @property
    def probes_per_min(self) -> float:
        return 60.0 * self.probes / self.wall_s

    @property
    def rpcs_per_s(self) -> float:
        return self.exchanges / self.wall_s

    @property
    def verify_median_s(self) -> float:
        return statistics.median(self.verify_s)


def read_records(out: Path) -> list[ProbeRecord]:
    return [
        ProbeRecord.from_json(json.loads(p.read_text()))
        for p in sorted((out / PROBES_DIR).glob("*/*.json"))
    ]


def count_exchanges(out: Path, records: list[ProbeRecord]) -> int:
    """Every signed exchange the run stored: check-ins, probes, final head, proofs."""
    campaign = json.loads((out / runner.CAMPAIGN_FILE).read_text())
    ledger = json.loads((out / runner.LEDGER_FILE).read_text())
    n = len(campaign.get("sessions", []))
    n += sum(len(r.exchanges) for r in records)
    n += (1 if ledger.get("final_head") else 0) + len(ledger.get("consistency", []))
    return n


def suite_stats(records: list[ProbeRecord]) -> dict[str, SuiteStats]:
    out: dict[str, SuiteStats] = {}
    for name in dict.fromkeys(r.suite for r in records):
        mine = [r for r in records if r.suite == name]
        out[name] = SuiteStats(
            probes=len(mine),
            span_s=(max(r.finished_ms for r in mine) - min(r.started_ms for r in mine)) / 1000,
            busy_s=sum(r.finished_ms - r.started_ms for r in mine) / 1000,
            exchanges=sum(len(r.exchanges) for r in mine),
            refused=sum(1 for r in mine if not r.exchanges),
        )
    return out


def timed(fn: Callable[..., Any], into: list[float]) -> Callable[..., Any]:
    """``fn`` with its wall time appended to ``into`` on every call."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - t0)

    return wrapper


def run_once(
    campaign: Campaign, out: Path, workers: int, server: Server, lab_key: str, verify_repeats: int
) -> RunStats:
    report_timer: list[float] = []
    ledger_timer: list[float] = []
    real_write_report = runner._write_report
    real_check_ledger = runner._Run._check_ledger
    runner._write_report = timed(real_write_report, report_timer)
    runner._Run._check_ledger = timed(real_check_ledger, ledger_timer)  # type: ignore[method-assign]
    cpu0, scpu0 = time.process_time(), server.cpu_s()
    t0 = time.perf_counter()
    try:
        summary = runner.run_campaign(
            campaign, out_dir=out, resume=False, workers=workers, progress=False
        )
    finally:
        runner._write_report = real_write_report
        runner._Run._check_ledger = real_check_ledger  # type: ignore[method-assign]
    wall = time.perf_counter() - t0
    client_cpu, server_cpu = time.process_time() - cpu0, server.cpu_s() - scpu0
    if not summary.report_written or summary.ran != summary.total:
        raise SystemExit(f"campaign did not complete: {summary}")
    records = read_records(out)
    stats = RunStats(
        workers=workers,
        wall_s=wall,
        report_s=sum(report_timer),
        ledger_s=sum(ledger_timer),
        probes_s=(max(r.finished_ms for r in records) - min(r.started_ms for r in records)) / 1000,
        consistency_proofs=summary.consistency_proofs,
        probes=len(records),
        exchanges=count_exchanges(out, records),
        server_cpu_s=server_cpu,
        client_cpu_s=client_cpu,
        suites=suite_stats(records),
    )
    report = out / "report.json"
    for _ in range(verify_repeats):
        result = verify_report(report, lab_public_key=lab_key)
        stats.verify_s.append(result.seconds)
        stats.verify_answers = result.answers
    stats.report_json_bytes = report.stat().st_size
    stats.index_html_bytes = (out / "index.html").stat().st_size
    md = out / "report.md"
    stats.report_md_bytes = md.stat().st_size if md.exists() else 0
    return stats


def warm_up(lab: Lab, server: Server, tls: bool) -> None:
    """The one-off costs a campaign would otherwise charge to whichever run goes first."""
    import auditor_client.report.build  # noqa: F401  (report builder, plots, rendering)
    from auditor_client.campaign.suites.toxicity import toxicity

    toxicity("warm up the classifier")
    with connect(lab, server, AUDITOR, tls) as client:
        client.generate("The", max_new_tokens=8)
        client.score("The", " court")
        client.attribute("The", " court", top_k=10)


def shipped_policy(registry: str, quota: int) -> str:
    """``policy/default.yaml`` with another registry and the regulator's daily quota and
    withheld budget raised to ``quota`` (each run's privacy probes steer generation ~8 times,
    and the shipped budget of 20 would suspend the auditor from the third run on)."""
    text = SHIPPED_POLICY.read_text()
    text, n_reg = re.subn(r"(?m)^auditor_registry: .*$", f"auditor_registry: {registry}", text)
    role = text.index("  regulator:")
    head, tail = text[:role], text[role:]
    tail, n_quota = re.subn(r"daily_queries: \d+", f"daily_queries: {quota}", tail, count=1)
    budget = min(quota, 1_000_000)  # the schema's maximum
    tail, n_budget = re.subn(r"withheld_budget: \d+", f"withheld_budget: {budget}", tail, count=1)
    if n_reg != 1 or n_quota != 1 or n_budget != 1:
        raise SystemExit(
            f"{SHIPPED_POLICY}: cannot find auditor_registry / regulator quota / withheld budget"
        )
    return head + tail


def in_suite(suite: str, fn: Callable[[SuiteStats], float]) -> Callable[[RunStats], float]:
    """``fn`` applied to one suite's figures of a run."""
    return lambda r: fn(r.suites[suite])


def med(runs: list[RunStats], fn: Callable[[RunStats], float]) -> float:
    return statistics.median(fn(r) for r in runs)


def print_results(by_workers: dict[int, list[RunStats]]) -> None:
    ws = sorted(by_workers)
    base = by_workers[ws[0]]
    headers = ["measure"] + [f"{w} worker{'s' if w > 1 else ''}" for w in ws]
    if len(ws) == 2:
        headers.append(f"{ws[1]} vs {ws[0]}")

    def row(label: str, fn: Callable[[RunStats], float], fmt: str, ratio: bool = True) -> None:
        vals = [med(by_workers[w], fn) for w in ws]
        cells = [label] + [format(v, fmt) for v in vals]
        if len(ws) == 2:
            cells.append(f"{vals[1] / vals[0]:.2f}×" if ratio and vals[0] else "")
        rows.append(cells)

    rows: list[list[str]] = []
    row("wall time, `run_campaign` (s)", lambda r: r.wall_s, ".2f")
    row("**probes/min** (80 probes / wall)", lambda r: r.probes_per_min, ".1f")
    row("signed RPCs (exchanges stored)", lambda r: r.exchanges, ".0f", ratio=False)
    row("**RPCs/s**", lambda r: r.rpcs_per_s, ".2f")
    for suite in base[0].suites:
        n = base[0].suites[suite].probes
        ex = base[0].suites[suite].exchanges
        row(f"{suite} ({n} probes, {ex} RPCs): span s", in_suite(suite, lambda x: x.span_s), ".1f")
        row(f"{suite}: probes/min", in_suite(suite, lambda x: x.per_min), ".1f")
        row(
            f"{suite}: mean probe latency ms",
            in_suite(suite, lambda x: 1000 * x.busy_s / x.probes),
            ".0f",
        )
    row("phase: all probes, first start to last finish (s)", lambda r: r.probes_s, ".2f")
    row(
        "phase: closing ledger check, final head + consistency proofs (s)",
        lambda r: r.ledger_s,
        ".2f",
    )
    row("consistency proofs fetched", lambda r: r.consistency_proofs, ".0f", ratio=False)
    row("phase: report build + verify + render (s)", lambda r: r.report_s, ".2f")
    row("server CPU s", lambda r: r.server_cpu_s, ".1f")
    row("server cores busy", lambda r: r.server_cpu_s / r.wall_s, ".2f")
    row("client (bench process) CPU s", lambda r: r.client_cpu_s, ".1f")
    row("`verify_report(report.json)` s (median)", lambda r: r.verify_median_s, ".2f")
    row("report.json KiB", lambda r: r.report_json_bytes / 1024, ".0f", ratio=False)
    row("index.html KiB", lambda r: r.index_html_bytes / 1024, ".0f", ratio=False)
    print_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, default=DEFAULT_INDEX)
    parser.add_argument("--campaign", type=Path, default=DEFAULT_CAMPAIGN)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=1, help="runs per worker count")
    parser.add_argument("--verify-repeats", type=int, default=3)
    parser.add_argument("--insecure", action="store_true", help="plaintext gRPC, not TLS")
    parser.add_argument("--threads", type=int, default=2, help="server OMP_NUM_THREADS")
    parser.add_argument("--keep", type=Path, help="keep the lab and outputs in this directory")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    add_omp_argument(parser)
    args = parser.parse_args()
    apply_omp_wait_policy(args.omp_wait_policy)
    if not (args.index / "manifest.json").is_file():
        raise SystemExit(f"{args.index}: no built index (run scripts/demo.sh, or pass --index)")
    tls = not args.insecure

    print(machine())
    print(
        f"index {args.index}, campaign {args.campaign}, workers {args.workers}, repeats "
        f"{args.repeats}, {'TLS' if tls else 'plaintext'}"
    )
    ctx = tempfile.TemporaryDirectory(prefix="campaign-bench-")
    work = Path(ctx.name) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    lab = make_lab(work, args.index, args.index, n_auditors=1, tls=tls)
    lab.policy.write_text(shipped_policy("auditors.yaml", 10_000_000))
    server = Server(lab, tls=tls, max_workers=0, threads=args.threads)
    try:
        started = server.wait_listening()
        print(f"server listening on port {server.port} after {started:.1f} s")
        warm_up(lab, server, tls)
        campaign = Campaign.from_file(args.campaign).with_overrides(
            server=f"127.0.0.1:{server.port}",
            lab_key=str(lab.lab_key_dir / "lab.pub"),
            key_dir=lab.auditors[AUDITOR],
            auditor_id=AUDITOR,
            tls_ca=lab.certs["ca.pem"] if tls else None,
            insecure=not tls,
        )
        by_workers: dict[int, list[RunStats]] = {w: [] for w in args.workers}
        for rep in range(args.repeats):
            order = args.workers if rep % 2 == 0 else list(reversed(args.workers))
            for w in order:
                out = work / "runs" / f"w{w}-r{rep}"
                stats = run_once(campaign, out, w, server, lab.lab_public, args.verify_repeats)
                by_workers[w].append(stats)
                per_suite = ", ".join(f"{s} {v.span_s:.1f} s" for s, v in stats.suites.items())
                print(
                    f"run {rep} workers {w}: {stats.wall_s:.1f} s, {stats.probes} probes "
                    f"({stats.probes_per_min:.1f}/min), {stats.exchanges} RPCs "
                    f"({stats.rpcs_per_s:.2f}/s), probes {stats.probes_s:.2f} s, ledger "
                    f"{stats.ledger_s:.2f} s, report {stats.report_s:.2f} s, "
                    f"verify {stats.verify_median_s:.2f} s, server CPU "
                    f"{stats.server_cpu_s:.1f} s; {per_suite}",
                    flush=True,
                )
        rc, stop_s = server.stop()
        print(f"server stopped: exit {rc} in {stop_s:.1f} s")
    finally:
        if server.process.poll() is None:
            server.process.kill()
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"load avg at end {load}")
    print()
    print_results(by_workers)
    first = by_workers[args.workers[0]][0]
    print()
    print(
        f"report.json {fmt_bytes(first.report_json_bytes)}, index.html "
        f"{fmt_bytes(first.index_html_bytes)}, report.md {fmt_bytes(first.report_md_bytes)}; "
        f"verify_report checked {first.verify_answers} signed answers"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "index": str(args.index),
                    "campaign": str(args.campaign),
                    "tls": tls,
                    "runs": {
                        str(w): [
                            {
                                **asdict(r),
                                "probes_per_min": r.probes_per_min,
                                "rpcs_per_s": r.rpcs_per_s,
                            }
                            for r in runs
                        ]
                        for w, runs in by_workers.items()
                    },
                },
                indent=2,
            )
        )
    if args.keep is None:
        ctx.cleanup()


if __name__ == "__main__":
    main()
