"""Private records are invisible: an answer is identical whether or not they are in the store.

Two labs are built from the same model: one over the whole corpus, one over the corpus with
its private records removed. For many random queries, through the full service path (signed
envelope, policy, engine, disclosure), the two answers must be equal field for field:
same results, same order, same scores, same count, same log-probability.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor_client.keys import encode_public_key
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.envelope import sign_request
from tests.fixtures.servicer_context import InProcessContext
from tests.integration.lab_server import policy_text


@dataclass
class Pair:
    with_private: Any
    without_private: Any
    key: Ed25519PrivateKey
    texts: list[str]


def _service(
    root: Path, index: Path, policy: Path, lab_key: Any, milvus_uri: str | None = None
) -> Any:
    from auditor_server.attribution.engine import AttributionEngine
    from auditor_server.policy.model import Policy
    from auditor_server.service import AuditService

    return AuditService.open(
        engine=AttributionEngine.open(index, milvus_uri=milvus_uri),
        policy=Policy.from_file(policy),
        policy_path=policy,
        lab_key=lab_key,
        state_dir=root,
    )


@pytest.fixture(scope="module", params=["faiss", "milvus"])
def pair(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Pair]:
    """The two labs, searching their rows with the embedded FAISS index or with Milvus
    (Milvus Lite; the filter on data class runs inside Milvus's search)."""
    from auditor_server.attribution.build import build_index
    from auditor_server.attribution.config import FeatureConfig
    from auditor_server.corpus.demo import generate_demo_corpus
    from auditor_server.security.lab_keys import generate_lab_key, load_lab_key
    from tests.fixtures.tiny_models import make_tiny_model_dir

    root = tmp_path_factory.mktemp("invisible")
    summary = generate_demo_corpus(root / "corpus.jsonl", size="tiny", seed=5)
    lines = summary.corpus_path.read_text().splitlines()
    kept = [ln for ln in lines if json.loads(ln)["source"]["data_class"] != "private"]
    assert len(kept) < len(lines)
    (root / "public_only.jsonl").write_text("\n".join(kept) + "\n")
    model = make_tiny_model_dir(root, "gpt2")
    features = FeatureConfig(proj_in=4, proj_out=4, span_tokens=24, span_stride=12)
    for name, corpus in (("all", summary.corpus_path), ("no_private", root / "public_only.jsonl")):
        build_index(
            model_dir=model,
            corpus_path=corpus,
            out_dir=root / name,
            feature_config=features,
            progress=False,
        )
    generate_lab_key(root / "lab")
    lab_key = load_lab_key(root / "lab")
    key = Ed25519PrivateKey.generate()
    public = encode_public_key(key.public_key())
    (root / "auditors.yaml").write_text(
        f'auditors:\n  - {{id: reg, role: regulator, keys: [{{key: "{public}"}}]}}\n'
    )
    policy = root / "policy.yaml"
    # Prompts are drawn from private records too; each one touching private text spends
    # the regulator's withheld budget, which must not run out mid-test.
    policy.write_text(policy_text(withheld_budget=1_000_000))
    uris: dict[str, str | None] = {"all": None, "no_private": None}
    if request.param == "milvus":
        pytest.importorskip("pymilvus")
        from auditor_server.attribution.backends import export_to_milvus

        for name in uris:
            uris[name] = str(root / f"{name}.db")
            export_to_milvus(root / name, str(uris[name]))
    a = _service(root / "state-a", root / "all", policy, lab_key, uris["all"])
    b = _service(root / "state-b", root / "no_private", policy, lab_key, uris["no_private"])
    assert a.engine.searcher.name == b.engine.searcher.name == request.param
    yield Pair(a, b, key, [json.loads(ln)["text"] for ln in lines])
    a.close()
    b.close()


def _ask(
    pair: Pair, service: Any, prompt: str, completion: str, top_k: int
) -> pb.AttributeResponse:
    envelope = sign_request(
        private_key=pair.key,
        auditor_id="reg",
        method="Attribute",
        body=pb.AttributeRequest(
            prompt=prompt, completion=completion, top_k=top_k
        ).SerializeToString(),
    )
    response = service.unary("Attribute", envelope.SerializeToString(), InProcessContext())
    body = pb.ResponseBody.FromString(response.body)
    return body.attribute


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_answers_do_not_depend_on_private_records_being_stored(
    pair: Pair, data: st.DataObject
) -> None:
    source = data.draw(st.sampled_from(pair.texts), label="record text")
    start = data.draw(st.integers(0, max(0, len(source) - 2)), label="start")
    cut = data.draw(st.integers(start, min(len(source), start + 30)), label="cut")
    end = data.draw(st.integers(cut + 1, min(len(source), cut + 40) + 1), label="end")
    words = data.draw(st.text(alphabet="abcdefghij @.", max_size=10), label="noise")
    # Short enough for the tiny model's 128-token context with its tiny tokenizer.
    prompt, completion = source[start:cut] + words, source[cut:end]
    if not completion.strip():
        completion = "x"
    top_k = data.draw(st.integers(1, 50), label="top_k")
    a = _ask(pair, pair.with_private, prompt, completion, top_k)
    b = _ask(pair, pair.without_private, prompt, completion, top_k)
    if a.logprob_withheld:
        # The one permitted difference: text touching a private record gets no
        # log-probability. That is a membership answer the policy rations (withheld_budget)
        # and logs; everything else, ranks and scores included, must be identical.
        assert not a.HasField("logprob") and b.HasField("logprob")
        assert not b.logprob_withheld
        a.logprob_withheld = False
        b.ClearField("logprob")
    assert a == b
    assert len(a.results) == top_k
    assert all(r.data_class != "private" for r in a.results)
