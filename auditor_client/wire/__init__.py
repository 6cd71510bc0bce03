"""The wire protocol's reference implementation, shared by the client and the lab's server.

Generated stubs live in ``_proto`` (``scripts/gen_protos.py``); the modules beside them hold
the pure logic both sides must agree on byte for byte: envelope digests and signatures, and
ledger (Merkle) proof verification. Nothing here imports torch, faiss or the server.
"""
