"""Check a ledger file end to end, read-only: every entry, every stored node, every signed head.

:func:`verify` recomputes the log from its leaf rows and compares everything else against
it, so an edited, inserted or deleted row is reported by the first leaf index or tree size
it breaks. It reads one consistent snapshot, so it can run beside a live server.

What the database alone cannot show: its *tail* deleted together with its signed heads and
stored nodes. What remains is exactly a log that never grew that far. So the recomputed tree
is also checked against heads recorded outside the database:

* the lab's head journal (``ledger.heads`` beside ``ledger.db``, see
  :mod:`auditor_server.ledger.journal`): every head the server signed. A journaled head the
  database does not reproduce (a size beyond the log, or another root at that size) is
  named, and the check fails. A journal *behind* the database is fine: a live server
  journals each head just after committing it, and a crash can leave the newest one out.
* heads auditors exported (``auditor head export``; ``--heads``): the same check against
  what the lab handed out, which also catches a journal rewritten together with the
  database. Only history someone outside has seen can be defended this way.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from auditor_client.wire import digests, merkle
from auditor_server.ledger.errors import LedgerError, LedgerIntegrityError
from auditor_server.ledger.journal import JournalReader, TreeHead, journal_path_for
from auditor_server.ledger.store import TABLES, connect_reader

__all__ = ["AuditorHeads", "VerifyReport", "verify"]


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
    journal_heads: int | None = None
    """Journaled heads checked (None: the journal was not checked)."""
    journal_newest_size: int | None = None
    """Size of the newest journaled head, when there is one."""
    journal_torn_tail: bool = False
    """The journal ends in a torn line (a crash mid-write; the next open cuts it off)."""
    auditor_heads: int = 0
    """Heads from auditors' exports checked."""


@dataclass(frozen=True)
class AuditorHeads:
    """Heads an auditor exported, to be checked against the recomputed log."""

    source: str
    """Where they came from (named in errors), e.g. the export file's path."""
    heads: tuple[TreeHead, ...]


