"""The lab signing key: files, permissions, no overwrite, loading, and no leaks."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from auditor_client.keys import decode_public_key
from auditor_client.wire import digests
from auditor_client.wire.envelope import sign_tree_head, verify_tree_head
from auditor_server.errors import ConfigError
from auditor_server.security.errors import LabKeyError
from auditor_server.security.lab_keys import generate_lab_key, load_lab_key


def _raw_private_hex(key_dir: Path) -> str:
    key = load_lab_key(key_dir).private_key
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    ).hex()


def test_generate_writes_0600_pem_and_public_text(tmp_path: Path) -> None:
    key = generate_lab_key(tmp_path / "lab")
    private = tmp_path / "lab" / "lab.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    public = (tmp_path / "lab" / "lab.pub").read_text().strip()
    assert public == key.public_text and public.startswith("ed25519:")
    assert digests.key_id(decode_public_key(public)) == key.key_id
    assert not list((tmp_path / "lab").glob("*.tmp"))


def test_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = generate_lab_key(tmp_path)
    with pytest.raises(LabKeyError, match="refusing to replace") as info:
        generate_lab_key(tmp_path)
    assert isinstance(info.value, ConfigError)
    assert load_lab_key(tmp_path).key_id == first.key_id
    second = generate_lab_key(tmp_path, force=True)
    assert second.key_id != first.key_id
    assert load_lab_key(tmp_path).key_id == second.key_id
    assert stat.S_IMODE((tmp_path / "lab.key").stat().st_mode) == 0o600


def test_load_from_directory_or_file_and_sign(tmp_path: Path) -> None:
    key = generate_lab_key(tmp_path)
    for path in (tmp_path, tmp_path / "lab.key"):
        loaded = load_lab_key(path)
        assert loaded.key_id == key.key_id
        assert loaded.public_text == key.public_text
    # It is the ledger's TreeHeadSigner, and its signatures verify with the published key.
    digest = digests.tree_head_digest(tree_size=3, root_hash=b"\x01" * 32, timestamp_ms=5)
    key.public_key.verify(key.sign(digest), digest)
    sth = sign_tree_head(
        private_key=key.private_key, tree_size=3, root_hash=b"\x01" * 32, timestamp_ms=5
    )
    assert sth.signature == key.sign(digest)  # Ed25519 is deterministic
    verify_tree_head(sth, lab_public_key=decode_public_key(key.public_text))


def test_repr_and_errors_never_show_the_key(tmp_path: Path) -> None:
    key = generate_lab_key(tmp_path)
    secret = _raw_private_hex(tmp_path)
    pem = (tmp_path / "lab.key").read_text()
    assert secret not in repr(key) and "private" not in repr(key)
    (tmp_path / "lab.key").write_text(pem[:-40] + "garbage\n")
    with pytest.raises(LabKeyError, match="not an unencrypted PEM private key") as info:
        load_lab_key(tmp_path)
    assert pem.splitlines()[1] not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda d: None, "no lab key at"),
        (lambda d: (d / "lab.key").write_text("not a key"), "not an unencrypted PEM"),
        (
            lambda d: (d / "lab.key").write_bytes(
                generate_private_key(SECP256R1()).private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            ),
            "not an Ed25519 key",
        ),
    ],
    ids=["missing", "not pem", "not ed25519"],
)
def test_load_errors_are_lab_key_errors(tmp_path: Path, setup: object, match: str) -> None:
    setup(tmp_path)  # type: ignore[operator]
    with pytest.raises(LabKeyError, match=match):
        load_lab_key(tmp_path)


def test_mismatched_public_file_is_caught_at_load(tmp_path: Path) -> None:
    generate_lab_key(tmp_path / "a")
    other = generate_lab_key(tmp_path / "b")
    (tmp_path / "a" / "lab.pub").write_text(other.public_text + "\n")
    with pytest.raises(LabKeyError, match="holds key id"):
        load_lab_key(tmp_path / "a")


def test_group_readable_key_loads_with_a_warning_without_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    generate_lab_key(tmp_path)
    os.chmod(tmp_path / "lab.key", 0o644)
    with caplog.at_level(logging.WARNING, logger="auditor_server.security.lab_keys"):
        load_lab_key(tmp_path)
    assert "chmod 600" in caplog.text
    assert _raw_private_hex(tmp_path) not in caplog.text
