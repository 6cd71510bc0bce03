"""Attack 2: Attribute carries Score.

An Attribute answer used to carry the completion's log-probability: the very number Score
returns, so a role the policy denies Score (a third party) could rank candidate secrets
through Attribute. With the log-prob gate off the third party gets it, equal to a Score
answer's; with it on the field is absent for roles without Score, and a Score role gets it
except for text touching withheld training text (``logprob_withheld``).
"""

from __future__ import annotations

import pytest

from tests.adversarial.conftest import StartServer
from tests.adversarial.lab import AttackLab, Server


@pytest.fixture(scope="module")
def gate_off(start_server: StartServer) -> Server:
    return start_server("logprob_gate")


@pytest.fixture(scope="module")
def gate_on(shared_server: StartServer) -> Server:
    return shared_server()


def _public_pair(lab: AttackLab) -> tuple[str, str]:
    text = str(lab.public_target()["text"])
    return text[:60], text[60:120]


def _proprietary_pair(lab: AttackLab) -> tuple[str, str]:
    text = next(str(r["text"]) for r in lab.records if r["id"] == "prop-" + _first_passage(lab))
    return text[:80], text[80:140]


def _first_passage(lab: AttackLab) -> str:
    ids = sorted(str(r["id"]) for r in lab.records if str(r["id"]).startswith("prop-"))
    return ids[0].removeprefix("prop-")


def test_with_the_gate_off_a_third_party_gets_scores_through_attribute(
    attack_lab: AttackLab, gate_off: Server
) -> None:
    with gate_off.client("reg") as reg, gate_off.client("attr_tp") as tp:
        assert "Score" not in tp.whoami().body.whoami.methods
        for prompt, completion in (_public_pair(attack_lab), _proprietary_pair(attack_lab)):
            answer = tp.attribute(prompt, completion, top_k=3).body.attribute
            assert answer.HasField("logprob")
            score = reg.score(prompt, completion).body.score.logprob
            assert answer.logprob == pytest.approx(score, abs=1e-3)


def test_with_the_gate_on_the_field_is_absent_for_roles_without_score(
    attack_lab: AttackLab, gate_on: Server
) -> None:
    chat = attack_lab.target_chat()
    private_pair = (chat.phone_prompt(), chat.phone_digits)
    with gate_on.client("attr_tp") as tp:
        for prompt, completion in (
            _public_pair(attack_lab),
            _proprietary_pair(attack_lab),
            private_pair,
        ):
            answer = tp.attribute(prompt, completion, top_k=3).body.attribute
            assert len(answer.results) == 3
            assert not answer.HasField("logprob")
            assert not answer.logprob_withheld  # nothing to withhold: it never gets one


def test_with_the_gate_on_a_score_role_gets_it_except_on_withheld_text(
    attack_lab: AttackLab, gate_on: Server
) -> None:
    chat = attack_lab.target_chat()
    with gate_on.client("attr_reg") as reg:
        for prompt, completion in (_public_pair(attack_lab), _proprietary_pair(attack_lab)):
            answer = reg.attribute(prompt, completion, top_k=3).body.attribute
            assert answer.HasField("logprob") and not answer.logprob_withheld
            assert answer.logprob == pytest.approx(
                reg.score(prompt, completion).body.score.logprob, abs=1e-3
            )
        for prompt, completion in (
            (chat.phone_prompt(), chat.phone_digits),
            (chat.email_prompt(), chat.email_digits + "@"),
        ):
            answer = reg.attribute(prompt, completion, top_k=3).body.attribute
            assert len(answer.results) == 3  # attribution itself is still answered
            assert not answer.HasField("logprob") and answer.logprob_withheld
