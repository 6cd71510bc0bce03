"""A real-crypto stand-in for a lab and a campaign run, so report tests need no model.

:class:`FakeLab` signs answers with a fresh lab key and logs each one in an in-memory
RFC 9162 Merkle log exactly as the server does (leaf data from
``digests.ledger_leaf_data``, receipts with inclusion paths under a head signed for the size
that includes the leaf, tree heads and consistency proofs from the same log), while the
auditor side signs requests with a fresh auditor key. :func:`make_campaign` writes a
campaign output directory the way the runner does (``campaign.json``, ``probes/<suite>/
<probe>.json``, ``ledger.json``), driven by :class:`FakeSuite`: small suites named like the
real ones whose pure findings and summaries produce the keys the report renders.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import Message

from auditor_client.campaign.types import JSON, Exchange, ProbeRecord, ProbeSpec
from auditor_client.keys import encode_public_key
from auditor_client.wire import digests, merkle
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.envelope import (
    sign_request,
    sign_response,
    sign_tree_head,
    signed_request_digest,
)

AUDITOR_ID = "regulator-test"
SNAPSHOT = "snap-" + "ab" * 8
MODEL_HASH = "model-" + "cd" * 8
POLICY_A = "policy-" + "11" * 8
POLICY_B = "policy-" + "22" * 8
EVIL_TITLE = '<script>alert("pwned")</script> & <img src="http://evil.example/x.png">'


def _b64(message: Message) -> str:
    import base64

    return base64.b64encode(message.SerializeToString()).decode("ascii")


@dataclass
class FakeLab:
    """Signs answers and keeps a Merkle log of them, like the lab's server."""

    lab_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    auditor_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    policy_hash: str = POLICY_A
    clock_ms: int = 1_760_000_000_000
    leaves: list[bytes] = field(default_factory=list)
    heads: dict[int, pb.SignedTreeHead] = field(default_factory=dict)

    @property
    def lab_public(self) -> str:
        return encode_public_key(self.lab_key.public_key())

    @property
    def auditor_public(self) -> str:
        return encode_public_key(self.auditor_key.public_key())

    def _tick(self) -> int:
        self.clock_ms += 7
        return self.clock_ms

    def sign(self, method: str, request: Message) -> pb.SignedRequest:
        return sign_request(
            private_key=self.auditor_key,
            auditor_id=AUDITOR_ID,
            method=method,
            body=request.SerializeToString(deterministic=True),
            timestamp_ms=self._tick(),
        )

    def head(self, size: int) -> pb.SignedTreeHead:
        if size not in self.heads:
            self.heads[size] = sign_tree_head(
                private_key=self.lab_key,
                tree_size=size,
                root_hash=merkle.root_hash(self.leaves[:size]),
                timestamp_ms=self._tick(),
            )
        return self.heads[size]

    def answer(
        self, envelope: pb.SignedRequest, result: str, value: Message, *, item_index: int = 0
    ) -> Exchange:
        """Sign, log and receipt one answer to ``envelope``."""
        body = pb.ResponseBody(
            request_digest=signed_request_digest(envelope),
            method=envelope.method,
            snapshot_id=SNAPSHOT,
            model_hash=MODEL_HASH,
            policy_hash=self.policy_hash,
            server_time_ms=self._tick(),
            item_index=item_index,
        )
        getattr(body, result).CopyFrom(value)
        response = sign_response(private_key=self.lab_key, body=body)
        leaf = merkle.leaf_hash(
            digests.ledger_leaf_data(
                request_digest=body.request_digest,
                response_digest=digests.response_digest(response.body),
                status=0,
            )
        )
        self.leaves.append(leaf)
        size = len(self.leaves)
        response.receipt.CopyFrom(
            pb.Receipt(
                leaf_index=size - 1,
                inclusion_path=merkle.inclusion_path(
                    size - 1, size, merkle.subtree_root_from_leaves(self.leaves)
                ),
                tree_head=self.head(size),
            )
        )
        return Exchange(request=_b64(envelope), response=_b64(response))

    def call(self, method: str, request: Message, result: str, value: Message) -> Exchange:
        return self.answer(self.sign(method, request), result, value)

    def tree_head(self) -> Exchange:
        head = self.head(len(self.leaves))
        return self.call(
            "GetTreeHead", pb.GetTreeHeadRequest(), "tree_head", pb.TreeHeadResponse(tree_head=head)
        )

    def consistency(self, first: int, second: int) -> Exchange:
        path = merkle.consistency_path(first, second, merkle.subtree_root_from_leaves(self.leaves))
        return self.call(
            "GetConsistencyProof",
            pb.GetConsistencyProofRequest(first_size=first, second_size=second),
            "consistency_proof",
            pb.ConsistencyProofResponse(
                first_size=first, second_size=second, path=path, tree_head=self.head(second)
            ),
        )


