"""The evaluation certificate: the lab's own, signed measurement of its attributions.

``auditor-server validate`` (and ``build --questions``) writes ``INDEX_DIR/validation.json``:
a counterfactual check of the index (tail-patch: one training step on each method's top
records, and how far it raises ``log p(completion | prompt)``), the engine against lexical
and random baselines, with bootstrap intervals. The lab serves it inside every
``GetPolicy`` answer, so it is signed and logged like any answer, and every campaign report
carries it in its first, already verified exchange.

This module is the one place both sides read the format, so they cannot drift apart:

* the lab builds the message with :func:`certificate_from_result` (``result_json`` the whole
  file as canonical JSON, typed fields copied out of it);
* the auditor reads it with :func:`read_certificate`, which refuses a certificate whose
  typed fields say anything its ``result_json`` does not, or that vouches for another
  snapshot than the answer it came in. A reader of the typed fields therefore reads exactly
  what the signed JSON says, and a report can show either.

``validation.json`` is an open object: keys this module does not know (a method
description, leave-k-out results) travel untouched in ``result_json``. The keys it reads
must have the types :func:`certificate_from_result` documents, or the certificate is
malformed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.errors import MalformedResponseError

__all__ = [
    "MAX_RESULT_BYTES",
    "CertificateError",
    "Evaluation",
    "Headline",
    "RatioRow",
    "canonical_json",
    "certificate_from_result",
    "headlines_from_result",
    "ratios_from_result",
    "read_certificate",
]

MAX_RESULT_BYTES = 1 << 20
"""Largest ``result_json`` either side accepts (a real one is a few KiB): a certificate
must never be what makes a GetPolicy answer too large to send."""

ENGINE = "engine"
"""The method under test; listed first, and the numerator of every ratio."""
FIRST_STEP = "sgd"
"""The step every certificate has (``adam`` only when the model kept its optimizer)."""
_UINT32 = 2**32


class CertificateError(ValueError):
    """``validation.json`` (or a certificate's ``result_json``) lacks a key the certificate
    is built from, or holds one of the wrong type."""


@dataclass(frozen=True)
class Headline:
    """One method's mean tail-patch for one step kind, with its 95% bootstrap interval.

    ``mean`` and the interval are None when no question gave the method a value (it ranked
    no record for any of them, e.g. ``planted`` on questions without stating records).
    """

    name: str
    step: str
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    recall_at_k: float | None
    n: int


@dataclass(frozen=True)
class Difference:
    """Mean of engine − baseline, question by question, with its paired 95% interval."""

    mean: float | None
    ci_low: float | None
    ci_high: float | None
    n: int


@dataclass(frozen=True)
class RatioRow:
    """The engine's mean tail-patch over a baseline's (``pair`` is ``engine/<baseline>``)."""

    pair: str
    step: str
    ratio: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    difference: Difference | None


@dataclass(frozen=True)
class Evaluation:
    """A verified evaluation certificate (see :func:`read_certificate`).

    ``result`` is the whole signed ``validation.json``, parsed: every key, known or not.
    """

    snapshot_id: str
    measure: str
    questions_sha256: str
    n_questions: int
    split: str
    top_k: int
    headlines: tuple[Headline, ...]
    ratios: tuple[RatioRow, ...]
    result: Mapping[str, Any]
    result_json: str

    def headline(self, name: str, step: str = FIRST_STEP) -> Headline | None:
        """The headline of method ``name`` for ``step``, if the certificate has one."""
        return next((h for h in self.headlines if (h.name, h.step) == (name, step)), None)


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, non-ASCII kept (the bytes are its UTF-8), no NaN.

    Python writes every float as its shortest round-trip form, so parsing canonical JSON
    and writing it again gives the same text: that is how a client checks canonicity.

    Raises:
        CertificateError: ``obj`` holds NaN or an infinity (not JSON), or is not JSON data.
    """
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise CertificateError(f"not canonical JSON data: {exc}") from exc


def certificate_from_result(result: Any) -> pb.EvaluationCertificate:
    """The certificate the lab serves for a ``validation.json`` it has parsed.

    Reads ``measure``, ``snapshot_id``, ``questions_sha256``, ``split`` (non-empty strings),
    ``n_questions``, ``top_k`` (non-negative integers), ``steps`` (an object, one key per
    step kind) and ``methods`` (``{name: {step: {"mean", "ci95", "n"}, "recall@k"}}``);
    ``ratios`` when present (``{"engine/<b>": {step: {"ratio", "ci95", "n", "difference"}}}``).

    Raises:
        CertificateError: any of those is missing or of the wrong type, or the JSON is too
            large to serve.
    """
    obj = _object(result, "validation")
    text = canonical_json(obj)
    if len(text.encode("utf-8")) > MAX_RESULT_BYTES:
        raise CertificateError(f"result is larger than {MAX_RESULT_BYTES} bytes")
    ratios_from_result(obj)  # checked now, so a served certificate always reads back
    cert = pb.EvaluationCertificate(
        snapshot_id=_text(obj, "snapshot_id"),
        measure=_text(obj, "measure"),
        questions_sha256=_text(obj, "questions_sha256"),
        n_questions=_count(obj, "n_questions"),
        split=_text(obj, "split"),
        top_k=_count(obj, "top_k"),
        result_json=text,
    )
    for h in headlines_from_result(obj):
        item = cert.headlines.add(name=h.name, step=h.step, n=h.n)
        for key in ("mean", "ci_low", "ci_high", "recall_at_k"):
            value = getattr(h, key)
            if value is not None:
                setattr(item, key, value)
    return cert


def read_certificate(cert: pb.EvaluationCertificate, *, snapshot_id: str) -> Evaluation:
    """Check a certificate from a signed answer about ``snapshot_id``; return it typed.

    Checks that it vouches for the answer's own snapshot, that ``result_json`` parses as a
    JSON object and is canonical, and that every typed field (snapshot, measure, question
    digest, count, split, top k, each headline) equals what ``result_json`` says.

    Raises:
        MalformedResponseError: any check failed; the message names the field.
    """
    if cert.snapshot_id != snapshot_id:
        raise MalformedResponseError(
            f"evaluation certificate is for snapshot {cert.snapshot_id!r}, but the answer is "
            f"from snapshot {snapshot_id!r}"
        )
    if len(cert.result_json.encode("utf-8")) > MAX_RESULT_BYTES:
        raise MalformedResponseError(
            f"evaluation certificate's result_json is larger than {MAX_RESULT_BYTES} bytes"
        )
    try:
        result = json.loads(cert.result_json)
        if not isinstance(result, dict):
            raise CertificateError("result_json is not a JSON object")
        if canonical_json(result) != cert.result_json:
            raise CertificateError("result_json is not canonical JSON")
        expected = certificate_from_result(result)
        ratios = ratios_from_result(result)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and CertificateError too
        raise MalformedResponseError(f"evaluation certificate: {exc}") from exc
    for key in ("measure", "questions_sha256", "n_questions", "split", "top_k", "snapshot_id"):
        mine, theirs = getattr(cert, key), getattr(expected, key)
        if mine != theirs:
            raise MalformedResponseError(
                f"evaluation certificate's {key} says {mine!r}, but its result_json says "
                f"{theirs!r}"
            )
    typed = [_typed_headline(h) for h in cert.headlines]
    implied = headlines_from_result(result)
    for i in range(max(len(typed), len(implied))):
        mine_h = typed[i] if i < len(typed) else None
        theirs_h = implied[i] if i < len(implied) else None
        if mine_h != theirs_h:
            raise MalformedResponseError(
                f"evaluation certificate's headlines[{i}] says {_show(mine_h)}, but its "
                f"result_json says {_show(theirs_h)}"
            )
    return Evaluation(
        snapshot_id=cert.snapshot_id,
        measure=cert.measure,
        questions_sha256=cert.questions_sha256,
        n_questions=cert.n_questions,
        split=cert.split,
        top_k=cert.top_k,
        headlines=tuple(_typed_headline(h) for h in cert.headlines),
        ratios=tuple(ratios),
        result=result,
        result_json=cert.result_json,
    )


def headlines_from_result(result: Mapping[str, Any]) -> list[Headline]:
    """Every (method, step) headline of a result: ``engine`` first, then the other methods
    by name; within a method ``sgd`` first, then the other steps by name. A method with no
    block for a step has no headline for it.

    Raises:
        CertificateError: ``steps`` or ``methods`` missing or malformed.
    """
    steps = _ordered(_object(result.get("steps"), "steps"), FIRST_STEP)
    if not steps:
        raise CertificateError("steps names no step")
    methods = _object(result.get("methods"), "methods")
    out: list[Headline] = []
    for name in _ordered(methods, ENGINE):
        block = _object(methods[name], f"methods.{name}")
        recall = _number(block.get("recall@k"), f"methods.{name}.recall@k")
        for step in steps:
            if step not in block:
                continue
            where = f"methods.{name}.{step}"
            stats = _object(block[step], where)
            low, high = _interval(stats.get("ci95"), f"{where}.ci95")
            out.append(
                Headline(
                    name=name,
                    step=step,
                    mean=_number(stats.get("mean"), f"{where}.mean"),
                    ci_low=low,
                    ci_high=high,
                    recall_at_k=recall,
                    n=_count(stats, "n", where=where),
                )
            )
    return out


def ratios_from_result(result: Mapping[str, Any]) -> list[RatioRow]:
    """The engine's ratio to each baseline per step (pairs by name; steps as for the
    headlines, and only the step kinds ``steps`` names, so other keys may be added beside
    them); none when the result has no ``ratios``.

    Raises:
        CertificateError: ``steps`` missing, or ``ratios`` present but malformed.
    """
    if result.get("ratios") is None:
        return []
    steps = _ordered(_object(result.get("steps"), "steps"), FIRST_STEP)
    ratios = _object(result["ratios"], "ratios")
    out: list[RatioRow] = []
    for pair in sorted(ratios):
        per_step = _object(ratios[pair], f"ratios.{pair}")
        for step in steps:
            if step not in per_step:
                continue
            where = f"ratios.{pair}.{step}"
            row = _object(per_step[step], where)
            low, high = _interval(row.get("ci95"), f"{where}.ci95")
            difference = None
            if row.get("difference") is not None:
                d = _object(row["difference"], f"{where}.difference")
                d_low, d_high = _interval(d.get("ci95"), f"{where}.difference.ci95")
                difference = Difference(
                    mean=_number(d.get("mean"), f"{where}.difference.mean"),
                    ci_low=d_low,
                    ci_high=d_high,
                    n=_count(d, "n", where=f"{where}.difference"),
                )
            out.append(
                RatioRow(
                    pair=pair,
                    step=step,
                    ratio=_number(row.get("ratio"), f"{where}.ratio"),
                    ci_low=low,
                    ci_high=high,
                    n=_count(row, "n", where=where),
                    difference=difference,
                )
            )
    return out


# --- helpers ----------------------------------------------------------------------------------


def _typed_headline(h: pb.EvaluationHeadline) -> Headline:
    def opt(key: str) -> float | None:
        return float(getattr(h, key)) if h.HasField(key) else None

    return Headline(
        name=h.name,
        step=h.step,
        mean=opt("mean"),
        ci_low=opt("ci_low"),
        ci_high=opt("ci_high"),
        recall_at_k=opt("recall_at_k"),
        n=h.n,
    )


def _ordered(keys: Mapping[str, Any], first: str) -> list[str]:
    return ([first] if first in keys else []) + sorted(k for k in keys if k != first)


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise CertificateError(f"{where} is missing or not an object")
    return value


def _text(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise CertificateError(f"{key} is missing or not a non-empty string")
    return value


def _count(obj: Mapping[str, Any], key: str, *, where: str = "") -> int:
    value = obj.get(key)
    name = f"{where}.{key}" if where else key
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _UINT32:
        raise CertificateError(f"{name} is missing or not a count")
    return value


def _number(value: Any, where: str) -> float | None:
    """A finite number as a float; None stays None (no value)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CertificateError(f"{where} is not a finite number")
    return float(value)


def _interval(value: Any, where: str) -> tuple[float | None, float | None]:
    """``[low, high]`` as two floats; None (no interval) as two Nones."""
    if value is None:
        return None, None
    if not isinstance(value, list) or len(value) != 2:
        raise CertificateError(f"{where} is not a [low, high] pair")
    low, high = _number(value[0], where), _number(value[1], where)
    if low is None or high is None:
        raise CertificateError(f"{where} has a missing end")
    return low, high


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    text = " ".join(str(value).split())
    return text if len(text) <= 160 else text[:157] + "..."
