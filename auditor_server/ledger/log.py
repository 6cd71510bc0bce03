"""The lab's append-only Merkle log (RFC 9162 over SHA-256) with signed tree heads.

Every request the service handles appends one leaf (:func:`auditor_client.wire.digests.
ledger_leaf_data` of its request digest, response digest and status). Each append signs a
tree head for the new size and returns the new leaf's inclusion path against it, which the
service hands the auditor as a receipt. Auditors later ask for inclusion and consistency
proofs between heads they hold; if the lab ever rewrote or dropped an entry, those proofs
cannot be produced.

Every signed head is also written to the head journal (:mod:`auditor_server.ledger.journal`,
``ledger.heads`` beside ``ledger.db``) before anyone sees it, and :meth:`Ledger.open` refuses
a database that no longer extends the newest journaled head: a truncated or rewritten
database would otherwise be signed on as if nothing happened, giving a second root for a
size the lab had already handed out.

Appends cost O(log n): the right-edge :class:`~auditor_client.wire.merkle.Frontier` lives in
memory (rebuilt from the stored perfect nodes on open), and the perfect subtrees each append
completes are stored, so every proof is O(log n) point reads. The Merkle logic itself is the
protocol's reference implementation in :mod:`auditor_client.wire.merkle`; this module only
adds storage, signing and locking.
"""

from __future__ import annotations

import bisect
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
from auditor_server.ledger.journal import HeadJournal, TreeHead, journal_path_for
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
    one signature, one small transaction, one journal line) and proofs are a few point reads.

    Order of an append, and why: sign, commit the SQLite transaction, append the head to the
    journal (``fsync``), and only then return it. The journal therefore never holds a head
    the database lacks, so after any crash "journal ahead of the database" can only mean
    the database lost entries; and no head leaves the ledger before it is journaled, so
    nothing an auditor holds can be forgotten by losing the database alone.
    """

    def __init__(
        self,
        *,
        conn: sqlite3.Connection,
        signer: TreeHeadSigner,
        clock: Callable[[], int],
        frontier: merkle.Frontier,
        head: TreeHead,
        journal: HeadJournal,
    ) -> None:
        """Internal: use :meth:`open`, which checks the stored state before trusting it."""
        self._conn = conn
        self._journal = journal
        self._signer = signer
        self._clock = clock
        self._frontier = frontier
        self._head = head
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        signer: TreeHeadSigner,
        clock: Callable[[], int] | None = None,
        journal: Path | None = None,
    ) -> Ledger:
        """Open (creating if needed) the log at ``path`` and its head journal.

        A new log gets a signed head for the empty tree, so a head exists for every size. An
        existing log's frontier is rebuilt from its stored perfect nodes and must reproduce
        the root of its newest signed head; anything else means the file was changed behind
        the ledger's back and the lab must not keep signing on top of it.

        Then the database must extend the journal's newest head: hold at least that many
        entries, with that root at that size. Because the journal only ever grows by heads
        that extend each other, that one check covers every journaled head. Heads the
        database has beyond the journal (a crash between commit and journal write) were never
        returned and are journaled now. A missing journal is accepted only for a log without
        entries; an older state directory gets one with ``auditor-server ledger
        init-journal``.

        Args:
            path: the SQLite file.
            signer: the lab's tree-head signing key.
            clock: Unix milliseconds; defaults to the system clock (tests pass a fake).
            journal: the head journal; defaults to ``path`` with suffix ``.heads``.

        Raises:
            LedgerIntegrityError: the stored leaves, nodes and newest head disagree; or the
                database does not extend a journaled head (truncated or rewritten; the
                message names the first such head); or a non-empty log has no journal.
            LedgerInUseError: another process has this ledger open.
        """
        journal_path = journal or journal_path_for(path)
        conn = connect_writer(path)
        opened: HeadJournal | None = None
        try:
            now = clock or _now_ms
            frontier, head = _load(conn)
            if frontier.size and not journal_path.exists():
                raise LedgerIntegrityError(
                    f"{path} holds {frontier.size} entries but has no head journal at "
                    f"{journal_path} (a state directory from before head journals, or the "
                    "journal was deleted); without it a truncated log cannot be told from a "
                    "short one. If this database is the lab's genuine log, create the journal "
                    f"from it with `auditor-server ledger init-journal --db {path} --lab-key "
                    "…` and start again"
                )
            opened = HeadJournal.open(journal_path)
            with _transaction(conn, "BEGIN"):
                unjournaled = _check_journal(conn, opened, frontier)
            if len(unjournaled) > 1:
                logger.warning(
                    "head journal %s was %d heads behind the database; journaling them now",
                    journal_path,
                    len(unjournaled),
                )
            for stored in unjournaled:
                opened.append(stored)
            if head is None:
                head = _sign(signer, 0, merkle.EMPTY_ROOT, now())
                opened.check_can_sign(0, merkle.EMPTY_ROOT)
                with _transaction(conn):
                    _insert_head(conn, head)
                opened.append(head)
        except BaseException:
            if opened is not None:
                opened.close()
            conn.close()
            raise
        logger.info("ledger opened: %s, %d entries", path, frontier.size)
        return cls(
            conn=conn, signer=signer, clock=now, frontier=frontier, head=head, journal=opened
        )

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
            LedgerIntegrityError: the journal already holds a head of the new size with
                another root (nothing was committed).
            sqlite3.Error: the write failed (nothing was committed).
            OSError: the journal write failed after the commit: the entry is in the log but
                its head was not returned; the next call journals it before anything else.
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
            self._journal_current()
            index = self._frontier.size
            path = tuple(self._frontier.next_inclusion_path())
            frontier = self._frontier.copy()
            completed = frontier.append(leaf)
            timestamp = max(self._clock(), self._head.timestamp_ms)
            head = _sign(self._signer, index + 1, frontier.root(), timestamp)
            self._journal.check_can_sign(head.tree_size, head.root_hash)
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
            self._journal.append(head)
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
            OSError: the newest head is not journaled yet and journaling it failed.
        """
        with self._lock:
            self._check_open()
            if size is None or size == self._head.tree_size:
                self._journal_current()
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

    def _journal_current(self) -> None:
        """Journal the newest head if an earlier journal write failed after its commit."""
        last = self._journal.last
        if last is None or last.tree_size < self._head.tree_size:
            self._journal.append(self._head)

    # --- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Close the database (idempotent). Every append already committed is on disk."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()
                self._journal.close()

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


