"""The lab's append-only Merkle log (RFC 9162 over SHA-256) with signed tree heads.

Every request the service handles appends one leaf (:func:`auditor_client.wire.digests.
ledger_leaf_data` of its request digest, response digest and status). Each append signs a
tree head for the new size and returns the new leaf's inclusion path against it, which the
service hands the auditor as a receipt. Auditors later ask for inclusion and consistency
proofs between heads they hold; if the lab ever rewrote or dropped an entry, those proofs
cannot be produced.

Appends cost O(log n): the right-edge :class:`~auditor_client.wire.merkle.Frontier` lives in
memory (rebuilt from the stored perfect nodes on open), and the perfect subtrees each append
completes are stored, so every proof is O(log n) point reads. The Merkle logic itself is the
protocol's reference implementation in :mod:`auditor_client.wire.merkle`; this module only
adds storage, signing and locking.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

from auditor_client.wire import digests, merkle
from auditor_server.ledger.errors import LedgerError, LedgerIntegrityError
from auditor_server.ledger.store import connect_writer

__all__ = ["AppendResult", "Ledger", "TreeHead", "TreeHeadSigner"]

logger = logging.getLogger(__name__)


class TreeHeadSigner(Protocol):
    """The lab's signing key as the ledger needs it (an Ed25519 key in production)."""

    @property
    def key_id(self) -> str:
        """Key id of the public half, as :func:`~auditor_client.wire.digests.key_id` gives it."""
        ...

    def sign(self, digest: bytes) -> bytes:
        """Sign a 32-byte :func:`~auditor_client.wire.digests.tree_head_digest`."""
        ...


@dataclass(frozen=True)
class TreeHead:
    """A signed commitment to the log's first ``tree_size`` entries."""

    tree_size: int
    """Number of leaves covered."""
    root_hash: bytes
    """RFC 9162 Merkle tree hash of those leaves."""
    timestamp_ms: int
    """When the head was signed, Unix milliseconds; never earlier than the previous head."""
    key_id: str
    """Key id of the lab key that signed it."""
    signature: bytes
    """Ed25519 signature over ``tree_head_digest(tree_size, root_hash, timestamp_ms)``."""


