"""Count and rate-limit requests that fail authentication, per peer, outside the ledger.

The ledger records what the lab answered to *registered auditors*; a request without a
valid signature from a registered key is nobody's request, and logging it there let anyone
who could reach the port grow the lab's permanent, signed, fsync'd log for ever. Such
requests are instead counted here, per peer address and time window, and logged through the
ordinary process log (once per peer and window when a peer trips the limit, so a flood
cannot flood the log either). While a peer is over its limit its failures all get one
generic answer, so it learns nothing about which check failed. Its requests are still
*verified*, never refused unread: a registered auditor behind the same address as an
attacker (NAT, a proxy, a TLS terminator) must keep being served. Protection against raw
request floods belongs to the transport (``--max-concurrent-rpcs``, a proxy in front).

Memory is bounded: at most ``max_peers`` addresses are tracked; the least recently seen is
forgotten first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

__all__ = ["UnauthenticatedLimiter", "peer_host"]


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string (``ipv4:1.2.3.4:5678`` → ``ipv4:1.2.3.4``).

    The port changes with every connection, so limiting by it would limit nothing.
    """
    if peer.startswith("ipv6:[") and "]" in peer:
        return peer[: peer.index("]") + 1]
    if peer.startswith("ipv4:") and peer.count(":") == 2:
        return peer.rsplit(":", 1)[0]
    return peer


@dataclass
class _Window:
    start: float
    failures: int = 0
    reported: bool = False


class UnauthenticatedLimiter:
    """Per-peer failure counter over fixed windows.

    Args:
        max_failures: failed authentications a peer may make per window before it is
            refused without parsing until the window ends.
        window_s: window length in seconds.
        max_peers: most peers remembered at once.
        clock: monotonic seconds (injected in tests).
    """

    def __init__(
        self,
        *,
        max_failures: int = 30,
        window_s: float = 60.0,
        max_peers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_peers = max_peers
        self._clock = clock
        self._peers: OrderedDict[str, _Window] = OrderedDict()
        self._lock = threading.Lock()
        self.total = 0
        """Failed authentications counted since start (all peers)."""

    def _window(self, peer: str, now: float) -> _Window:
        window = self._peers.get(peer)
        if window is None or now - window.start >= self.window_s:
            window = _Window(start=now)
        self._peers[peer] = window
        self._peers.move_to_end(peer)
        while len(self._peers) > self.max_peers:
            self._peers.popitem(last=False)
        return window

    def blocked(self, peer: str) -> bool:
        """Whether ``peer`` is over its limit in the current window."""
        now = self._clock()
        with self._lock:
            window = self._peers.get(peer)
            if window is None or now - window.start >= self.window_s:
                return False
            return window.failures >= self.max_failures

    def record(self, peer: str, reason: str) -> None:
        """Count one failed authentication by ``peer``; ``reason`` is the refusal's class.

        Logged at debug level each time, and at warning level once per window when the peer
        reaches the limit.
        """
        now = self._clock()
        with self._lock:
            window = self._window(peer, now)
            window.failures += 1
            self.total += 1
            trip = window.failures >= self.max_failures and not window.reported
            if trip:
                window.reported = True
        logger.debug("unauthenticated request from %s refused: %s", peer, reason)
        if trip:
            logger.warning(
                "peer %s made %d unauthenticated requests within %.0f s; refusing it until "
                "the window ends",
                peer,
                self.max_failures,
                self.window_s,
            )
