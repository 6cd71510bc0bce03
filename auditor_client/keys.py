"""Auditor signing keys: Ed25519, stored as PKCS#8 PEM, published as ``ed25519:<base64>``.

The private key file is created with mode 0600 and never printed or logged; only the public
key (which the lab registers in its policy) is shown.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_KEY_FILE = "auditor.key"
PUBLIC_KEY_FILE = "auditor.pub"
PUBLIC_KEY_PREFIX = "ed25519:"


class KeyFileError(Exception):
    """A key directory or key string is missing or malformed."""


@dataclass(frozen=True)
class KeyPair:
    """An auditor's signing key and its public half."""

    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def public_text(self) -> str:
        """The public key as registered in a lab policy: ``ed25519:<base64 of 32 bytes>``."""
        return encode_public_key(self.public)


def encode_public_key(key: Ed25519PublicKey) -> str:
    """``ed25519:<base64>`` of the raw 32-byte public key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def decode_public_key(text: str) -> Ed25519PublicKey:
    """Parse ``ed25519:<base64>``.

    Raises:
        KeyFileError: wrong prefix, bad base64 or wrong length.
    """
    if not text.startswith(PUBLIC_KEY_PREFIX):
        raise KeyFileError(f"public key must start with '{PUBLIC_KEY_PREFIX}'")
    try:
        raw = base64.b64decode(text[len(PUBLIC_KEY_PREFIX) :], validate=True)
    except ValueError as exc:
        raise KeyFileError("public key is not valid base64") from exc
    if len(raw) != 32:
        raise KeyFileError(f"public key must be 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def read_public_key_text(value: str) -> str:
    """A public key given as ``ed25519:<base64>`` or as the path of a file holding it.

    Only the form is settled here (what the caller passes on to :func:`decode_public_key`);
    the text returned is stripped of surrounding whitespace.

    Raises:
        KeyFileError: neither a key nor a readable text file.
    """
    text = value.strip()
    if text.startswith(PUBLIC_KEY_PREFIX):
        return text
    path = Path(value)
    if not path.is_file():
        raise KeyFileError(
            f"neither an '{PUBLIC_KEY_PREFIX}<base64>' key nor an existing file: {value}"
        )
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read {path}: {exc}") from exc


def generate_keypair(out_dir: Path, *, overwrite: bool = False) -> KeyPair:
    """Create a new key pair in ``out_dir`` (private key 0600, public key text file).

    Raises:
        KeyFileError: a key already exists there and ``overwrite`` is False.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path = out_dir / PRIVATE_KEY_FILE
    if private_path.exists() and not overwrite:
        raise KeyFileError(f"{private_path} already exists; refusing to overwrite a key")
    pair = KeyPair(Ed25519PrivateKey.generate())
    pem = pair.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = private_path.with_suffix(".key.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, private_path)
    (out_dir / PUBLIC_KEY_FILE).write_text(pair.public_text + "\n", encoding="ascii")
    return pair


def load_keypair(key_dir: Path) -> KeyPair:
    """Load the private key from ``key_dir``.

    Raises:
        KeyFileError: missing file, unreadable PEM or not an Ed25519 key.
    """
    path = key_dir / PRIVATE_KEY_FILE
    if not path.exists():
        raise KeyFileError(f"no private key at {path}; create one with `auditor keygen`")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise KeyFileError(f"{path} is not a readable PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key")
    return KeyPair(key)