@dataclass(frozen=True)
class AppendResult:
    """What one append committed: the receipt the service returns to the auditor."""

    index: int
    """0-based index of the new leaf."""
    leaf_hash: bytes
    """Its RFC 9162 leaf hash."""
    inclusion_path: tuple[bytes, ...]
    """Its inclusion path against ``tree_head`` (whose size is ``index + 1``)."""
    tree_head: TreeHead
    """The head signed for the new size."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Ledger:
    """An append-only Merkle log in one SQLite file; safe to share across threads.

    Open with :meth:`open`; use as a context manager or call :meth:`close`. A single lock
    serializes appends and reads on the one connection: appends are short (one hash chain,
    one signature, one small transaction) and proofs are a few point reads.
    """

    def __init__(
        self,
        *,
        conn: sqlite3.Connection,
        signer: TreeHeadSigner,
        clock: Callable[[], int],
        frontier: merkle.Frontier,
        head: TreeHead,
    ) -> None:
        """Internal: use :meth:`open`, which checks the stored state before trusting it."""
        self._conn = conn
        self._signer = signer
        self._clock = clock
        self._frontier = frontier
        self._head = head
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(
        cls, path: Path, *, signer: TreeHeadSigner, clock: Callable[[], int] | None = None
    ) -> Ledger:
        """Open (creating if needed) the log at ``path``.

        A new log gets a signed head for the empty tree, so a head exists for every size. An
        existing log's frontier is rebuilt from its stored perfect nodes and must reproduce
        the root of its newest signed head; anything else means the file was changed behind
        the ledger's back and the lab must not keep signing on top of it.

        Args:
            path: the SQLite file.
            signer: the lab's tree-head signing key.
            clock: Unix milliseconds; defaults to the system clock (tests pass a fake).

        Raises:
            LedgerIntegrityError: the stored leaves, nodes and newest head disagree.
        """
        conn = connect_writer(path)
        try:
            now = clock or _now_ms
            frontier, head = _load(conn)
            if head is None:
                head = _sign(signer, 0, merkle.EMPTY_ROOT, now())
                with _transaction(conn):
                    _insert_head(conn, head)
        except BaseException:
            conn.close()
            raise
        logger.info("ledger opened: %s, %d entries", path, frontier.size)
        return cls(conn=conn, signer=signer, clock=now, frontier=frontier, head=head)

    # --- writing ------------------------------------------------------------------------

    def append(self, *, request_digest: bytes, response_digest: bytes, status: int) -> AppendResult:
        """Log one handled request; return its index, inclusion path and signed head.

        The leaf row, the perfect nodes it completes and the new signed head are written in
        one transaction, so after a crash either all of them exist or none does. The
        in-memory frontier changes only after the commit succeeds.

        Args:
            request_digest: 32 bytes; the digest the auditor signed (or SHA-256 of the raw
                envelope for a request that did not parse).
            response_digest: 32 bytes; :func:`~auditor_client.wire.digests.response_digest`
                of the signed body (or SHA-256 of the error text for a refusal).
            status: gRPC status code number, 0 for OK.

        Raises:
            LedgerError: a digest is not 32 bytes or ``status`` is not a 32-bit code.
            sqlite3.Error: the write failed (nothing was committed).
        """
        if not 0 <= status < 2**32:
            raise LedgerError(f"status must be a 32-bit status code, got {status}")
        try:
            data = digests.ledger_leaf_data(
                request_digest=request_digest, response_digest=response_digest, status=status
            )
        except ValueError as exc:
            raise LedgerError(str(exc)) from exc
        leaf = merkle.leaf_hash(data)
        with self._lock:
            self._check_open()
            index = self._frontier.size
            path = tuple(self._frontier.next_inclusion_path())
            frontier = self._frontier.copy()
            completed = frontier.append(leaf)
            timestamp = max(self._clock(), self._head.timestamp_ms)
            head = _sign(self._signer, index + 1, frontier.root(), timestamp)
            with _transaction(self._conn) as conn:
                conn.execute(
                    "INSERT INTO leaves(leaf_index, request_digest, response_digest, status, "
                    "timestamp_ms, leaf_hash) VALUES (?, ?, ?, ?, ?, ?)",
                    (index, request_digest, response_digest, status, timestamp, leaf),
                )
                conn.executemany(
                    "INSERT INTO nodes(level, node_index, hash) VALUES (?, ?, ?)", completed
                )
                _insert_head(conn, head)
            self._frontier = frontier
            self._head = head
        return AppendResult(index=index, leaf_hash=leaf, inclusion_path=path, tree_head=head)

    # --- reading ------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of entries committed so far."""
        with self._lock:
            return self._frontier.size

    def tree_head(self, size: int | None = None) -> TreeHead:
        """The signed head for ``size`` entries (the newest head when ``size`` is None).

        Raises:
            LedgerError: ``size`` is negative or larger than the log.
            LedgerIntegrityError: the head for an existing size is missing from the file.
        """
        with self._lock:
            self._check_open()
            if size is None or size == self._head.tree_size:
                return self._head
            self._check_size(size)
            row = self._conn.execute(
                "SELECT tree_size, root_hash, timestamp_ms, key_id, signature FROM tree_heads "
                "WHERE tree_size = ?",
                (size,),
            ).fetchone()
        if row is None:
            raise LedgerIntegrityError(f"signed head for tree size {size} is missing")
        return TreeHead(*row)

    def leaf_hash(self, index: int) -> bytes:
        """The stored leaf hash of entry ``index``.

        Raises:
            LedgerError: ``index`` is not an existing entry.
        """
        with self._lock:
            self._check_open()
            if not 0 <= index < self._frontier.size:
                raise LedgerError(
                    f"leaf index {index} is out of range; the log holds {self._frontier.size} "
                    "entries"
                )
            return _perfect_node_reader(self._conn)(0, index)

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        """RFC 9162 inclusion path of entry ``index`` in the tree of ``tree_size`` entries.

        Raises:
            LedgerError: not ``0 <= index < tree_size <= size``.
            LedgerIntegrityError: a stored node the proof needs is missing.
        """
        with self._lock:
            self._check_open()
            self._check_size(tree_size)
            if not 0 <= index < tree_size:
                raise LedgerError(f"leaf index {index} is not in a tree of size {tree_size}")
            return self._proof(lambda sub: merkle.inclusion_path(index, tree_size, sub))

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """RFC 9162 consistency proof that the tree of ``second`` extends that of ``first``.

        Raises:
            LedgerError: not ``0 < first <= second <= size`` (a proof from the empty tree
                would prove nothing).
            LedgerIntegrityError: a stored node the proof needs is missing.
        """
        with self._lock:
            self._check_open()
            self._check_size(second)
            if not 0 < first <= second:
                raise LedgerError(
                    f"no consistency proof from tree size {first} to {second}; "
                    "need 0 < first <= second"
                )
            return self._proof(lambda sub: merkle.consistency_path(first, second, sub))

    def _proof(self, build: Callable[[merkle.SubtreeRoot], list[bytes]]) -> list[bytes]:
        subtree = merkle.subtree_root_from_perfect(_perfect_node_reader(self._conn))
        try:
            return build(subtree)
        except LookupError as exc:
            raise LedgerIntegrityError(str(exc)) from exc

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self._frontier.size:
            raise LedgerError(
                f"tree size {size} is out of range; the log holds {self._frontier.size} entries"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError("the ledger is closed")

    # --- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Close the database (idempotent). Every append already committed is on disk."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _perfect_node_reader(conn: sqlite3.Connection) -> merkle.PerfectNode:
    """Point reads of stored perfect subtrees: level 0 from ``leaves``, above from ``nodes``.

    Raises ``LookupError`` (turned into :class:`LedgerIntegrityError` by callers) when a node
    that must exist is missing.
    """

    def perfect_node(level: int, index: int) -> bytes:
        if level == 0:
            row = conn.execute(
                "SELECT leaf_hash FROM leaves WHERE leaf_index = ?", (index,)
            ).fetchone()
        else:
            row = conn.execute(
                "SELECT hash FROM nodes WHERE level = ? AND node_index = ?", (level, index)
            ).fetchone()
        if row is None:
            raise LookupError(f"stored Merkle node (level {level}, index {index}) is missing")
        value: bytes = row[0]
        return value

    return perfect_node


def _load(conn: sqlite3.Connection) -> tuple[merkle.Frontier, TreeHead | None]:
    """Read the size, rebuild the frontier and check it against the newest signed head.

    Returns no head for a log that has never been opened (no leaves, no heads).

    Raises:
        LedgerIntegrityError: leaves, nodes and the newest head disagree.
    """
    with _transaction(conn, "BEGIN"):
        count, top = conn.execute("SELECT COUNT(*), MAX(leaf_index) FROM leaves").fetchone()
        size = int(count)
        if size and top != size - 1:
            raise LedgerIntegrityError(
                f"leaf indices are not contiguous: {size} entries but the last is {top}"
            )
        row = conn.execute(
            "SELECT tree_size, root_hash, timestamp_ms, key_id, signature FROM tree_heads "
            "ORDER BY tree_size DESC LIMIT 1"
        ).fetchone()
        if row is None:
            if size:
                raise LedgerIntegrityError(f"log holds {size} entries but no signed head")
            return merkle.Frontier(), None
        head = TreeHead(*row)
        if head.tree_size != size:
            raise LedgerIntegrityError(
                f"newest signed head is for size {head.tree_size} but the log holds {size} entries"
            )
        try:
            frontier = merkle.Frontier.from_store(size, _perfect_node_reader(conn))
        except LookupError as exc:
            raise LedgerIntegrityError(str(exc)) from exc
        if frontier.root() != head.root_hash:
            raise LedgerIntegrityError(
                f"stored tree of size {size} has root {frontier.root().hex()}, but its "
                f"signed head says {head.root_hash.hex()}; run `ledger verify`"
            )
        return frontier, head


@contextlib.contextmanager
def _transaction(
    conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE"
) -> Iterator[sqlite3.Connection]:
    """One explicit transaction: committed on success, rolled back on any exception."""
    conn.execute(begin)
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _sign(signer: TreeHeadSigner, size: int, root: bytes, timestamp_ms: int) -> TreeHead:
    digest = digests.tree_head_digest(tree_size=size, root_hash=root, timestamp_ms=timestamp_ms)
    return TreeHead(
        tree_size=size,
        root_hash=root,
        timestamp_ms=timestamp_ms,
        key_id=signer.key_id,
        signature=signer.sign(digest),
    )


def _insert_head(conn: sqlite3.Connection, head: TreeHead) -> None:
    conn.execute(
        "INSERT INTO tree_heads(tree_size, root_hash, timestamp_ms, key_id, signature) "
        "VALUES (?, ?, ?, ?, ?)",
        (head.tree_size, head.root_hash, head.timestamp_ms, head.key_id, head.signature),
    )
