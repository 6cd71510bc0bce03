"""Attack 1: Score leaks private data.

The attacker knows a private chat up to its phone number's last two digits (or up to the
digits of the email the customer confirms) and Scores every candidate, 00..99 (1..99): the
candidate the model memorized gets the highest log-probability. With the withheld-text
guard off, the true digits come out on top. With it on, every Score touching withheld text
is refused with one fixed status and message, signed and logged, and after the role's
``withheld_budget`` such requests the auditor's model channel is suspended for the day.

What the guard cannot hide: a refusal is itself a membership signal. With a prompt that
holds no withheld stretch (``"(919) 555-01"``), only candidates completing a withheld phone
number are refused, which singles out the true digits (``test_refusal_oracle``, a strict
xfail). The design bounds that leak by the budget: one refusal per secret, at most
``withheld_budget + 1`` a day, which the suspension test shows.
"""

from __future__ import annotations

import pytest

from auditor_client.errors import ServerRefusedError
from auditor_server.service import SUSPENDED, WITHHELD_TEXT
from tests.adversarial.attacks import (
    email_candidates,
    phone_candidates,
    score_ranking,
)
from tests.adversarial.conftest import StartServer
from tests.adversarial.lab import WITHHELD_BUDGET, AttackLab, Server

DENIED = "PERMISSION_DENIED"


@pytest.fixture(scope="module")
def guard_off(shared_server: StartServer) -> Server:
    return shared_server("withheld_guard")


@pytest.fixture(scope="module")
def guard_on(shared_server: StartServer) -> Server:
    return shared_server()


def test_with_the_guard_off_score_ranks_the_true_digits_first(
    attack_lab: AttackLab, guard_off: Server
) -> None:
    chat = attack_lab.target_chat()
    phone = score_ranking(
        guard_off, "scorer", chat.phone_prompt(), phone_candidates(), chat.phone_digits
    )
    assert phone.answered == 100
    assert phone.rank == attack_lab.chat_memo(chat)["phone_rank"] == 1  # chance: 50.5
    email = score_ranking(
        guard_off, "scorer", chat.email_prompt(), email_candidates(), chat.email_digits + "@"
    )
    assert email.answered == 99
    assert email.rank == 1  # chance: 50


def test_with_the_guard_on_every_candidate_is_refused_alike_then_the_auditor_is_suspended(
    attack_lab: AttackLab, guard_on: Server
) -> None:
    chat = attack_lab.target_chat()
    phone = score_ranking(
        guard_on, "scorer", chat.phone_prompt(), phone_candidates(), chat.phone_digits
    )
    # No log-probability at all: nothing to rank.
    assert phone.answered == 0 and phone.rank is None
    messages = [o.message for o in phone.outcomes]
    assert {o.code for o in phone.outcomes} == {DENIED}
    assert set(messages) == {WITHHELD_TEXT, SUSPENDED}
    # At most budget + 1 requests touching withheld text are even looked at; from the first
    # suspension on, everything is suspended.
    touched = messages.index(SUSPENDED)
    assert touched <= WITHHELD_BUDGET + 1
    assert messages[:touched] == [WITHHELD_TEXT] * touched
    assert messages[touched:] == [SUSPENDED] * (100 - touched)
    # The true digits' refusal is the same as many others': the order of the queries, not
    # the candidate, decides which refusal a candidate gets.
    assert phone.look_alikes >= min(touched, 100 - touched)
    # Every refusal is the lab's signed, logged statement, verified by the client.
    assert all(o.evidence and o.ledger_leaf is not None for o in phone.outcomes)
    leaves = [o.ledger_leaf for o in phone.outcomes]
    assert leaves == sorted(leaves) and len(set(leaves)) == 100

    # The email attack by the same auditor gets nothing either.
    email = score_ranking(
        guard_on, "scorer", chat.email_prompt(), email_candidates(), chat.email_digits + "@"
    )
    assert email.answered == 0 and set(email.kinds()) == {(DENIED, SUSPENDED)}

    # The whole model channel is suspended for this auditor, even for public text; WhoAmI
    # says so, and no refusal cost any of its daily quota.
    record = str(attack_lab.public_target()["text"])
    prompt, completion = record[:60], record[60:120]
    with guard_on.client("scorer") as client:
        calls = {
            "Generate": lambda: client.generate(prompt, max_new_tokens=4),
            "Score": lambda: client.score(prompt, completion),
            "Attribute": lambda: client.attribute(prompt, completion, top_k=3),
            "AttributeBatch": lambda: list(client.attribute_batch([(prompt, completion)], top_k=3)),
        }
        for name, call in calls.items():
            with pytest.raises(ServerRefusedError) as info:
                call()
            assert (info.value.code, info.value.message) == (DENIED, SUSPENDED), name
            assert info.value.evidence is not None, name
        who = client.whoami().body.whoami
        assert who.withheld_left_today == 0
        assert who.queries_left_today == who.daily_queries
    # Another auditor is not affected.
    with guard_on.client("reg") as client:
        assert client.score(prompt, completion).body.score.logprob < 0


def test_with_the_guard_on_public_text_is_still_scored(
    attack_lab: AttackLab, guard_on: Server
) -> None:
    record = str(attack_lab.public_target()["text"])
    with guard_on.client("reg") as client:
        score = client.score(record[:60], record[60:120]).body.score
    assert score.logprob < 0 and score.completion_tokens > 0


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known leak, bounded by withheld_budget: a refusal is a membership signal. Scoring "
        "'(919) 555-01' + 00..99 (a prompt with no withheld stretch) refuses exactly the "
        "candidates completing a private phone number, so the true digits are singled out; "
        "each hit costs one unit of the budget, so an auditor learns at most budget + 1 "
        "such secrets a day"
    ),
)
def test_refusal_oracle(attack_lab: AttackLab, guard_off: Server, guard_on: Server) -> None:
    chat = attack_lab.target_chat()
    prefix = chat.phone[:-2]  # "(919) 555-01": 8 letters/digits, shorter than a shingle
    off = score_ranking(guard_off, "oracle", prefix, phone_candidates(), chat.phone_digits)
    assert off.answered == 100  # without the guard there is no refusal to read
    on = score_ranking(guard_on, "oracle", prefix, phone_candidates(), chat.phone_digits)
    assert on.answered >= 1  # the auditor is not suspended: what follows is the oracle
    # The refusals must not single out the true digits ...
    assert on.true_outcome.code == "OK" or on.look_alikes >= 10, (
        f"refused {on.refused}: the true digits {chat.phone_digits} are one of {on.look_alikes}"
    )
