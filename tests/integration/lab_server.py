"""A real lab for integration tests: tiny index, keys, policy, and a server process.

Builds once per test module (tiny demo corpus, tiny random GPT-2, 4x4 projections: a few
seconds), then starts ``auditor-server serve`` as a subprocess on a free port and reads the
port from its ``listening`` line. Tests talk to it over real gRPC.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from auditor_client.client import AuditorClient
from auditor_client.keys import generate_keypair
from auditor_client.wire._proto import audit_pb2 as pb

REPO = Path(__file__).resolve().parents[2]

AUDITORS = {
    # name: (role, extra registry fields)
    "reg": ("regulator", ""),
    "tp": ("third_party", ""),
    "limited": ("limited", ""),
    "expired": ("regulator", "expires: 2020-01-01"),
    "revoked": ("regulator", "revoked: true"),
}


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "auditor_server.cli", *args]


def policy_text(
    *,
    limited_quota: int = 3,
    registry: str = "auditors.yaml",
    unauthenticated_per_minute: int = 1000,
    withheld_budget: int = 20,
) -> str:
    """The test lab's policy. Hostile-request tests send many unauthenticated requests from
    one address, so the per-peer limit is high unless a test is about that limit."""
    return textwrap.dedent(
        f"""\
        version: 1
        lab: {{name: Test Lab}}
        limits:
          timestamp_window_s: 120
          max_request_bytes: 16384
          max_batch_items: 8
          max_prompt_chars: 400
          snippet_chars: 40
          unauthenticated_per_minute: {unauthenticated_per_minute}
        disclosure:
          public: full_text
          proprietary: source_metadata
          private: none
        roles:
          regulator:
            methods: [WhoAmI, GetPolicy, Generate, Score, Attribute, AttributeBatch,
                      GetTreeHead, GetInclusionProof, GetConsistencyProof]
            max_top_k: 50
            daily_queries: 100000
            max_new_tokens: 16
            withheld_budget: {withheld_budget}
          third_party:
            methods: [WhoAmI, GetPolicy, Generate, Attribute, AttributeBatch, GetTreeHead,
                      GetInclusionProof, GetConsistencyProof]
            max_top_k: 5
            daily_queries: 100000
            max_new_tokens: 8
            disclosure: {{public: snippet}}
          limited:
            methods: [WhoAmI, Attribute, AttributeBatch]
            max_top_k: 5
            daily_queries: {limited_quota}
            max_new_tokens: 8
        auditor_registry: {registry}
        """
    )


@dataclass
class Lab:
    """Files of one test lab (built once) and the server process serving them."""

    root: Path
    index: Path
    corpus: Path
    policy: Path
    lab_key_dir: Path
    lab_public: str
    keys: dict[str, Path]
    state: Path
    port: int = 0
    process: subprocess.Popen[str] | None = None
    stderr_lines: list[str] = field(default_factory=list)
    listening: dict[str, object] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, who: str = "reg", **kw: object) -> AuditorClient:
        return AuditorClient.connect(
            self.address,
            key_dir=self.keys[who],
            lab_public_key=self.lab_public,
            auditor_id=who,
            insecure=True,
            **kw,  # type: ignore[arg-type]
        )

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def start(self, *extra: str, port: int = 0) -> None:
        """Start the server and wait for its ``listening`` line."""
        args = cli(
            "serve",
            "--index",
            str(self.index),
            "--policy",
            str(self.policy),
            "--lab-key",
            str(self.lab_key_dir),
            "--state",
            str(self.state),
            "--port",
            str(port),
            *(extra or ("--insecure",)),
        )
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env()
        )
        self.stderr_lines = []
        threading.Thread(target=self._drain_stderr, args=(self.process,), daemon=True).start()
        assert self.process.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            if line.startswith("{"):
                self.listening = json.loads(line)
                if self.listening.get("event") == "listening":
                    self.port = int(self.listening["port"])  # type: ignore[call-overload]
                    return
        self.process.kill()
        raise RuntimeError("server did not start:\n" + "".join(self.stderr_lines[-40:]))

    def _drain_stderr(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.stderr_lines.append(line)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=30)
        finally:
            self.process = None

    def raw_call(self, method: str, raw: bytes, timeout: float = 30) -> bytes:
        """Send arbitrary bytes as the request of ``method``; returns the raw response."""
        with self.channel() as ch:
            call = ch.unary_unary(
                f"/auditor.v1.AuditService/{method}",
                request_serializer=None,
                response_deserializer=None,
            )
            result: bytes = call(raw, timeout=timeout)
            return result


def build_lab(root: Path, *, validate: bool = False) -> Lab:
    """Corpus, tiny model, index, lab key, auditor keys, policy and registry under ``root``.

    ``validate``: also run the counterfactual check (8 questions, a few seconds), so the
    index has a ``validation.json`` and the server signs an evaluation certificate.
    """
    from auditor_server.attribution.build import build_index
    from auditor_server.attribution.config import FeatureConfig
    from auditor_server.corpus.demo import generate_demo_corpus
    from tests.fixtures.tiny_models import make_tiny_model_dir

    summary = generate_demo_corpus(root / "corpus.jsonl", size="tiny", seed=3)
    model = make_tiny_model_dir(root, "gpt2")
    index = root / "index"
    build_index(
        model_dir=model,
        corpus_path=summary.corpus_path,
        out_dir=index,
        feature_config=FeatureConfig(proj_in=4, proj_out=4, span_tokens=24, span_stride=12),
        progress=False,
    )
    if validate:
        from auditor_server.attribution.commands import run_validation

        run_validation(index, summary.questions_path, n_questions=8, progress=False)
    lab_key_dir = root / "lab-key"
    out = subprocess.run(
        cli("keys", "--out", str(lab_key_dir)), capture_output=True, text=True, env=env()
    )
    assert out.returncode == 0, out.stderr
    lab_public = (lab_key_dir / "lab.pub").read_text().strip()
    keys: dict[str, Path] = {}
    entries = []
    for name, (role, extra) in AUDITORS.items():
        keys[name] = root / "auditors" / name
        pair = generate_keypair(keys[name])
        key_line = f'{{key: "{pair.public_text}"{", " + extra if extra else ""}}}'
        entries.append(f"  - id: {name}\n    role: {role}\n    keys: [{key_line}]\n")
    (root / "auditors.yaml").write_text("auditors:\n" + "".join(entries))
    policy = root / "policy.yaml"
    policy.write_text(policy_text())
    return Lab(
        root=root,
        index=index,
        corpus=summary.corpus_path,
        policy=policy,
        lab_key_dir=lab_key_dir,
        lab_public=lab_public,
        keys=keys,
        state=root / "state",
    )


def records(lab: Lab) -> Iterator[dict[str, object]]:
    for line in lab.corpus.read_text().splitlines():
        yield json.loads(line)


def attribute_body(prompt: str, completion: str, top_k: int = 5) -> bytes:
    return pb.AttributeRequest(
        prompt=prompt, completion=completion, top_k=top_k
    ).SerializeToString()
