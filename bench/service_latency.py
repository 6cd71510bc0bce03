"""Signed ``Attribute`` round trip through a real ``auditor-server serve`` vs the engine alone,
then N concurrent clients against the same server.

Why this yardstick: the engine's ``attribute`` is the work an answer cannot avoid; everything
the service adds around it (the auditor signing the envelope, gRPC, envelope verification with
its replay-cache insert, the quota, disclosure, the lab's signature, the ledger append and the
client checking signature, binding and receipt) is overhead. Target: p50 of the round trip at
most 10 ms above the p50 of ``engine.attribute`` on the same questions, measured interleaved in
one run (the engine-only calls run in this process, on its own copy of the index).

One run does, in order:

1. Start ``auditor-server serve`` as a subprocess (plaintext on 127.0.0.1, or ``--tls`` with
   ``auditor-server tls-demo-certs`` certificates) over a fresh lab key, policy, auditor
   registry and state directory in a temporary directory.
2. For ``--n`` questions, interleaved (order rotated every question): (a) the round trip
   ``AuditorClient.attribute(prompt, completion, top_k)``; (b) the engine alone,
   ``engine.attribute(..., exclude_classes={"private"})`` as the service calls it; (c) the
   service's own handler, ``AuditService.unary("Attribute", raw)``, called in this process on
   the same engine with its own state directory and timers around its steps (no gRPC): (c)
   says where the service's time goes, and (a) - (c) - client work is what gRPC costs.
3. ``--clients`` threads (each its own ``AuditorClient`` and registered auditor) call the
   server for ``--seconds``, mixing Attribute and WhoAmI; answers and refusals are counted by
   status code, the server's RSS (VmRSS, VmHWM) read before and after, and both processes'
   CPU time, to say whether the client side (one Python process, one GIL) limited the rate.
4. SIGTERM the server, check it stopped cleanly, run ``auditor-server ledger verify`` on its
   ledger and check the ledger holds one entry per request sent.

    PYTHONPATH=. .venv/bin/python bench/service_latency.py --index runs/demo-final/index
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import auditor_client.client as client_module
import auditor_server.service as service_module
from auditor_client.client import AuditorClient, TLSConfig
from auditor_client.errors import ServerRefusedError
from auditor_client.keys import generate_keypair, load_keypair
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.envelope import sign_request
from auditor_server.attribution.engine import AttributionEngine
from bench._common import (
    StageTimer,
    Timing,
    add_omp_argument,
    apply_omp_wait_policy,
    default_questions,
    fmt_bytes,
    machine,
    print_table,
)

REPO = Path(__file__).resolve().parents[1]
#: Indexes used when none is named, first existing wins; else a tiny lab is built.
SERVICE_DEFAULT_INDEXES = ("runs/demo-final/index", "runs/demo/index")
LEDGER_APPEND_PER_S = 5000  # measured by the ledger's own tests/bench (one fsync'd txn each)


# --- lab setup ----------------------------------------------------------------------------


def server_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "auditor_server.cli", *args]


def policy_yaml(registry: str) -> str:
    """Default limits and disclosure; one role with a quota the bench cannot use up."""
    return textwrap.dedent(
        f"""\
        version: 1
        lab: {{name: Bench Lab}}
        limits:
          timestamp_window_s: 120
          max_request_bytes: 65536
          max_batch_items: 64
          max_prompt_chars: 4000
          snippet_chars: 160
        disclosure:
          public: full_text
          proprietary: source_metadata
          private: none
        roles:
          regulator:
            methods: [WhoAmI, GetPolicy, Generate, Score, Attribute, AttributeBatch,
                      GetTreeHead, GetInclusionProof, GetConsistencyProof]
            max_top_k: 100
            daily_queries: 10000000
            max_new_tokens: 32
            withheld_budget: 1000000  # repeated campaigns steer generation many times
        auditor_registry: {registry}
        """
    )


@dataclass
class Lab:
    work: Path
    index: Path
    questions: Path
    lab_key_dir: Path
    lab_public: str
    policy: Path
    auditors: dict[str, Path]
    state: Path
    certs: dict[str, Path] = field(default_factory=dict)


def make_lab(work: Path, index: Path, questions: Path, n_auditors: int, tls: bool) -> Lab:
    lab_key_dir = work / "lab-key"
    out = subprocess.run(
        cli("keys", "--out", str(lab_key_dir)), capture_output=True, text=True, env=server_env(0)
    )
    if out.returncode != 0:
        raise SystemExit(f"auditor-server keys failed: {out.stderr}")
    lab_public = (lab_key_dir / "lab.pub").read_text().strip()
    auditors: dict[str, Path] = {}
    entries = []
    for i in range(n_auditors):
        name = "bench" if i == 0 else f"load-{i - 1:02d}"
        auditors[name] = work / "auditors" / name
        pair = generate_keypair(auditors[name])
        entries.append(
            f'  - id: {name}\n    role: regulator\n    keys: [{{key: "{pair.public_text}"}}]\n'
        )
    (work / "auditors.yaml").write_text("auditors:\n" + "".join(entries))
    policy = work / "policy.yaml"
    policy.write_text(policy_yaml("auditors.yaml"))
    certs: dict[str, Path] = {}
    if tls:
        out = subprocess.run(
            cli("tls-demo-certs", "--out", str(work / "certs")),
            capture_output=True,
            text=True,
            env=server_env(0),
        )
        if out.returncode != 0:
            raise SystemExit(f"auditor-server tls-demo-certs failed: {out.stderr}")
        for line in out.stdout.split():
            certs[Path(line).name] = Path(line)
    return Lab(
        work=work,
        index=index,
        questions=questions,
        lab_key_dir=lab_key_dir,
        lab_public=lab_public,
        policy=policy,
        auditors=auditors,
        state=work / "state",
        certs=certs,
    )


class Server:
    """``auditor-server serve`` as a subprocess; stderr goes to a file in the work dir."""

    def __init__(self, lab: Lab, *, tls: bool, max_workers: int, threads: int) -> None:
        args = [
            "serve",
            "--index",
            str(lab.index),
            "--policy",
            str(lab.policy),
            "--lab-key",
            str(lab.lab_key_dir),
            "--state",
            str(lab.state),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ]
        if tls:
            args += ["--tls-cert", str(lab.certs["server.pem"])]
            args += ["--tls-key", str(lab.certs["server.key"])]
        else:
            args.append("--insecure")
        if max_workers:
            args += ["--max-workers", str(max_workers)]
        self.stderr_path = lab.work / "server.stderr"
        self._stderr = self.stderr_path.open("w")
        self.t_start = time.perf_counter()
        self.process = subprocess.Popen(
            cli(*args),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=server_env(threads),
        )
        self.pid = self.process.pid
        self.port = 0
        self.listening: dict[str, Any] = {}
        self.stdout_tail: list[str] = []

    def wait_listening(self, timeout_s: float = 300) -> float:
        """Block until the ``listening`` line; returns seconds since the process started."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == "listening":
                    self.listening = event
                    self.port = int(event["port"])
                    threading.Thread(target=self._drain, daemon=True).start()
                    return time.perf_counter() - self.t_start
        self.process.kill()
        raise SystemExit("server did not start:\n" + self.stderr_path.read_text()[-4000:])

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.stdout_tail.append(line.strip())

    def status(self) -> dict[str, int]:
        """VmRSS, VmHWM (bytes) and thread count from /proc/<pid>/status."""
        out: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) * 1024
                elif key == "Threads":
                    out[key] = int(value)
        return out

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far."""
        with open(f"/proc/{self.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds to exit)."""
        t0 = time.perf_counter()
        self.process.send_signal(signal.SIGTERM)
        try:
            rc = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            rc = self.process.wait()
        self._stderr.close()
        return rc, time.perf_counter() - t0


