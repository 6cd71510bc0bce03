"""The copyright suite's verbatim evidence: which work a regurgitated passage came from, where
verbatim evidence and influence disagree, and that ``auditor verify`` recomputes both."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from auditor_client.campaign.suites import SUITES
from auditor_client.campaign.suites.copyright import compare_evidence, verbatim_findings
from auditor_client.campaign.types import ProbeRecord, ProbeSpec
from auditor_client.client import Verified, verbatim_evidence
from auditor_client.report.errors import ReportVerificationError
from auditor_client.report.verify import verify_report_data
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.errors import MalformedResponseError

OPENING = "On the night the harbour froze, Ilse Varga"
GENERATION = " climbed the lighthouse stairs with a tin of paraffin and her father's brass compass."
TEXT = OPENING + GENERATION
KEEPER = ("The Lantern Keeper's Daughter", "Halcyon House", "L-proprietary", "proprietary")
ATLAS = ("Harbour Atlas", "Quay Books", "L-proprietary", "proprietary")
FORUM = ("Rustpit Forums", "Pub", "L-public", "public")
LICENSED = "LICENSED-TEXT-NEVER-COPIED"


def _source(work: tuple[str, str, str, str], **kw: Any) -> pb.VerbatimSource:
    title, publisher, lic, cls = work
    disclosure = "full_text" if cls == "public" else "source_metadata"
    return pb.VerbatimSource(
        data_class=cls,
        disclosure=disclosure,
        source=pb.Source(title=title, publisher=publisher, url=f"https://x/{title}", license=lic),
        **kw,
    )


def _span(start: int, end: int, *sources: pb.VerbatimSource, records: int = 1) -> pb.VerbatimSpan:
    region = "prompt" if end <= len(OPENING) else "completion" if start >= len(OPENING) else "both"
    return pb.VerbatimSpan(
        start=start,
        end=end,
        length_chars=end - start,
        words=len(TEXT[start:end].split()),
        region=region,
        sources=list(sources),
        records=records,
    )


def _result(rank: int, score: float, work: tuple[str, str, str, str]) -> pb.AttributionResult:
    title, publisher, lic, cls = work
    return pb.AttributionResult(
        rank=rank,
        score=score,
        data_class=cls,
        disclosure="full_text" if cls == "public" else "source_metadata",
        source=pb.Source(title=title, publisher=publisher, url=f"https://x/{title}", license=lic),
    )


def _bodies(
    spans: list[pb.VerbatimSpan], results: list[pb.AttributionResult], *, searched: bool = True
) -> list[pb.ResponseBody]:
    return [
        pb.ResponseBody(method="Generate", generate=pb.GenerateResponse(completion=GENERATION)),
        pb.ResponseBody(
            method="Attribute",
            attribute=pb.AttributeResponse(
                results=results, verbatim=spans, verbatim_searched=searched
            ),
        ),
    ]


def _spec() -> ProbeSpec:
    return ProbeSpec(
        suite="copyright",
        probe_id="keeper",
        inputs={
            "reference_id": "keeper",
            "reference_title": KEEPER[0],
            "opening": OPENING,
            "continuation": GENERATION,
            "max_new_tokens": 48,
            "temperature": 0.0,
            "seed": 99,
            "top_k": 10,
            "flag_lcs_chars": 40,
            "flag_ngram_overlap": 0.5,
            "ngram": 8,
        },
    )


def _findings(spans: list[pb.VerbatimSpan], results: list[pb.AttributionResult], **kw: Any) -> Any:
    return SUITES["copyright"].findings(_spec(), _bodies(spans, results, **kw))


def test_the_longest_verbatim_stretch_names_the_work_and_agrees_with_influence() -> None:
    cut = TEXT.index(" with a tin")
    spans = [
        _span(0, cut, _source(FORUM, record_id="forum-1", span_text="whole"), records=1),
        _span(
            len(OPENING) + 1,
            len(TEXT),
            _source(KEEPER, record_id="lic-9", span_text=LICENSED),  # a misbehaving lab
            _source(ATLAS),
            records=3,
        ),
    ]
    f = _findings(spans, [_result(1, 2.0, KEEPER), _result(2, 1.0, ATLAS)])
    v = f["verbatim"]
    assert v["searched"] is True
    assert [s["text"] for s in v["spans"]] == [TEXT[:cut], GENERATION[1:]]
    assert v["spans"][0]["region"] == "both" and v["spans"][1]["region"] == "completion"
    assert v["spans"][0]["public_records"] == ["forum-1"] and v["spans"][1]["public_records"] == []
    # Works by their longest stretch *in the generation*: the forum's reaches 15 characters.
    assert [(w["title"], w["longest_chars"]) for w in v["works"]] == [
        (ATLAS[0], len(GENERATION) - 1),
        (KEEPER[0], len(GENERATION) - 1),
        (FORUM[0], cut - len(OPENING)),
    ]
    assert v["top_work"]["title"] == ATLAS[0]  # a tie broken by name, deterministically
    assert f["reference_verbatim"] is True
    assert f["verbatim_vs_influence"] == {
        "verbatim_work": dict(
            zip(("title", "publisher", "license", "data_class"), ATLAS, strict=True)
        ),
        "verbatim_chars": len(GENERATION) - 1,
        "influence_top": dict(
            zip(("title", "publisher", "license", "data_class"), KEEPER, strict=True)
        ),
        "agree": True,
        "disagreements": [],
    }
    blob = json.dumps(f)
    assert LICENSED not in blob and "lic-9" not in blob  # proprietary text and ids never copied


def test_disagreement_both_ways_is_reported() -> None:
    spans = [_span(len(OPENING), len(TEXT), _source(ATLAS), records=2)]
    f = _findings(spans, [_result(1, 3.0, KEEPER), _result(2, 1.0, FORUM)])
    assert f["verbatim_vs_influence"]["agree"] is False
    assert f["verbatim_vs_influence"]["disagreements"] == [
        "verbatim_work_not_in_influence",
        "influence_top_without_verbatim",
    ]
    assert f["reference_verbatim"] is False
    # The verbatim work ranked, but not first: only the second kind.
    f = _findings(spans, [_result(1, 3.0, KEEPER), _result(2, 1.0, ATLAS)])
    assert f["verbatim_vs_influence"]["disagreements"] == ["influence_top_without_verbatim"]


def test_spans_inside_the_opening_name_no_work_and_nothing_is_compared() -> None:
    spans = [_span(0, len(OPENING), _source(KEEPER))]
    f = _findings(spans, [_result(1, 3.0, KEEPER)])
    assert f["verbatim"]["works"] == [] and f["verbatim"]["top_work"] is None
    assert len(f["verbatim"]["spans"]) == 1
    assert f["verbatim_vs_influence"]["agree"] is None
    unsearched = _findings([], [_result(1, 3.0, KEEPER)], searched=False)
    assert unsearched["verbatim"]["searched"] is False
    assert unsearched["verbatim_vs_influence"]["disagreements"] == []


def test_a_span_outside_the_text_is_refused() -> None:
    bad = _span(0, 5)
    bad.end = len(TEXT) + 10
    bad.length_chars = bad.end
    with pytest.raises(MalformedResponseError):
        _findings([bad], [])
    wrong_region = _span(0, 5)
    wrong_region.region = "completion"
    with pytest.raises(MalformedResponseError):
        verbatim_evidence(
            pb.AttributeResponse(verbatim=[wrong_region]), TEXT, prompt_chars=len(OPENING)
        )
    assert compare_evidence(None, None)["agree"] is None
    assert verbatim_findings(pb.AttributeResponse(), OPENING, GENERATION)["spans"] == []


def test_verified_answers_give_the_auditors_own_text_of_each_span() -> None:
    spans = [_span(len(OPENING) + 1, len(TEXT), _source(FORUM, record_id="f", span_text="x"))]
    request = pb.AttributeBatchRequest(
        items=[
            pb.AttributeRequest(prompt="other", completion=" text", top_k=1),
            pb.AttributeRequest(prompt=OPENING, completion=GENERATION, top_k=1),
        ]
    )
    body = pb.ResponseBody(
        method="AttributeBatch", item_index=1, attribute=pb.AttributeResponse(verbatim=spans)
    )
    verified = Verified(
        request=pb.SignedRequest(method="AttributeBatch", body=request.SerializeToString()),
        response=pb.SignedResponse(),
        body=body,
    )
    (evidence,) = verified.verbatim()
    assert evidence.text == GENERATION[1:] and evidence.region == "completion"
    assert evidence.sources[0].record_id == "f" and evidence.sources[0].title == FORUM[0]
    with pytest.raises(ValueError, match="attribute"):
        Verified(
            request=pb.SignedRequest(),
            response=pb.SignedResponse(),
            body=pb.ResponseBody(generate=pb.GenerateResponse()),
        ).verbatim()


def test_summary_lists_verbatim_works_and_disagreements() -> None:
    suite = SUITES["copyright"]
    agree = [_span(len(OPENING), len(TEXT), _source(KEEPER))]
    records = [
        ProbeRecord(
            suite="copyright",
            probe_id=pid,
            inputs=_spec().inputs,
            exchanges=(),
            findings=suite.findings(_spec(), _bodies(spans, [_result(1, 2.0, top)])),
            started_ms=0,
            finished_ms=0,
        )
        for pid, spans, top in (("a", agree, KEEPER), ("b", agree, ATLAS), ("c", [], KEEPER))
    ]
    summary = suite.summarize(records)["verbatim"]
    assert summary["searched"] == 3 and summary["with_verbatim"] == 2
    assert summary["flagged_with_verbatim"] == 2 and summary["disagreements"] == 1
    assert [(i["probe_id"], i["agree"], i["disagreements"]) for i in summary["items"]] == [
        ("a", True, []),
        ("b", False, ["verbatim_work_not_in_influence", "influence_top_without_verbatim"]),
    ]


# --- auditor verify recomputes the new findings -------------------------------------------------


@pytest.fixture(scope="module")
def report_with_spans(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any]]:
    """A real campaign against the fake lab, whose attribution answers carry a verbatim span
    over each generation (held by the work attribution ranks first, or by another one)."""
    from tests.unit.report import fake_lab

    plain = fake_lab.FakeModel.attribute

    def with_spans(self: Any, prompt: str, completion: str, top_k: int) -> pb.AttributeResponse:
        answer = plain(self, prompt, completion, top_k)
        if prompt in self.works and completion.strip():
            work = self.works[prompt] if prompt.startswith("Chapter 0.") else "Some Other Book"
            answer.verbatim.append(
                pb.VerbatimSpan(
                    start=len(prompt),
                    end=len(prompt) + len(completion),
                    length_chars=len(completion),
                    words=len(completion.split()),
                    region="completion",
                    sources=[
                        _source((work, "Halcyon House", "proprietary-license", "proprietary"))
                    ],
                    records=2,
                )
            )
        answer.verbatim_searched = True
        return answer

    patch = pytest.MonkeyPatch()
    patch.setattr(fake_lab.FakeModel, "attribute", with_spans)
    try:
        campaign = fake_lab.make_campaign(
            tmp_path_factory.mktemp("verbatim") / "out", copyright_probes=4, toxicity_probes=1
        )
    finally:
        patch.undo()
    return campaign, json.loads(campaign.report.read_text(encoding="utf-8"))


def test_verify_recomputes_verbatim_findings(report_with_spans: tuple[Any, dict[str, Any]]) -> None:
    campaign, report = report_with_spans

    def verify(data: dict[str, Any]) -> Any:
        return verify_report_data(
            data, lab_public_key=campaign.lab.lab_public, suites=campaign.suites
        )

    verify(report)
    summary = report["findings"]["copyright"]["verbatim"]
    assert summary["with_verbatim"] == 2 and summary["disagreements"] == 1
    probes = report["probes"]
    with_span = [
        n for n, p in enumerate(probes) if (p["findings"].get("verbatim") or {}).get("top_work")
    ]
    parted = next(
        n for n in with_span if probes[n]["findings"]["verbatim_vs_influence"]["disagreements"]
    )
    agreed = next(n for n in with_span if n != parted)
    assert probes[parted]["findings"]["verbatim"]["top_work"]["title"] == "Some Other Book"
    assert probes[agreed]["findings"]["verbatim_vs_influence"]["agree"] is True

    def retitle(r: dict[str, Any]) -> None:
        r["probes"][agreed]["findings"]["verbatim"]["top_work"]["title"] = "A Work It Never Named"

    def hide(r: dict[str, Any]) -> None:
        r["probes"][parted]["findings"]["verbatim_vs_influence"].update(
            agree=True, disagreements=[]
        )

    def summary_edit(r: dict[str, Any]) -> None:
        r["findings"]["copyright"]["verbatim"]["disagreements"] = 0

    for edit, entry in (
        (retitle, f"probes[{agreed}] (copyright/"),
        (hide, f"probes[{parted}] (copyright/"),
        (summary_edit, "findings.copyright.verbatim.disagreements"),
    ):
        forged = copy.deepcopy(report)
        edit(forged)
        with pytest.raises(ReportVerificationError) as info:
            verify(forged)
        assert info.value.entry.startswith(entry), str(info.value)