def verify(
    db_path: Path,
    *,
    lab_public_key: Ed25519PublicKey,
    journal: Path | None = None,
    check_journal: bool = True,
    auditor_heads: Sequence[AuditorHeads] = (),
) -> VerifyReport:
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
    * the newest head's size equals the leaf count;
    * every head in the journal and in ``auditor_heads`` has a size the log holds and the
      root recomputed for that size, and is signed by the lab.

    Without the journal (``check_journal=False``) a truncated tail (leaves, nodes and heads
    deleted together) passes; see the module docstring.

    Args:
        db_path: the ledger's SQLite file; opened read-only.
        lab_public_key: the lab's tree-head verification key.
        journal: the head journal; defaults to ``db_path`` with suffix ``.heads``. Read
            only up to its length at the start, so heads a live server journals during the
            check (after committing them) never look like entries the database lacks.
        check_journal: False skips the journal (a database copied without it); a missing
            journal is otherwise an error for a log with entries, as it is for the server.
        auditor_heads: heads auditors exported (signatures checked here).

    Returns:
        A summary of what was checked.

    Raises:
        LedgerError: ``db_path`` does not exist or is not a readable SQLite file; or an
            auditor's head is not signed by the lab.
        LedgerIntegrityError: a check failed; the message names the first bad index or head.
    """
    if not db_path.is_file():
        raise LedgerError(f"no ledger file at {db_path}")
    key_id = digests.key_id(lab_public_key)
    witnesses = [
        _Witness(
            f"auditor heads from {given.source}",
            sorted(given.heads, key=lambda h: h.tree_size),
            lab_public_key,
            key_id,
            trusted_source=False,
        )
        for given in auditor_heads
    ]
    journal_path = journal or journal_path_for(db_path)
    reader: JournalReader | None = None
    if check_journal and journal_path.exists():
        # Its length *before* the database snapshot: the server commits, then journals, so
        # everything journaled by now is in the snapshot taken next.
        reader = JournalReader(journal_path, limit=os.stat(journal_path).st_size)
        witnesses.append(_Witness(f"head journal {journal_path}", reader, lab_public_key, key_id))
    try:
        conn = connect_reader(db_path)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open {db_path} read-only: {exc}") from exc
    try:
        report = _verify(conn, lab_public_key, witnesses)
    except sqlite3.DatabaseError as exc:
        raise LedgerIntegrityError(f"{db_path}: unreadable ledger database: {exc}") from exc
    finally:
        conn.close()
    if check_journal and reader is None and report.entries:
        raise LedgerIntegrityError(
            f"{db_path} holds {report.entries} entries but has no head journal at "
            f"{journal_path}, so a truncated log cannot be told from a short one (the server "
            "refuses to open it too); `ledger init-journal` creates one from this database"
        )
    journal_witness = witnesses[-1] if reader is not None else None
    return dataclasses.replace(
        report,
        journal_heads=reader.count if reader is not None else None,
        journal_newest_size=journal_witness.newest if journal_witness is not None else None,
        journal_torn_tail=bool(reader is not None and reader.torn_tail_bytes),
        auditor_heads=sum(len(given.heads) for given in auditor_heads),
    )


def _verify(
    conn: sqlite3.Connection, lab_public_key: Ed25519PublicKey, witnesses: Sequence[_Witness]
) -> VerifyReport:
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
    for witness in witnesses:
        witness.at(head)
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
        for witness in witnesses:
            witness.at(head)
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
    for witness in witnesses:
        witness.end(frontier.size)
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
    signature: bytes


class _Witness:
    """Heads recorded outside the database, checked as the walk reaches their sizes.

    Each must be for a size the log holds, with the root recomputed there, signed by the
    lab. A head identical to the database's own (already verified) skips a second signature
    check, so checking the journal costs little beyond reading it.
    """

    def __init__(
        self,
        name: str,
        heads: Iterable[TreeHead],
        lab_public_key: Ed25519PublicKey,
        key_id: str,
        trusted_source: bool = True,
    ) -> None:
        """``trusted_source``: a bad signature is tampering (the lab's own journal) rather
        than bad input (a file an auditor handed over)."""
        self._name = name
        self._heads = iter(heads)  # in size order
        self._key = lab_public_key
        self._key_id = key_id
        self._trusted = trusted_source
        self._next = next(self._heads, None)
        self.newest: int | None = None

    def at(self, stored: _Head) -> None:
        """Check every head of ``stored.tree_size`` against the recomputed ``stored``."""
        while self._next is not None and self._next.tree_size <= stored.tree_size:
            head = self._next
            if head.tree_size == stored.tree_size:
                self._check(head, stored)
            self.newest = head.tree_size
            self._next = next(self._heads, None)

    def _check(self, head: TreeHead, stored: _Head) -> None:
        if not hmac.compare_digest(head.root_hash, stored.root_hash):
            raise LedgerIntegrityError(
                f"{self._name}: the lab signed the head of {head.describe()}, but the log's "
                f"root at that size is {stored.root_hash.hex()}: entries up to "
                f"{head.tree_size} were rewritten"
            )
        if (head.timestamp_ms, head.signature, head.key_id) == (
            stored.timestamp_ms,
            stored.signature,
            self._key_id,
        ):
            return
        digest = digests.tree_head_digest(
            tree_size=head.tree_size, root_hash=head.root_hash, timestamp_ms=head.timestamp_ms
        )
        try:
            if head.key_id != self._key_id:
                raise InvalidSignature
            self._key.verify(head.signature, digest)
        except InvalidSignature:
            error = LedgerIntegrityError if self._trusted else LedgerError
            raise error(
                f"{self._name}: the head of {head.describe()} is not signed by lab key "
                f"{self._key_id}"
            ) from None

    def end(self, entries: int) -> None:
        """No recorded head may be for more entries than the log holds."""
        if self._next is not None:
            raise LedgerIntegrityError(
                f"{self._name} holds the signed head of {self._next.describe()}, but the log "
                f"holds only {entries} entries: the database lost entries the lab had "
                "signed (truncated, or restored from an older copy)"
            )


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
        return _Head(size, root, timestamp_ms, signature)

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
