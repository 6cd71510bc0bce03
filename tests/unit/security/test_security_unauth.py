"""Per-peer counting and limiting of failed authentications."""

from __future__ import annotations

from auditor_server.security.unauth import UnauthenticatedLimiter, peer_host


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_peer_host_drops_the_port() -> None:
    assert peer_host("ipv4:127.0.0.1:54321") == "ipv4:127.0.0.1"
    assert peer_host("ipv6:[::1]:443") == "ipv6:[::1]"
    assert peer_host("unix:/tmp/sock") == "unix:/tmp/sock"


def test_a_peer_is_blocked_after_its_limit_until_the_window_ends() -> None:
    clock = Clock()
    limiter = UnauthenticatedLimiter(max_failures=3, window_s=60, clock=clock)
    peer, other = "ipv4:10.0.0.1", "ipv4:10.0.0.2"
    for _ in range(2):
        limiter.record(peer, "BadSignature")
    assert not limiter.blocked(peer)
    limiter.record(peer, "BadSignature")
    assert limiter.blocked(peer)
    assert not limiter.blocked(other)  # one peer's flood does not block another
    clock.now += 61
    assert not limiter.blocked(peer)
    assert limiter.total == 3


def test_memory_is_bounded_by_max_peers() -> None:
    limiter = UnauthenticatedLimiter(max_failures=1, window_s=60, max_peers=100, clock=Clock())
    for i in range(1000):
        limiter.record(f"ipv4:10.0.{i // 256}.{i % 256}", "UnknownKey")
    assert len(limiter._peers) == 100
    assert limiter.blocked("ipv4:10.0.3.231")  # the most recent is remembered
    assert not limiter.blocked("ipv4:10.0.0.0")  # the oldest was forgotten
