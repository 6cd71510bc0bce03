"""Attack 5: one auditor starves every other.

The abuser keeps 8 concurrent 64-item AttributeBatch calls going (read as fast as they
come) and 8 more batch streams open that it never reads, re-opening any call that ends.
Meanwhile another auditor (the victim) calls WhoAmI back to back and then Attribute; the
same is measured idle first. With fair scheduling off (one engine lock, first come first
served, no per-auditor cap, no server deadline) the unread streams hold the server's worker
threads and the victim's WhoAmI times out and its Attribute waits seconds. With it on, the
abuser gets ``max_concurrent_per_auditor`` calls, unread streams are cancelled at
``call_deadline_s`` (5 s in this policy), and WhoAmI stays fast.

This suite once found a hole here: ``serve``'s old default of 8 worker threads left 8 - 4
reserved = 4 model-channel calls for *all* auditors, exactly one auditor's
``max_concurrent_per_auditor``, so the abuser held them all and the victim's Attribute was
refused. Now one auditor never holds more than half of the model-channel threads, and
``serve`` defaults to 32 workers.

Latencies are measured on a shared 2-core machine with the abuser's 16 client threads in
this process, so the bounds are generous (the real target, WhoAmI p99 ≤ 50 ms, is in the
figures of ``bench/attack_figures.py``).
"""

from __future__ import annotations

import pytest

from tests.adversarial.attacks import Starvation, starvation
from tests.adversarial.conftest import StartServer

WHOAMI_P99_BOUND_S = 0.5
ATTRIBUTE_FACTOR = 5.0


@pytest.fixture(scope="module")
def unfair(start_server: StartServer) -> Starvation:
    server = start_server("fair_scheduling")
    try:
        return starvation(server)
    finally:
        server.stop()  # its threads may still hang on abandoned streams


@pytest.fixture(scope="module")
def fair(start_server: StartServer) -> Starvation:
    server = start_server()
    try:
        return starvation(server)
    finally:
        server.stop()


def _attribute_bound(run: Starvation) -> float:
    return max(ATTRIBUTE_FACTOR * run.idle.attribute_p50, 0.5)


def test_idle_baseline_is_fast(fair: Starvation, unfair: Starvation) -> None:
    for run in (fair, unfair):
        assert not run.idle.whoami_failed and not run.idle.attribute_failed
        assert run.idle.whoami_p50 < 0.1


def test_with_fair_scheduling_off_the_victim_starves(unfair: Starvation) -> None:
    abused = unfair.abused
    assert abused.whoami_failed or abused.whoami_p99 > WHOAMI_P99_BOUND_S
    assert abused.attribute_failed or abused.attribute_max > _attribute_bound(unfair)
    # Nothing ends the streams nobody reads: they wait, holding their threads.
    assert unfair.unread_cancelled == 0 and unfair.unread_waited >= 1


def test_with_fair_scheduling_on_whoami_stays_fast(fair: Starvation) -> None:
    abused = fair.abused
    assert not abused.whoami_failed
    assert abused.whoami_p99 <= WHOAMI_P99_BOUND_S
    # The abuser got its few slots and was refused the rest at once, not queued.
    assert fair.abuser_calls["RESOURCE_EXHAUSTED"] > 0


def test_with_fair_scheduling_on_unread_streams_are_cancelled_at_the_deadline(
    fair: Starvation,
) -> None:
    assert fair.unread_cancelled >= 1, dict(fair.abuser_calls)
    assert fair.unread_waited == 0, dict(fair.abuser_calls)


def test_with_fair_scheduling_on_the_victims_attribute_is_served(fair: Starvation) -> None:
    abused = fair.abused
    assert not abused.attribute_failed, dict(abused.attribute_failed)
    assert abused.attribute_p50 <= _attribute_bound(fair)
