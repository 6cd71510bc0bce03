"""The auditor's head store: every tree head a lab ever signed for us, kept across runs.

Like SSH's ``known_hosts``, but for a lab's ledger. Every verified answer carries a receipt
with a tree head the lab signed; :class:`~auditor_client.client.AuditorClient` records each
one here. What that buys:

* **Same size, two roots** is caught the moment the second head arrives
  (:class:`~auditor_client.wire.errors.SplitViewError`, both heads attached). Without a
  store, a lab that truncated and regrew its log between two runs would never be noticed.
* **Different sizes** need the lab's word that the newer log extends the older one: a
  consistency proof. :meth:`LabHeads.check` (``auditor head check``) asks for one from each
  not-yet-linked head to the lab's newest head and marks the pair proven;
  :meth:`LabHeads.record_proven` lets callers that already verified a proof (the campaign
  runner) say so, so nothing is fetched twice.
* **Two auditors** compare views by exchanging :meth:`LabHeads.export` files: an imported
  head of a size we hold with another root is a split view; imported heads of other sizes
  are linked by the next ``check``. A lab that showed two auditors different logs is caught
  only when they compare (or both gossip to a common witness); alone, an auditor can only
  vouch for the history it has seen.

Storage: one append-only JSON-lines file per lab, named by the lab key id, in
``$AUDITOR_HEAD_STORE`` or ``~/.local/share/auditor/heads/``. Lines are either
``{"head": {...}}`` (a signed head, the fields of ``SignedTreeHead``) or
``{"proven": {"from": {...}, "to": {...}}}`` (sizes and roots of a verified consistency
proof). Each change is one ``O_APPEND`` write followed by ``fsync``, under an exclusive
``flock`` on the file (other processes) and a lock per object (other threads); before each
change the file is re-read from where this process left off, so every process sees the
others' heads. A crash mid-write leaves a torn last line, which readers skip and the next
writer cuts off: at worst the one head being written is lost, never an earlier one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from auditor_client.durable import fsync_dir
from auditor_client.keys import encode_public_key
from auditor_client.wire import digests, merkle
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.envelope import verify_tree_head
from auditor_client.wire.errors import BindingError, ProofError, SignatureError, SplitViewError

if TYPE_CHECKING:
    from auditor_client.client import AuditorClient

__all__ = [
    "EXPORT_FORMAT",
    "HEAD_STORE_ENV",
    "HeadCheck",
    "HeadExport",
    "HeadFileError",
    "HeadStore",
    "ImportResult",
    "LabHeads",
    "default_directory",
    "describe_head",
    "head_from_json",
    "head_to_json",
    "read_export",
    "verify_heads",
]

HEAD_STORE_ENV = "AUDITOR_HEAD_STORE"
"""Environment variable naming the head store's directory."""
EXPORT_FORMAT = "auditor-sandbox/heads/v1"
"""``format`` of an export file (``auditor head export``)."""


class HeadFileError(ValueError):
    """A head store or export file is malformed, or an export is for another lab key."""


