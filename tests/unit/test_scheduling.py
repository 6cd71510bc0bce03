"""The engine scheduler: round robin across auditors, batching, cancellation, failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import pytest

from auditor_server.scheduling import (
    AttributeJob,
    EngineScheduler,
    GenerateJob,
    SchedulerClosedError,
    ScoreJob,
)


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


# --- Score and Generate jobs ------------------------------------------------------------------


class BatchRecorder(Recorder):
    """:class:`Recorder` with the engine's batched Score and Generate calls."""

    def score_many(self, pairs: Sequence[tuple[str, str]]) -> list[str]:
        self.gate.wait()
        self.calls.append([f"score:{p}" for p, _ in pairs])
        if any(p == "bad" for p, _ in pairs):
            raise ValueError("bad score")
        return [f"scored {p}" for p, _ in pairs]

    def generate_many(self, requests: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
        self.gate.wait()
        self.calls.append([f"gen:{p}" for p, _ in requests])
        if any(p == "bad" for p, _ in requests):
            raise ValueError("bad prompt")
        return [f"generated {p}/{o['seed']}" for p, o in requests]


def score_job(engine: Recorder, prompt: str) -> ScoreJob:
    def alone() -> str:
        engine.gate.wait()
        engine.calls.append([f"score-alone:{prompt}"])
        if prompt == "bad":
            raise ValueError("bad score")
        return f"scored {prompt}"

    return ScoreJob(prompt, " x", alone=alone)


def gen_job(engine: Recorder, prompt: str, seed: int = 0) -> GenerateJob:
    def alone() -> str:
        engine.gate.wait()
        engine.calls.append([f"gen-alone:{prompt}"])
        if prompt == "bad":
            raise ValueError("bad prompt")
        return f"generated {prompt}/{seed}"

    return GenerateJob(prompt, {"seed": seed, "max_new_tokens": 8}, alone=alone)


def _batching(engine: BatchRecorder, max_batch: int) -> EngineScheduler:
    return EngineScheduler(
        engine.attribute_many,
        score_many=engine.score_many,
        generate_many=engine.generate_many,
        max_batch=max_batch,
    )


def test_score_and_generate_jobs_share_passes_by_kind_in_round_robin_order() -> None:
    engine = BatchRecorder()
    scheduler = _batching(engine, max_batch=3)
    _hold(engine, scheduler)
    gens = [scheduler.submit(o, gen_job(engine, f"{o}{i}", seed=i)) for o in "ab" for i in (0, 1)]
    scores = [scheduler.submit("c", score_job(engine, f"c{i}")) for i in range(2)]
    attribution = scheduler.submit("d", job("d0"))
    engine.gate.set()
    want = [f"generated {o}{i}/{i}" for o in "ab" for i in (0, 1)]
    assert [f.result(5) for f in gens] == want
    assert [f.result(5) for f in scores] == ["scored c0", "scored c1"]
    assert attribution.result(5) == "d0:5:private"
    passes = engine.calls[1:]
    # Kinds never mix; within a kind, owners alternate, capped at max_batch.
    assert passes[0] == ["gen:a0", "gen:b0", "gen:a1"], passes
    assert ["score:c0", "score:c1"] in passes
    assert ["d0"] in passes
    assert ["gen-alone:b1"] in passes  # left alone, it runs by itself: the exact single path
    assert len(passes) == 4
    scheduler.close()


def test_a_failing_score_or_generate_batch_runs_each_job_alone() -> None:
    engine = BatchRecorder()
    scheduler = _batching(engine, max_batch=8)
    _hold(engine, scheduler)
    good_gen = scheduler.submit("a", gen_job(engine, "good"))
    bad_gen = scheduler.submit("b", gen_job(engine, "bad"))
    good_score = scheduler.submit("a", score_job(engine, "good"))
    bad_score = scheduler.submit("b", score_job(engine, "bad"))
    engine.gate.set()
    assert good_gen.result(5) == "generated good/0"
    assert good_score.result(5) == "scored good"
    with pytest.raises(ValueError, match="bad prompt"):
        bad_gen.result(5)
    with pytest.raises(ValueError, match="bad score"):
        bad_score.result(5)
    assert ["gen-alone:good"] in engine.calls and ["score-alone:good"] in engine.calls
    scheduler.close()


def test_without_the_batched_calls_score_and_generate_jobs_run_one_by_one() -> None:
    engine = BatchRecorder()
    scheduler = EngineScheduler(engine.attribute_many, max_batch=8)
    _hold(engine, scheduler)
    futures = [scheduler.submit(o, gen_job(engine, o)) for o in "ab"]
    futures += [scheduler.submit(o, score_job(engine, o)) for o in "ab"]
    engine.gate.set()
    assert [f.result(5) for f in futures] == [
        "generated a/0",
        "generated b/0",
        "scored a",
        "scored b",
    ]
    assert all(len(p) == 1 and "alone" in p[0] for p in engine.calls[1:]), engine.calls
    assert scheduler.passes == 5
    scheduler.close()


def test_cancelled_generate_jobs_are_left_out_of_the_batch() -> None:
    engine = BatchRecorder()
    scheduler = _batching(engine, max_batch=8)
    _hold(engine, scheduler)
    kept = [scheduler.submit(o, gen_job(engine, o)) for o in "ab"]
    dropped = scheduler.submit("c", gen_job(engine, "c"))
    assert dropped.cancel()
    engine.gate.set()
    assert [f.result(5) for f in kept] == ["generated a/0", "generated b/0"]
    assert engine.calls[1:] == [["gen:a", "gen:b"]]
    scheduler.close()
