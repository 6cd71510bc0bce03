"""The client retries only UNAVAILABLE, each time with a freshly signed envelope."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auditor_client.client import AuditorClient
from auditor_client.errors import ServerRefusedError
from auditor_client.keys import encode_public_key, generate_keypair


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_unavailable_is_retried_with_fresh_envelopes_then_reported(tmp_path: Path) -> None:
    generate_keypair(tmp_path)
    lab = encode_public_key(Ed25519PrivateKey.generate().public_key())
    client = AuditorClient.connect(
        f"127.0.0.1:{_unused_port()}",
        key_dir=tmp_path,
        lab_public_key=lab,
        auditor_id="someone",
        insecure=True,
        timeout_s=5,
    )
    client.retries, client.backoff_s = 2, 0.01
    signed = []
    original = client._sign

    def spy(method, request):  # type: ignore[no-untyped-def]
        envelope = original(method, request)
        signed.append(envelope)
        return envelope

    client._sign = spy  # type: ignore[method-assign]
    with client, pytest.raises(ServerRefusedError) as info:
        client.whoami()
    assert info.value.code == "UNAVAILABLE"
    assert len(signed) == 3  # the first try and two retries
    assert len({e.nonce for e in signed}) == 3  # never the same envelope twice


def test_connect_requires_an_explicit_transport(tmp_path: Path) -> None:
    generate_keypair(tmp_path)
    lab = encode_public_key(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(ValueError, match="TLS"):
        AuditorClient.connect("127.0.0.1:1", key_dir=tmp_path, lab_public_key=lab, auditor_id="x")
    with pytest.raises(ValueError, match="auditor id"):
        AuditorClient.connect("127.0.0.1:1", key_dir=tmp_path, lab_public_key=lab, insecure=True)
