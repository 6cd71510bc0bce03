"""The auditor's head store: heads persist across clients, split views are caught.

A small in-process lab (the real ledger and the real signing functions behind a fake gRPC
stub) answers the client, so receipts, heads and proofs are the genuine article; a lab that
resets its ledger under the same key is exactly the attack the store exists for.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auditor_client.client import AuditorClient
from auditor_client.headstore import (
    HeadExport,
    HeadFileError,
    HeadStore,
    LabHeads,
    default_directory,
    head_to_json,
    read_export,
)
from auditor_client.keys import encode_public_key, generate_keypair, load_keypair
from auditor_client.wire import digests
from auditor_client.wire._proto import audit_pb2 as pb
from auditor_client.wire.envelope import sign_response, sign_tree_head, signed_request_digest
from auditor_client.wire.errors import ProofError, SignatureError, SplitViewError
from auditor_server.ledger import Ledger, TreeHead

LAB_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(7, 39)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(9, 41)))
REPO = Path(__file__).resolve().parents[3]


class _Signer:
    key_id = digests.key_id(LAB_KEY.public_key())

    def sign(self, digest: bytes) -> bytes:
        return LAB_KEY.sign(digest)


def _sth(head: TreeHead) -> pb.SignedTreeHead:
    return pb.SignedTreeHead(
        tree_size=head.tree_size,
        root_hash=head.root_hash,
        timestamp_ms=head.timestamp_ms,
        lab_key_id=head.key_id,
        signature=head.signature,
    )


class FakeLab:
    """The service's answer path in miniature: sign the body, log it, attach the receipt."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def _answer(self, envelope: pb.SignedRequest, field: str, result: Any) -> pb.SignedResponse:
        body = pb.ResponseBody(
            request_digest=signed_request_digest(envelope), method=envelope.method
        )
        getattr(body, field).CopyFrom(result)
        signed = sign_response(private_key=LAB_KEY, body=body)
        entry = self.ledger.append(
            request_digest=body.request_digest,
            response_digest=digests.response_digest(signed.body),
            status=0,
        )
        signed.receipt.CopyFrom(
            pb.Receipt(
                leaf_index=entry.index,
                inclusion_path=entry.inclusion_path,
                tree_head=_sth(entry.tree_head),
            )
        )
        return signed

    def WhoAmI(self, envelope: pb.SignedRequest, timeout: float) -> pb.SignedResponse:
        return self._answer(envelope, "whoami", pb.WhoAmIResponse(auditor_id="a"))

    def GetTreeHead(self, envelope: pb.SignedRequest, timeout: float) -> pb.SignedResponse:
        return self._answer(
            envelope, "tree_head", pb.TreeHeadResponse(tree_head=_sth(self.ledger.tree_head()))
        )

    def GetConsistencyProof(self, envelope: pb.SignedRequest, timeout: float) -> pb.SignedResponse:
        req = pb.GetConsistencyProofRequest.FromString(envelope.body)
        second = req.second_size or self.ledger.size
        result = pb.ConsistencyProofResponse(
            first_size=req.first_size,
            second_size=second,
            path=self.ledger.consistency_proof(req.first_size, second),
            tree_head=_sth(self.ledger.tree_head(second)),
        )
        return self._answer(envelope, "consistency_proof", result)


def _client(tmp_path: Path, ledger: Ledger, store: HeadStore | None = None) -> AuditorClient:
    key_dir = tmp_path / "auditor"
    if not (key_dir / "auditor.key").exists():
        generate_keypair(key_dir)
    client = AuditorClient.connect(
        "127.0.0.1:1",
        key_dir=key_dir,
        lab_public_key=encode_public_key(LAB_KEY.public_key()),
        auditor_id="a",
        insecure=True,
        head_store=store,
    )
    client._stub = FakeLab(ledger)  # type: ignore[assignment]
    return client


def _ledger(path: Path) -> Ledger:
    return Ledger.open(path, signer=_Signer())


def _head(size: int, root: bytes, key: Ed25519PrivateKey = LAB_KEY) -> pb.SignedTreeHead:
    return sign_tree_head(private_key=key, tree_size=size, root_hash=root, timestamp_ms=size)


def _lab(directory: Path) -> LabHeads:
    return HeadStore(directory).lab(LAB_KEY.public_key())


# --- the store used by the client ---------------------------------------------------------


def test_the_default_store_follows_the_environment(head_store_dir: Path) -> None:
    """tests/conftest.py gives every test its own store: the real one is never touched."""
    assert default_directory() == head_store_dir
    assert HeadStore.default().directory == head_store_dir
    assert HeadStore.default() is HeadStore.default()


