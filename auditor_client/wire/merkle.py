"""RFC 9162 §2.1 Merkle trees over SHA-256: hashes, proof generation and proof verification.

The lab's ledger is an append-only list of leaves whose Merkle tree hash (MTH) the lab signs;
an auditor holding a signed tree head can check that a leaf is in the log (inclusion proof)
and that a later head extends an earlier one without rewriting it (consistency proof).

The client half (:func:`verify_inclusion`, :func:`verify_consistency`) implements the
verification algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2 step by step, and raises
:class:`~auditor_client.wire.errors.ProofError` on any failure instead of returning a flag.
The server half (:func:`inclusion_path`, :func:`consistency_path`) follows the recursive
definitions of §2.1.3.1 and §2.1.4.1 over a caller-supplied :data:`SubtreeRoot`, so the
ledger can answer from stored perfect-subtree hashes with O(log n) lookups per proof element
(:func:`subtree_root_from_perfect`) instead of rehashing the log. :class:`Frontier` keeps
the right edge of a growing tree so an append costs O(log n) hashes.

Pure code: no IO, no sqlite, no gRPC. We do not depend on ``pymerkle`` because it is
GPL-3.0 licensed and describes itself as not audited for security.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence

from auditor_client.wire.errors import ProofError

HASH_SIZE = 32
"""Bytes in every node hash (SHA-256)."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH of the empty tree: SHA-256 of the empty string (RFC 9162 §2.1.1)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

SubtreeRoot = Callable[[int, int], bytes]
"""``subtree_root(start, end)``: the MTH of leaves ``[start, end)``, ``0 <= start < end``."""

PerfectNode = Callable[[int, int], bytes]
"""``perfect_node(level, index)``: hash of the perfect subtree over leaves
``[index * 2**level, (index + 1) * 2**level)``; level 0 is the leaf hash itself."""


def leaf_hash(data: bytes) -> bytes:
    """Hash one leaf: ``SHA-256(0x00 || data)``.

    The 0x00 prefix (0x01 for interior nodes) keeps a leaf from ever being passed off as an
    interior node (second-preimage resistance, RFC 9162 §2.1.1).
    """
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash an interior node: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (the ``k`` of RFC 9162), n >= 2.

    Raises:
        ValueError: ``n < 2`` (a tree of 0 or 1 leaves does not split).
    """
    if n < 2:
        raise ValueError(f"a tree of {n} leaves has no split point")
    return 1 << ((n - 1).bit_length() - 1)


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of a list of leaf hashes (already hashed with :func:`leaf_hash`).

    Runs in O(n) hashes and O(log n) memory by feeding a :class:`Frontier`.
    """
    frontier = Frontier()
    for h in leaf_hashes:
        frontier.append(h)
    return frontier.root()


