"""Attack 4: an address split across prompt and output slips past the scrubber.

The scrubber is the second layer behind the withheld-text guard, so both servers here run
with the guard off (as if it had missed something): the attacker sends a private chat up
to the middle of an email address or phone number and lets the model finish it. Scrubbing
the output alone sees ``example.org.`` or ``5.``, which is no address at all; scrubbing prompt
and output together sees the whole address and replaces the output's part of it.
(Obfuscated spellings are the scrubber's own unit tests: tests/unit/policy/.)
"""

from __future__ import annotations

import pytest

from auditor_server.policy.scrub import EMAIL_PLACEHOLDER, PHONE_PLACEHOLDER, find_pii
from tests.adversarial.conftest import StartServer
from tests.adversarial.lab import AttackLab, Server


@pytest.fixture(scope="module")
def scrub_output_only(start_server: StartServer) -> Server:
    return start_server("withheld_guard", "scrub_joined")


@pytest.fixture(scope="module")
def scrub_joined(shared_server: StartServer) -> Server:
    return shared_server("withheld_guard")


def _probes(lab: AttackLab) -> list[tuple[str, str, str]]:
    chat = lab.target_chat()
    return [
        (chat.email_split_prompt(), chat.email, EMAIL_PLACEHOLDER),
        (chat.phone_split_prompt(), chat.phone, PHONE_PLACEHOLDER),
    ]


def test_scrubbing_the_output_alone_lets_a_split_address_through(
    attack_lab: AttackLab, scrub_output_only: Server
) -> None:
    with scrub_output_only.client("reg") as client:
        for prompt, secret, _ in _probes(attack_lab):
            assert secret not in prompt
            answer = client.generate(prompt, max_new_tokens=4).body.generate
            # The model finishes the address; the output alone is not an address ...
            assert secret in prompt + answer.completion, answer.completion
            assert not [m for m in find_pii(answer.completion) if m.kind in ("email", "phone")]
            assert answer.scrubbed_items == 0
            # ... but the attacker's reassembly is.
            assert find_pii(prompt + answer.completion)


def test_scrubbing_prompt_and_output_together_catches_it(
    attack_lab: AttackLab, scrub_joined: Server
) -> None:
    with scrub_joined.client("reg") as client:
        for prompt, secret, placeholder in _probes(attack_lab):
            answer = client.generate(prompt, max_new_tokens=4).body.generate
            assert secret not in prompt + answer.completion, answer.completion
            assert answer.completion.startswith(placeholder)
            assert answer.scrubbed_items >= 1