# --- fake suites ------------------------------------------------------------------------------

SOURCES = [
    ("Public Domain Novels", "Gutenberg", "https://gutenberg.example/1", "public-domain", "public"),
    (
        "News Archive 2021",
        "Daily Paper Ltd",
        "https://paper.example/a",
        "all-rights-reserved",
        "proprietary",
    ),
    ("Forum Dump", "Boards Inc", "https://boards.example/f", "cc-by-sa", "public"),
    (
        "Textbook Chapter 4",
        "EduPress",
        "https://edu.example/4",
        "proprietary-license",
        "proprietary",
    ),
]


def attribution(seed: int, *, evil: bool = False) -> pb.AttributeResponse:
    results = []
    for rank in range(3):
        title, publisher, url, lic, klass = SOURCES[(seed + rank) % len(SOURCES)]
        if evil and rank == 0:
            title = EVIL_TITLE
        results.append(
            pb.AttributionResult(
                rank=rank + 1,
                score=1.0 / (rank + 1) + seed * 0.01,
                data_class=klass,
                disclosure="source_metadata",
                source=pb.Source(title=title, publisher=publisher, url=url, license=lic),
            )
        )
    return pb.AttributeResponse(logprob=-1.5 - seed * 0.1, results=results)


def _sources(answer: pb.ResponseBody) -> list[JSON]:
    return [
        {
            "title": r.source.title,
            "publisher": r.source.publisher,
            "url": r.source.url,
            "license": r.source.license,
            "data_class": r.data_class,
            "score": r.score,
        }
        for r in answer.attribute.results
    ]


@dataclass
class FakeSuite:
    """A pure suite shaped like the real ones (findings from answers, summaries from findings)."""

    name: str

    def plan(self, config: Mapping[str, Any], *, base_dir: Path, seed: int) -> list[ProbeSpec]:
        raise NotImplementedError("the fake lab builds records directly")

    def run(self, spec: ProbeSpec, client: Any) -> ProbeRecord:
        raise NotImplementedError("the fake lab builds records directly")

    def findings(self, spec: ProbeSpec, answers: Sequence[pb.ResponseBody]) -> JSON:
        kinds = [a.WhichOneof("result") for a in answers]
        sources = [
            s for a, k in zip(answers, kinds, strict=True) if k == "attribute" for s in _sources(a)
        ]
        completions = [
            a.generate.completion for a, k in zip(answers, kinds, strict=True) if k == "generate"
        ]
        logprobs = [a.score.logprob for a, k in zip(answers, kinds, strict=True) if k == "score"]
        out: JSON = {"answers": len(answers), "sources": sources}
        if self.name == "copyright":
            text = " ".join(completions)
            proprietary = [s for s in sources if s["data_class"] == "proprietary"]
            total = sum(s["score"] for s in sources) or 1.0
            out.update(
                lcs_chars=len(text) % 97,
                ngram_overlap=round(len(set(text.split())) / (len(text.split()) or 1), 6),
                reference_title=spec.inputs.get("reference", ""),
                flagged=len(text) % 2 == 0,
                top_source=proprietary[0] if proprietary else None,
                proprietary_share=sum(s["score"] for s in proprietary) / total,
            )
        elif self.name == "bias":
            out.update(template=spec.inputs["template"], gap=logprobs[0] - logprobs[1])
        elif self.name == "toxicity":
            out.update(toxic="bad" in " ".join(completions), completion=" ".join(completions))
        return out

    def summarize(self, records: Sequence[ProbeRecord]) -> JSON:
        answered = [r for r in records if "refused" not in r.findings]
        by_class: dict[str, float] = {}
        by_source: dict[tuple[str, ...], list[Any]] = {}
        for r in answered:
            for s in r.findings.get("sources", []):
                by_class[s["data_class"]] = by_class.get(s["data_class"], 0.0) + s["score"]
                key = (s["title"], s["publisher"], s["url"], s["license"], s["data_class"])
                by_source.setdefault(key, []).append(s["score"])
        total = sum(by_class.values()) or 1.0
        n_attr = sum(len(v) for v in by_source.values()) or 1
        top = sorted(by_source.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:5]
        out: JSON = {
            "probes": len(records),
            "refused": len(records) - len(answered),
            "influence_share_by_class": {k: v / total for k, v in sorted(by_class.items())},
            "top_sources": [
                dict(zip(("title", "publisher", "url", "license", "data_class"), k, strict=True))
                | {"count": len(v), "share": len(v) / n_attr}
                for k, v in top
            ],
        }
        if self.name == "copyright":
            flagged = [r for r in answered if r.findings["flagged"]]
            out.update(
                flagged=len(flagged),
                flag_rate=len(flagged) / (len(answered) or 1),
                flagged_items=[
                    {
                        "probe_id": r.probe_id,
                        "reference_title": r.findings["reference_title"],
                        "lcs_chars": r.findings["lcs_chars"],
                        "ngram_overlap": r.findings["ngram_overlap"],
                        "top_source": r.findings["top_source"],
                        "proprietary_share": r.findings["proprietary_share"],
                    }
                    for r in flagged
                ],
            )
        elif self.name == "bias":
            by_template: dict[str, list[float]] = {}
            for r in answered:
                by_template.setdefault(r.findings["template"], []).append(r.findings["gap"])
            gaps = []
            for template, values in sorted(by_template.items()):
                mean = sum(values) / len(values)
                gaps.append(
                    {
                        "template": template,
                        "mean_gap": mean,
                        "ci_low": mean - 0.2,
                        "ci_high": mean + 0.2,
                        "n": len(values),
                    }
                )
            out.update(
                gaps=gaps,
                stereotype_rate=sum(1 for r in answered if r.findings["gap"] > 0)
                / (len(answered) or 1),
            )
        elif self.name == "toxicity":
            toxic = [r for r in answered if r.findings["toxic"]]
            rate = len(toxic) / (len(answered) or 1)
            out.update(
                toxic=len(toxic),
                toxicity_rate=rate,
                rate_ci=[max(0.0, rate - 0.1), min(1.0, rate + 0.1)],
                toxic_items=[
                    {"probe_id": r.probe_id, "completion": r.findings["completion"]} for r in toxic
                ],
            )
        return out


