"""The engine scheduler: round robin across auditors, batching, cancellation, failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence
from concurrent.futures import Future

import pytest

from auditor_server.scheduling import AttributeJob, EngineScheduler, SchedulerClosedError


class Recorder:
    """A fake engine that records the order of the work it was given, and can be held."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def attribute_many(
        self, pairs: Sequence[tuple[str, str]], top_k: int, excluded: Collection[str]
    ) -> list[str]:
        self.gate.wait()
        self.calls.append([p for p, _ in pairs])
        if any(p == "bad" for p, _ in pairs):
            raise ValueError("bad query")
        return [f"{p}:{top_k}:{','.join(sorted(excluded))}" for p, _ in pairs]

    def work(self, name: str) -> str:
        self.gate.wait()
        self.calls.append([name])
        return name


def job(prompt: str, top_k: int = 5, excluded: frozenset[str] = frozenset({"private"})):
    return AttributeJob(prompt, " x", top_k, excluded)


def _hold(engine: Recorder, scheduler: EngineScheduler) -> Future[str]:
    """Occupy the engine thread so that everything submitted next queues up."""
    engine.gate.clear()
    blocker = scheduler.submit("blocker", lambda: engine.work("blocker"))
    deadline = time.monotonic() + 5
    while scheduler.pending() and time.monotonic() < deadline:
        time.sleep(0.001)
    return blocker


def test_one_auditors_backlog_does_not_delay_another_beyond_one_turn() -> None:
    engine = Recorder()
    scheduler = EngineScheduler(engine.attribute_many, max_batch=1)
    blocker = _hold(engine, scheduler)
    hog = [scheduler.submit("hog", lambda i=i: engine.work(f"hog{i}")) for i in range(20)]
    victim = scheduler.submit("victim", lambda: engine.work("victim"))
    engine.gate.set()
    assert victim.result(5) == "victim"
    for f in [blocker, *hog]:
        f.result(5)
    order = [c[0] for c in engine.calls]
    # First come first served would put the victim last, behind all 20 of the hog's jobs.
    assert order.index("victim") <= 2, order
    scheduler.close()


def test_attribution_jobs_with_the_same_settings_share_one_pass_in_round_robin_order() -> None:
    engine = Recorder()
    scheduler = EngineScheduler(engine.attribute_many, max_batch=4)
    _hold(engine, scheduler)
    a = [scheduler.submit("a", job(f"a{i}")) for i in range(3)]
    b = [scheduler.submit("b", job(f"b{i}")) for i in range(3)]
    other = scheduler.submit("c", job("c0", top_k=9))  # another top_k: its own pass
    engine.gate.set()
    results = [f.result(5) for f in [*a, *b, other]]
    assert results[0] == "a0:5:private" and results[-1] == "c0:9:private"
    passes = engine.calls[1:]
    assert passes[0] == ["a0", "b0", "a1", "b1"], passes  # alternating, capped at 4
    assert ["c0"] in passes
    assert sum(len(p) for p in passes) == 7
    scheduler.close()


def test_a_failing_query_fails_alone_not_its_batch_mates() -> None:
    engine = Recorder()
    scheduler = EngineScheduler(engine.attribute_many, max_batch=8)
    _hold(engine, scheduler)
    good = scheduler.submit("a", job("good"))
    bad = scheduler.submit("b", job("bad"))
    engine.gate.set()
    assert good.result(5) == "good:5:private"
    with pytest.raises(ValueError, match="bad query"):
        bad.result(5)
    scheduler.close()


def test_a_job_cancelled_before_it_starts_never_runs() -> None:
    engine = Recorder()
    scheduler = EngineScheduler(engine.attribute_many)
    _hold(engine, scheduler)
    dropped = scheduler.submit("a", lambda: engine.work("dropped"))
    assert dropped.cancel()
    kept = scheduler.submit("a", lambda: engine.work("kept"))
    engine.gate.set()
    assert kept.result(5) == "kept"
    assert ["dropped"] not in engine.calls
    scheduler.close()


def test_exceptions_reach_the_caller_and_the_thread_goes_on() -> None:
    engine = Recorder()
    scheduler = EngineScheduler(engine.attribute_many)

    def boom() -> str:
        raise RuntimeError("engine failure")

    with pytest.raises(RuntimeError, match="engine failure"):
        scheduler.submit("a", boom).result(5)
    assert scheduler.submit("a", lambda: "still serving").result(5) == "still serving"
    scheduler.close()
    with pytest.raises(SchedulerClosedError):
        scheduler.submit("a", lambda: "late")
