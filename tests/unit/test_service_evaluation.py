"""The evaluation certificate through the service, in process, over a stand-in engine.

What is checked: GetPolicy answers carry ``INDEX_DIR/validation.json`` as a signed
certificate that the client's checks accept, but only when it measured the snapshot being
served; a stale, malformed or missing file leaves the certificate out (logged) and never
stops the service; SIGHUP's reload path reads the file again. Over real gRPC (in process):
the client refuses a signed certificate that contradicts itself, and ``auditor evaluation``
prints a good one.
"""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from auditor_client.cli import main
from auditor_client.client import AuditorClient, Verified
from auditor_client.keys import KeyPair, generate_keypair
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.envelope import sign_request, signed_request_digest
from auditor_client.wire.errors import MalformedResponseError
from auditor_client.wire.evaluation import canonical_json, certificate_from_result
from auditor_client.wire.receipts import verify_answer
from auditor_server.attribution import layout
from auditor_server.attribution.build import build_guard
from auditor_server.corpus.catalog import Catalog
from auditor_server.corpus.records import Record, Source
from auditor_server.policy.model import Policy
from auditor_server.security.lab_keys import generate_lab_key, load_lab_key
from auditor_server.server import ServerOptions, build_server
from auditor_server.service import AuditService
from tests.fixtures.servicer_context import InProcessContext
from tests.fixtures.validation import sample_validation

SNAPSHOT = "sha256:" + "5e" * 32
OTHER_SNAPSHOT = "sha256:" + "01" * 32


class _Engine:
    """The service's engine protocol with no model (GetPolicy never reaches the engine)."""

    def __init__(self, index_dir: Path, catalog: Catalog) -> None:
        self.index_dir = index_dir
        self.catalog = catalog
        self.manifest = {"snapshot_id": SNAPSHOT, "model_hash": "sha256:model"}
        self.shingle_sets = build_guard(index_dir, catalog)

    @property
    def snapshot_id(self) -> str:
        return SNAPSHOT

    def attribute_many(self, pairs: Any, *, top_k: int = 10, exclude_classes: Any = ()) -> Any:
        raise NotImplementedError

    def generate_constrained(self, prompt: str, *, guard: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def generate_many(self, requests: Any) -> Any:
        raise NotImplementedError

    def score(self, prompt: str, completion: str) -> Any:
        raise NotImplementedError

    def score_many(self, pairs: Any) -> Any:
        raise NotImplementedError




@dataclass
class Lab:
    service: AuditService
    key: KeyPair
    index: Path
    root: Path

    def get_policy(self) -> Verified:
        """A signed GetPolicy call, verified as the client verifies it."""
        envelope = sign_request(
            private_key=self.key.private,
            auditor_id="reg",
            method="GetPolicy",
            body=pb.GetPolicyRequest().SerializeToString(),
        )
        response = self.service.unary(
            "GetPolicy",
            envelope.SerializeToString(),
            InProcessContext(),  # type: ignore[arg-type]
        )
        body = verify_answer(
            response,
            lab_public_key=self.service.lab_key.private_key.public_key(),
            request_digest=signed_request_digest(envelope),
            method="GetPolicy",
        )
        return Verified(request=envelope, response=response, body=body)


def _write(index: Path, content: Any) -> None:
    path = index / layout.VALIDATION
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=1))


def _open(root: Path, validation: Any = None) -> Lab:
    index = root / "index"
    index.mkdir(parents=True)
    source = Source(title="T", publisher="P", url="https://x", license="L", data_class="public")
    catalog = Catalog.create(
        index / layout.CATALOG,
        [Record(id="r1", text="The keeper counted ships before the storm.", source=source)],
    )
    if validation is not None:
        _write(index, validation)
    key = generate_keypair(root / "me")
    (root / "auditors.yaml").write_text(
        f'auditors:\n  - {{id: reg, role: regulator, keys: [{{key: "{key.public_text}"}}]}}\n'
    )
    policy = root / "policy.yaml"
    policy.write_text(
        textwrap.dedent(
            """\
            version: 1
            lab: {name: Evaluation Test Lab}
            disclosure: {public: full_text, proprietary: source_metadata, private: none}
            roles:
              regulator:
                methods: [WhoAmI, GetPolicy]
                max_top_k: 5
                daily_queries: 10
                max_new_tokens: 8
            auditor_registry: auditors.yaml
            """
        )
    )
    generate_lab_key(root / "lab")
    service = AuditService.open(
        engine=_Engine(index, catalog),
        policy=Policy.from_file(policy),
        policy_path=policy,
        lab_key=load_lab_key(root / "lab"),
        state_dir=root / "state",
    )
    return Lab(service, key, index, root)


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[list[Lab]]:
    labs: list[Lab] = []
    yield labs
    for lab in labs:
        lab.service.close()