def _root_at(conn: sqlite3.Connection, frontier: merkle.Frontier, size: int) -> bytes:
    """The stored tree's root at ``size`` (<= the log's size), from O(log n) stored nodes."""
    if size == frontier.size:
        return frontier.root()
    try:
        return merkle.Frontier.from_store(size, _perfect_node_reader(conn)).root()
    except LookupError as exc:
        raise LedgerIntegrityError(str(exc)) from exc


def _check_journal(
    conn: sqlite3.Connection, journal: HeadJournal, frontier: merkle.Frontier
) -> list[TreeHead]:
    """Refuse a database that does not extend the journal; return its unjournaled heads.

    Raises:
        LedgerIntegrityError: the journal holds a head the database does not reproduce
            (naming the first one), or the database has entries but the journal no head.
    """
    last = journal.last
    if last is None:
        if frontier.size:
            raise LedgerIntegrityError(
                f"the log holds {frontier.size} entries but its head journal {journal.path} "
                "holds no head; refusing to sign on without the record of what was signed"
            )
        newest = -1
    else:
        if last.tree_size > frontier.size or _root_at(conn, frontier, last.tree_size) != (
            last.root_hash
        ):
            raise _journal_conflict(conn, journal, frontier)
        newest = last.tree_size
    unjournaled = [
        TreeHead(*row)
        for row in conn.execute(
            "SELECT tree_size, root_hash, timestamp_ms, key_id, signature FROM tree_heads "
            "WHERE tree_size > ? ORDER BY tree_size",
            (newest,),
        )
    ]
    for head in unjournaled:
        if _root_at(conn, frontier, head.tree_size) != head.root_hash:
            raise LedgerIntegrityError(
                f"stored head of size {head.tree_size} has root {head.root_hash.hex()}, but "
                "the stored tree at that size does not; run `ledger verify`"
            )
    return unjournaled


def _journal_conflict(
    conn: sqlite3.Connection, journal: HeadJournal, frontier: merkle.Frontier
) -> LedgerIntegrityError:
    """The error naming the first journaled head the database no longer reproduces.

    Journaled heads extend each other, so once one conflicts every later one does: a binary
    search over them finds the first in O(log² n) point reads.
    """
    heads = list(journal.heads())

    def conflicts(head: TreeHead) -> bool:
        return head.tree_size > frontier.size or (
            _root_at(conn, frontier, head.tree_size) != head.root_hash
        )

    first = heads[bisect.bisect_left(heads, True, key=conflicts)]
    if first.tree_size > frontier.size:
        return LedgerIntegrityError(
            f"the log holds {frontier.size} entries, but its head journal {journal.path} "
            f"records a signed head of {first.describe()}: the database lost entries the "
            "lab had signed (truncated, or restored from an older copy). Refusing to open: "
            "signing on would give a second root for sizes already handed out"
        )
    actual = _root_at(conn, frontier, first.tree_size)
    return LedgerIntegrityError(
        f"the log's root at tree size {first.tree_size} is {actual.hex()}, but its head "
        f"journal {journal.path} records the signed head of {first.describe()}: entries up "
        "to that size were rewritten. Refusing to open: signing on would give a second root "
        "for sizes already handed out"
    )


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
