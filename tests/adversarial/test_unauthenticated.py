"""Attack 6: anyone who can reach the port grows the lab's permanent ledger.

A request that fails authentication is nobody's request. Logging its refusal in the
ledger (signed, fsync'd, kept for ever) let an anonymous sender grow the log by one leaf per
ten garbage bytes. With the defence on, such requests are counted per peer address outside
the ledger, and past ``unauthenticated_per_minute`` the address is refused unparsed with
RESOURCE_EXHAUSTED. A registered key id with a zero signature, another auditor's id and an
unregistered key id read the same, so failures tell a sender nothing about the registry.

Where it does not hold: the limit is per *address*, and a throttled address is refused
before its requests are read, registered auditors included. Thirty garbage requests from an
address that auditors share (a NAT, a proxy, the TLS terminator in front of the lab) lock
them out for the rest of the minute (``test_..._lock_out_a_registered_auditor``, a strict
xfail).
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auditor_client.keys import load_keypair
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.envelope import sign_request
from auditor_server.service import TOO_MANY_UNAUTHENTICATED
from tests.adversarial.attacks import garbage_flood, raw_call
from tests.adversarial.conftest import StartServer
from tests.adversarial.lab import UNAUTHENTICATED_PER_MINUTE, Server

FLOOD = 300


@pytest.fixture(scope="module")
def logged(start_server: StartServer) -> Server:
    return start_server("unauthenticated_off_ledger")


@pytest.fixture(scope="module")
def off_ledger(start_server: StartServer) -> Server:
    return start_server()


def _body() -> bytes:
    return pb.AttributeRequest(prompt="The", completion=" quick", top_k=3).SerializeToString()


def _failed_authentications(server: Server) -> dict[str, bytes]:
    """Requests that must all fail authentication the same way."""
    reg = load_keypair(server.lab.keys["reg"]).private
    stranger = Ed25519PrivateKey.generate()
    zero = sign_request(private_key=reg, auditor_id="reg", method="Attribute", body=_body())
    zero.signature = bytes(64)
    unregistered = sign_request(
        private_key=stranger, auditor_id="reg", method="Attribute", body=_body()
    )
    unregistered_zero = sign_request(
        private_key=stranger, auditor_id="reg", method="Attribute", body=_body()
    )
    unregistered_zero.signature = bytes(64)
    nobody = sign_request(
        private_key=stranger, auditor_id="nobody", method="Attribute", body=_body()
    )
    return {
        "registered key id, zero signature": zero.SerializeToString(),
        "unregistered key id": unregistered.SerializeToString(),
        "unregistered key id, zero signature": unregistered_zero.SerializeToString(),
        "unknown auditor": nobody.SerializeToString(),
    }


def test_with_the_defence_off_garbage_grows_the_ledger(logged: Server) -> None:
    flood = garbage_flood(logged, FLOOD)
    assert flood.codes == {"INVALID_ARGUMENT": FLOOD}
    assert flood.growth == FLOOD  # one permanent, signed leaf per 10 anonymous bytes


def test_failed_authentications_read_the_same_and_stay_off_the_ledger(
    off_ledger: Server,
) -> None:
    before = off_ledger.ledger_size()
    answers = {
        name: raw_call(off_ledger, "Attribute", raw)
        for name, raw in _failed_authentications(off_ledger).items()
    }
    assert len(set(answers.values())) == 1, answers
    code, message = next(iter(answers.values()))
    assert code == "UNAUTHENTICATED" and "nobody" not in message
    assert off_ledger.ledger_size() == before


def test_with_the_defence_on_garbage_adds_nothing_and_the_address_is_throttled(
    off_ledger: Server,
) -> None:
    flood = garbage_flood(off_ledger, FLOOD)
    assert flood.growth == 0
    assert set(flood.codes) == {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}
    assert flood.codes["INVALID_ARGUMENT"] <= UNAUTHENTICATED_PER_MINUTE
    assert flood.codes["RESOURCE_EXHAUSTED"] >= FLOOD - UNAUTHENTICATED_PER_MINUTE
    assert flood.messages[TOO_MANY_UNAUTHENTICATED] == flood.codes["RESOURCE_EXHAUSTED"]
    assert off_ledger.alive


def test_garbage_from_an_address_does_not_lock_out_a_registered_auditor(
    off_ledger: Server,
) -> None:
    garbage_flood(off_ledger, UNAUTHENTICATED_PER_MINUTE + 5)
    with off_ledger.client("reg") as client:
        assert client.whoami().body.whoami.auditor_id == "reg"