def _lab(opened: list[Lab], root: Path, validation: Any = None) -> Lab:
    lab = _open(root, validation)
    opened.append(lab)
    return lab


def test_the_certificate_for_the_served_snapshot_is_signed_into_get_policy(
    opened: list[Lab], tmp_path: Path
) -> None:
    written = sample_validation(SNAPSHOT)
    lab = _lab(opened, tmp_path, written)
    answer = lab.get_policy()
    assert answer.body.policy.HasField("evaluation")
    found = answer.evaluation()
    assert found is not None
    assert found.snapshot_id == answer.body.snapshot_id == SNAPSHOT
    assert found.result == written  # the whole file, every key
    engine = found.headline("engine")
    assert engine is not None and engine.mean == written["methods"]["engine"]["sgd"]["mean"]
    # The policy part of the answer is unchanged by it.
    assert answer.body.policy.role == "regulator" and answer.body.policy.max_top_k == 5


def test_an_index_without_validation_json_serves_get_policy_without_a_certificate(
    opened: list[Lab], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="auditor_server.service"):
        lab = _lab(opened, tmp_path)
    answer = lab.get_policy()
    assert not answer.body.policy.HasField("evaluation")
    assert answer.evaluation() is None
    assert "does not exist" in caplog.text


def test_a_stale_certificate_is_never_served_for_another_index(
    opened: list[Lab], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="auditor_server.service"):
        lab = _lab(opened, tmp_path, sample_validation(OTHER_SNAPSHOT))
    assert lab.get_policy().evaluation() is None
    (record,) = [r for r in caplog.records if "serving no evaluation certificate" in r.message]
    assert record.levelno == logging.WARNING
    assert OTHER_SNAPSHOT in record.message and SNAPSHOT in record.message


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[1, 2, 3]",
        "\udcff",  # not UTF-8 once written with surrogateescape: see below
        json.dumps({"measure": "tail_patch", "snapshot_id": SNAPSHOT}),
        "[" * 100_000 + "]" * 100_000,  # deep enough to hit the parser's recursion limit
    ],
    ids=["not-json", "not-object", "not-utf8", "missing-keys", "too-deep"],
)
def test_a_malformed_certificate_is_logged_and_left_out(
    opened: list[Lab], tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    lab = _lab(opened, tmp_path)
    path = lab.index / layout.VALIDATION
    path.write_bytes(content.encode("utf-8", errors="surrogateescape"))
    with caplog.at_level(logging.ERROR, logger="auditor_server.service"):
        assert lab.service.reload_evaluation() is False
    assert "is unusable" in caplog.text
    answer = lab.get_policy()  # still answered, signed, without a certificate
    assert answer.body.WhichOneof("result") == "policy"
    assert answer.evaluation() is None


def test_a_directory_in_its_place_is_logged_and_left_out(
    opened: list[Lab], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lab = _lab(opened, tmp_path)
    (lab.index / layout.VALIDATION).mkdir()
    with caplog.at_level(logging.ERROR, logger="auditor_server.service"):
        assert lab.service.reload_evaluation() is False
    assert "is unusable" in caplog.text
    assert lab.get_policy().evaluation() is None


def test_sighup_reload_reads_the_certificate_again(opened: list[Lab], tmp_path: Path) -> None:
    """The lab validates while serving, then ``kill -HUP``: the server's SIGHUP handler
    calls ``reload_policy``, which reads the certificate first."""
    lab = _lab(opened, tmp_path)
    assert lab.get_policy().evaluation() is None
    _write(lab.index, sample_validation(SNAPSHOT))
    assert lab.get_policy().evaluation() is None  # read at open and on reload only
    assert lab.service.reload_policy() is True
    found = lab.get_policy().evaluation()
    assert found is not None and found.n_questions == 8
    # A later stale file takes it away again (never the old one kept under a new index).
    _write(lab.index, sample_validation(OTHER_SNAPSHOT))
    lab.service.reload_policy()
    assert lab.get_policy().evaluation() is None


@pytest.fixture
def served(opened: list[Lab], tmp_path: Path) -> Iterator[tuple[Lab, str]]:
    """A lab with a certificate behind a real gRPC server (in process, plaintext)."""
    lab = _lab(opened, tmp_path, sample_validation(SNAPSHOT))
    server, port = build_server(lab.service, ServerOptions(port=0, max_workers=4))
    server.start()
    yield lab, f"127.0.0.1:{port}"
    server.stop(None)


def _client(lab: Lab, address: str) -> AuditorClient:
    return AuditorClient.connect(
        address,
        key_dir=lab.root / "me",
        lab_public_key=lab.service.lab_key.public_text,
        auditor_id="reg",
        insecure=True,
        timeout_s=10,
    )


def test_the_client_refuses_a_signed_certificate_that_contradicts_itself(
    served: tuple[Lab, str],
) -> None:
    lab, address = served
    with _client(lab, address) as client:
        found = client.get_policy().evaluation()
        assert found is not None and found.headline("bm25") is not None

        # A lab that signs typed numbers its own result_json does not say: a better engine.
        good = lab.service.evaluation
        assert good is not None
        inflated = pb.EvaluationCertificate()
        inflated.CopyFrom(good)
        inflated.headlines[0].mean = 5.0
        lab.service._evaluation = inflated
        with pytest.raises(MalformedResponseError, match=r"headlines\[0\] says"):
            client.get_policy()

        # ... or edits the JSON under unchanged typed fields.
        result = json.loads(good.result_json)
        result["methods"]["engine"]["sgd"]["ci95"] = [0.9, 1.0]
        edited = pb.EvaluationCertificate()
        edited.CopyFrom(good)
        edited.result_json = canonical_json(result)
        lab.service._evaluation = edited
        with pytest.raises(MalformedResponseError, match=r"headlines\[0\] says"):
            client.get_policy()

        # ... or one whose JSON is not canonical (the bytes a report carries must be exact).
        loose = pb.EvaluationCertificate()
        loose.CopyFrom(good)
        loose.result_json = json.dumps(json.loads(good.result_json), indent=1)
        lab.service._evaluation = loose
        with pytest.raises(MalformedResponseError, match="not canonical"):
            client.get_policy()


def test_auditor_evaluation_prints_the_verified_certificate(served: tuple[Lab, str]) -> None:
    lab, address = served
    args = [
        "--server", address, "--key", str(lab.root / "me"), "--auditor-id", "reg",
        "--lab-key", lab.service.lab_key.public_text, "--insecure",
    ]  # fmt: skip
    out = CliRunner().invoke(main, ["evaluation", *args])
    assert out.exit_code == 0, out.output
    assert "tail_patch on 8 heldout questions (top 10)" in out.output
    assert "engine    sgd     +0.9754  [+0.4070, +1.7168]" in out.output
    assert "planted   sgd         n/a" in out.output
    assert "engine/bm25      sgd   ratio +1.07 [+1.03, +1.23]" in out.output
    assert "verified: lab signature, request binding, ledger leaf" in out.output

    as_json = CliRunner().invoke(main, ["evaluation", "--json", *args])
    assert as_json.exit_code == 0, as_json.output
    shown = json.loads(as_json.output)
    assert shown["evaluation"]["result"] == sample_validation(SNAPSHOT)
    assert shown["evaluation"]["headlines"][0]["name"] == "engine"

    lab.service._evaluation = None  # a lab with none: said plainly, not an error
    out = CliRunner().invoke(main, ["evaluation", *args])
    assert out.exit_code == 0, out.output
    assert f"the lab serves no evaluation certificate for snapshot {SNAPSHOT}" in out.output

    tampered = certificate_from_result(sample_validation(SNAPSHOT))
    tampered.top_k = 3
    lab.service._evaluation = tampered
    out = CliRunner().invoke(main, ["evaluation", *args])
    assert out.exit_code == 4 and "VERIFICATION FAILED" in out.output
