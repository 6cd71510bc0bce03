"""``keys`` and ``tls-demo-certs`` through click's runner."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from cryptography import x509

from auditor_client.keys import decode_public_key
from auditor_client.wire import digests
from auditor_server.security.commands import keys_command, tls_demo_certs_command
from auditor_server.security.errors import LabKeyError, TLSFileError
from auditor_server.security.lab_keys import load_lab_key


def test_keys_prints_public_key_and_key_id_only(tmp_path: Path) -> None:
    result = CliRunner().invoke(keys_command, ["--out", str(tmp_path / "lab")])
    assert result.exit_code == 0, result.output
    public_line, id_line = result.output.strip().splitlines()
    key = load_lab_key(tmp_path / "lab")
    assert public_line == key.public_text
    assert id_line == f"key id: {key.key_id}"
    assert digests.key_id(decode_public_key(public_line)) == key.key_id
    assert "PRIVATE" not in result.output


def test_keys_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(keys_command, ["--out", str(tmp_path)]).exit_code == 0
    first = load_lab_key(tmp_path).key_id
    refused = runner.invoke(keys_command, ["--out", str(tmp_path)])
    # The auditor-server group turns this ConfigError into one line and exit code 3.
    assert isinstance(refused.exception, LabKeyError)
    assert load_lab_key(tmp_path).key_id == first
    forced = runner.invoke(keys_command, ["--out", str(tmp_path), "--force"])
    assert forced.exit_code == 0
    assert load_lab_key(tmp_path).key_id != first


def test_tls_demo_certs_default_and_custom_hosts(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(tls_demo_certs_command, ["--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    names = [Path(line).name for line in result.output.split()]
    assert names == ["ca.pem", "server.pem", "server.key", "client.pem", "client.key"]
    result = runner.invoke(
        tls_demo_certs_command,
        ["--out", str(tmp_path / "c"), "--host", "audit.example.org", "--host", "10.1.2.3"],
    )
    assert result.exit_code == 0, result.output
    cert = x509.load_pem_x509_certificate((tmp_path / "c" / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["audit.example.org"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    again = runner.invoke(tls_demo_certs_command, ["--out", str(tmp_path / "c")])
    assert isinstance(again.exception, TLSFileError)
