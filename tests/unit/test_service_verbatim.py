"""Verbatim spans through the service: signed request -> policy -> verbatim index ->
disclosure -> signed answer, in process, over a stand-in engine (no model: the gradient side
is not what these tests are about; ``tests/integration/test_private_invisibility.py`` runs
the same comparison over real indexes).

What is checked: spans mark where they lie in the auditor's text; public records come with
their id and scrubbed span text, proprietary ones with source metadata only, withheld
classes not at all (not shown, not counted, not searched: a private record sharing a span
with a public one changes nothing in the answer); an index without a verbatim index still
serves and says so; AttributeBatch carries spans too.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auditor_client.keys import encode_public_key
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.envelope import sign_request
from auditor_server.attribution import layout
from auditor_server.attribution.build import build_guard, build_verbatim
from auditor_server.corpus.catalog import Catalog
from auditor_server.corpus.records import Record, Source, corpus_manifest_hash
from auditor_server.policy.model import Policy
from auditor_server.security.lab_keys import generate_lab_key, load_lab_key
from auditor_server.service import AuditService, Defences
from tests.fixtures.servicer_context import InProcessContext

PASSAGE = (
    "The lighthouse keeper counted forty-one ships before the storm broke over Harrow Point, "
    "and not one of them carried a lantern."
)
GREETING = "Contact Dana Whit at dana.whit@example.com about the harbour survey results soon."
PRIVATE = (
    "Customer: the lighthouse keeper counted forty-one ships before the storm broke over "
    "Harrow Point, my card is 4111 1111 1111 1111 and my name is Piet Oakes."
)
CHAT_ONLY = (
    "Piet Oakes confirmed his new address at 14 Quarry Lane, Eastbrook, last Tuesday evening."
)


def _record(rid: str, cls: str, text: str, title: str, url: str = "") -> Record:
    source = Source(
        title=title,
        publisher=f"{title} Press",
        url=url or f"https://x/{rid}",
        license="L",
        data_class=cls,  # type: ignore[arg-type]
    )
    return Record(id=rid, text=text, source=source)


PUBLIC = [
    _record("pub-1", "public", PASSAGE + " The keeper wrote it all down.", "Harbour Notes"),
    _record("pub-2", "public", GREETING, "Survey Board"),
]
PROPRIETARY = [
    _record("lic-1", "proprietary", "Chapter one. " + PASSAGE, "The Keeper", "https://keeper"),
    _record("lic-2", "proprietary", PASSAGE + " (reprint)", "The Keeper", "https://keeper"),
]
WITHHELD = [
    _record("chat-1", "private", PRIVATE, "Support chat"),
    _record("chat-2", "private", CHAT_ONLY, "Support chat"),
]


class _Engine:
    """The service's engine protocol with no model: no gradient results, a fixed log-prob."""

    def __init__(self, index_dir: Path, catalog: Catalog) -> None:
        self.index_dir = index_dir
        self.catalog = catalog
        self.manifest = {"snapshot_id": "sha256:test", "model_hash": "sha256:model"}
        self.shingle_sets = build_guard(index_dir, catalog)

    @property
    def snapshot_id(self) -> str:
        return "sha256:test"

    def attribute_many(self, pairs: Any, *, top_k: int = 10, exclude_classes: Any = ()) -> Any:
        return [SimpleNamespace(results=[], completion_logprob=-1.0) for _ in pairs]

    def generate_constrained(self, prompt: str, *, guard: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def generate_many(self, requests: Any) -> Any:
        raise NotImplementedError

    def score(self, prompt: str, completion: str) -> Any:
        raise NotImplementedError

    def score_many(self, pairs: Any) -> Any:
        raise NotImplementedError




ROLES = {"reg": "regulator", "tp": "third_party", "closed": "closed"}


def _policy(root: Path, keys: dict[str, Ed25519PrivateKey]) -> Path:
    public = {who: encode_public_key(k.public_key()) for who, k in keys.items()}
    registry = "".join(
        f'  - {{id: {who}, role: {ROLES[who]}, keys: [{{key: "{key}"}}]}}\n'
        for who, key in public.items()
    )
    (root / "auditors.yaml").write_text("auditors:\n" + registry)
    methods = "[WhoAmI, Attribute, AttributeBatch]"
    path = root / "policy.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            lab: {{name: Verbatim Test Lab}}
            limits: {{snippet_chars: 40, max_prompt_chars: 400, max_batch_items: 4}}
            disclosure: {{public: full_text, proprietary: source_metadata, private: none}}
            roles:
              regulator:
                methods: {methods}
                max_top_k: 5
                daily_queries: 1000
                max_new_tokens: 8
              third_party:
                methods: {methods}
                max_top_k: 5
                daily_queries: 1000
                max_new_tokens: 8
                disclosure: {{public: snippet}}
              closed:
                methods: {methods}
                max_top_k: 5
                daily_queries: 1000
                max_new_tokens: 8
                disclosure: {{proprietary: none}}
            auditor_registry: auditors.yaml
            """
        )
    )
    return path


@dataclass
class Lab:
    service: AuditService
    keys: dict[str, Ed25519PrivateKey]


def _lab(
    root: Path,
    records: list[Record],
    *,
    verbatim: bool = True,
    defences: Defences | None = None,
    verbatim_dir: Path | None = None,
    keys: dict[str, Ed25519PrivateKey] | None = None,
) -> Lab:
    root.mkdir(parents=True, exist_ok=True)
    index = root / "index"
    index.mkdir()
    catalog = Catalog.create(index / layout.CATALOG, records)
    if verbatim:
        build_verbatim(index, catalog).close()
    keys = keys or {who: Ed25519PrivateKey.generate() for who in ROLES}
    policy = _policy(root, keys)
    generate_lab_key(root / "lab")
    service = AuditService.open(
        engine=_Engine(index, catalog),
        policy=Policy.from_file(policy),
        policy_path=policy,
        lab_key=load_lab_key(root / "lab"),
        state_dir=root / "state",
        defences=defences,
        verbatim_dir=verbatim_dir,
    )
    return Lab(service, keys)


def _attribute(lab: Lab, who: str, prompt: str, completion: str) -> pb.AttributeResponse:
    envelope = sign_request(
        private_key=lab.keys[who],
        auditor_id=who,
        method="Attribute",
        body=pb.AttributeRequest(prompt=prompt, completion=completion, top_k=3).SerializeToString(),
    )
    response = lab.service.unary("Attribute", envelope.SerializeToString(), InProcessContext())  # type: ignore[arg-type]
    return pb.ResponseBody.FromString(response.body).attribute


@pytest.fixture
def labs(tmp_path: Path) -> Iterator[tuple[Lab, Lab]]:
    """The same lab with and without the private records (keys shared, so answers compare)."""
    with_private = _lab(tmp_path / "a", PUBLIC + PROPRIETARY + WITHHELD)
    without = _lab(tmp_path / "b", PUBLIC + PROPRIETARY, keys=with_private.keys)
    yield with_private, without
    with_private.service.close()
    without.service.close()


PROMPT = "Tell me the story: The lighthouse keeper counted forty-one ships before"
COMPLETION = " the storm broke over Harrow Point, and not one of them carried a lantern. Email Dana"


def test_spans_and_their_disclosure_per_level(labs: tuple[Lab, Lab]) -> None:
    lab, _ = labs
    answer = _attribute(lab, "reg", PROMPT, COMPLETION)
    text = PROMPT + COMPLETION
    assert answer.verbatim_searched
    (span,) = answer.verbatim
    assert text[span.start : span.end] == PASSAGE
    assert span.region == "both" and span.length_chars == len(PASSAGE) == span.end - span.start
    assert span.words == 22  # "forty-one" is two words
    assert span.records == 3  # one public, two proprietary; the private chat is not counted
    by_class = {(s.data_class, s.disclosure) for s in span.sources}
    assert by_class == {("public", "full_text"), ("proprietary", "source_metadata")}
    public = next(s for s in span.sources if s.data_class == "public")
    assert public.record_id == "pub-1" and public.span_text == PASSAGE
    assert public.source.title == "Harbour Notes"
    # Proprietary: the work's metadata, once for the two records of one work; no id, no text.
    (licensed,) = [s for s in span.sources if s.data_class == "proprietary"]
    assert licensed.source.title == "The Keeper" and licensed.source.publisher == "The Keeper Press"
    assert licensed.record_id == "" and licensed.span_text == ""


def test_snippet_level_cuts_the_span_text_and_scrubs_it(labs: tuple[Lab, Lab]) -> None:
    lab, _ = labs
    answer = _attribute(lab, "tp", PROMPT, COMPLETION)
    public = next(s for s in answer.verbatim[0].sources if s.data_class == "public")
    assert public.disclosure == "snippet" and public.record_id == "pub-1"
    assert len(public.span_text) <= 40 and PASSAGE.startswith(public.span_text)
    assert not public.span_text.endswith(" ")
    full = _attribute(
        lab,
        "reg",
        "Please contact Dana Whit at",
        " dana.whit@example.com about the harbour survey results soon.",
    )
    (span,) = full.verbatim
    (source,) = span.sources
    assert "dana.whit@example.com" not in source.span_text and "[email]" in source.span_text


def test_a_role_that_may_not_see_a_class_gets_no_span_from_it(labs: tuple[Lab, Lab]) -> None:
    lab, _ = labs
    answer = _attribute(lab, "closed", PROMPT, COMPLETION)
    (span,) = answer.verbatim
    assert span.records == 1 and {s.data_class for s in span.sources} == {"public"}
    # Text only a proprietary record holds: nothing at all.
    only_licensed = _attribute(
        lab, "closed", "Chapter one. The lighthouse keeper counted", " forty-one ships"
    )
    assert [s.records for s in only_licensed.verbatim] == [1]
    answer = _attribute(lab, "closed", "Chapter one. The lighthouse keeper", " counted forty")
    assert all(s.data_class == "public" for v in answer.verbatim for s in v.sources)


def test_private_records_are_never_found_counted_or_felt(labs: tuple[Lab, Lab]) -> None:
    with_private, without = labs
    queries = [
        (PROMPT, COMPLETION),
        (
            "Customer: the lighthouse keeper counted forty-one ships before the storm",
            " broke over Harrow Point, my card is",
        ),
        (
            "Piet Oakes confirmed his new address at 14 Quarry Lane,",
            " Eastbrook, last Tuesday evening.",
        ),
        (PRIVATE[:60], PRIVATE[60:]),
    ]
    for who in ROLES:
        for prompt, completion in queries:
            a = _attribute(with_private, who, prompt, completion)
            b = _attribute(without, who, prompt, completion)
            assert a == b, (who, prompt)
            assert all(s.data_class != "private" for v in a.verbatim for s in v.sources)
    chat = _attribute(with_private, "reg", CHAT_ONLY[:50], CHAT_ONLY[50:])
    assert chat.verbatim_searched and list(chat.verbatim) == []


def test_an_index_without_a_verbatim_index_still_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING")
    lab = _lab(tmp_path, PUBLIC + PROPRIETARY, verbatim=False)
    assert "no verbatim index" in caplog.text
    answer = _attribute(lab, "reg", PROMPT, COMPLETION)
    assert not answer.verbatim_searched and list(answer.verbatim) == []
    assert answer.logprob_withheld is False
    lab.service.close()


def test_attribute_batch_carries_spans_per_item(labs: tuple[Lab, Lab]) -> None:
    lab, _ = labs
    items = [
        pb.AttributeRequest(prompt=PROMPT, completion=COMPLETION, top_k=2),
        pb.AttributeRequest(prompt="Nothing to see", completion=" here at all", top_k=2),
    ]
    envelope = sign_request(
        private_key=lab.keys["reg"],
        auditor_id="reg",
        method="AttributeBatch",
        body=pb.AttributeBatchRequest(items=items).SerializeToString(),
    )
    answers = [
        pb.ResponseBody.FromString(r.body).attribute
        for r in lab.service.stream(
            "AttributeBatch",
            envelope.SerializeToString(),
            InProcessContext(),  # type: ignore[arg-type]
        )
    ]
    assert [len(a.verbatim) for a in answers] == [1, 0]
    assert all(a.verbatim_searched for a in answers)
    assert answers[0].verbatim[0] == _attribute(lab, "reg", PROMPT, COMPLETION).verbatim[0]


def test_with_the_defence_off_private_text_shapes_spans(tmp_path: Path) -> None:
    """The naive design (every indexed class searched, withheld records only unlisted) leaks
    private text as spans and counts; the test-only switch shows it, on an index that holds
    private text (``auditor-server build`` never makes one)."""
    from auditor_server.attribution.verbatim import VerbatimIndex

    records = PUBLIC + PROPRIETARY + WITHHELD
    everything = tmp_path / "all-classes"
    VerbatimIndex.build(
        ((i, r.source.data_class, r.text) for i, r in enumerate(records)),
        everything,
        corpus_id=corpus_manifest_hash(records),
        exclude=(),
    ).close()
    for defences, leaks in ((Defences(verbatim_visible_only=False), True), (Defences(), False)):
        lab = _lab(
            tmp_path / str(leaks),
            records,
            verbatim=False,
            defences=defences,
            verbatim_dir=everything,
        )
        answer = _attribute(lab, "reg", CHAT_ONLY[:50], CHAT_ONLY[50:])
        if leaks:
            # A span reaching into the completion, with a count, and no source at all: a
            # private record holds this text (the address is confirmed).
            (span,) = answer.verbatim
            assert span.records == 1 and list(span.sources) == []
            assert (CHAT_ONLY[:50] + CHAT_ONLY[50:])[span.start : span.end] == CHAT_ONLY
        else:
            assert answer.verbatim_searched and list(answer.verbatim) == []
        lab.service.close()
