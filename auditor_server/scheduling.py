"""Fair scheduling of engine work across auditors.

The engine (one torch model with per-call capture state) can do one thing at a time, so
every request that needs it waits in a queue. With one shared lock, whoever queued most
got most: eight 64-item batches from one auditor made another auditor's single query wait
behind 512 forward+backward passes. Here each auditor has its own queue and a single engine
thread takes work from the auditors **round robin**, one job per auditor per turn, so an
auditor's wait grows with the number of *auditors* that are busy, not with how much any one
of them queued.

Attribution jobs that arrive together are run as **one featurize pass** (the engine's
``attribute_many``): the thread takes the next job round robin and adds every other queued
attribution job with the same search settings (excluded classes, ``top_k``), still in round
robin order, up to ``max_batch``. On two cores a pass over eight queries costs far less than
eight passes, which is what lets a campaign's concurrent workers speed up at all.

Score and Generate jobs (:class:`ScoreJob`, :class:`GenerateJob`) are batched the same way
when the scheduler is given the engine's ``score_many`` / ``generate_many``: concurrent
Score queries share one padded forward, concurrent Generate calls are decoded as one batch
(each row with its own settings, seed and withheld-text guard), because on two cores a
campaign's engine time is mostly decoding steps whose cost is the forward's fixed overhead,
not its width. Every Score/Generate settings combination is compatible, as the batched calls
handle each row's settings themselves. A batched Generate answers all its rows when the
longest is done, so a short request batched with a long one waits for it, never longer than
it would have waited queued behind it. A job alone, or whose batch failed, runs by itself
(the job is callable: its ``alone`` is the unbatched engine call), so one bad request never
fails its batch-mates and a lone request gets exactly the unbatched answer.

A job whose caller has given up (deadline passed, call cancelled) before it starts is
dropped without running. Only the engine thread touches the engine.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["AttributeJob", "EngineScheduler", "GenerateJob", "SchedulerClosedError", "ScoreJob"]


class SchedulerClosedError(RuntimeError):
    """Work was submitted after :meth:`EngineScheduler.close`."""


@dataclass(frozen=True)
class AttributeJob:
    """One attribution query; jobs with equal :attr:`batch_key` can share a featurize pass."""

    prompt: str
    completion: str
    top_k: int
    exclude_classes: frozenset[str]

    @property
    def batch_key(self) -> tuple[frozenset[str], int]:
        return (self.exclude_classes, self.top_k)


@dataclass(frozen=True, eq=False)
class ScoreJob:
    """One Score query; any two can share a forward (the engine's ``score_many``).

    Calling the job runs it alone (``alone``, the engine's ``score``): what the scheduler
    does without company or a batched call, after a failed batch, and what the service
    does when it runs without the scheduler.
    """

    prompt: str
    completion: str
    alone: Callable[[], Any]

    def __call__(self) -> Any:
        return self.alone()


@dataclass(frozen=True, eq=False)
class GenerateJob:
    """One Generate call, ``(prompt, options)`` as the engine's ``generate_many`` takes it
    (``options``: ``generate_constrained``'s keyword arguments, the guard included); any two
    can be decoded in one batch. Calling the job runs it alone, as :class:`ScoreJob`."""

    prompt: str
    options: Mapping[str, Any]
    alone: Callable[[], Any]

    def __call__(self) -> Any:
        return self.alone()


Work = Callable[[], Any] | AttributeJob | ScoreJob | GenerateJob


@dataclass
class _Entry:
    owner: str
    work: Work
    future: Future[Any] = field(default_factory=Future)


AttributeMany = Callable[[Sequence[tuple[str, str]], int, Collection[str]], list[Any]]
"""``(pairs, top_k, exclude_classes) -> answers``, the engine's batched attribution."""
ScoreMany = Callable[[Sequence[tuple[str, str]]], list[Any]]
"""``pairs -> results``, the engine's batched Score."""
GenerateMany = Callable[[Sequence[tuple[str, Mapping[str, Any]]]], list[Any]]
"""``[(prompt, options)] -> results``, the engine's batched Generate."""


class EngineScheduler:
    """One engine thread serving per-auditor queues round robin.

    Args:
        attribute_many: the engine's batched attribution call.
        score_many: the engine's batched Score; without it Score jobs run one by one.
        generate_many: the engine's batched Generate; without it Generate jobs run one by one.
        max_batch: most jobs in one batched pass.
    """

    def __init__(
        self,
        attribute_many: AttributeMany,
        *,
        score_many: ScoreMany | None = None,
        generate_many: GenerateMany | None = None,
        max_batch: int = 8,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._attribute_many = attribute_many
        self._score_many = score_many
        self._generate_many = generate_many
        self._max_batch = max_batch
        self._queues: OrderedDict[str, deque[_Entry]] = OrderedDict()
        self._cond = threading.Condition()
        self._closed = False
        self.passes = 0
        """Engine passes run so far (a batched pass counts once)."""
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    # --- submitting ---------------------------------------------------------------------

    def submit(self, owner: str, work: Work) -> Future[Any]:
        """Queue ``work`` for ``owner``; the future holds its result or exception.

        Cancel the future (``future.cancel()``) to drop the job if it has not started.
        """
        entry = _Entry(owner, work)
        with self._cond:
            if self._closed:
                raise SchedulerClosedError("the engine scheduler has stopped")
            self._queues.setdefault(owner, deque()).append(entry)
            self._cond.notify()
        return entry.future

    def pending(self, owner: str | None = None) -> int:
        """Queued (not yet started) jobs, of one owner or of all."""
        with self._cond:
            if owner is not None:
                return len(self._queues.get(owner, ()))
            return sum(len(q) for q in self._queues.values())

    def close(self) -> None:
        """Stop the engine thread once the queued work is done; later submits raise."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    # --- the engine thread ------------------------------------------------------------------

    def _next(self) -> list[_Entry] | None:
        """The next job round robin (plus batchable company); None once closed and idle."""
        with self._cond:
            while True:
                while self._queues:
                    owner, queue = next(iter(self._queues.items()))
                    entry = queue.popleft()
                    self._rotate(owner)
                    if not entry.future.set_running_or_notify_cancel():
                        continue  # its caller gave up before it started
                    batch = [entry]
                    key = self._batch_key(entry.work)
                    if key is not None:
                        batch.extend(self._companions(key))
                    return batch
                if self._closed:
                    return None
                self._cond.wait()

    def _rotate(self, owner: str) -> None:
        """Send ``owner`` to the back of the turn order (and forget it when idle)."""
        queue = self._queues.pop(owner)
        if queue:
            self._queues[owner] = queue

    def _batch_key(self, work: Work) -> tuple[Any, ...] | None:
        """Jobs with equal keys can share a pass; None for work that runs alone."""
        if isinstance(work, AttributeJob):
            return ("attribute", *work.batch_key)
        if isinstance(work, ScoreJob) and self._score_many is not None:
            return ("score",)
        if isinstance(work, GenerateJob) and self._generate_many is not None:
            return ("generate",)
        return None

    def _companions(self, key: tuple[Any, ...]) -> list[_Entry]:
        """Queued jobs with the same batch key, taken round robin, up to the batch size.

        Each owner's first matching job is taken, not only the head of its queue: one
        auditor's concurrent calls have no order among themselves, and a campaign's workers
        interleave kinds (a Generate, then a Score...), so heads alone would rarely match.
        Fairness is kept: owners still contribute in turn, and a batch is one pass.
        """
        taken: list[_Entry] = []
        progress = True
        while progress and len(taken) + 1 < self._max_batch:
            progress = False
            for owner in list(self._queues):
                if len(taken) + 1 >= self._max_batch:
                    break
                queue = self._queues[owner]
                found = next(
                    (i for i, e in enumerate(queue) if self._batch_key(e.work) == key), None
                )
                if found is None:
                    continue
                entry = queue[found]
                del queue[found]
                self._rotate(owner)
                progress = True
                if entry.future.set_running_or_notify_cancel():
                    taken.append(entry)
        return taken

    def _loop(self) -> None:
        while (batch := self._next()) is not None:
            self.passes += 1
            try:
                self._run(batch)
            except BaseException as exc:  # the thread must outlive any one job
                logger.exception("engine job failed outside its future")
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(exc)

    def _run(self, batch: list[_Entry]) -> None:
        first = batch[0].work
        if isinstance(first, AttributeJob):
            jobs = [e.work for e in batch if isinstance(e.work, AttributeJob)]
            self._run_batched(
                batch,
                lambda: self._attribute_many(
                    [(j.prompt, j.completion) for j in jobs], first.top_k, first.exclude_classes
                ),
            )
        elif len(batch) == 1:
            _settle(batch[0].future, first)  # plain work, or a Score/Generate with no company
        elif isinstance(first, ScoreJob):
            assert self._score_many is not None
            score_many = self._score_many
            scores = [e.work for e in batch if isinstance(e.work, ScoreJob)]
            self._run_batched(batch, lambda: score_many([(j.prompt, j.completion) for j in scores]))
        else:
            assert isinstance(first, GenerateJob) and self._generate_many is not None
            generate_many = self._generate_many
            gens = [e.work for e in batch if isinstance(e.work, GenerateJob)]
            self._run_batched(batch, lambda: generate_many([(j.prompt, j.options) for j in gens]))

    def _run_batched(self, batch: list[_Entry], call: Callable[[], list[Any]]) -> None:
        """One engine call for the whole batch; if it fails, each job alone.

        One bad request (an input the engine refuses) must not fail its batch-mates: each
        then runs on its own and gets its own answer or error. A lone job's failure is its
        answer (running it again would fail the same way).
        """
        try:
            answers = call()
            if len(answers) != len(batch):
                raise RuntimeError(f"{len(answers)} answers for a batch of {len(batch)}")
        except Exception as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            logger.debug("batched engine call failed; running its jobs one by one", exc_info=True)
            for entry in batch:
                _settle(entry.future, lambda work=entry.work: self.run_alone(work))  # type: ignore[misc]
            return
        for entry, answer in zip(batch, answers, strict=True):
            entry.future.set_result(answer)

    def run_alone(self, work: Work) -> Any:
        """Run one job with no company, on the calling thread.

        The fallback of a failed batch, and the service's path when it runs without the
        scheduler (fair scheduling switched off in tests).
        """
        if isinstance(work, AttributeJob):
            pairs = [(work.prompt, work.completion)]
            (answer,) = self._attribute_many(pairs, work.top_k, work.exclude_classes)
            return answer
        return work()


def _settle(future: Future[Any], work: Callable[[], Any]) -> None:
    try:
        result = work()
    except BaseException as exc:
        future.set_exception(exc)
    else:
        future.set_result(result)
