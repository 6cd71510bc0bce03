"""Check a ledger file end to end, read-only: every entry, every stored node, every signed head.

:func:`verify` recomputes the log from its leaf rows and compares everything else against
it, so an edited, inserted or deleted row is reported by the first leaf index or tree size
it breaks. It reads one consistent snapshot, so it can run beside a live server.

What a local check cannot catch: deleting the *tail* of the log together with its signed
heads and stored nodes. The file that remains is exactly a log that never grew that far,
and nothing in it remembers otherwise. That is what the heads auditors hold are for: every
receipt carries a head the lab signed, and asking the lab for a consistency proof from that
head to its current one (or an inclusion proof for the receipt's leaf) fails for a
truncated log, because the lab can no longer produce a tree that extends the one it signed.
"""

from __future__ import annotations

import hmac
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from auditor_client.wire import digests, merkle
from auditor_server.ledger.errors import LedgerError, LedgerIntegrityError
from auditor_server.ledger.store import TABLES, connect_reader

__all__ = ["VerifyReport", "verify"]


@dataclass(frozen=True)
class VerifyReport:
    """What a successful :func:`verify` checked."""

    entries: int
    """Leaf rows, contiguous from index 0."""
    heads: int
    """Signed tree heads (one per size, 0 through ``entries``)."""
    nodes: int
    """Stored perfect-subtree nodes above the leaves."""
    root_hash: bytes
    """Root of the whole log, equal to the newest signed head's."""
    newest_timestamp_ms: int
    """Timestamp of the newest signed head."""
    key_id: str
    """Key id of the lab key every head was checked against."""


def verify(db_path: Path, *, lab_public_key: Ed25519PublicKey) -> VerifyReport:
    """Recompute the whole log and check every stored row against it.

    Checks, in log order, stopping at the first failure:

    * leaf indices run 0, 1, 2, ... with no gap or duplicate;
    * each leaf's stored hash equals the hash recomputed from its request digest, response
      digest and status;
    * each stored perfect node equals the one recomputed from the leaves, and no extra
      node exists;
    * there is exactly one signed head for every size 0 through the leaf count, each with
      the root recomputed for that size, the lab's key id and a valid Ed25519 signature;
    * each leaf's timestamp equals that of the head signed when it was appended;
    * the newest head's size equals the leaf count.

    A truncated tail (leaves, nodes and heads deleted together) passes; see the module
    docstring for why receipts held by auditors catch it.

    Args:
        db_path: the ledger's SQLite file; opened read-only.
        lab_public_key: the lab's tree-head verification key.

    Returns:
        A summary of what was checked.

    Raises:
        LedgerError: ``db_path`` does not exist or is not a readable SQLite file.
        LedgerIntegrityError: a check failed; the message names the first bad index or head.
    """
    if not db_path.is_file():
        raise LedgerError(f"no ledger file at {db_path}")
    try:
        conn = connect_reader(db_path)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open {db_path} read-only: {exc}") from exc
    try:
        return _verify(conn, lab_public_key)
    except sqlite3.DatabaseError as exc:
        raise LedgerIntegrityError(f"{db_path}: unreadable ledger database: {exc}") from exc
    finally:
        conn.close()


def _verify(conn: sqlite3.Connection, lab_public_key: Ed25519PublicKey) -> VerifyReport:
    conn.execute("BEGIN")  # one snapshot for every query below, even beside a live writer
    present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    missing = [t for t in TABLES if t not in present]
    if missing:
        raise LedgerIntegrityError(f"not a ledger: table(s) {', '.join(missing)} missing")
    key_id = digests.key_id(lab_public_key)
    heads = _HeadChecker(conn, lab_public_key, key_id)
    nodes = conn.execute(
        "SELECT level, node_index, hash FROM nodes ORDER BY (node_index + 1) << level, level"
    )
    frontier = merkle.Frontier()
    stored_nodes = 0
    head = heads.expect(0, merkle.EMPTY_ROOT)
    for expected, row in enumerate(_leaf_rows(conn)):
        index, request_digest, response_digest, status, timestamp_ms, stored_hash = row
        if index != expected:
            raise LedgerIntegrityError(
                f"leaf {expected} is missing: the next stored leaf index is {index}"
            )
        leaf = _recompute_leaf(index, request_digest, response_digest, status)
        if not isinstance(stored_hash, bytes) or not hmac.compare_digest(stored_hash, leaf):
            raise LedgerIntegrityError(
                f"leaf {index}: stored leaf hash {_hex(stored_hash)} does not match the hash "
                f"of its fields {leaf.hex()}"
            )
        completed = frontier.append(leaf)
        head = heads.expect(index + 1, frontier.root())
        if timestamp_ms != head.timestamp_ms:
            raise LedgerIntegrityError(
                f"leaf {index}: timestamp {timestamp_ms} differs from its signed head's "
                f"{head.timestamp_ms}"
            )
        for level, node_index, h in completed:  # the proof cache, after the signed truth
            got = nodes.fetchone()
            if got is None or tuple(got) != (level, node_index, h):
                raise LedgerIntegrityError(
                    f"stored Merkle node (level {level}, index {node_index}) is missing or "
                    f"altered (found {_describe_node(got)})"
                )
            stored_nodes += 1
    heads.expect_end(frontier.size)
    extra = nodes.fetchone()
    if extra is not None:
        raise LedgerIntegrityError(
            f"stored Merkle node {_describe_node(extra)} covers leaves the log does not hold "
            f"({frontier.size} entries)"
        )
    conn.execute("COMMIT")
    return VerifyReport(
        entries=frontier.size,
        heads=frontier.size + 1,
        nodes=stored_nodes,
        root_hash=frontier.root(),
        newest_timestamp_ms=head.timestamp_ms,
        key_id=key_id,
    )


