"""TLS and mutual TLS with the demo certificates, against a real server process."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from auditor_client.client import AuditorClient, TLSConfig
from auditor_client.errors import ServerRefusedError
from tests.integration.lab_server import Lab, build_lab, cli, env


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lab, Path]:
    lab = build_lab(tmp_path_factory.mktemp("tls-lab"))
    certs = lab.root / "certs"
    out = subprocess.run(
        cli("tls-demo-certs", "--out", str(certs)), capture_output=True, text=True, env=env()
    )
    assert out.returncode == 0, out.stderr
    return lab, certs


def _connect(lab: Lab, tls: TLSConfig | None) -> AuditorClient:
    return AuditorClient.connect(
        f"localhost:{lab.port}",
        key_dir=lab.keys["reg"],
        lab_public_key=lab.lab_public,
        auditor_id="reg",
        tls=tls,
        insecure=tls is None,
        timeout_s=10,
    )


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_tls_serves_only_clients_that_trust_it(
    built: tuple[Lab, Path], tmp_path: Path, mutual: bool
) -> None:
    base, certs = built
    lab = dataclasses.replace(base, state=tmp_path / "state", process=None, stderr_lines=[])
    args = ["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key")]
    if mutual:
        args += ["--tls-client-ca", str(certs / "ca.pem")]
    lab.start(*args)
    try:
        assert lab.listening["tls"] is True and lab.listening["mtls"] is mutual
        good = TLSConfig(
            ca=certs / "ca.pem",
            cert=certs / "client.pem" if mutual else None,
            key=certs / "client.key" if mutual else None,
        )
        with _connect(lab, good) as client:
            client.retries = 0
            assert client.whoami().body.whoami.auditor_id == "reg"
        refused = [None, TLSConfig(ca=None)]  # plaintext; TLS without trusting the demo CA
        if mutual:
            refused.append(TLSConfig(ca=certs / "ca.pem"))  # no client certificate
        for tls in refused:
            with _connect(lab, tls) as client:
                client.retries = 0
                with pytest.raises(ServerRefusedError) as info:
                    client.whoami()
                assert info.value.code == "UNAVAILABLE"
    finally:
        lab.stop()
