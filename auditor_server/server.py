"""The ``auditor-server serve`` process: gRPC server, TLS, health, reflection, signals.

Everything about *answering* lives in :mod:`auditor_server.service`; this module only wires
it to a port: message-size limits (gRPC's own, above the policy's per-request limit so that
oversized requests still reach the service and get a specific, logged refusal), a cap on
concurrent RPCs, the standard health and reflection services, TLS or mutual TLS from files,
SIGHUP to reload the policy and SIGTERM/SIGINT for a graceful stop.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from auditor_client.wire._proto import audit_pb2
from auditor_server.errors import ConfigError
from auditor_server.service import SERVICE_NAME, AuditService, generic_handler

logger = logging.getLogger(__name__)

MAX_RECEIVE_BYTES = 4 * 1024 * 1024
"""gRPC-level cap on an incoming message; the policy's (smaller) limit is enforced by the
service, so a request between the two gets a specific refusal that is also logged."""
MAX_SEND_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class TLSFiles:
    """Server certificate and key, and optionally the CA that client certificates must chain
    to (which switches on mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """Load and cross-check the files (key matches certificate) into gRPC credentials."""
        from auditor_server.security.tls import load_server_credentials

        loaded = load_server_credentials(self.cert, self.key, self.client_ca)
        return grpc.ssl_server_credentials(
            [(loaded.private_key, loaded.certificate_chain)],
            root_certificates=loaded.root_certificates,
            require_client_auth=loaded.require_client_auth,
        )


@dataclass(frozen=True)
class ServerOptions:
    """How to listen. ``tls`` None means plaintext, which ``serve`` allows only on request."""

    host: str = "127.0.0.1"
    port: int = 50051
    tls: TLSFiles | None = None
    max_workers: int = 16
    max_concurrent_rpcs: int = 64
    reserved_workers: int = 4
    """Worker threads model-channel calls may never take, so WhoAmI, GetPolicy and proofs
    always find one free however many auditors are running the model."""


def open_service(
    *,
    index_dir: Path,
    policy_path: Path,
    lab_key_path: Path,
    state_dir: Path,
    milvus_uri: str | None = None,
) -> AuditService:
    """Load the engine, policy, lab key and durable state; fail early and clearly.

    With ``milvus_uri`` the engine searches the snapshot's Milvus collection (token from
    ``$MILVUS_TOKEN``) instead of the index's FAISS file.
    """
    import os

    from auditor_server.attribution.engine import AttributionEngine
    from auditor_server.policy.model import Policy
    from auditor_server.security.lab_keys import load_lab_key

    policy = Policy.from_file(policy_path)
    lab_key = load_lab_key(lab_key_path)
    return AuditService.open(
        engine=AttributionEngine.open(
            index_dir, milvus_uri=milvus_uri, milvus_token=os.environ.get("MILVUS_TOKEN")
        ),
        policy=policy,
        policy_path=policy_path,
        lab_key=lab_key,
        state_dir=state_dir,
    )


def build_server(service: AuditService, options: ServerOptions) -> tuple[grpc.Server, int]:
    """A started-ready (not yet started) server and the port it is bound to."""
    service.max_model_calls = max(1, options.max_workers - options.reserved_workers)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=options.max_workers),
        maximum_concurrent_rpcs=options.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ],
    )
    server.add_generic_rpc_handlers((generic_handler(service),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (
            audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = f"{options.host}:{options.port}"
    try:
        if options.tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, options.tls.credentials())
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {address}: {exc}") from exc
    if port == 0:
        raise ConfigError(f"cannot listen on {address}")
    return server, port


def serve(service: AuditService, options: ServerOptions) -> None:
    """Serve until SIGTERM or SIGINT; SIGHUP reloads the policy.

    Prints one JSON line ``{"event": "listening", ...}`` on stdout once the port is bound, so
    scripts and tests that asked for port 0 learn the real one.
    """
    server, port = build_server(service, options)
    stop = threading.Event()

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        logger.warning("signal %d: stopping", signum)
        stop.set()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        service.reload_policy()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    server.start()
    print(
        json.dumps(
            {
                "event": "listening",
                "host": options.host,
                "port": port,
                "tls": options.tls is not None,
                "mtls": options.tls is not None and options.tls.client_ca is not None,
                "snapshot_id": service.engine.snapshot_id,
                "policy_hash": service.policy.policy_hash,
                "lab_key": service.lab_key.public_text,
            }
        ),
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop(grace=5).wait()
        service.close()
        print(json.dumps({"event": "stopped"}), flush=True)
        sys.stdout.flush()