def connect(lab: Lab, server: Server, who: str, tls: bool) -> AuditorClient:
    return AuditorClient.connect(
        f"127.0.0.1:{server.port}",
        key_dir=lab.auditors[who],
        lab_public_key=lab.lab_public,
        auditor_id=who,
        tls=TLSConfig(ca=lab.certs["ca.pem"]) if tls else None,
        insecure=not tls,
    )


# --- the service in this process, instrumented -------------------------------------------


class AbortedError(Exception):
    """The in-process handler refused a request (it never should here)."""


class FakeContext:
    """Just enough of ``grpc.ServicerContext`` for ``AuditService.unary``."""

    def time_remaining(self) -> float:
        return 60.0

    def is_active(self) -> bool:
        return True

    def set_trailing_metadata(self, _md: Any) -> None:
        pass

    def abort(self, code: Any, message: str) -> None:
        raise AbortedError(f"{code}: {message}")


def inprocess_service(
    lab: Lab, engine: AttributionEngine, stages: StageTimer
) -> tuple[Any, Callable[[], None]]:
    """An ``AuditService`` on ``engine`` with its own state dir and timers on its steps."""
    from auditor_server.policy.model import Policy
    from auditor_server.security.lab_keys import load_lab_key
    from auditor_server.service import AuditService

    service = AuditService.open(
        engine=engine,
        policy=Policy.from_file(lab.policy),
        policy_path=None,
        lab_key=load_lab_key(lab.lab_key_dir),
        state_dir=lab.work / "state-inprocess",
    )
    # Instance attributes shadow the methods for this service only; module functions are
    # patched in auditor_server.service's namespace (restored by ``restore``).
    service.replay.check_and_record = stages.wrap(  # type: ignore[method-assign]
        "replay-cache insert (fsync)", service.replay.check_and_record
    )
    service.quota.try_consume = stages.wrap(  # type: ignore[method-assign]
        "quota consume (fsync)", service.quota.try_consume
    )
    service.ledger.append = stages.wrap(  # type: ignore[method-assign]
        "ledger append (sign head, fsync)", service.ledger.append
    )
    service.engine = _EngineView(engine, stages)
    saved = {
        name: getattr(service_module, name)
        for name in ("verify_request", "sign_response", "disclose")
    }
    labels = {
        "verify_request": "verify envelope (incl. replay)",
        "sign_response": "sign response",
        "disclose": "disclosure",
    }
    for name, label in labels.items():
        setattr(service_module, name, stages.wrap(label, saved[name]))

    def restore() -> None:
        for name, fn in saved.items():
            setattr(service_module, name, fn)

    return service, restore


