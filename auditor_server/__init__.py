"""Lab side of auditor-sandbox: attribution engine, policy, ledger and gRPC service."""

__version__ = "0.1.0"