@dataclass(frozen=True)
class _Head:
    tree_size: int
    root_hash: bytes
    timestamp_ms: int


class _HeadChecker:
    """Walks the stored heads in size order alongside the recomputed tree."""

    def __init__(
        self, conn: sqlite3.Connection, lab_public_key: Ed25519PublicKey, key_id: str
    ) -> None:
        self._rows = conn.execute(
            "SELECT tree_size, root_hash, timestamp_ms, key_id, signature FROM tree_heads "
            "ORDER BY tree_size"
        )
        self._key = lab_public_key
        self._key_id = key_id

    def expect(self, size: int, root: bytes) -> _Head:
        """The next stored head must be the one for ``size`` with ``root``, signed by the lab."""
        row = self._rows.fetchone()
        if row is None:
            raise LedgerIntegrityError(f"signed head for tree size {size} is missing")
        tree_size, root_hash, timestamp_ms, key_id, signature = row
        if tree_size != size:
            raise LedgerIntegrityError(
                f"signed head for tree size {size} is missing (next stored head is for "
                f"size {tree_size})"
            )
        if not isinstance(root_hash, bytes) or not hmac.compare_digest(root_hash, root):
            raise LedgerIntegrityError(
                f"head {size}: stored root {_hex(root_hash)}, but the leaves give {root.hex()}"
            )
        if key_id != self._key_id:
            raise LedgerIntegrityError(
                f"head {size}: signed by key {key_id!r}, expected the lab key {self._key_id!r}"
            )
        if not isinstance(timestamp_ms, int) or not isinstance(signature, bytes):
            raise LedgerIntegrityError(f"head {size}: malformed timestamp or signature column")
        digest = digests.tree_head_digest(tree_size=size, root_hash=root, timestamp_ms=timestamp_ms)
        try:
            self._key.verify(signature, digest)
        except InvalidSignature:
            raise LedgerIntegrityError(
                f"head {size}: signature does not verify with lab key {self._key_id}"
            ) from None
        return _Head(size, root, timestamp_ms)

    def expect_end(self, entries: int) -> None:
        """No head may claim more entries than the log holds."""
        row = self._rows.fetchone()
        if row is not None:
            raise LedgerIntegrityError(
                f"signed head for tree size {row[0]} exists, but the log holds only "
                f"{entries} entries"
            )


def _leaf_rows(conn: sqlite3.Connection) -> Iterator[tuple[Any, ...]]:
    yield from conn.execute(
        "SELECT leaf_index, request_digest, response_digest, status, timestamp_ms, leaf_hash "
        "FROM leaves ORDER BY leaf_index"
    )


def _recompute_leaf(
    index: int, request_digest: object, response_digest: object, status: object
) -> bytes:
    if not (
        isinstance(request_digest, bytes)
        and isinstance(response_digest, bytes)
        and isinstance(status, int)
        and 0 <= status < 2**32
    ):
        raise LedgerIntegrityError(f"leaf {index}: malformed digest or status column")
    try:
        data = digests.ledger_leaf_data(
            request_digest=request_digest, response_digest=response_digest, status=status
        )
    except ValueError as exc:
        raise LedgerIntegrityError(f"leaf {index}: {exc}") from exc
    return merkle.leaf_hash(data)


def _hex(value: object) -> str:
    return value.hex() if isinstance(value, bytes) else repr(value)


def _describe_node(row: tuple[Any, ...] | None) -> str:
    if row is None:
        return "nothing"
    level, index, h = row
    return f"(level {level}, index {index}, hash {_hex(h)})"
