"""Who may ask, and proof of who answered: envelope verification, replay cache, lab keys, TLS.

- :mod:`.verify`: untrusted bytes -> :class:`~.verify.VerifiedRequest`, or a refusal.
- :mod:`.errors`: one refusal class per failure, each with one gRPC status name.
- :mod:`.replay`: the persistent (SQLite) nonce cache.
- :mod:`.lab_keys`: the lab's Ed25519 signing key (responses and ledger tree heads).
- :mod:`.tls`: demo certificates and loading TLS / mutual-TLS material for the server.
- :mod:`.commands`: ``auditor-server keys`` and ``auditor-server tls-demo-certs``.

Nothing here imports grpc: the service maps status names to ``grpc.StatusCode``.
"""
