"""RFC 9162 Merkle hashing, proof generation and verification against published vectors.

The vectors are the RFC 6962 reference vectors shared by certificate-transparency, Trillian
and transparency-dev, copied from transparency-dev/merkle ``proof/verify_test.go``
(https://github.com/transparency-dev/merkle/blob/main/proof/verify_test.go, Apache-2.0):
``leaves``, ``roots``, ``inclusionProofs`` (whose leaf numbers are 1-based there, 0-based
here) and ``consistencyProofs``. The tamper probes mirror that file's
``corruptInclusionProof`` / ``corruptConsistencyProof``.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditor_client.wire import merkle
from auditor_client.wire.errors import ProofError, WireVerificationError

LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]


def _h(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(x) for x in hexes]


# (0-based leaf index, tree size, path)
INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        5,
        8,
        _h(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (2, 3, _h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (
        1,
        5,
        _h(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
]

# (first size, second size, path)
CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        _h(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]

LEAF_HASHES = [merkle.leaf_hash(d) for d in LEAVES]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
EMPTY_HASH = hashlib.sha256(b"").digest()


def _flip(path: list[bytes], i: int, mask: int) -> list[bytes]:
    out = list(path)
    out[i] = bytes([out[i][0] ^ mask]) + out[i][1:]
    return out


# --- hashing ----------------------------------------------------------------------------


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert merkle.root_hash([]) == EMPTY_HASH == merkle.EMPTY_ROOT


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_match_the_reference_vectors(size: int) -> None:
    assert merkle.root_hash(LEAF_HASHES[:size]) == ROOTS[size - 1]


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    assert merkle.leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    a, b = LEAF_HASHES[1], LEAF_HASHES[2]
    assert merkle.node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert merkle.root_hash([a, b]) == merkle.node_hash(a, b)


# --- generation -------------------------------------------------------------------------


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_inclusion_paths_match_the_reference_vectors(
    index: int, size: int, path: list[bytes]
) -> None:
    subtree = merkle.subtree_root_from_leaves(LEAF_HASHES[:size])
    assert merkle.inclusion_path(index, size, subtree) == path


@pytest.mark.parametrize(("first", "second", "path"), CONSISTENCY)
def test_consistency_paths_match_the_reference_vectors(
    first: int, second: int, path: list[bytes]
) -> None:
    subtree = merkle.subtree_root_from_leaves(LEAF_HASHES[:second])
    assert merkle.consistency_path(first, second, subtree) == path


def test_generation_refuses_out_of_range_arguments() -> None:
    subtree = merkle.subtree_root_from_leaves(LEAF_HASHES)
    with pytest.raises(ValueError, match="not in a tree of size 8"):
        merkle.inclusion_path(8, 8, subtree)
    with pytest.raises(ValueError, match="from size 0"):
        merkle.consistency_path(0, 8, subtree)
    with pytest.raises(ValueError, match="from size 5 to size 4"):
        merkle.consistency_path(5, 4, subtree)


# --- verification: reference vectors and their tamper probes ---------------------------


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_reference_inclusion_proofs_verify(index: int, size: int, path: list[bytes]) -> None:
    merkle.verify_inclusion(LEAF_HASHES[index], index, size, path, ROOTS[size - 1])


def _inclusion_probes(
    index: int, size: int, path: list[bytes], root: bytes, leaf: bytes
) -> list[tuple[str, int, int, list[bytes], bytes, bytes]]:
    probes = [
        ("index - 1", index - 1, size, path, root, leaf),
        ("index + 1", index + 1, size, path, root, leaf),
        ("index ^ 2", index ^ 2, size, path, root, leaf),
        ("size * 2", index, size * 2, path, root, leaf),
        ("size / 2", index, size // 2, path, root, leaf),
        ("wrong leaf", index, size, path, root, b"WrongLeaf"),
        ("other leaf", index, size, path, root, SOME_HASH),
        ("empty root", index, size, path, EMPTY_HASH, leaf),
        ("random root", index, size, path, SOME_HASH, leaf),
        ("trailing garbage", index, size, [*path, b""], root, leaf),
        ("trailing root", index, size, [*path, root], root, leaf),
        ("preceding garbage", index, size, [b"", *path], root, leaf),
        ("preceding root", index, size, [root, *path], root, leaf),
    ]
    probes += [
        (f"proof[{i}] bit 3", index, size, _flip(path, i, 8), root, leaf) for i in range(len(path))
    ]
    if path:
        probes.append(("removed component", index, size, path[:-1], root, leaf))
    if len(path) > 1:
        probes.append(
            ("inserted component", index, size, [path[0], SOME_HASH, *path[1:]], root, leaf)
        )
    return probes


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_tampered_reference_inclusion_proofs_fail(index: int, size: int, path: list[bytes]) -> None:
    for desc, i, n, p, root, leaf in _inclusion_probes(
        index, size, path, ROOTS[size - 1], LEAF_HASHES[index]
    ):
        with pytest.raises(ProofError):
            merkle.verify_inclusion(leaf, i, n, p, root)
            pytest.fail(f"verified a tampered proof: {desc}")


def test_inclusion_error_says_expected_and_actual_root() -> None:
    index, size, path = INCLUSION[1]
    with pytest.raises(ProofError, match=f"leads to root .*, expected {SOME_HASH.hex()}"):
        merkle.verify_inclusion(LEAF_HASHES[index], index, size, path, SOME_HASH)
    with pytest.raises(ProofError, match="has 2 hashes, expected 3"):
        merkle.verify_inclusion(LEAF_HASHES[index], index, size, path[:2], ROOTS[size - 1])


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (1, 1), (2, 1)])
def test_inclusion_out_of_range_fails(index: int, size: int) -> None:
    with pytest.raises(ProofError, match="not in a tree"):
        merkle.verify_inclusion(SOME_HASH, index, size, [], EMPTY_HASH)


def test_single_leaf_tree_root_is_the_leaf_hash() -> None:
    leaf = merkle.leaf_hash(b"data")
    merkle.verify_inclusion(leaf, 0, 1, [], leaf)
    with pytest.raises(ProofError, match="0 bytes, expected 32"):
        merkle.verify_inclusion(b"", 0, 1, [], leaf)
    with pytest.raises(ProofError, match="0 bytes, expected 32"):
        merkle.verify_inclusion(leaf, 0, 1, [], b"")


@pytest.mark.parametrize(("first", "second", "path"), CONSISTENCY)
def test_reference_consistency_proofs_verify(first: int, second: int, path: list[bytes]) -> None:
    merkle.verify_consistency(first, second, ROOTS[first - 1], ROOTS[second - 1], path)


@pytest.mark.parametrize(("first", "second", "path"), [c for c in CONSISTENCY if c[2]])
def test_tampered_reference_consistency_proofs_fail(
    first: int, second: int, path: list[bytes]
) -> None:
    r1, r2 = ROOTS[first - 1], ROOTS[second - 1]
    probes = [
        ("size1 - 1", first - 1, second, r1, r2, path),
        ("size1 + 1", first + 1, second, r1, r2, path),
        ("size1 ^ 2", first ^ 2, second, r1, r2, path),
        ("size2 * 2", first, second * 2, r1, r2, path),
        ("size2 / 2", first, second // 2, r1, r2, path),
        ("wrong root1", first, second, SOME_HASH, r2, path),
        ("wrong root2", first, second, r1, SOME_HASH, path),
        ("swapped roots", first, second, r2, r1, path),
        ("empty proof", first, second, r1, r2, []),
        ("trailing garbage", first, second, r1, r2, [*path, b""]),
        ("trailing root1", first, second, r1, r2, [*path, r1]),
        ("trailing root2", first, second, r1, r2, [*path, r2]),
        ("preceding garbage", first, second, r1, r2, [b"", *path]),
        ("preceding root1", first, second, r1, r2, [r1, *path]),
        ("preceding root2", first, second, r1, r2, [r2, *path]),
        ("preceding proof[0]", first, second, r1, r2, [path[0], *path]),
        ("truncated proof", first, second, r1, r2, path[:-1]),
    ]
    probes += [
        (f"proof[{i}] bit 4", first, second, r1, r2, _flip(path, i, 16)) for i in range(len(path))
    ]
    for desc, m, n, a, b, p in probes:
        with pytest.raises(ProofError):
            merkle.verify_consistency(m, n, a, b, p)
            pytest.fail(f"verified a tampered proof: {desc}")


def test_consistency_edge_cases() -> None:
    # Equal sizes: empty path and equal roots.
    merkle.verify_consistency(3, 3, ROOTS[2], ROOTS[2], [])
    with pytest.raises(ProofError, match="equal size 3 have roots"):
        merkle.verify_consistency(3, 3, ROOTS[2], ROOTS[3], [])
    with pytest.raises(ProofError, match="equal sizes has 1 hashes, expected 0"):
        merkle.verify_consistency(3, 3, ROOTS[2], ROOTS[2], [EMPTY_HASH])
    # From the empty tree proves nothing; back in time is refused.
    with pytest.raises(ProofError, match="from tree size 0"):
        merkle.verify_consistency(0, 3, EMPTY_HASH, ROOTS[2], [])
    with pytest.raises(ProofError, match="smaller than first"):
        merkle.verify_consistency(2, 1, ROOTS[1], ROOTS[0], [])
    with pytest.raises(ProofError, match="has 0 hashes, expected 1"):
        merkle.verify_consistency(1, 2, ROOTS[0], ROOTS[1], [])


def test_consistency_error_names_the_root_that_did_not_match() -> None:
    first, second, path = CONSISTENCY[2]
    with pytest.raises(ProofError, match=f"first root .*, expected {SOME_HASH.hex()}"):
        merkle.verify_consistency(first, second, SOME_HASH, ROOTS[second - 1], path)
    with pytest.raises(ProofError, match=f"second root .*, expected {SOME_HASH.hex()}"):
        merkle.verify_consistency(first, second, ROOTS[first - 1], SOME_HASH, path)


def test_proof_error_is_a_wire_verification_error() -> None:
    assert issubclass(ProofError, WireVerificationError)


# --- frontier and stored-subtree generation ---------------------------------------------


def _tree(size: int) -> list[bytes]:
    return [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(size)]


def test_frontier_tracks_roots_completed_nodes_and_next_paths() -> None:
    leaves = _tree(70)
    frontier = merkle.Frontier()
    stored: dict[tuple[int, int], bytes] = {}
    for n, leaf in enumerate(leaves):
        expected_path = merkle.inclusion_path(n, n + 1, merkle.subtree_root_from_leaves(leaves))
        assert frontier.next_inclusion_path() == expected_path
        for level, index, h in frontier.append(leaf):
            width = 1 << level
            assert h == merkle.root_hash(leaves[index * width : (index + 1) * width])
            stored[(level, index)] = h
        stored[(0, n)] = leaf
        assert frontier.size == n + 1
        assert frontier.root() == merkle.root_hash(leaves[: n + 1])
        rebuilt = merkle.Frontier.from_store(n + 1, lambda lv, i: stored[(lv, i)])
        assert rebuilt.root() == frontier.root()
    # Every perfect node of a 70-leaf tree above level 0: 70 - popcount(70).
    assert len(stored) - 70 == 70 - bin(70).count("1")


def test_stored_perfect_nodes_answer_like_the_leaves() -> None:
    leaves = _tree(37)
    frontier = merkle.Frontier()
    stored: dict[tuple[int, int], bytes] = {}
    for n, leaf in enumerate(leaves):
        stored[(0, n)] = leaf
        for level, index, h in frontier.append(leaf):
            stored[(level, index)] = h
    from_store = merkle.subtree_root_from_perfect(lambda lv, i: stored[(lv, i)])
    from_leaves = merkle.subtree_root_from_leaves(leaves)
    for size in range(1, 38):
        for index in range(size):
            assert merkle.inclusion_path(index, size, from_store) == merkle.inclusion_path(
                index, size, from_leaves
            )
        for first in range(1, size + 1):
            assert merkle.consistency_path(first, size, from_store) == merkle.consistency_path(
                first, size, from_leaves
            )


# --- properties -------------------------------------------------------------------------

_BIG = _tree(70)
_ROOTS = [merkle.root_hash(_BIG[:n]) for n in range(71)]
_SUBTREE = merkle.subtree_root_from_leaves(_BIG)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), size=st.integers(1, 70))
def test_every_generated_inclusion_proof_verifies_and_tampering_fails(
    data: st.DataObject, size: int
) -> None:
    index = data.draw(st.integers(0, size - 1), label="index")
    path = merkle.inclusion_path(index, size, _SUBTREE)
    merkle.verify_inclusion(_BIG[index], index, size, path, _ROOTS[size])
    if path:
        i = data.draw(st.integers(0, len(path) - 1), label="element")
        j = data.draw(st.integers(0, 31), label="byte")
        bad = list(path)
        bad[i] = bad[i][:j] + bytes([bad[i][j] ^ 0x01]) + bad[i][j + 1 :]
        with pytest.raises(ProofError):
            merkle.verify_inclusion(_BIG[index], index, size, bad, _ROOTS[size])
    if size > 1:
        other = data.draw(st.integers(0, size - 1).filter(lambda k: k != index), label="other")
        with pytest.raises(ProofError):
            merkle.verify_inclusion(_BIG[index], other, size, path, _ROOTS[size])
    # A path proves membership in one (size, root) pair: with the real root of another
    # size it must fail. (The same root under another size is the signature's job.)
    wrong_size = data.draw(st.integers(1, 70).filter(lambda n: n != size), label="wrong size")
    with pytest.raises(ProofError):
        merkle.verify_inclusion(_BIG[index], index, wrong_size, path, _ROOTS[wrong_size])


@settings(max_examples=300, deadline=None)
@given(data=st.data(), second=st.integers(1, 70))
def test_every_generated_consistency_proof_verifies_and_tampering_fails(
    data: st.DataObject, second: int
) -> None:
    first = data.draw(st.integers(1, second), label="first")
    path = merkle.consistency_path(first, second, _SUBTREE)
    merkle.verify_consistency(first, second, _ROOTS[first], _ROOTS[second], path)
    if path:
        i = data.draw(st.integers(0, len(path) - 1), label="element")
        j = data.draw(st.integers(0, 31), label="byte")
        bad = list(path)
        bad[i] = bad[i][:j] + bytes([bad[i][j] ^ 0x80]) + bad[i][j + 1 :]
        with pytest.raises(ProofError):
            merkle.verify_consistency(first, second, _ROOTS[first], _ROOTS[second], bad)
    wrong_first = data.draw(
        st.integers(1, second).filter(lambda n: n != first) if second > 1 else st.none(),
        label="wrong first",
    )
    if wrong_first is not None:
        with pytest.raises(ProofError):
            merkle.verify_consistency(
                wrong_first, second, _ROOTS[wrong_first], _ROOTS[second], path
            )
    wrong_second = data.draw(
        st.integers(first, 70).filter(lambda n: n != second) if first < 70 else st.none(),
        label="wrong second",
    )
    if wrong_second is not None:
        with pytest.raises(ProofError):
            merkle.verify_consistency(
                first, wrong_second, _ROOTS[first], _ROOTS[wrong_second], path
            )