class _EngineView:
    """The engine as the in-process service sees it, ``attribute_many`` timed."""

    def __init__(self, engine: AttributionEngine, stages: StageTimer) -> None:
        self._engine = engine
        self.attribute_many = stages.wrap("engine.attribute_many", engine.attribute_many)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


# --- measurements -------------------------------------------------------------------------


def load_questions(path: Path, n: int, seed: int) -> list[tuple[str, str]]:
    pairs = []
    with path.open() as fh:
        for line in fh:
            q = json.loads(line)
            pairs.append((str(q["prompt"]), str(q["completion"])))
    random.Random(seed).shuffle(pairs)
    if len(pairs) < n:
        pairs = (pairs * (n // max(1, len(pairs)) + 1))[:n]
    return pairs[:n]


def round_trip_phase(
    lab: Lab,
    server: Server,
    engine: AttributionEngine,
    pairs: list[tuple[str, str]],
    warmup: int,
    top_k: int,
    tls: bool,
) -> dict[str, Any]:
    exclude = frozenset({"private"})
    client = connect(lab, server, "bench", tls)
    client_stages = StageTimer()
    client._sign = client_stages.wrap("client sign", client._sign)  # type: ignore[method-assign]
    verify_name = "verify_answer"  # patched in the client module's namespace, where _call looks
    original_verify = getattr(client_module, verify_name)
    setattr(client_module, verify_name, client_stages.wrap("client verify", original_verify))
    svc_stages = StageTimer()
    service, restore_patches = inprocess_service(lab, engine, svc_stages)
    bench_key = load_keypair(lab.auditors["bench"])

    def inproc(p: str, c: str) -> None:
        envelope = sign_request(
            private_key=bench_key.private,
            auditor_id="bench",
            method="Attribute",
            body=pb.AttributeRequest(prompt=p, completion=c, top_k=top_k).SerializeToString(
                deterministic=True
            ),
        )
        raw = envelope.SerializeToString()
        svc_stages.reset()
        t0 = time.perf_counter()
        response = service.unary("Attribute", raw, FakeContext())
        svc_stages.seconds["total"] = time.perf_counter() - t0
        assert response.receipt.tree_head.tree_size > 0

    def rt(p: str, c: str) -> None:
        client_stages.reset()
        answer = client.attribute(p, c, top_k=top_k)
        assert len(getattr(answer.result, "results")) > 0  # noqa: B009

    def eng(p: str, c: str) -> None:
        engine.attribute(p, c, top_k=top_k, exclude_classes=exclude)

    samples: dict[str, list[float]] = {"rt": [], "engine": [], "inproc": []}
    client_parts: dict[str, list[float]] = {}
    svc_parts: dict[str, list[float]] = {}
    try:
        for p, c in pairs[:warmup]:
            rt(p, c)
            eng(p, c)
            inproc(p, c)
        names = ["rt", "engine", "inproc"]
        fns = {"rt": rt, "engine": eng, "inproc": inproc}
        for i, (p, c) in enumerate(pairs[warmup:]):
            order = names[i % 3 :] + names[: i % 3]
            for name in order:
                t0 = time.perf_counter()
                fns[name](p, c)
                samples[name].append(time.perf_counter() - t0)
                if name == "rt":
                    for k, v in client_stages.seconds.items():
                        client_parts.setdefault(k, []).append(v)
                elif name == "inproc":
                    for k, v in svc_stages.seconds.items():
                        svc_parts.setdefault(k, []).append(v)
    finally:
        setattr(client_module, verify_name, original_verify)
        restore_patches()
        service.ledger.close()
        service.replay.close()
        service.quota.close()
        client.close()
    return {
        "samples": samples,
        "client_parts": client_parts,
        "service_parts": svc_parts,
        "requests_sent": len(pairs),  # warm-up included: each appends one server ledger leaf
    }


@dataclass
class CallRecord:
    method: str
    start: float
    seconds: float
    code: str


def load_phase(
    lab: Lab,
    server: Server,
    pairs: list[tuple[str, str]],
    clients: int,
    seconds: float,
    whoami_share: float,
    top_k: int,
    tls: bool,
    seed: int,
) -> dict[str, Any]:
    records: list[list[CallRecord]] = [[] for _ in range(clients)]
    crashes: list[str] = []
    barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        try:
            client = connect(lab, server, f"load-{i:02d}", tls)
        except Exception as exc:
            crashes.append(f"client {i} connect: {exc!r}")
            barrier.wait()
            return
        out = records[i]
        barrier.wait()
        j = rng.randrange(len(pairs))
        with client:
            while time.perf_counter() < stop_at[0]:
                who = rng.random() < whoami_share
                method = "WhoAmI" if who else "Attribute"
                t0 = time.perf_counter()
                try:
                    if who:
                        client.whoami()
                    else:
                        p, c = pairs[j % len(pairs)]
                        j += 1
                        client.attribute(p, c, top_k=top_k)
                    code = "OK"
                except ServerRefusedError as exc:
                    code = exc.code
                except Exception as exc:
                    code = f"CLIENT:{type(exc).__name__}"
                    crashes.append(f"client {i} {method}: {exc!r}")
                out.append(CallRecord(method, t0, time.perf_counter() - t0, code))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    before = server.status()
    cpu_server0 = server.cpu_s()
    t_self0 = os.times()
    stop_at[0] = time.perf_counter() + 1e9
    barrier.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    rss_samples: list[tuple[float, int, int]] = []  # (s into the load, VmRSS, RssAnon)
    while time.perf_counter() < stop_at[0]:
        time.sleep(min(1.0, max(0.0, stop_at[0] - time.perf_counter())))
        with contextlib.suppress(OSError):
            st = server.status()
            rss_samples.append((time.perf_counter() - t0, st["VmRSS"], st["RssAnon"]))
    for t in threads:
        t.join(timeout=120)
    wall = time.perf_counter() - t0
    t_self1 = os.times()
    cpu_server = server.cpu_s() - cpu_server0
    after = server.status()
    cpu_client = (t_self1.user - t_self0.user) + (t_self1.system - t_self0.system)
    flat = [r for rs in records for r in rs]
    return {
        "records": flat,
        "wall_s": wall,
        "before": before,
        "after": after,
        "rss_samples": rss_samples,
        "cpu_server_s": cpu_server,
        "cpu_client_s": cpu_client,
        "crashes": crashes,
        "hung_threads": sum(t.is_alive() for t in threads),
    }


# --- report -------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def _ms2(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def default_service_index(work: Path) -> tuple[Path, Path | None]:
    for d in SERVICE_DEFAULT_INDEXES:
        if (Path(d) / "manifest.json").exists():
            return Path(d), None
    print("no demo index found: building a tiny lab (tests/integration/lab_server.build_lab)")
    from tests.integration.lab_server import build_lab

    lab = build_lab(work / "tiny-lab")
    return lab.index, lab.corpus.with_suffix(".questions.jsonl")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--index",
        type=Path,
        help="index dir (default: runs/demo-final/index, else runs/demo/index, else a tiny "
        "one built in the temp dir)",
    )
    parser.add_argument("--questions", type=Path, help="question JSONL (prompt, completion)")
    parser.add_argument("--n", type=int, default=100, help="questions to time (round trip)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--clients", type=int, default=16, help="concurrent client threads")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load phase")
    parser.add_argument(
        "--whoami-share", type=float, default=0.2, help="share of WhoAmI calls under load"
    )
    parser.add_argument("--tls", action="store_true", help="serve TLS (tls-demo-certs)")
    parser.add_argument(
        "--max-workers", type=int, default=0, help="server --max-workers (0: its default)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads here and OMP_NUM_THREADS for the server (0: defaults)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (state, logs)")
    parser.add_argument("--json", type=Path, help="also write the raw samples here")
    add_omp_argument(parser)
    args = parser.parse_args(argv)
    apply_omp_wait_policy(args.omp_wait_policy)
    if args.threads:
        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="service_latency-"))
    try:
        return run(args, work)
    finally:
        if args.keep:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:
    print(machine())
    if args.index is not None:
        index_dir, tiny_questions = args.index, None
    else:
        index_dir, tiny_questions = default_service_index(work)
    questions = args.questions or tiny_questions or default_questions(index_dir)
    lab = make_lab(work, index_dir, questions, args.clients + 1, args.tls)
    server = Server(lab, tls=args.tls, max_workers=args.max_workers, threads=args.threads)
    # Open the bench's own engine while the server loads its own.
    engine = AttributionEngine.open(index_dir, verify=False)
    startup_s = server.wait_listening()
    n_rows, dim = engine.vectors.shape
    transport = "TLS (tls-demo-certs)" if args.tls else "plaintext"
    print(
        f"index {index_dir}: {n_rows:,} rows x {dim} dims, kind {engine.index_config.index}; "
        f"questions {questions}; server pid {server.pid} on 127.0.0.1:{server.port} "
        f"({transport}), listening after {startup_s:.1f} s; state {lab.state} "
        f"(fs of {tempfile.gettempdir()})"
    )
    status_start = server.status()
    pairs = load_questions(questions, max(args.n + args.warmup, 200), args.seed)

    # --- 1. round trip vs engine --------------------------------------------------------
    rt_pairs = pairs[: args.n + args.warmup]
    phase1 = round_trip_phase(lab, server, engine, rt_pairs, args.warmup, args.top_k, args.tls)
    rt = Timing(phase1["samples"]["rt"])
    eng = Timing(phase1["samples"]["engine"])
    inproc = Timing(phase1["samples"]["inproc"])
    overhead = rt.median - eng.median
    print(
        f"\n## 1. Attribute(top_k={args.top_k}) round trip vs engine ({len(rt.samples)} "
        f"questions, {args.warmup} warm-up, interleaved)\n"
    )
    print_table(
        ["measure", "p50 ms", "p90 ms", "p99 ms", "mean ms"],
        [
            [
                f"signed round trip `AuditorClient.attribute` ({transport})",
                _ms(rt.median),
                _ms(rt.quantile(0.9)),
                _ms(rt.quantile(0.99)),
                _ms(float(np.mean(rt.samples))),
            ],
            [
                "engine only `engine.attribute` (this process)",
                _ms(eng.median),
                _ms(eng.quantile(0.9)),
                _ms(eng.quantile(0.99)),
                _ms(float(np.mean(eng.samples))),
            ],
            [
                "service handler in this process (no gRPC)",
                _ms(inproc.median),
                _ms(inproc.quantile(0.9)),
                _ms(inproc.quantile(0.99)),
                _ms(float(np.mean(inproc.samples))),
            ],
            ["**overhead** (p50 round trip - p50 engine)", f"**{_ms(overhead)}**", "", "", ""],
        ],
    )
    verdict = "met" if overhead <= 0.010 else "MISSED"
    print(f"\noverhead p50 {_ms(overhead)} ms (target <= 10 ms: {verdict})")

    sp, cp = phase1["service_parts"], phase1["client_parts"]
    mean = {k: float(np.mean(v)) for k, v in {**sp, **cp}.items()}
    svc_total = mean["total"]
    engine_mean = mean.get("engine.attribute_many", 0.0)
    named = [
        "verify envelope (incl. replay)",
        "replay-cache insert (fsync)",
        "quota consume (fsync)",
        "engine.attribute_many",
        "disclosure",
        "sign response",
        "ledger append (sign head, fsync)",
    ]
    service_rest = svc_total - sum(
        mean.get(k, 0.0) for k in named if k != "replay-cache insert (fsync)"
    )
    client_sign, client_verify = mean.get("client sign", 0.0), mean.get("client verify", 0.0)
    rt_mean = float(np.mean(rt.samples))
    grpc_rest = rt_mean - svc_total - client_sign - client_verify
    rows = []
    for k in named:
        if k not in sp:
            continue
        label = (
            k if k != "replay-cache insert (fsync)" else "  of which replay-cache insert (fsync)"
        )
        rows.append([label, _ms2(float(np.median(sp[k]))), _ms2(mean[k])])
    rows.append(["policy checks, protobuf, other (service)", "", _ms2(service_rest)])
    rows.append(["**service handler total**", _ms2(float(np.median(sp["total"]))), _ms2(svc_total)])
    rows.append(
        ["client sign (envelope)", _ms2(float(np.median(cp["client sign"]))), _ms2(client_sign)]
    )
    rows.append(
        [
            "client verify (signature, binding, receipt)",
            _ms2(float(np.median(cp["client verify"]))),
            _ms2(client_verify),
        ]
    )
    rows.append(
        ["gRPC + transport + server thread hop (remainder; < 0 = noise)", "", _ms2(grpc_rest)]
    )
    rows.append(["**round trip**", _ms2(rt.median), _ms2(rt_mean)])
    print(
        "\nwhere the round trip goes (service steps timed in the in-process handler; "
        "means add up, medians do not):\n"
    )
    print_table(["step", "p50 ms", "mean ms"], rows)
    print(
        f"\nnon-engine work: service {_ms2(svc_total - engine_mean)} ms + client "
        f"{_ms2(client_sign + client_verify)} ms + gRPC {_ms2(grpc_rest)} ms (means); "
        f"ledger append alone at the known ~{LEDGER_APPEND_PER_S}/s would be "
        f"{1e3 / LEDGER_APPEND_PER_S:.2f} ms"
    )

    # --- 2. load ------------------------------------------------------------------------
    status_before = server.status()
    print(
        f"\n## 2. {args.clients} concurrent clients (threads, one process) for "
        f"{args.seconds:g} s, {1 - args.whoami_share:.0%} Attribute(top_k={args.top_k}) / "
        f"{args.whoami_share:.0%} WhoAmI\n"
    )
    load = load_phase(
        lab,
        server,
        pairs,
        args.clients,
        args.seconds,
        args.whoami_share,
        args.top_k,
        args.tls,
        args.seed,
    )
    recs: list[CallRecord] = load["records"]
    wall = load["wall_s"]
    codes = Counter(r.code for r in recs)
    rows = []
    for method in ("Attribute", "WhoAmI", "all"):
        sel = [r for r in recs if method in ("all", r.method)]
        ok = [r.seconds for r in sel if r.code == "OK"]
        if not sel:
            continue
        t = Timing(ok) if ok else Timing([float("nan")])
        rows.append(
            [
                method,
                f"{len(ok):,}",
                f"{len(ok) / wall:.1f}",
                _ms(t.median),
                _ms(t.quantile(0.9)),
                _ms(t.quantile(0.99)),
                _ms(max(ok) if ok else float("nan")),
                ", ".join(f"{c} {n}" for c, n in Counter(r.code for r in sel).items() if c != "OK")
                or "none",
            ]
        )
    print_table(
        [
            "method",
            "answers",
            "answers/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "refusals/errors",
        ],
        rows,
    )
    bad = {c: n for c, n in codes.items() if c not in ("OK", "RESOURCE_EXHAUSTED")}
    if bad or load["crashes"] or load["hung_threads"]:
        print(f"\n!!! ERRORS under load: {bad} hung threads {load['hung_threads']}")
        for line in load["crashes"][:20]:
            print(f"!!!   {line}")
    else:
        print(f"\nerrors other than RESOURCE_EXHAUSTED: none (codes: {dict(codes)})")
    before, after = load["before"], load["after"]
    server_util = load["cpu_server_s"] / wall
    client_util = load["cpu_client_s"] / wall
    print()
    print_table(
        ["server process", "at start", "before load", "after load"],
        [
            [
                "VmRSS",
                fmt_bytes(status_start["VmRSS"]),
                fmt_bytes(status_before["VmRSS"]),
                fmt_bytes(after["VmRSS"]),
            ],
            [
                "  RssAnon / RssFile",
                f"{fmt_bytes(status_start['RssAnon'])} / {fmt_bytes(status_start['RssFile'])}",
                f"{fmt_bytes(before['RssAnon'])} / {fmt_bytes(before['RssFile'])}",
                f"{fmt_bytes(after['RssAnon'])} / {fmt_bytes(after['RssFile'])}",
            ],
            [
                "VmHWM (peak)",
                fmt_bytes(status_start["VmHWM"]),
                fmt_bytes(status_before["VmHWM"]),
                fmt_bytes(after["VmHWM"]),
            ],
            [
                "threads",
                str(status_start["Threads"]),
                str(before["Threads"]),
                str(after["Threads"]),
            ],
        ],
    )
    series = load["rss_samples"]
    if series:
        picks = [
            series[min(len(series) - 1, round(f * (len(series) - 1)))]
            for f in (0, 0.25, 0.5, 0.75, 1)
        ]
        print(
            "\nserver RssAnon during load (is it still growing?): "
            + ", ".join(f"{t:.0f} s {fmt_bytes(anon)}" for t, _, anon in picks)
        )
    print(
        f"\nCPU during load ({wall:.1f} s wall, {os.cpu_count()} cores): server "
        f"{load['cpu_server_s']:.1f} s = {server_util:.0%} of one core; this process (clients) "
        f"{load['cpu_client_s']:.1f} s = {client_util:.0%} of one core; engine-bound ceiling "
        f"at the phase-1 engine p50: {1 / eng.median:.0f} Attribute/s"
    )

    # --- 3. stop, verify ledger ---------------------------------------------------------
    rc, stop_s = server.stop()
    stopped = any('"stopped"' in line for line in server.stdout_tail)
    print(
        f"\nserver SIGTERM: exit code {rc} after {stop_s:.2f} s"
        f"{', printed stopped' if stopped else ', NO stopped line'}"
    )
    if rc != 0 or not stopped:
        print(
            "!!! server did not stop cleanly; stderr tail:\n"
            + server.stderr_path.read_text()[-3000:]
        )
    ledger = lab.state / "ledger.db"
    ledger_bytes = sum(p.stat().st_size for p in lab.state.glob("ledger.db*") if p.is_file())
    out = subprocess.run(
        cli("ledger", "verify", "--db", str(ledger), "--lab-key", str(lab.lab_key_dir / "lab.pub")),
        capture_output=True,
        text=True,
        env=server_env(0),
    )
    print(
        f"auditor-server ledger verify --db <state>/ledger.db --lab-key <lab.pub>: exit "
        f"{out.returncode}: {(out.stdout or out.stderr).strip()}"
    )
    entries = None
    m = re.search(r"ok: (\d+) entries", out.stdout)
    if m:
        entries = int(m.group(1))
    sent = phase1["requests_sent"] + len(recs)
    print(
        f"ledger: {entries} entries, {fmt_bytes(ledger_bytes)} on disk; requests sent "
        f"{sent} ({phase1['requests_sent']} phase 1 + {len(recs)} load): "
        f"{'one entry per request' if entries == sent else '!!! MISMATCH'}"
    )
    stderr_text = server.stderr_path.read_text()
    if "Traceback" in stderr_text or "internal error" in stderr_text:
        print("!!! server stderr has errors:\n" + stderr_text[-3000:])

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "index": str(index_dir),
                    "transport": transport,
                    "round_trip_s": phase1["samples"]["rt"],
                    "engine_s": phase1["samples"]["engine"],
                    "service_inprocess_s": phase1["samples"]["inproc"],
                    "service_parts_s": phase1["service_parts"],
                    "client_parts_s": phase1["client_parts"],
                    "load": {
                        "clients": args.clients,
                        "seconds": wall,
                        "calls": [[r.method, r.start, r.seconds, r.code] for r in recs],
                        "server_status_start": status_start,
                        "server_status_before": before,
                        "server_status_after": after,
                        "cpu_server_s": load["cpu_server_s"],
                        "cpu_client_s": load["cpu_client_s"],
                        "server_rss_samples": load["rss_samples"],
                    },
                    "ledger_entries": entries,
                    "ledger_bytes": ledger_bytes,
                    "ledger_verify": out.stdout.strip(),
                    "stop_rc": rc,
                },
                indent=1,
            )
        )
    passed = bool(
        out.returncode == 0 and rc == 0 and not bad and not load["crashes"] and entries == sent
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
