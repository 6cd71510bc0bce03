"""Demo TLS material: chains to the CA, right SANs and usages, 0600 keys, loadable for gRPC."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from auditor_server.errors import ConfigError
from auditor_server.security.errors import TLSFileError
from auditor_server.security.tls import load_server_credentials, write_demo_certs


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    """Raises unless ``ca``'s key signed ``cert``."""
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    public.verify(
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
    )
    assert cert.issuer == ca.subject


def test_demo_certs_chain_to_the_ca_with_the_right_sans(tmp_path: Path) -> None:
    certs = write_demo_certs(tmp_path)
    ca, server, client = _cert(certs.ca), _cert(certs.server_cert), _cert(certs.client_cert)
    _issued_by(ca, ca)
    _issued_by(server, ca)
    _issued_by(client, ca)
    # The library's own chain check agrees (signature, validity, issuer).
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    now = dt.datetime.now(dt.UTC)
    for cert in (ca, server, client):
        assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert dt.timedelta(days=365) <= lifetime <= dt.timedelta(days=366)
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)


def test_keys_are_0600_and_match_their_certificates(tmp_path: Path) -> None:
    certs = write_demo_certs(tmp_path)
    for key in (certs.server_key, certs.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    creds = load_server_credentials(certs.server_cert, certs.server_key)
    assert creds.root_certificates is None and not creds.require_client_auth
    assert creds.certificate_chain == certs.server_cert.read_bytes()
    assert b"PRIVATE KEY" not in repr(creds).encode()
    mtls = load_server_credentials(certs.client_cert, certs.client_key, client_ca=certs.ca)
    assert mtls.require_client_auth and mtls.root_certificates == certs.ca.read_bytes()


def test_custom_hosts_become_dns_and_ip_sans(tmp_path: Path) -> None:
    certs = write_demo_certs(tmp_path, hosts=("audit.example.org", "10.0.0.7", "::1"))
    san = _cert(certs.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["audit.example.org"]
    assert san.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("::1"),
    ]


def test_refuses_to_replace_existing_files_unless_forced(tmp_path: Path) -> None:
    first = write_demo_certs(tmp_path)
    ca = first.ca.read_bytes()
    with pytest.raises(TLSFileError, match="refusing to replace") as info:
        write_demo_certs(tmp_path)
    assert isinstance(info.value, ConfigError)
    assert first.ca.read_bytes() == ca
    write_demo_certs(tmp_path, force=True)
    assert first.ca.read_bytes() != ca


def test_load_refuses_a_key_of_another_certificate(tmp_path: Path) -> None:
    certs = write_demo_certs(tmp_path)
    with pytest.raises(TLSFileError, match="is not the private key of the certificate"):
        load_server_credentials(certs.server_cert, certs.client_key)


def test_load_refuses_missing_and_non_pem_files(tmp_path: Path) -> None:
    certs = write_demo_certs(tmp_path)
    with pytest.raises(TLSFileError, match="cannot read server certificate"):
        load_server_credentials(tmp_path / "nope.pem", certs.server_key)
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("hello")
    with pytest.raises(TLSFileError, match="not a PEM certificate"):
        load_server_credentials(bogus, certs.server_key)
    with pytest.raises(TLSFileError, match="not an unencrypted PEM private key"):
        load_server_credentials(certs.server_cert, bogus)
    with pytest.raises(TLSFileError, match="not a PEM certificate"):
        load_server_credentials(certs.server_cert, certs.server_key, client_ca=bogus)


def test_no_hosts_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TLSFileError, match="at least one host"):
        write_demo_certs(tmp_path, hosts=())


def test_demo_certs_work_for_a_real_mutual_tls_handshake(tmp_path: Path) -> None:
    """The bytes load_server_credentials returns are what gRPC's TLS stack accepts."""
    grpc = pytest.importorskip("grpc")
    health = pytest.importorskip("grpc_health.v1.health")
    from concurrent import futures

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    certs = write_demo_certs(tmp_path)
    creds = load_server_credentials(certs.server_cert, certs.server_key, client_ca=certs.ca)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials(
            [(creds.private_key, creds.certificate_chain)],
            root_certificates=creds.root_certificates,
            require_client_auth=creds.require_client_auth,
        ),
    )
    server.start()
    try:
        ca = certs.ca.read_bytes()
        with_cert = grpc.ssl_channel_credentials(
            ca, certs.client_key.read_bytes(), certs.client_cert.read_bytes()
        )
        for host in ("localhost", "127.0.0.1"):
            with grpc.secure_channel(f"{host}:{port}", with_cert) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        without_cert = grpc.ssl_channel_credentials(ca)
        with (
            grpc.secure_channel(f"localhost:{port}", without_cert) as channel,
            pytest.raises(grpc.RpcError),  # no client certificate: refused by mTLS
        ):
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    finally:
        server.stop(0)