class Frontier:
    """The right edge of an append-only tree: its perfect subtrees, largest first.

    A tree of ``n`` leaves is a sequence of perfect subtrees, one per set bit of ``n``;
    their hashes are all an appender needs to compute the next root, to know which perfect
    nodes an append completes (so a store can keep them for O(log n) proofs), and to give
    the inclusion path of the leaf it is about to append. Memory: O(log n).
    """

    __slots__ = ("_nodes", "_size")

    def __init__(self) -> None:
        self._nodes: list[tuple[int, bytes]] = []  # (level, hash), left to right
        self._size = 0

    @classmethod
    def from_store(cls, size: int, perfect_node: PerfectNode) -> Frontier:
        """Rebuild the frontier of a stored tree of ``size`` leaves with O(log n) lookups.

        Raises:
            ValueError: ``size`` is negative.
        """
        if size < 0:
            raise ValueError(f"tree size must be >= 0, got {size}")
        frontier = cls()
        start = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                frontier._nodes.append((level, perfect_node(level, start >> level)))
                start += 1 << level
        frontier._size = size
        return frontier

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def copy(self) -> Frontier:
        """An independent copy, so an appender can stage a change and commit it later."""
        other = Frontier()
        other._nodes = list(self._nodes)
        other._size = self._size
        return other

    def next_inclusion_path(self) -> list[bytes]:
        """The inclusion path the *next* appended leaf will have in the tree of size + 1.

        For the last leaf of a tree, RFC 9162's PATH is exactly the perfect subtrees to its
        left, smallest first, which is this frontier read right to left.
        """
        return [h for _, h in reversed(self._nodes)]

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; return the perfect nodes it completed above level 0.

        Returns:
            ``(level, index, hash)`` for each newly completed perfect subtree of level >= 1,
            lowest level first: the node covering leaves
            ``[index * 2**level, (index + 1) * 2**level)``.
        """
        completed: list[tuple[int, int, bytes]] = []
        level, h = 0, leaf
        end = self._size + 1  # leaves covered once this leaf is in
        while self._nodes and self._nodes[-1][0] == level:
            _, left = self._nodes.pop()
            h = node_hash(left, h)
            level += 1
            completed.append((level, (end >> level) - 1, h))
        self._nodes.append((level, h))
        self._size = end
        return completed

    def root(self) -> bytes:
        """MTH of the leaves appended so far (:data:`EMPTY_ROOT` when there are none)."""
        if not self._nodes:
            return EMPTY_ROOT
        acc = self._nodes[-1][1]
        for _, h in reversed(self._nodes[:-1]):
            acc = node_hash(h, acc)
        return acc


def subtree_root_from_perfect(perfect_node: PerfectNode) -> SubtreeRoot:
    """Turn a lookup of stored perfect-subtree hashes into a :data:`SubtreeRoot`.

    Any range splits (as RFC 9162 splits trees) into at most O(log n) perfect subtrees, so a
    store that keeps every completed perfect node (see :meth:`Frontier.append`) answers
    every subtree the proof algorithms ask for without rehashing leaves.
    """

    def subtree_root(start: int, end: int) -> bytes:
        n = end - start
        if n < 1:
            raise ValueError(f"empty or inverted leaf range [{start}, {end})")
        if n & (n - 1) == 0 and start % n == 0:
            return perfect_node(n.bit_length() - 1, start // n)
        k = split_point(n)
        return node_hash(subtree_root(start, start + k), subtree_root(start + k, end))

    return subtree_root


def subtree_root_from_leaves(leaf_hashes: Sequence[bytes]) -> SubtreeRoot:
    """A :data:`SubtreeRoot` over an in-memory list of leaf hashes (O(n) per call).

    For tests and small trees; a store should use :func:`subtree_root_from_perfect`.
    """

    def subtree_root(start: int, end: int) -> bytes:
        if not 0 <= start < end <= len(leaf_hashes):
            raise ValueError(f"leaf range [{start}, {end}) outside a tree of {len(leaf_hashes)}")
        return root_hash(leaf_hashes[start:end])

    return subtree_root


def inclusion_path(index: int, size: int, subtree_root: SubtreeRoot) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 §2.1.3.1: the audit path for one leaf.

    Args:
        index: 0-based leaf index.
        size: tree size the path leads to a root of.
        subtree_root: MTH of any leaf range of that tree.

    Returns:
        Sibling hashes from the leaf up to the root.

    Raises:
        ValueError: not ``0 <= index < size``.
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    path: list[bytes] = []
    start, end, m = 0, size, index
    while end - start > 1:
        k = split_point(end - start)
        if m < k:
            path.append(subtree_root(start + k, end))
            end = start + k
        else:
            path.append(subtree_root(start, start + k))
            start, m = start + k, m - k
    path.reverse()
    return path


def consistency_path(first: int, second: int, subtree_root: SubtreeRoot) -> list[bytes]:
    """PROOF(first, D[second]) of RFC 9162 §2.1.4.1: the tree of ``second`` extends ``first``.

    Args:
        first: the earlier tree size, ``0 < first <= second``.
        second: the later tree size.
        subtree_root: MTH of any leaf range of the tree of ``second`` leaves.

    Returns:
        The proof hashes (empty when ``first == second``).

    Raises:
        ValueError: not ``0 < first <= second``; a proof from the empty tree proves nothing.
    """
    if not 0 < first <= second:
        raise ValueError(f"no consistency proof from size {first} to size {second}")
    path: list[bytes] = []
    start, end, m, whole = 0, second, first, True
    while m != end - start:
        k = split_point(end - start)
        if m <= k:
            path.append(subtree_root(start + k, end))
            end = start + k
        else:
            path.append(subtree_root(start, start + k))
            start, m, whole = start + k, m - k, False
    if not whole:
        path.append(subtree_root(start, end))
    path.reverse()
    return path


def _check_hash(what: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, expected {HASH_SIZE}")


def _inclusion_length(index: int, size: int) -> tuple[int, int]:
    """(inner, border) lengths of the path for ``index`` in ``size``; both sum to its length."""
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner, border


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, path: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size`` with ``root``.

    RFC 9162 §2.1.3.2. The size must come from the same signed tree head as ``root``: a
    path proves membership in one (size, root) pair, never in a root alone.

    Args:
        leaf_hash: the leaf's hash, recomputed by the caller from data it trusts.
        index: 0-based leaf index.
        tree_size: size of the tree ``root`` belongs to.
        path: inclusion path, leaf level first.
        root: the signed root hash.

    Raises:
        ProofError: the index is out of range, a hash has the wrong length, the path has
            the wrong length, or it leads to another root.
    """
    if not 0 <= index < tree_size:
        raise ProofError(f"leaf index {index} is not in a tree of size {tree_size}")
    _check_hash("leaf hash", leaf_hash)
    _check_hash("root hash", root)
    for i, p in enumerate(path):
        _check_hash(f"inclusion path[{i}]", p)
    inner, border = _inclusion_length(index, tree_size)
    if len(path) != inner + border:
        raise ProofError(
            f"inclusion path for leaf {index} of {tree_size} has {len(path)} hashes, "
            f"expected {inner + border}"
        )
    fn, sn, r = index, tree_size - 1, leaf_hash
    for p in path:
        if sn == 0:
            raise ProofError(f"inclusion path for leaf {index} of {tree_size} is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"inclusion path for leaf {index} of {tree_size} is too short")
    if not hmac.compare_digest(r, root):
        raise ProofError(
            f"inclusion path for leaf {index} of {tree_size} leads to root {r.hex()}, "
            f"expected {root.hex()}"
        )


def verify_consistency(
    first_size: int,
    second_size: int,
    first_root: bytes,
    second_root: bytes,
    path: Sequence[bytes],
) -> None:
    """Check that the tree of ``second_size`` is the tree of ``first_size`` plus new leaves.

    RFC 9162 §2.1.4.2, with the edge cases the RFC leaves to the caller settled as
    transparency-dev/merkle does: equal sizes need an empty path and equal roots; a proof
    from size 0 is refused because it would prove nothing.

    Args:
        first_size: the earlier tree size (> 0).
        second_size: the later tree size (>= ``first_size``).
        first_root: root of the earlier head.
        second_root: root of the later head.
        path: the consistency proof.

    Raises:
        ProofError: sizes out of order or zero, a hash with the wrong length, a path of the
            wrong length, or a path that does not lead to both roots.
    """
    _check_hash("first root", first_root)
    _check_hash("second root", second_root)
    for i, p in enumerate(path):
        _check_hash(f"consistency path[{i}]", p)
    if first_size <= 0:
        raise ProofError(f"no consistency proof from tree size {first_size}; need > 0")
    if second_size < first_size:
        raise ProofError(f"second tree size {second_size} is smaller than first {first_size}")
    if first_size == second_size:
        if path:
            raise ProofError(f"consistency path for equal sizes has {len(path)} hashes, expected 0")
        if not hmac.compare_digest(first_root, second_root):
            raise ProofError(
                f"trees of equal size {first_size} have roots {second_root.hex()} and "
                f"{first_root.hex()}"
            )
        return
    inner, border = _inclusion_length(first_size - 1, second_size)
    shift = (first_size & -first_size).bit_length() - 1
    expected = inner - shift + border + (0 if first_size == 1 << shift else 1)
    if len(path) != expected:
        raise ProofError(
            f"consistency path from {first_size} to {second_size} has {len(path)} hashes, "
            f"expected {expected}"
        )
    nodes = list(path)
    if first_size & (first_size - 1) == 0:
        nodes.insert(0, first_root)
    fn, sn = first_size - 1, second_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = nodes[0]
    for c in nodes[1:]:
        if sn == 0:
            raise ProofError(f"consistency path from {first_size} to {second_size} is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"consistency path from {first_size} to {second_size} is too short")
    if not hmac.compare_digest(fr, first_root):
        raise ProofError(
            f"consistency path from {first_size} to {second_size} leads to first root "
            f"{fr.hex()}, expected {first_root.hex()}"
        )
    if not hmac.compare_digest(sr, second_root):
        raise ProofError(
            f"consistency path from {first_size} to {second_size} leads to second root "
            f"{sr.hex()}, expected {second_root.hex()}"
        )
