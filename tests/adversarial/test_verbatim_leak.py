"""Attack: read private text out of verbatim spans.

Verbatim evidence reports which stretches of the auditor's own text occur in training data.
Searched naively (every class's suffix array, withheld records merely left out of the
listing), that is a membership oracle for private text: the attacker sends a private chat
up to its phone number's last two digits plus each candidate 00..99 to ``Attribute``, and
the candidates whose span reaches the end of the text (with a record count and no source)
are the customer's number (and any other customer's that shares its first digits). A third
party, which may not Score and so never spends its withheld budget, can ask all 100.

With the defence on (``verbatim_visible_only``: only the classes the role may see are
searched, and ``auditor-server build`` never indexes private text) every candidate gets the
same verbatim evidence, none of it from a private record.
"""

from __future__ import annotations

import pytest

from auditor_client.client import AuditorClient
from auditor_client.wire._proto import audit_pb2 as pb
from tests.adversarial.attacks import phone_candidates
from tests.adversarial.conftest import StartServer
from tests.adversarial.lab import AttackLab, Server, cli, env

WHO = "attr_tp"
"""A third party: no Score, so its Attribute calls never touch the withheld budget."""


@pytest.fixture(scope="module")
def servers(attack_lab: AttackLab, start_server: StartServer) -> tuple[Server, Server]:
    import subprocess

    if not (attack_lab.index / "verbatim" / "verbatim.json").is_file():  # a lab built before it
        subprocess.run(
            cli("verbatim", "--index", str(attack_lab.index)), check=True, env=env(), timeout=600
        )
    return start_server("verbatim_visible_only"), start_server()


def _spans(client: AuditorClient, prompt: str, completion: str) -> pb.AttributeResponse:
    answer: pb.AttributeResponse = client.attribute(prompt, completion, top_k=3).body.attribute
    return answer


def _reaching_the_end(answer: pb.AttributeResponse, length: int) -> list[pb.VerbatimSpan]:
    return [s for s in answer.verbatim if s.end == length]


def test_with_the_defence_off_spans_single_out_the_private_phone_number(
    attack_lab: AttackLab, servers: tuple[Server, Server]
) -> None:
    off, _ = servers
    chat = attack_lab.target_chat()
    prompt = chat.phone_prompt()
    hits = []
    with off.client(WHO) as client:
        for candidate in phone_candidates():
            answer = _spans(client, prompt, candidate)
            assert answer.verbatim_searched
            if _reaching_the_end(answer, len(prompt) + len(candidate)):
                hits.append(candidate)
            if candidate == chat.phone_digits:
                (span,) = _reaching_the_end(answer, len(prompt) + len(candidate))
                # Counted, unlisted: a record the auditor may not see holds this text.
                assert span.records >= 1 and list(span.sources) == []
    # The true digits, and only digits completing a phone number some private chat holds
    # (chats share their template, so another customer's number leaks as well).
    assert chat.phone_digits in hits and len(hits) <= 5  # chance: none singled out
    for digits in hits:
        assert any(chat.phone[:-2] + digits in text for text in attack_lab.private_texts())


def test_with_the_defence_on_every_candidate_gets_the_same_evidence(
    attack_lab: AttackLab, servers: tuple[Server, Server]
) -> None:
    _, on = servers
    chat = attack_lab.target_chat()
    prompt = chat.phone_prompt()
    seen = set()
    with on.client(WHO) as client:
        for candidate in phone_candidates():
            answer = _spans(client, prompt, candidate)
            assert answer.verbatim_searched
            assert not _reaching_the_end(answer, len(prompt) + len(candidate))
            assert all(
                src.data_class in ("public", "proprietary")
                for span in answer.verbatim
                for src in span.sources
            )
            seen.add(b"".join(s.SerializeToString(deterministic=True) for s in answer.verbatim))
        # The chat sent as it is (as much as the model takes): only disclosed text is found.
        whole = _spans(client, chat.text[:90], chat.text[90:170])
        assert all(s.sources for s in whole.verbatim)
    assert len(seen) == 1


def test_public_text_is_still_found_with_the_defence_on(
    attack_lab: AttackLab, servers: tuple[Server, Server]
) -> None:
    _, on = servers
    record = str(attack_lab.public_target()["text"])
    prompt, completion = record[:120], record[120:240]
    with on.client(WHO) as client:
        answer = _spans(client, prompt, completion)
    spans = [s for s in answer.verbatim if s.region != "prompt"]
    assert spans, "a public record sent as it is must be found"
    listed = {src.record_id for s in spans for src in s.sources if src.data_class == "public"}
    assert attack_lab.public_target()["id"] in listed
