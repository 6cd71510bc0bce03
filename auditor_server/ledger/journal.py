"""The head journal: every tree head the ledger signs, also kept outside its database.

Why a second file: the SQLite database alone cannot tell a truncated or rewritten log from
one that never grew further. Cut its last 100 rows (leaves, nodes and heads together) and
what remains is a valid, shorter log; restart the server and it signs a *different* root for
a size it had already signed and handed out. The journal remembers: ``ledger.db`` has a
sibling ``ledger.heads``, one JSON line per signed head, and the ledger refuses to open (or
to sign) when the database no longer extends the newest journaled head. Rewriting history
then needs both files rewritten consistently, which is an insider with full control of the
state directory, and even then only history nobody outside has seen (auditors keep their
own heads, see ``auditor_client/headstore.py``).

Format: JSON lines, keys sorted, no spaces::

    {"lab_key_id":"…","root_hash":"<hex>","signature":"<hex>","timestamp_ms":…,"tree_size":…}

the same field names as the protocol's ``SignedTreeHead`` and as an auditor's head export,
so anyone with the lab's public key can check a journal line. Sizes strictly increase.

Durability and crash rule (see :class:`~auditor_server.ledger.log.Ledger` for the order):
an append commits its SQLite transaction *first*, then writes the head here with one
``O_APPEND`` write and ``fsync``, and only then returns the head to anyone. So a crash can
leave the journal *behind* the database (its newest head not journaled yet, or a torn last
line without its newline) but never *ahead* of it. On open, a torn last line is cut off
(logged) and the database's heads newer than the journal are re-journaled: none of them was
ever returned. A journal newer than the database is never a crash artifact: it means the
database lost entries, and the ledger refuses to open.

One process at a time: :meth:`HeadJournal.open` takes an exclusive ``flock`` on the
journal for the ledger's lifetime, so two servers on one state directory cannot fork the
log (the second refuses to start).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditor_client.headstore import head_from_json, head_to_json
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_server.fsutil import fsync_dir
from auditor_server.ledger.errors import LedgerError, LedgerIntegrityError, LedgerInUseError

__all__ = [
    "JOURNAL_SUFFIX",
    "HeadJournal",
    "JournalReader",
    "TreeHead",
    "decode_head",
    "encode_head",
    "journal_path_for",
    "write_new_journal",
]

logger = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".heads"
"""The journal of ``STATE/ledger.db`` is ``STATE/ledger.heads``."""

_CHUNK = 64 * 1024
MAX_RECORD_BYTES = 4096
"""A journal line is about 300 bytes; a torn tail longer than this is not a torn write."""


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

    def to_proto(self) -> pb.SignedTreeHead:
        """The head as the wire carries it (receipts, proofs, exported head files)."""
        return pb.SignedTreeHead(
            tree_size=self.tree_size,
            root_hash=self.root_hash,
            timestamp_ms=self.timestamp_ms,
            lab_key_id=self.key_id,
            signature=self.signature,
        )

    @classmethod
    def from_proto(cls, head: pb.SignedTreeHead) -> TreeHead:
        """A head as the wire carries it (its signature is not checked here)."""
        return cls(
            head.tree_size, head.root_hash, head.timestamp_ms, head.lab_key_id, head.signature
        )

    def describe(self) -> str:
        """One line naming the head, for error messages."""
        return (
            f"size {self.tree_size}, root {self.root_hash.hex()}, signed at "
            f"{self.timestamp_ms} ms by key {self.key_id}"
        )


def journal_path_for(db_path: Path) -> Path:
    """The journal that belongs to the ledger database ``db_path`` (its sibling ``.heads``)."""
    return db_path.with_suffix(JOURNAL_SUFFIX)


def encode_head(head: TreeHead) -> bytes:
    """One journal line, newline included: the auditors' head-file form of the head (the
    client's :func:`~auditor_client.headstore.head_to_json`), so journal lines and exported
    heads are compared and parsed by the same code."""
    record = head_to_json(head.to_proto())
    return (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()


def decode_head(record: Any) -> TreeHead:
    """A head from a parsed journal (or export) record.

    Raises:
        ValueError: a field is missing or has the wrong type or length.
    """
    return TreeHead.from_proto(head_from_json(record))  # HeadFileError is a ValueError


def _parse_line(line: bytes, path: Path, where: str) -> TreeHead:
    try:
        return decode_head(json.loads(line))
    except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise LedgerIntegrityError(f"{path}: {where} is not a signed head: {exc}") from None


class JournalReader:
    """Read a journal start to end without locking or changing it (``ledger verify``).

    Iterating yields the heads in file order and checks that sizes strictly increase. A
    last line without its newline is a torn write: it is skipped and counted in
    :attr:`torn_tail_bytes`, never an error (a live server may be writing it right now).
    Anything else malformed raises :class:`LedgerIntegrityError` naming the line.
    """

    def __init__(self, path: Path, *, limit: int | None = None) -> None:
        """Read ``path``; ``limit`` stops at that byte offset (the length seen earlier).

        Raises:
            LedgerError: the file cannot be opened.
        """
        self.path = path
        try:
            self._fh = path.open("rb")
        except OSError as exc:
            raise LedgerError(f"cannot read head journal {path}: {exc}") from exc
        self._limit = limit
        self.torn_tail_bytes = 0
        """Bytes of a torn last line that were skipped (0 when the file ends cleanly)."""
        self.count = 0
        """Heads read so far."""

    def __iter__(self) -> Iterator[TreeHead]:
        previous: TreeHead | None = None
        remaining = self._limit
        number = 0
        with self._fh:
            for line in self._fh:
                if remaining is not None:
                    if remaining <= 0:
                        break
                    if len(line) > remaining:
                        line = line[:remaining]
                    remaining -= len(line)
                if not line.endswith(b"\n"):
                    self.torn_tail_bytes = len(line)
                    break
                number += 1
                head = _parse_line(line, self.path, f"line {number}")
                if previous is not None and head.tree_size <= previous.tree_size:
                    raise LedgerIntegrityError(
                        f"{self.path}: line {number}: head of size {head.tree_size} follows "
                        f"one of size {previous.tree_size}; sizes must increase"
                    )
                previous = head
                self.count += 1
                yield head


class HeadJournal:
    """The ledger's open journal: its newest head in memory, appends ``fsync``'d.

    Not thread-safe on its own; the :class:`~auditor_server.ledger.log.Ledger` calls it
    under its lock.
    """

    def __init__(self, path: Path, fd: int, last: TreeHead | None, length: int) -> None:
        """Internal: use :meth:`open`."""
        self.path = path
        self._fd = fd
        self._last = last
        self._length = length  # bytes of complete records this object has accounted for

    @classmethod
    def open(cls, path: Path) -> HeadJournal:
        """Open (creating if needed) and lock ``path``; cut a torn last line.

        Raises:
            LedgerInUseError: another process holds the journal (a second server on the
                same state directory).
            LedgerIntegrityError: a line other than the last is malformed, or the last
                complete line is.
            OSError: the file cannot be created or read.
        """
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise LedgerInUseError(
                        f"{path} is locked by another process: is another server using this "
                        "state directory? Two writers would fork the log."
                    ) from None
                raise
            if created:
                fsync_dir(path.parent)
            size = os.fstat(fd).st_size
            last, complete = _read_tail(fd, size, path)
            if complete < size:
                logger.warning(
                    "head journal %s ends in a torn record (%d bytes, a crash mid-write); "
                    "cutting it off: its head is re-journaled from the database",
                    path,
                    size - complete,
                )
                os.ftruncate(fd, complete)
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, last, complete)

    @property
    def last(self) -> TreeHead | None:
        """The newest journaled head (None for an empty journal)."""
        return self._last

    def append(self, head: TreeHead) -> None:
        """Journal ``head`` durably (one ``O_APPEND`` write, then ``fsync``).

        A head equal in size and root to the newest one is already covered and not written
        again (the empty tree re-signed for a recreated, still empty database).

        Raises:
            LedgerIntegrityError: ``head`` does not extend the journal (size not larger, or
                the same size with another root).
            OSError: the write or the fsync failed; the journal is unchanged or ends in a
                torn line that the next open cuts off.
        """
        self.check_can_sign(head.tree_size, head.root_hash)
        last = self._last
        if last is not None and head.tree_size == last.tree_size:
            return
        if last is not None and head.tree_size < last.tree_size:
            raise LedgerIntegrityError(
                f"refusing to journal a head of size {head.tree_size} after one of size "
                f"{last.tree_size}"
            )
        if os.fstat(self._fd).st_size > self._length:  # a torn line from a failed write
            os.ftruncate(self._fd, self._length)
        data = encode_head(head)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):  # leave no partial line to append after
                os.ftruncate(self._fd, self._length)
            raise
        self._last = head
        self._length += len(data)

    def check_can_sign(self, size: int, root: bytes) -> None:
        """Refuse a head for a size already journaled with a different root.

        Normal operation signs sizes beyond the journal and costs one ``fstat``: the file
        is re-read only when it grew behind this object's back.

        Raises:
            LedgerIntegrityError: the journal holds a head of ``size`` with another root,
                naming that head.
        """
        self._catch_up()
        last = self._last
        if last is None or size > last.tree_size:
            return
        existing = last if last.tree_size == size else self.find(size)
        if existing is not None and existing.root_hash != root:
            raise LedgerIntegrityError(
                f"refusing to sign root {root.hex()} for tree size {size}: the head journal "
                f"{self.path} already holds a signed head of that size ({existing.describe()})"
            )

    def find(self, size: int) -> TreeHead | None:
        """The journaled head of ``size``, if any (a scan: for error paths only)."""
        for head in self.heads():
            if head.tree_size == size:
                return head
            if head.tree_size > size:
                return None
        return None

    def heads(self) -> Iterator[TreeHead]:
        """Every journaled head, oldest first (reads the file)."""
        return iter(JournalReader(self.path, limit=self._length))

    def _catch_up(self) -> None:
        """Account for complete lines another writer appended (defence in depth)."""
        size = os.fstat(self._fd).st_size
        if size <= self._length:
            return
        reader = JournalReader(self.path, limit=size)
        last = self._last
        for head in reader:
            last = head
        self._last, self._length = last, size - reader.torn_tail_bytes

    def close(self) -> None:
        """Release the lock and the file (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _read_tail(fd: int, size: int, path: Path) -> tuple[TreeHead | None, int]:
    """The newest complete head and the file's length without a torn last line.

    Reads backwards from the end only as far as the last complete line, so opening a long
    journal costs one small read, not a scan (``ledger verify`` reads it all).

    Raises:
        LedgerIntegrityError: the last complete line does not parse, or what follows it
            is longer than one record could be (not a torn write: garbage).
    """
    if size == 0:
        return None, 0
    start, buffer = size, b""
    while start > 0:  # usually once: the last two lines fit in one chunk
        start = max(0, start - _CHUNK)
        buffer = os.pread(fd, size - start, start)
        cut = buffer.rfind(b"\n")
        if cut >= 0 and buffer.rfind(b"\n", 0, cut) >= 0:
            break
    # ``buffer`` holds the file's bytes from ``start`` to ``size``.
    cut = buffer.rfind(b"\n")
    complete = start + cut + 1 if cut >= 0 else 0
    if size - complete > MAX_RECORD_BYTES:
        raise LedgerIntegrityError(
            f"{path}: the last {size - complete} bytes are not a journal line; more than one "
            "torn record could leave, so this is not a crash artifact"
        )
    if cut < 0:
        return None, 0
    line = buffer[buffer.rfind(b"\n", 0, cut) + 1 : cut + 1]
    return _parse_line(line, path, "the last complete line"), complete


def write_new_journal(path: Path, heads: Iterator[TreeHead]) -> int:
    """Create ``path`` holding ``heads`` (for a database that predates the journal).

    Written to a temporary file, fsync'd, then linked into place only if nothing exists
    there yet, so a journal is never replaced and never half-written.

    Returns:
        How many heads were written.

    Raises:
        LedgerError: ``path`` already exists.
        OSError: the directory cannot be written.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with tmp.open("wb") as fh:
            for head in heads:
                fh.write(encode_head(head))
                count += 1
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise LedgerError(
                f"{path} already exists; refusing to replace a head journal"
            ) from None
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return count
