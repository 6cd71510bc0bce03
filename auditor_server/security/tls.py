"""TLS material for the server: demo certificates, and loading real ones for gRPC.

Envelope signatures already authenticate every request and answer end to end; TLS adds
confidentiality of prompts and answers on the wire, and (with mutual TLS) keeps callers
without a lab-issued client certificate from reaching the service at all.

**Switching on mTLS.** Start the server with ``--tls-cert server.pem --tls-key server.key``
for TLS; add ``--tls-client-ca ca.pem`` and every client must present a certificate that
chains to that CA (``require_client_auth``). With the material from
:func:`load_server_credentials` the server builds its credentials as::

    creds = load_server_credentials(cert, key, client_ca=ca)
    grpc.ssl_server_credentials(
        [(creds.private_key, creds.certificate_chain)],
        root_certificates=creds.root_certificates,
        require_client_auth=creds.require_client_auth,
    )

Auditors then connect with ``ca.pem`` as the root and ``client.pem`` / ``client.key`` as
their certificate. :func:`write_demo_certs` makes a throwaway CA for demos and tests only;
a real deployment uses the lab's PKI. No grpc import here: the server turns the bytes into
credentials.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from auditor_server.security._files import write_public, write_secret
from auditor_server.security.errors import TLSFileError

DEMO_VALIDITY = dt.timedelta(days=365)
"""How long demo certificates are valid."""
_CLOCK_SLACK = dt.timedelta(minutes=5)
"""Backdating of ``not_valid_before``, so a client whose clock runs a little slow accepts them."""

CA_FILE = "ca.pem"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"
CLIENT_CERT_FILE = "client.pem"
CLIENT_KEY_FILE = "client.key"


@dataclass(frozen=True)
class DemoCerts:
    """Paths of the files :func:`write_demo_certs` wrote."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass(frozen=True)
class ServerCredentialBytes:
    """What ``grpc.ssl_server_credentials`` needs, as bytes (see the module docstring).

    Attributes:
        certificate_chain: PEM server certificate (and intermediates).
        private_key: PEM private key of the server certificate (excluded from ``repr``).
        root_certificates: PEM CA that client certificates must chain to; None: plain TLS.
        require_client_auth: True exactly when ``root_certificates`` is set (mutual TLS).
    """

    certificate_chain: bytes
    private_key: bytes = field(repr=False)
    root_certificates: bytes | None = None

    @property
    def require_client_auth(self) -> bool:
        return self.root_certificates is not None


def write_demo_certs(
    out_dir: Path,
    *,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    force: bool = False,
) -> DemoCerts:
    """Write a self-signed demo CA, a server certificate and a client certificate.

    ECDSA P-256 keys (universally supported by TLS stacks, gRPC's included), SHA-256
    signatures, valid for a year. The server certificate names every host in ``hosts`` as a
    subject alternative name (IP addresses as IP SANs, the rest as DNS names); the client
    certificate is for mutual TLS. Private keys are written 0600.

    Args:
        out_dir: directory for ``ca.pem``, ``server.pem``, ``server.key``, ``client.pem``,
            ``client.key`` (created if missing).
        hosts: names and addresses clients will dial.
        force: replace existing files; otherwise an existing file is an error (replacing
            the CA silently would break every client that trusts the old one).

    Raises:
        TLSFileError: no hosts, a file exists and ``force`` is False, or a write failed.
    """
    if not hosts:
        raise TLSFileError("give at least one host for the server certificate")
    paths = DemoCerts(
        ca=out_dir / CA_FILE,
        server_cert=out_dir / SERVER_CERT_FILE,
        server_key=out_dir / SERVER_KEY_FILE,
        client_cert=out_dir / CLIENT_CERT_FILE,
        client_key=out_dir / CLIENT_KEY_FILE,
    )
    existing = [p.name for p in _paths(paths) if p.exists()]
    if existing and not force:
        raise TLSFileError(
            f"{out_dir} already holds {', '.join(existing)}; refusing to replace (use --force)"
        )
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "auditor-sandbox demo CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key, server_cert = _leaf(
        "auditor-sandbox demo server",
        ExtendedKeyUsageOID.SERVER_AUTH,
        ca_cert,
        ca_key,
        now,
        san=x509.SubjectAlternativeName([_general_name(h) for h in hosts]),
    )
    client_key, client_cert = _leaf(
        "auditor-sandbox demo auditor",
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ca_cert,
        ca_key,
        now,
        san=None,
    )
    try:
        write_public(paths.ca, _cert_pem(ca_cert), overwrite=force)
        write_public(paths.server_cert, _cert_pem(server_cert), overwrite=force)
        write_secret(paths.server_key, _key_pem(server_key), overwrite=force)
        write_public(paths.client_cert, _cert_pem(client_cert), overwrite=force)
        write_secret(paths.client_key, _key_pem(client_key), overwrite=force)
    except FileExistsError as exc:
        raise TLSFileError(f"{exc} appeared while writing; refusing to replace it") from None
    except OSError as exc:
        raise TLSFileError(f"cannot write demo certificates to {out_dir}: {exc.strerror}") from None
    return paths


def load_server_credentials(
    cert: Path, key: Path, client_ca: Path | None = None
) -> ServerCredentialBytes:
    """Read and check the server's TLS files; ``client_ca`` switches on mutual TLS.

    Checks at startup what gRPC would otherwise report only on the first handshake, if at
    all: that the files are PEM, and that the key belongs to the certificate.

    Raises:
        TLSFileError: a file is missing or unreadable, not PEM, or the key does not match the
            certificate.
    """
    chain = _read(cert, "server certificate")
    key_bytes = _read(key, "server key")
    ca = _read(client_ca, "client CA") if client_ca is not None else None
    try:
        leaf = x509.load_pem_x509_certificates(chain)[0]
    except ValueError:
        raise TLSFileError(f"{cert} is not a PEM certificate") from None
    try:
        private = serialization.load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError):
        raise TLSFileError(f"{key} is not an unencrypted PEM private key") from None
    if _spki(private.public_key()) != _spki(leaf.public_key()):
        raise TLSFileError(f"{key} is not the private key of the certificate in {cert}")
    if ca is not None:
        try:
            x509.load_pem_x509_certificates(ca)
        except ValueError:
            raise TLSFileError(f"{client_ca} is not a PEM certificate") from None
    return ServerCredentialBytes(
        certificate_chain=chain, private_key=key_bytes, root_certificates=ca
    )


def _paths(certs: DemoCerts) -> tuple[Path, ...]:
    return (certs.ca, certs.server_cert, certs.server_key, certs.client_cert, certs.client_key)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SLACK)
        .not_valid_after(now + DEMO_VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _leaf(
    common_name: str,
    usage: x509.ObjectIdentifier,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
    *,
    san: x509.SubjectAlternativeName | None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """An end-entity key and certificate issued by the demo CA for one purpose."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _builder(name, ca_cert.subject, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _general_name(host: str) -> x509.GeneralName:
    """An IP SAN for an address, a DNS SAN for anything else."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _spki(public_key: PublicKeyTypes) -> bytes:
    """SubjectPublicKeyInfo DER of a public key, to compare keys of any type."""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSFileError(f"cannot read {what} {path}: {exc.strerror}") from None
