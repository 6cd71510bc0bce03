"""The lab's Ed25519 signing key: it signs every response and every ledger tree head.

On disk: ``lab.key`` (PKCS#8 PEM, unencrypted, mode 0600) and ``lab.pub``
(``ed25519:<base64>``, the text auditors configure as the key they trust). The same
encoding as auditor keys (:mod:`auditor_client.keys`), so one format is documented once.

The private key never appears in a log line, an exception message or a ``repr``.
"""

from __future__ import annotations

import logging
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from auditor_client.keys import KeyFileError, decode_public_key, encode_public_key
from auditor_client.wire import digests
from auditor_server.security._files import write_public, write_secret
from auditor_server.security.errors import LabKeyError

logger = logging.getLogger(__name__)

LAB_PRIVATE_KEY_FILE = "lab.key"
LAB_PUBLIC_KEY_FILE = "lab.pub"


@dataclass(frozen=True)
class LabKey:
    """The lab's signing key; also the ledger's ``TreeHeadSigner`` (``key_id``, ``sign``).

    Attributes:
        private_key: the Ed25519 private key (excluded from ``repr``).
        key_id: :func:`auditor_client.wire.digests.key_id` of the public key.
    """

    private_key: Ed25519PrivateKey = field(repr=False)
    key_id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_id", digests.key_id(self.private_key.public_key()))

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The public half, which auditors verify answers with."""
        return self.private_key.public_key()

    @property
    def public_text(self) -> str:
        """``ed25519:<base64>``: what the lab publishes and auditors configure."""
        return encode_public_key(self.public_key)

    def sign(self, digest: bytes) -> bytes:
        """Ed25519 signature over ``digest`` (a domain-separated digest from ``digests``)."""
        return self.private_key.sign(digest)


def generate_lab_key(out_dir: Path, *, force: bool = False) -> LabKey:
    """Create a new lab key in ``out_dir``: ``lab.key`` (0600) and ``lab.pub``.

    Replacing the lab key invalidates every auditor's trust configuration and makes older
    tree heads verify only under the old key, so it is refused unless ``force`` is given.

    Args:
        out_dir: directory to write into (created if missing).
        force: replace an existing ``lab.key``.

    Returns:
        The new key.

    Raises:
        LabKeyError: ``lab.key`` already exists and ``force`` is False, or it cannot be written.
    """
    private_path = out_dir / LAB_PRIVATE_KEY_FILE
    key = LabKey(Ed25519PrivateKey.generate())
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        write_secret(private_path, pem, overwrite=force)
        write_public(
            out_dir / LAB_PUBLIC_KEY_FILE, (key.public_text + "\n").encode("ascii"), overwrite=True
        )
    except FileExistsError:
        raise LabKeyError(
            f"{private_path} already exists; refusing to replace the lab key (use --force)"
        ) from None
    except OSError as exc:
        raise LabKeyError(f"cannot write the lab key to {out_dir}: {exc.strerror}") from None
    logger.info("generated lab key %s in %s", key.key_id, out_dir)
    return key


def load_lab_key(path: Path) -> LabKey:
    """Load the lab key from a key directory or from the ``lab.key`` file itself.

    When ``lab.pub`` sits beside the key it must match, so a half-replaced key pair is
    caught at startup rather than by every auditor's verification failing. A key file
    readable by group or others is loaded with a warning (secret stores often mount 0644).

    Raises:
        LabKeyError: missing or unreadable file, not a PEM private key, not Ed25519, or a
            ``lab.pub`` that does not match.
    """
    key_path = path / LAB_PRIVATE_KEY_FILE if path.is_dir() else path
    try:
        data = key_path.read_bytes()
        mode = key_path.stat().st_mode
    except FileNotFoundError:
        raise LabKeyError(
            f"no lab key at {key_path}; create one with `auditor-server keys --out DIR`"
        ) from None
    except OSError as exc:
        raise LabKeyError(f"cannot read lab key {key_path}: {exc.strerror}") from None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # The exception text could quote the file; say only what is wrong.
        raise LabKeyError(f"{key_path} is not an unencrypted PEM private key") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise LabKeyError(f"{key_path} is not an Ed25519 key")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "lab key file %s is accessible to group/others (mode %o); chmod 600 it",
            key_path,
            stat.S_IMODE(mode),
        )
    key = LabKey(private)
    _check_public_file(key, key_path.parent / LAB_PUBLIC_KEY_FILE)
    return key


def _check_public_file(key: LabKey, pub_path: Path) -> None:
    """If ``lab.pub`` exists, it must be this key's public half."""
    try:
        text = pub_path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError):
        raise LabKeyError(f"cannot read {pub_path}") from None
    try:
        published = decode_public_key(text)
    except KeyFileError as exc:
        raise LabKeyError(f"{pub_path}: {exc}") from None
    if digests.key_id(published) != key.key_id:
        raise LabKeyError(
            f"{pub_path} holds key id {digests.key_id(published)}, but the private key "
            f"beside it has key id {key.key_id}"
        )