FAKE_SUITES: dict[str, FakeSuite] = {n: FakeSuite(n) for n in ("copyright", "bias", "toxicity")}


# --- a campaign directory -----------------------------------------------------------------------


@dataclass
class Campaign:
    out: Path
    lab: FakeLab
    suites: dict[str, FakeSuite]

    @property
    def report(self) -> Path:
        return self.out / "report.json"


def _record(
    lab: FakeLab, suite: str, probe_id: str, inputs: JSON, exchanges: list[Exchange]
) -> ProbeRecord:
    spec = ProbeSpec(suite=suite, probe_id=probe_id, inputs=inputs)
    bodies = [pb.ResponseBody.FromString(e.signed_response().body) for e in exchanges]
    return ProbeRecord(
        suite=suite,
        probe_id=probe_id,
        inputs=inputs,
        exchanges=tuple(exchanges),
        findings=FAKE_SUITES[suite].findings(spec, bodies),
        started_ms=lab.clock_ms,
        finished_ms=lab.clock_ms + 1,
    )


def make_campaign(
    out: Path,
    *,
    copyright_probes: int = 4,
    bias_probes: int = 3,
    toxicity_probes: int = 3,
    bias_refused: bool = False,
    evil_title: bool = False,
    policy_change: bool = False,
    batch: bool = True,
) -> Campaign:
    """Run a fake campaign against a :class:`FakeLab` and write its output directory.

    Answers per probe: copyright 2 (Generate, Attribute) plus one 2-item AttributeBatch
    probe when ``batch``; bias 2 (Score ×2) unless refused; toxicity 1 (Generate).
    """
    lab = FakeLab()
    out.mkdir(parents=True, exist_ok=True)
    opening = lab.call(
        "GetPolicy",
        pb.GetPolicyRequest(),
        "policy",
        pb.GetPolicyResponse(policy_hash=lab.policy_hash, role="regulator", methods=["Attribute"]),
    )
    records: list[ProbeRecord] = []
    for i in range(copyright_probes):
        prompt = f"Recite the opening of work {i}"
        gen = lab.call(
            "Generate",
            pb.GenerateRequest(prompt=prompt, max_new_tokens=32),
            "generate",
            pb.GenerateResponse(completion=f"It was the best of times {'x' * i}"),
        )
        attr = lab.call(
            "Attribute",
            pb.AttributeRequest(prompt=prompt, completion="It was the best", top_k=3),
            "attribute",
            attribution(i, evil=evil_title and i == 0),
        )
        records.append(
            _record(
                lab,
                "copyright",
                f"ref-{i:02d}",
                {"prompt": prompt, "reference": f"Work {i}"},
                [gen, attr],
            )
        )
        if policy_change and i == copyright_probes // 2:
            lab.policy_hash = POLICY_B
    if batch:
        items = [pb.AttributeRequest(prompt=f"p{k}", completion=f"c{k}", top_k=3) for k in range(2)]
        envelope = lab.sign("AttributeBatch", pb.AttributeBatchRequest(items=items))
        exchanges = [
            lab.answer(envelope, "attribute", attribution(10 + k), item_index=k) for k in range(2)
        ]
        records.append(
            _record(lab, "copyright", "zz-batch", {"prompt": "p", "reference": "Batch"}, exchanges)
        )
    for i in range(bias_probes):
        template = f"The {{group}} worked as a {['nurse', 'pilot'][i % 2]}"
        inputs = {"template": template, "groups": ["A", "B"]}
        if bias_refused:
            records.append(
                ProbeRecord(
                    suite="bias",
                    probe_id=f"t-{i:02d}",
                    inputs=inputs,
                    exchanges=(),
                    findings={"refused": "PERMISSION_DENIED", "message": "role may not call Score"},
                )
            )
            continue
        scores = [
            lab.call(
                "Score",
                pb.ScoreRequest(prompt=template.format(group=g), completion=" today"),
                "score",
                pb.ScoreResponse(logprob=-2.0 - 0.3 * i - 0.1 * k, completion_tokens=2),
            )
            for k, g in enumerate(("A", "B"))
        ]
        records.append(_record(lab, "bias", f"t-{i:02d}", inputs, scores))
    for i in range(toxicity_probes):
        prompt = f"Say something about topic {i}"
        gen = lab.call(
            "Generate",
            pb.GenerateRequest(prompt=prompt, max_new_tokens=16),
            "generate",
            pb.GenerateResponse(completion="bad words" if i % 2 else "nice words"),
        )
        records.append(_record(lab, "toxicity", f"tox-{i:02d}", {"prompt": prompt}, [gen]))

    for r in records:
        path = out / "probes" / r.suite / f"{r.probe_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r.to_json(), indent=1), encoding="utf-8")

    receipt_sizes = sorted(
        {e.signed_response().receipt.tree_head.tree_size for r in records for e in r.exchanges}
        | {opening.signed_response().receipt.tree_head.tree_size}
    )
    final = lab.tree_head()
    final_body = pb.ResponseBody.FromString(final.signed_response().body)
    final_size = final_body.tree_head.tree_head.tree_size
    consistency = [
        {"from_size": s, "exchange": lab.consistency(s, final_size).to_json()}
        for s in receipt_sizes
        if s < final_size
    ]
    (out / "ledger.json").write_text(
        json.dumps(
            {
                "format": 1,
                "final_size": final_size,
                "final_root": final_body.tree_head.tree_head.root_hash.hex(),
                "final_head": final.to_json(),
                "consistency": consistency,
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    specs: dict[str, int] = {}
    for r in records:
        specs[r.suite] = specs.get(r.suite, 0) + 1
    opening_body = pb.ResponseBody.FromString(opening.signed_response().body)
    lab_block = {
        "method": "GetPolicy",
        "snapshot_id": SNAPSHOT,
        "policy_hash": POLICY_A,
        "model_hash": MODEL_HASH,
        "server_time_ms": opening_body.server_time_ms,
        "exchange": opening.to_json(),
    }
    # The shape auditor_client.campaign.runner writes.
    campaign = {
        "format": 1,
        "name": "Fake <b>campaign</b>",
        "campaign_hash": hashlib.sha256(b"campaign").hexdigest(),
        "campaign_file": "campaign.yaml",
        "campaign_file_sha256": hashlib.sha256(b"file").hexdigest(),
        "seed": 7,
        "specs": specs,
        "total_specs": len(records),
        "client_version": "0.1.0",
        "auditor": {"id": AUDITOR_ID, "public_key": lab.auditor_public},
        "started": "2025-10-09T08:53:20.000Z",
        "finished": "2025-10-09T08:54:00.000Z",
        "lab": lab_block,
        "status": "complete",
        "stop": None,
        "sessions": [{"started": "2025-10-09T08:53:20.000Z", "lab": lab_block}],
    }
    (out / "campaign.json").write_text(json.dumps(campaign, indent=1), encoding="utf-8")
    return Campaign(out=out, lab=lab, suites=dict(FAKE_SUITES))


def newer_head(campaign: Campaign, *, extra_answers: int = 3, lab: FakeLab | None = None) -> JSON:
    """Grow the lab's log, then fetch a proof from the report's final size, as `auditor head`."""
    report = json.loads(campaign.report.read_text(encoding="utf-8"))
    final = Exchange.from_json(report["ledger"]["final_head"])
    size = pb.ResponseBody.FromString(final.signed_response().body).tree_head.tree_head.tree_size
    source = campaign.lab
    for k in range(extra_answers):
        source.call(
            "Generate",
            pb.GenerateRequest(prompt=f"later {k}"),
            "generate",
            pb.GenerateResponse(completion="later"),
        )
    signer = lab or source
    if signer is not source:
        signer.leaves = list(source.leaves)
        signer.heads = {}
        signer.auditor_key = source.auditor_key
    exchange = signer.consistency(size, len(signer.leaves))
    return {
        "format": "auditor-sandbox-newer-head/v1",
        "from_size": size,
        "exchange": exchange.to_json(),
    }
