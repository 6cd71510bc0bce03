"""Attack 7: the small ones. A temperature that overflows the softmax, and refusal messages
as a side channel.

* ``temperature=1e-38`` divides the logits by ~0: the softmax is NaN (checked below), which
  used to surface as INTERNAL. It must be a clear INVALID_ARGUMENT, cost no quota, and leave
  the server serving.
* Refusal messages are fixed texts: they must never echo what the client sent (an id, a
  prompt, a number) or the server's clock. Every request below carries a distinctive marker
  in the field it is refused for, and each expected message shows the server read that
  field; no marker, no long number and no date or time may appear in any status message.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auditor_client.errors import ServerRefusedError
from auditor_client.keys import load_keypair
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.envelope import sign_request
from tests.adversarial.attacks import raw_call
from tests.adversarial.conftest import StartServer
from tests.adversarial.lab import MAX_BATCH_ITEMS, AttackLab, Server

MARK = "ZQXMARK"
NUMBER = 987654321


@pytest.fixture(scope="module")
def server(shared_server: StartServer) -> Server:
    return shared_server()


def test_a_vanishing_temperature_is_refused_clearly_and_costs_nothing(
    attack_lab: AttackLab, server: Server
) -> None:
    # The hazard is real: at this temperature the softmax is not a distribution.
    assert torch.softmax(torch.tensor([-5.0, 10.0, 20.0]) / 1e-38, dim=-1).isnan().any()
    prompt = str(attack_lab.public_target()["text"])[:60]
    with server.client("marker") as client:
        left = client.whoami().body.whoami.queries_left_today
        for temperature in (1e-38, 1e-45, 1e-4):  # float32 on the wire: all above 0
            with pytest.raises(ServerRefusedError) as info:
                client.generate(prompt, max_new_tokens=4, temperature=temperature)
            assert info.value.code == "INVALID_ARGUMENT", info.value
            assert "temperature" in info.value.message and info.value.evidence is not None
        assert client.whoami().body.whoami.queries_left_today == left
        answer = client.generate(prompt, max_new_tokens=4, temperature=0.0).body.generate
        assert answer.completion
        sampled = client.generate(prompt, max_new_tokens=4, temperature=0.7, seed=3)
        assert sampled.body.generate.completion
    assert server.alive


Case = tuple[str, Callable[[Server], tuple[str, str]], str, str]
"""(name, send -> (status, message), expected status, a fragment the message must hold)."""


def _client_call(call: Callable[[object], object]) -> Callable[[Server], tuple[str, str]]:
    def send(server: Server) -> tuple[str, str]:
        with server.client("marker") as client:
            try:
                call(client)
            except ServerRefusedError as exc:
                if exc.evidence is not None:  # the signed refusal says the same, no more
                    assert exc.evidence.body.refusal.message == exc.message  # type: ignore[attr-defined]
                return exc.code, exc.message
        return "OK", ""

    return send


def _raw(
    method: str, build: Callable[[Server], pb.SignedRequest]
) -> Callable[[Server], tuple[str, str]]:
    return lambda server: raw_call(server, method, build(server).SerializeToString())


def _signed(server: Server, **kw: object) -> pb.SignedRequest:
    body = pb.AttributeRequest(prompt=MARK, completion=" " + MARK, top_k=3).SerializeToString()
    args: dict[str, object] = {
        "private_key": load_keypair(server.lab.keys["marker"]).private,
        "auditor_id": "marker",
        "method": "Attribute",
        "body": body,
    }
    args.update(kw)
    return sign_request(**args)  # type: ignore[arg-type]


def _private_prompt(server: Server) -> str:
    return server.lab.target_chat().phone_prompt()[-100:] + MARK


_REPLAYED: dict[str, bytes] = {}


def _replay(server: Server) -> tuple[str, str]:
    raw = _signed(server).SerializeToString()
    first = raw_call(server, "Attribute", raw)
    assert first[0] == "OK", first
    return raw_call(server, "Attribute", raw)


CASES: list[Case] = [
    (
        "prompt over the policy's length",
        _client_call(lambda c: c.generate(MARK * 60, max_new_tokens=2)),  # type: ignore[attr-defined]
        "INVALID_ARGUMENT",
        "prompt longer than",
    ),
    (
        "max_new_tokens far too large",
        _client_call(lambda c: c.generate(MARK, max_new_tokens=NUMBER)),  # type: ignore[attr-defined]
        "INVALID_ARGUMENT",
        "max_new_tokens",
    ),
    (
        "top_k far too large",
        _client_call(lambda c: c.attribute(MARK, " " + MARK, top_k=NUMBER)),  # type: ignore[attr-defined]
        "INVALID_ARGUMENT",
        "top_k",
    ),
    (
        "blank completion",
        _client_call(lambda c: c.score(MARK, "   ")),  # type: ignore[attr-defined]
        "INVALID_ARGUMENT",
        "completion",
    ),
    (
        "prompt beyond the model's context",
        _client_call(lambda c: c.score(" ".join(f"{MARK}{i}" for i in range(30)), " x")),  # type: ignore[attr-defined]
        "INVALID_ARGUMENT",
        "context",
    ),
    (
        "temperature 1e-38",
        _client_call(lambda c: c.generate(MARK, max_new_tokens=2, temperature=1e-38)),  # type: ignore[attr-defined]
        "INVALID_ARGUMENT",
        "temperature",
    ),
    (
        "batch over the policy's size",
        _client_call(
            lambda c: list(c.attribute_batch([(MARK, " " + MARK)] * (MAX_BATCH_ITEMS + 1), top_k=2))  # type: ignore[attr-defined]
        ),
        "INVALID_ARGUMENT",
        "batch",
    ),
    (
        "Score of withheld text",
        lambda s: _client_call(lambda c: c.score(_private_prompt(s), " 75"))(s),  # type: ignore[attr-defined]
        "PERMISSION_DENIED",
        "withholds",
    ),
    (
        "inclusion proof past the log",
        _client_call(lambda c: c.inclusion_proof(NUMBER, NUMBER + 1)),  # type: ignore[attr-defined]
        "OUT_OF_RANGE",
        "ledger",
    ),
    (
        "unknown auditor",
        _raw(
            "Attribute",
            lambda s: _signed(s, private_key=Ed25519PrivateKey.generate(), auditor_id=MARK),
        ),
        "UNAUTHENTICATED",
        "registered",
    ),
    (
        "envelope method differs",
        _raw("Attribute", lambda s: _signed(s, method=MARK)),
        "INVALID_ARGUMENT",
        "method",
    ),
    (
        "timestamp far in the past",
        _raw("Attribute", lambda s: _signed(s, timestamp_ms=1_234_567_890_123)),
        "UNAUTHENTICATED",
        "timestamp",
    ),
    (
        "timestamp far in the future",
        _raw("Attribute", lambda s: _signed(s, timestamp_ms=time.time_ns() // 10**6 + 10**9)),
        "UNAUTHENTICATED",
        "timestamp",
    ),
    ("replayed nonce", _replay, "ALREADY_EXISTS", "nonce"),
    (
        "garbage",
        lambda s: raw_call(s, "Attribute", MARK.encode() + secrets.token_bytes(8)),
        "INVALID_ARGUMENT",
        "SignedRequest",
    ),
]

_CLOCK = [
    re.compile(r"\d{5,}"),  # no long number: no clock in ms or s, no echoed value
    re.compile(r"\d{4}-\d{2}-\d{2}"),  # no date
    re.compile(r"\d{1,2}:\d{2}(?!\s*UTC)"),  # no time of day other than the fixed 00:00 UTC
]


def _queries_left(server: Server) -> int:
    with server.client("marker") as client:
        return client.whoami().body.whoami.queries_left_today


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_refusal_messages_echo_nothing(case: Case, server: Server) -> None:
    name, send, expected, fragment = case
    left = _queries_left(server)
    code, message = send(server)
    # A refusal costs no quota (the replay case's first, answered request costs one).
    assert left - _queries_left(server) == (name == "replayed nonce")
    assert code == expected, (code, message)
    assert fragment in message, message  # the server did read the marked field
    assert MARK.lower() not in message.lower() and str(NUMBER) not in message, message
    for pattern in _CLOCK:
        assert not pattern.search(message), (pattern.pattern, message)
    assert server.alive


def test_serve_has_no_way_to_turn_a_defence_off() -> None:
    """Only the test launcher builds a service with a defence off."""
    import dataclasses

    from auditor_server.cli import serve
    from auditor_server.service import Defences

    defences = {f.name for f in dataclasses.fields(Defences)}
    assert defences and all(f.default is True for f in dataclasses.fields(Defences))
    options = " ".join(
        " ".join([p.name or "", *getattr(p, "opts", [])]).replace("-", "_") for p in serve.params
    )
    for name in defences | {"defence", "unsafe"}:
        assert name not in options, name