def test_heads_persist_across_clients_and_a_reset_log_is_a_split_view(tmp_path: Path) -> None:
    with _ledger(tmp_path / "a" / "ledger.db") as first_log:
        client = _client(tmp_path, first_log)
        held = [client.whoami().response.receipt.tree_head for _ in range(5)]
        client.close()
    heads = [h.tree_size for h in _lab(default_directory()).heads()]
    assert heads == [1, 2, 3, 4, 5]

    # The lab starts again from an empty ledger under the same key (a wiped or rewritten
    # log). A new client with a new store object (as in a new run) reads the same file:
    with _ledger(tmp_path / "b" / "ledger.db") as second_log:
        again = _client(tmp_path, second_log, HeadStore(default_directory()))
        with pytest.raises(SplitViewError, match="two different roots for tree size 1") as info:
            again.whoami()
    assert info.value.held == held[0]
    assert info.value.other.tree_size == 1 and info.value.other.root_hash != held[0].root_hash


def test_check_heads_links_every_head_and_catches_a_cut_back_log(tmp_path: Path) -> None:
    store = HeadStore(tmp_path / "store")
    with _ledger(tmp_path / "ledger.db") as log:
        client = _client(tmp_path, log, store)
        for _ in range(4):
            client.whoami()
        result = client.check_heads()
        assert result.current.tree_size == 5  # the GetTreeHead receipt
        assert result.proofs == 4  # heads 1..4, each its own group until now
        assert all(client.heads.linked(s, 5) for s in range(1, 5))
        # The proof requests' own receipts (6..9) are linked by the next check: until then
        # the group of 5 and each of 6..8 are not known to be prefixes of the newest, 9.
        assert [h.tree_size for h in client.heads.unlinked()] == [5, 6, 7, 8]
        assert client.check_heads().proofs == 5
        client.close()


def _grow(log: Ledger, n: int, tag: int) -> None:
    """Entries other auditors caused: sizes this client never sees a head for."""
    for i in range(n):
        log.append(request_digest=bytes([tag, i]) * 16, response_digest=bytes(32), status=0)


def test_a_log_cut_back_below_a_held_head_is_caught(tmp_path: Path) -> None:
    store = HeadStore(tmp_path / "store")
    with _ledger(tmp_path / "ledger.db") as log:
        _grow(log, 9, 1)
        store.lab(LAB_KEY.public_key()).record_all([_sth(log.tree_head(9))])
        _grow(log, 11, 2)
        store.lab(LAB_KEY.public_key()).record_all([_sth(log.tree_head(20))])
    # The lab restarts on a shorter log whose sizes never collide with ours (14 entries;
    # its head receipt is of size 15): no same-size conflict, but 15 < 20.
    with _ledger(tmp_path / "short" / "ledger.db") as short:
        _grow(short, 14, 3)
        client = _client(tmp_path, short, store)
        with pytest.raises(
            SplitViewError, match="newest head \\(size 15\\) is smaller than"
        ) as info:
            client.check_heads()
    assert (info.value.held.tree_size, info.value.other.tree_size) == (20, 15)


def test_a_regrown_log_fails_its_consistency_proof(tmp_path: Path) -> None:
    store = HeadStore(tmp_path / "store")
    with _ledger(tmp_path / "ledger.db") as log:
        client = _client(tmp_path, log, store)
        client.whoami()
        client.whoami()
    with _ledger(tmp_path / "other" / "ledger.db") as other:  # same key, other history
        for i in range(10):
            other.append(request_digest=bytes([i]) * 32, response_digest=bytes(32), status=0)
        client = _client(tmp_path, other, store)
        with pytest.raises(
            SplitViewError, match="cannot prove its head of size 11 extends the one of size 1"
        ):
            client.check_heads()


def test_record_proven_groups_heads_and_persists(tmp_path: Path) -> None:
    with _ledger(tmp_path / "ledger.db") as log:
        for i in range(8):
            log.append(request_digest=bytes([i]) * 32, response_digest=bytes(32), status=0)
        h = {s: _sth(log.tree_head(s)) for s in (3, 5, 8)}
        heads = _lab(tmp_path / "store")
        heads.record_proven(h[3], h[5], proof=log.consistency_proof(3, 5))
        heads.record_proven(h[5], h[8])
        assert heads.linked(3, 8) and heads.unlinked() == []
        with pytest.raises(ProofError):
            heads.record_proven(h[3], h[8], proof=log.consistency_proof(5, 8))
    reloaded = _lab(tmp_path / "store")
    assert reloaded.linked(3, 8) and [x.tree_size for x in reloaded.heads()] == [3, 5, 8]


# --- export and import --------------------------------------------------------------------


