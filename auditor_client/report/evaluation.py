"""The report's ``evaluation`` section: how trustworthy the lab says its attributions are.

A campaign's first exchange is its check-in with the lab (``campaign.lab.exchange``): a
signed, logged ``GetPolicy`` answer, or ``WhoAmI`` for a role that may not ask for the
policy. A GetPolicy answer carries the lab's evaluation certificate when its index has one
(:mod:`auditor_client.wire.evaluation`), so every report already holds, under the lab's
signature, the lab's own measurement of the attributions its findings rest on.

This section is a pure function of that exchange's signed body: the builder writes it and
``auditor verify`` computes it again from the verified exchange and compares, so an edited
mean or interval in the section is caught, naming the entry. It is deliberately a *view*:
the certificate itself stays in the signed bytes, and the section says where it came from.
"""

from __future__ import annotations

import hashlib

from auditor_client.campaign.types import JSON
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.evaluation import Difference, Evaluation, read_certificate

SOURCE = "campaign.lab.exchange"
"""The exchange the section is derived from: the campaign's first check-in."""


def evaluation_section(body: pb.ResponseBody) -> JSON:
    """The section for a check-in whose signed answer is ``body`` (its ``method`` is signed
    too, so the section depends on nothing outside the lab's signature).

    Returns ``{"available": false, "reason": ...}`` when the check-in cannot carry a
    certificate (WhoAmI) or the lab served none; otherwise the certificate's question set,
    each method's mean tail-patch with its 95% interval and recall@k, and the engine's
    ratio to each baseline, as the signed certificate states them.

    Raises:
        MalformedResponseError: the certificate fails the client's checks (it contradicts
            its own ``result_json`` or vouches for another snapshot).
    """
    if body.method != "GetPolicy" or body.WhichOneof("result") != "policy":
        return {
            "available": False,
            "reason": (
                f"the campaign checked in with {body.method} (this role may not call "
                "GetPolicy), "
                "and only the lab's GetPolicy answer carries its evaluation certificate"
            ),
        }
    if not body.policy.HasField("evaluation"):
        return {
            "available": False,
            "reason": (
                "the lab served no evaluation certificate with its signed policy "
                f"(snapshot {body.snapshot_id})"
            ),
        }
    found = read_certificate(body.policy.evaluation, snapshot_id=body.snapshot_id)
    return _available(found)


def _available(found: Evaluation) -> JSON:
    result = found.result
    return {
        "available": True,
        "source": SOURCE,
        "snapshot_id": found.snapshot_id,
        "model_hash": result.get("model_hash"),
        "measure": found.measure,
        "questions_sha256": found.questions_sha256,
        "split": found.split,
        "n_questions": found.n_questions,
        "n_known": result.get("n_known"),
        "top_k": found.top_k,
        "steps": result.get("steps"),
        "methods": [
            {
                "method": h.name,
                "step": h.step,
                "mean": h.mean,
                "ci95": _pair(h.ci_low, h.ci_high),
                "n": h.n,
                "recall_at_k": h.recall_at_k,
            }
            for h in found.headlines
        ],
        "ratios": [
            {
                "pair": r.pair,
                "step": r.step,
                "ratio": r.ratio,
                "ci95": _pair(r.ci_low, r.ci_high),
                "n": r.n,
                "difference": _difference(r.difference),
            }
            for r in found.ratios
        ],
        "result_sha256": hashlib.sha256(found.result_json.encode("utf-8")).hexdigest(),
    }


def _difference(d: Difference | None) -> JSON | None:
    if d is None:
        return None
    return {"mean": d.mean, "ci95": _pair(d.ci_low, d.ci_high), "n": d.n}


def _pair(low: float | None, high: float | None) -> list[float] | None:
    return [low, high] if low is not None and high is not None else None
