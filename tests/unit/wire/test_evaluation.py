"""The evaluation certificate's format, built by the lab and checked by the client.

What a client must refuse: a certificate for another snapshot, a ``result_json`` that is not
canonical or not an object, and any typed field (headline numbers included) that says
something the signed JSON does not. What it must keep: every key of the JSON, known or not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.errors import MalformedResponseError
from auditor_client.wire.evaluation import (
    CertificateError,
    Headline,
    canonical_json,
    certificate_from_result,
    read_certificate,
)
from tests.fixtures.validation import QUESTIONS_SHA256, sample_validation

SNAPSHOT = "sha256:" + "ea" * 32


def _cert() -> pb.EvaluationCertificate:
    return certificate_from_result(sample_validation(SNAPSHOT))


def test_certificate_carries_the_whole_result_canonically_and_reads_back() -> None:
    result = sample_validation(SNAPSHOT)
    cert = certificate_from_result(result)
    # The whole file, canonical: sorted keys, no whitespace, UTF-8 (not \\u escapes).
    assert cert.result_json == json.dumps(
        result, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert "—" in cert.result_json and " " not in cert.result_json.split('"note"')[0]
    assert (cert.snapshot_id, cert.measure, cert.split) == (SNAPSHOT, "tail_patch", "heldout")
    assert (cert.questions_sha256, cert.n_questions, cert.top_k) == (QUESTIONS_SHA256, 8, 10)

    found = read_certificate(cert, snapshot_id=SNAPSHOT)
    assert found.result == result  # unknown keys ("method", "leave_k_out") kept
    # Engine first, then the others by name; sgd before adam; no headline for a step a
    # method has no block for.
    assert [(h.name, h.step) for h in found.headlines] == [
        ("engine", "sgd"),
        ("engine", "adam"),
        ("bm25", "sgd"),
        ("bm25", "adam"),
        ("planted", "sgd"),
        ("random", "sgd"),
    ]
    assert found.headline("engine") == Headline(
        "engine", "sgd", 0.975360894203186, 0.40703555226325994, 1.716772867441177, 0.5, 8
    )
    assert found.headline("planted") == Headline("planted", "sgd", None, None, None, 0.0, 0)
    assert not cert.headlines[4].HasField("mean")  # absent, not 0.0
    assert [(r.pair, r.step) for r in found.ratios] == [
        ("engine/bm25", "sgd"),
        ("engine/bm25", "adam"),
        ("engine/planted", "sgd"),
        ("engine/random", "sgd"),
    ]
    assert found.ratios[0].difference is not None and found.ratios[1].difference is None
    assert found.ratios[2].ratio is None


def _retyped(edit: Callable[[pb.EvaluationCertificate], None]) -> pb.EvaluationCertificate:
    cert = _cert()
    edit(cert)
    return cert


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: setattr(c.headlines[0], "mean", 1.5), "headlines[0] says"),
        (lambda c: setattr(c.headlines[2], "ci_high", 9.0), "headlines[2] says"),
        (lambda c: c.headlines[4].ClearField("recall_at_k"), "headlines[4] says"),
        (lambda c: setattr(c.headlines[4], "mean", 0.0), "headlines[4] says"),
        (lambda c: setattr(c.headlines[1], "n", 7), "headlines[1] says"),
        (lambda c: c.headlines.pop(), "headlines[5] says nothing"),
        (lambda c: c.headlines.add(name="oracle", step="sgd", n=1), "headlines[6] says"),
        (lambda c: setattr(c, "n_questions", 4000), "n_questions says 4000"),
        (lambda c: setattr(c, "split", "all"), "split says 'all'"),
        (lambda c: setattr(c, "top_k", 1), "top_k says 1"),
        (lambda c: setattr(c, "measure", "recall"), "measure says 'recall'"),
        (lambda c: setattr(c, "questions_sha256", "sha256:00"), "questions_sha256 says"),
    ],
)
def test_typed_fields_that_contradict_the_signed_json_are_refused(
    edit: Callable[[pb.EvaluationCertificate], None], message: str
) -> None:
    with pytest.raises(MalformedResponseError, match=message.replace("[", r"\[")):
        read_certificate(_retyped(edit), snapshot_id=SNAPSHOT)


def _tampered_json(edit: Callable[[dict[str, Any]], None]) -> pb.EvaluationCertificate:
    """The typed fields untouched, ``result_json`` edited (and kept canonical)."""
    cert = _cert()
    result = json.loads(cert.result_json)
    edit(result)
    cert.result_json = canonical_json(result)
    return cert


def test_result_json_edited_under_the_typed_fields_is_refused() -> None:
    def better(r: dict[str, Any]) -> None:
        r["methods"]["engine"]["sgd"]["mean"] = 2.5

    with pytest.raises(MalformedResponseError, match=r"headlines\[0\] says .*mean=0.97"):
        read_certificate(_tampered_json(better), snapshot_id=SNAPSHOT)

    def more_questions(r: dict[str, Any]) -> None:
        r["n_questions"] = 400

    with pytest.raises(MalformedResponseError, match="n_questions says 8, but its result_json"):
        read_certificate(_tampered_json(more_questions), snapshot_id=SNAPSHOT)

    def other_snapshot(r: dict[str, Any]) -> None:
        r["snapshot_id"] = "sha256:" + "00" * 32

    with pytest.raises(MalformedResponseError, match="snapshot_id says"):
        read_certificate(_tampered_json(other_snapshot), snapshot_id=SNAPSHOT)

    # A key the typed fields do not mirror may change freely: it is signed, not duplicated.
    def note(r: dict[str, Any]) -> None:
        r["method"]["description"] = "another description"

    assert read_certificate(_tampered_json(note), snapshot_id=SNAPSHOT).result["method"] == {
        "description": "another description",
        "reference": "Chang et al. 2024",
    }

    # Keys added later beside the step blocks (per method or per ratio) are carried, not read.
    def additions(r: dict[str, Any]) -> None:
        r["methods"]["engine"]["leave_k_out"] = {"drop": 0.3}
        r["ratios"]["engine/bm25"]["note"] = "paired bootstrap"

    found = read_certificate(_tampered_json(additions), snapshot_id=SNAPSHOT)
    assert found.result["ratios"]["engine/bm25"]["note"] == "paired bootstrap"
    assert len(found.headlines) == 6 and len(found.ratios) == 4


def test_result_json_must_be_a_canonical_json_object() -> None:
    cert = _cert()
    for text, message in [
        (json.dumps(json.loads(cert.result_json)), "not canonical"),  # whitespace
        (json.dumps(json.loads(cert.result_json), sort_keys=True), "not canonical"),
        (canonical_json(json.loads(cert.result_json)).replace("—", "\\u2014"), "not canonical"),
        ("[1, 2]", "not a JSON object"),
        ('{"measure": ', "Expecting value"),
        ("", "Expecting value"),
    ]:
        cert.result_json = text
        with pytest.raises(MalformedResponseError, match=message):
            read_certificate(cert, snapshot_id=SNAPSHOT)


def test_a_certificate_for_another_snapshot_is_refused() -> None:
    with pytest.raises(MalformedResponseError, match="is for snapshot 'sha256:eaea"):
        read_certificate(_cert(), snapshot_id="sha256:" + "11" * 32)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.pop("snapshot_id"), "snapshot_id is missing"),
        (lambda r: r.update(n_questions=-1), "n_questions is missing or not a count"),
        (lambda r: r.update(top_k=True), "top_k is missing or not a count"),
        (lambda r: r.update(steps={}), "steps names no step"),
        (lambda r: r.update(methods=[]), "methods is missing or not an object"),
        (lambda r: r["methods"]["engine"].update(sgd=[1]), "methods.engine.sgd is missing"),
        (lambda r: r["methods"]["engine"]["sgd"].update(mean="high"), "mean is not a finite"),
        (lambda r: r["methods"]["bm25"]["sgd"].update(ci95=[0.1]), "not a \\[low, high\\]"),
        (lambda r: r["methods"]["bm25"]["sgd"].update(mean=float("nan")), "not JSON compliant"),
        (lambda r: r["ratios"]["engine/bm25"]["sgd"].update(n="8"), "ratios.engine/bm25.sgd.n"),
    ],
)
def test_the_lab_refuses_to_build_from_a_malformed_result(
    edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    result = sample_validation(SNAPSHOT)
    edit(result)
    with pytest.raises(CertificateError, match=message):
        certificate_from_result(result)


def test_an_oversized_result_is_not_served() -> None:
    result = sample_validation(SNAPSHOT)
    result["padding"] = "x" * (1 << 20)
    with pytest.raises(CertificateError, match="larger than"):
        certificate_from_result(result)