def default_directory() -> Path:
    """``$AUDITOR_HEAD_STORE``, else ``~/.local/share/auditor/heads``."""
    configured = os.environ.get(HEAD_STORE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".local" / "share" / "auditor" / "heads"


# --- one head as JSON ---------------------------------------------------------------------


def head_to_json(head: pb.SignedTreeHead) -> dict[str, Any]:
    """A signed head as JSON: the fields of ``SignedTreeHead``, bytes as hex.

    The lab's ledger journal (``ledger.heads``) uses the same fields, so a journal line and
    an exported head can be compared and checked with the same code.
    """
    return {
        "lab_key_id": head.lab_key_id,
        "root_hash": head.root_hash.hex(),
        "signature": head.signature.hex(),
        "timestamp_ms": head.timestamp_ms,
        "tree_size": head.tree_size,
    }


def head_from_json(value: Any) -> pb.SignedTreeHead:
    """Parse :func:`head_to_json`'s form (types and lengths checked, signature not).

    Raises:
        HeadFileError: a field is missing, of the wrong type, or the wrong length.
    """
    if not isinstance(value, dict):
        raise HeadFileError("a head must be a JSON object")
    size = value.get("tree_size")
    timestamp = value.get("timestamp_ms")
    key_id = value.get("lab_key_id")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise HeadFileError(f"tree_size must be an integer >= 0, got {size!r}")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise HeadFileError(f"timestamp_ms must be an integer, got {timestamp!r}")
    if not isinstance(key_id, str):
        raise HeadFileError("lab_key_id must be a string")
    return pb.SignedTreeHead(
        tree_size=size,
        root_hash=_hex(value, "root_hash", 32),
        timestamp_ms=timestamp,
        lab_key_id=key_id,
        signature=_hex(value, "signature", 64),
    )


def _hex(value: dict[str, Any], name: str, length: int) -> bytes:
    text = value.get(name)
    if not isinstance(text, str):
        raise HeadFileError(f"{name} must be a hex string")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise HeadFileError(f"{name} is not hex") from None
    if len(raw) != length:
        raise HeadFileError(f"{name} must be {length} bytes, got {len(raw)}")
    return raw


def describe_head(head: pb.SignedTreeHead) -> str:
    """One line naming a head, for messages."""
    return f"size {head.tree_size}, root {head.root_hash.hex()}, signed at {head.timestamp_ms} ms"


def _same(a: pb.SignedTreeHead, b: pb.SignedTreeHead) -> bool:
    return a.tree_size == b.tree_size and a.root_hash == b.root_hash


# --- export files -------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadExport:
    """The contents of an export file: one lab's signed heads, as one auditor saw them."""

    lab_key_id: str
    lab_public_key: str | None
    heads: tuple[pb.SignedTreeHead, ...]


def read_export(path: Path) -> HeadExport:
    """Parse an export file (``auditor head export``); signatures are *not* checked here.

    Raises:
        HeadFileError: not an export file, or a malformed head (named by its position).
        OSError: the file cannot be read.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise HeadFileError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise HeadFileError(f"{path}: not a head export (format {EXPORT_FORMAT!r} expected)")
    key_id, public, heads = data.get("lab_key_id"), data.get("lab_public_key"), data.get("heads")
    if not isinstance(key_id, str) or not isinstance(heads, list):
        raise HeadFileError(f"{path}: lab_key_id and heads are required")
    parsed = []
    for i, item in enumerate(heads):
        try:
            parsed.append(head_from_json(item))
        except HeadFileError as exc:
            raise HeadFileError(f"{path}: heads[{i}]: {exc}") from None
    return HeadExport(key_id, public if isinstance(public, str) else None, tuple(parsed))


def verify_heads(heads: Iterable[pb.SignedTreeHead], lab_public_key: Ed25519PublicKey) -> None:
    """Check every head's signature with the lab's key.

    Raises:
        SignatureError: a head was not signed by this lab key; names its position and size.
    """
    for i, head in enumerate(heads):
        try:
            verify_tree_head(head, lab_public_key=lab_public_key)
        except SignatureError as exc:
            raise SignatureError(f"heads[{i}] (size {head.tree_size}): {exc}") from None


# --- the store ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    """What :meth:`LabHeads.import_heads` merged."""

    added: int
    """Heads new to the store."""
    known: int
    """Heads the store already held (same size, same root)."""


@dataclass(frozen=True)
class HeadCheck:
    """What :meth:`LabHeads.check` proved."""

    current: pb.SignedTreeHead
    """The lab's newest head, which every stored head is now proven to be a prefix of."""
    proofs: int
    """Consistency proofs fetched and verified."""
    heads: int
    """Heads in the store after the check."""


class HeadStore:
    """A directory of per-lab head files; hands out one :class:`LabHeads` per lab key."""

    def __init__(self, directory: Path | None = None) -> None:
        """Use ``directory`` (created on the first write), or :func:`default_directory`."""
        self.directory = directory if directory is not None else default_directory()
        self._labs: dict[str, LabHeads] = {}
        self._lock = threading.Lock()

    @classmethod
    def default(cls) -> HeadStore:
        """The store in :func:`default_directory`, shared by every client of this process
        that uses the same directory (so each file is parsed once, not once per client)."""
        directory = default_directory()
        with _DEFAULTS_LOCK:
            store = _DEFAULTS.get(directory)
            if store is None:
                store = _DEFAULTS[directory] = cls(directory)
            return store

    def lab(self, lab_public_key: Ed25519PublicKey) -> LabHeads:
        """The heads of the lab with this key (one shared object per key in this store)."""
        key_id = digests.key_id(lab_public_key)
        with self._lock:
            heads = self._labs.get(key_id)
            if heads is None:
                heads = LabHeads(self.directory / f"{key_id}.heads", lab_public_key)
                self._labs[key_id] = heads
            return heads


_DEFAULTS: dict[Path, HeadStore] = {}
_DEFAULTS_LOCK = threading.Lock()


class LabHeads:
    """One lab's stored heads and which of them are proven consistent with each other.

    "Proven" is kept as groups of heads (union-find keyed by tree size): every head in a
    group is a proven prefix of the group's largest head, its *top*. A consistency proof
    from a top to a newer head moves the whole group under that head; so after
    :meth:`check`, one group holds every stored head.

    Thread-safe and multi-process safe (see the module docstring).
    """

    def __init__(self, path: Path, lab_public_key: Ed25519PublicKey) -> None:
        self.path = path
        self.lab_public_key = lab_public_key
        self.lab_key_id = digests.key_id(lab_public_key)
        self._lock = threading.RLock()
        self._fd = -1  # open only while ``_locked``
        self._offset = 0  # bytes of complete lines applied
        self._by_size: dict[int, pb.SignedTreeHead] = {}
        self._parent: dict[int, int] = {}

    # --- reading ------------------------------------------------------------------------

    def heads(self) -> list[pb.SignedTreeHead]:
        """Every stored head, smallest first (including other processes' latest)."""
        with self._locked():
            return [self._by_size[s] for s in sorted(self._by_size)]

    def get(self, tree_size: int) -> pb.SignedTreeHead | None:
        """The stored head of ``tree_size``, if any."""
        with self._locked():
            return self._by_size.get(tree_size)

    def linked(self, first_size: int, second_size: int) -> bool:
        """Whether both sizes are stored and proven to belong to one log."""
        with self._locked():
            if first_size not in self._by_size or second_size not in self._by_size:
                return False
            return self._find(first_size) == self._find(second_size)

    def unlinked(self) -> list[pb.SignedTreeHead]:
        """Tops of the groups other than the newest head's: what :meth:`check` must prove."""
        with self._locked():
            return self._tops()

    # --- recording ----------------------------------------------------------------------

    def record(self, head: pb.SignedTreeHead) -> bool:
        """Store a head the lab signed; False if it was already stored.

        Raises:
            SignatureError: the head was not signed by this lab's key.
            SplitViewError: a stored head has the same size and another root.
        """
        return self.record_all([head]) > 0

    def record_all(self, heads: Sequence[pb.SignedTreeHead]) -> int:
        """Store several heads with one write; how many were new.

        Raises:
            SignatureError: a head was not signed by this lab's key (nothing is stored).
            SplitViewError: a head conflicts with a stored one or another in ``heads``
                (nothing is stored).
        """
        verify_heads(heads, self.lab_public_key)
        with self._locked():
            new = self._new_heads(heads, "the lab signed two different roots for tree size")
            self._write([{"head": head_to_json(h)} for h in new])
            return len(new)

    def record_proven(
        self,
        old: pb.SignedTreeHead,
        new: pb.SignedTreeHead,
        *,
        proof: Sequence[bytes] | None = None,
    ) -> None:
        """Record that ``new``'s log was proven to extend ``old``'s (both are stored too).

        For callers that fetched and verified a consistency proof themselves (the campaign
        runner's closing ledger check), so :meth:`check` does not fetch it again. Pass the
        proof's ``path`` as ``proof`` to have it verified here as well.

        Raises:
            ValueError: ``old`` is larger than ``new``.
            ProofError: ``proof`` was given and does not verify.
            SignatureError, SplitViewError: as for :meth:`record`.
        """
        if old.tree_size > new.tree_size:
            raise ValueError(
                f"a proof runs from the smaller head: {old.tree_size} > {new.tree_size}"
            )
        if proof is not None:
            merkle.verify_consistency(
                old.tree_size, new.tree_size, old.root_hash, new.root_hash, list(proof)
            )
        self.record_all([old, new])
        with self._locked():
            if self._merges(old.tree_size, new.tree_size):
                self._write([{"proven": {"from": _ref(old), "to": _ref(new)}}])

    def import_heads(self, export: HeadExport) -> ImportResult:
        """Merge another auditor's export after checking every signature in it.

        Imported heads are stored but not proven: the next :meth:`check` asks the lab to
        link them to its newest head, which it cannot do for a history it did not show us.

        Raises:
            HeadFileError: the export is for another lab key.
            SignatureError: a head in it was not signed by this lab (nothing is merged).
            SplitViewError: a head in it has the size of a stored head and another root
                (nothing is merged); both heads are attached.
        """
        if export.lab_key_id != self.lab_key_id:
            raise HeadFileError(
                f"the export holds heads of lab key {export.lab_key_id}, not of {self.lab_key_id}"
            )
        verify_heads(export.heads, self.lab_public_key)
        with self._locked():
            new = self._new_heads(
                export.heads, "the imported heads and ours have two different roots for size"
            )
            self._write([{"head": head_to_json(h)} for h in new])
        return ImportResult(added=len(new), known=len(export.heads) - len(new))

    def export(self, out: Path) -> int:
        """Write every stored head to ``out`` (atomically) for another auditor or the lab.

        Returns:
            How many heads were written.
        """
        from auditor_client.campaign.checkpoint import atomic_write_json

        heads = self.heads()
        atomic_write_json(
            out,
            {
                "format": EXPORT_FORMAT,
                "lab_key_id": self.lab_key_id,
                "lab_public_key": encode_public_key(self.lab_public_key),
                "exported_at_ms": time.time_ns() // 1_000_000,
                "heads": [head_to_json(h) for h in heads],
            },
        )
        return len(heads)

    def check(self, client: AuditorClient) -> HeadCheck:
        """Prove with the lab that every stored head is a prefix of its newest head.

        Fetches the lab's newest head, then one consistency proof from the top of each
        group not yet linked to it, verifies each and records it proven. Heads that arrive
        during the check (the receipts of the proof requests themselves) are linked by the
        next check.

        Raises:
            SplitViewError: the lab's newest head is smaller than a stored head, has the
                size of a stored head but another root, or a proof fails: both heads attached.
            ServerRefusedError: the lab refused a request (e.g. the role may not ask).
            WireVerificationError: an answer failed verification.
        """
        answer = client.tree_head()
        current = answer.response.receipt.tree_head  # the newest head the lab signed for us
        self.record(current)
        with self._locked():
            anchor = self._by_size[self._find(current.tree_size)]
            tops = self._tops(newest=current.tree_size)
        for top in [anchor, *tops]:
            if top.tree_size > current.tree_size:
                raise SplitViewError(
                    top,
                    current,
                    f"the lab's newest head (size {current.tree_size}) is smaller than a head "
                    f"of size {top.tree_size} it signed before: its log was cut back, or it "
                    "shows us another history",
                )
        proofs = 0
        for top in tops:
            verified = client.consistency_proof(top.tree_size, current.tree_size)
            cons = verified.body.consistency_proof
            if (cons.first_size, cons.second_size) != (top.tree_size, current.tree_size):
                raise BindingError(
                    f"asked for a consistency proof {top.tree_size}->{current.tree_size}, got "
                    f"{cons.first_size}->{cons.second_size}"
                )
            try:
                merkle.verify_consistency(
                    top.tree_size,
                    current.tree_size,
                    top.root_hash,
                    current.root_hash,
                    list(cons.path),
                )
            except ProofError as exc:
                raise SplitViewError(
                    top,
                    current,
                    f"the lab cannot prove its head of size {current.tree_size} extends the "
                    f"one of size {top.tree_size} ({exc})",
                ) from exc
            self.record_proven(top, current)
            proofs += 1
        return HeadCheck(current=current, proofs=proofs, heads=len(self.heads()))

    # --- internals (callers hold ``_locked``) ---------------------------------------------

    def _new_heads(
        self, heads: Iterable[pb.SignedTreeHead], reason: str
    ) -> list[pb.SignedTreeHead]:
        """The heads not stored yet; raise on any same-size conflict."""
        new: dict[int, pb.SignedTreeHead] = {}
        for head in heads:
            held = self._by_size.get(head.tree_size) or new.get(head.tree_size)
            if held is None:
                new[head.tree_size] = head
            elif not _same(held, head):
                raise SplitViewError(held, head, f"{reason} {head.tree_size}")
        return list(new.values())

    def _find(self, size: int) -> int:
        parent = self._parent.get(size, size)
        if parent == size:
            return size
        top = self._find(parent)
        self._parent[size] = top
        return top

    def _merges(self, old: int, new: int) -> bool:
        """Link ``old``'s group under ``new``'s if ``old`` is its group's top.

        Only a top may move: the proof shows ``old`` is a prefix of ``new``, and every head
        in ``old``'s group is a prefix of ``old`` only if ``old`` is the group's largest.
        The empty tree (size 0) is a prefix of everything and never needs a proof.
        """
        if old == 0 or old == new or self._find(old) != old:
            return False
        top = self._find(new)
        if top == old:
            return False
        self._parent[old] = top
        return True

    def _tops(self, newest: int | None = None) -> list[pb.SignedTreeHead]:
        sizes = [s for s in self._by_size if s > 0]
        if newest is None:
            newest = max(sizes, default=0)
        anchor = self._find(newest) if newest in self._by_size else None
        return [self._by_size[s] for s in sorted(sizes) if self._find(s) == s and s != anchor]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This object's lock, the file's exclusive ``flock``, and the file re-read.

        Re-entrant within one thread. The file is opened per operation (not kept open), so
        a store object holds no descriptor between calls.
        """
        with self._lock:
            if self._fd >= 0:  # re-entered: already locked and fresh
                yield
                return
            created = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                if created:
                    fsync_dir(self.path.parent)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                self._refresh()
                yield
            finally:
                os.close(self._fd)  # also releases the flock
                self._fd = -1

    def _refresh(self) -> None:
        """Apply complete lines other writers appended since this object last looked."""
        size = os.fstat(self._fd).st_size
        if size < self._offset:  # the file was replaced or emptied: start over from it
            self._offset = 0
            self._by_size.clear()
            self._parent.clear()
        if size <= self._offset:
            return
        data = os.pread(self._fd, size - self._offset, self._offset)
        end = data.rfind(b"\n") + 1  # a torn last line (no newline) is left for later
        for number, line in enumerate(data[:end].splitlines(), start=1):
            try:
                self._apply(json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                raise HeadFileError(
                    f"{self.path}: a line after byte {self._offset} ({number}) is malformed: {exc}"
                ) from None
        self._offset += end

    def _apply(self, record: dict[str, Any]) -> None:
        if "head" in record:
            head = head_from_json(record["head"])
            held = self._by_size.get(head.tree_size)
            if held is not None and not _same(held, head):
                raise SplitViewError(held, head, f"{self.path} holds two roots for one size")
            self._by_size.setdefault(head.tree_size, head)
        elif "proven" in record:
            sizes = []
            for end in ("from", "to"):
                ref = record["proven"][end]
                held = self._by_size.get(ref["tree_size"])
                if held is None or held.root_hash.hex() != ref["root_hash"]:
                    raise HeadFileError(f"a proof {end} a head the store does not hold")
                sizes.append(held.tree_size)
            self._merges(sizes[0], sizes[1])
        else:
            raise HeadFileError("neither a head nor a proof")

    def _write(self, records: list[dict[str, Any]]) -> None:
        """Append ``records`` durably, after cutting a torn line a crashed writer left."""
        if not records:
            return
        if os.fstat(self._fd).st_size > self._offset:
            os.ftruncate(self._fd, self._offset)
        data = b"".join(
            (json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n").encode() for r in records
        )
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)
        self._refresh()


def _ref(head: pb.SignedTreeHead) -> dict[str, Any]:
    return {"tree_size": head.tree_size, "root_hash": head.root_hash.hex()}