def test_export_import_merges_and_refuses_forgeries_and_split_views(tmp_path: Path) -> None:
    mine, theirs = _lab(tmp_path / "mine"), _lab(tmp_path / "theirs")
    mine.record_all([_head(1, b"a" * 32), _head(2, b"b" * 32)])
    theirs.record_all([_head(2, b"b" * 32), _head(3, b"c" * 32)])
    theirs.export(tmp_path / "theirs.json")
    export = read_export(tmp_path / "theirs.json")
    assert export.lab_key_id == mine.lab_key_id and len(export.heads) == 2
    result = mine.import_heads(export)
    assert (result.added, result.known) == (1, 1)
    assert [h.tree_size for h in mine.heads()] == [1, 2, 3]

    # A head the lab never signed (valid signature by another key, or an edited one).
    forged = HeadExport(mine.lab_key_id, None, (_head(9, b"x" * 32, key=OTHER_KEY),))
    with pytest.raises(SignatureError, match="heads\\[0\\] \\(size 9\\)"):
        mine.import_heads(forged)
    edited = _head(9, b"x" * 32)
    edited.root_hash = b"y" * 32
    with pytest.raises(SignatureError):
        mine.import_heads(HeadExport(mine.lab_key_id, None, (_head(8, b"z" * 32), edited)))
    assert [h.tree_size for h in mine.heads()] == [1, 2, 3]  # nothing merged

    # Another auditor was shown another root for size 2: both heads come back as evidence.
    split = HeadExport(mine.lab_key_id, None, (_head(7, b"q" * 32), _head(2, b"B" * 32)))
    with pytest.raises(SplitViewError) as info:
        mine.import_heads(split)
    assert info.value.held.root_hash == b"b" * 32 and info.value.other.root_hash == b"B" * 32
    assert mine.get(7) is None

    with pytest.raises(HeadFileError, match="lab key"):
        mine.import_heads(HeadExport("0" * 32, None, ()))


def test_the_export_file_is_plain_checkable_json(tmp_path: Path) -> None:
    heads = _lab(tmp_path / "s")
    heads.record(_head(4, b"r" * 32))
    heads.export(tmp_path / "out.json")
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["format"] == "auditor-sandbox/heads/v1"
    assert data["lab_public_key"] == encode_public_key(LAB_KEY.public_key())
    assert data["heads"] == [head_to_json(_head(4, b"r" * 32))]


# --- durability and concurrency -----------------------------------------------------------


def test_a_torn_line_is_skipped_then_cut_by_the_next_writer(tmp_path: Path) -> None:
    heads = _lab(tmp_path / "s")
    heads.record(_head(1, b"a" * 32))
    with heads.path.open("ab") as fh:
        fh.write(b'{"head": {"tree_size": 2, "root')  # a writer died mid-line
    reader = _lab(tmp_path / "s")
    assert [h.tree_size for h in reader.heads()] == [1]
    reader.record(_head(3, b"c" * 32))
    lines = heads.path.read_bytes().splitlines(True)
    assert len(lines) == 2 and all(line.endswith(b"\n") for line in lines)
    assert [h.tree_size for h in heads.heads()] == [1, 3]


def test_concurrent_threads_and_processes_lose_no_head(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    shared = _lab(directory)

    def writer(w: int) -> None:
        own = _lab(directory) if w % 2 else shared  # separate objects and one shared
        for k in range(20):
            own.record(_head(1000 * (w + 1) + k, bytes([w]) * 32))

    code = (
        "import sys; from pathlib import Path\n"
        "from tests.unit.wire.test_headstore import _head, _lab\n"
        "w = int(sys.argv[1]); heads = _lab(Path(sys.argv[2]))\n"
        "for k in range(20): heads.record(_head(100000 * w + k, bytes([w]) * 32))\n"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", code, str(w), str(directory)], cwd=REPO)
        for w in (1, 2, 3)
    ]
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(p.wait(timeout=60) == 0 for p in processes)
    assert len(_lab(directory).heads()) == 6 * 20 + 3 * 20
    lines = shared.path.read_bytes().splitlines(True)
    assert len(lines) == 180 and all(json.loads(line)["head"] for line in lines)


def test_two_processes_racing_two_roots_for_one_size_one_loses(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path\n"
        "from tests.unit.wire.test_headstore import _head, _lab\n"
        "from auditor_client.wire.errors import SplitViewError\n"
        "heads = _lab(Path(sys.argv[2]))\n"
        "try: heads.record(_head(5, bytes([int(sys.argv[1])]) * 32))\n"
        "except SplitViewError: sys.exit(4)\n"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", code, str(w), str(tmp_path / "s")], cwd=REPO)
        for w in (1, 2)
    ]
    assert sorted(p.wait(timeout=60) for p in processes) == [0, 4]
    assert len(_lab(tmp_path / "s").heads()) == 1


def test_a_client_without_a_lab_never_touches_the_store(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "k")
    client = AuditorClient(
        channel=grpc.insecure_channel("127.0.0.1:1"),
        keypair=load_keypair(tmp_path / "k"),
        auditor_id="a",
        lab_public_key=encode_public_key(LAB_KEY.public_key()),
        head_store=HeadStore(tmp_path / "store"),
    )
    client.close()
    assert not (tmp_path / "store").exists()  # created on the first head, not before
