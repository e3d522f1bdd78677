"""Batches across recordings: each engine thread decodes up to BATCH_SIZE pieces at a time,
drawn from every recording being transcribed.

Every recording's pieces (the engine cuts a recording into windows of at most 30 s) wait here.
A free thread takes the next batch at once, without waiting for it to fill: a lone voice note
starts as soon as it comes, and under a burst whatever is ready when a thread frees up forms the
next batch. Recordings are served round robin in the order they came (the job slots admit jobs
by priority), one piece each per round, so a short note that comes while an hour-long file is
being decoded joins the very next batch. A thread that takes a batch while others are idle takes
its share of what is ready, not all of it: one long recording's pieces are decoded on every
thread at once (a decision that one batch makes for a whole recording, such as the engine's
language detection, is the run function's to share; see `engine.decoding`).

Nothing here knows about Whisper: `run` decodes a batch, and a result is whatever it returns.
An item decoded only in part (`Rest`: a window that stopped early) leaves the rest of its piece
here, ahead of the recording's later pieces, for whichever thread is free next; its parts are
joined when the last one comes. A batcher that `streams` lets `run` report items as they are
done (the engine: after each decoder call), so their works go on and their rests wait for a
free thread while the rest of the batch is still decoding. One recording's failure, withdrawal
(cancel, timeout) or bad piece never touches the others.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger(__name__)

P = TypeVar("P")
R = TypeVar("R")

#: How often an idle thread looks again even when nobody woke it (a safety net, not a delay:
#: `submit` wakes a thread at once).
IDLE_WAKE_SECONDS = 1.0
#: How much each earlier batch counts in the fit of a batch's seconds, against the next one.
TIMING_DECAY = 0.8


@dataclass(frozen=True, slots=True)
class Rest(Generic[P, R]):
    """`run`'s answer for an item decoded in part: the result so far, and the rest of the
    piece, to decode in a later batch."""

    done: R
    rest: P


class Work(Generic[P, R]):
    """One recording's pieces, their results as they come, and the future of all of them."""

    def __init__(
        self,
        pieces: Sequence[P],
        *,
        on_result: Callable[[Work[P, R]], None] | None = None,
        join: Callable[[list[R]], R] | None = None,
    ) -> None:
        #: What is left to decode of each piece: a piece decoded in part is replaced by its rest.
        self.pieces = list(pieces)
        self.results: list[R | None] = [None] * len(self.pieces)
        #: Called in the batch thread after each batch that brought results for this work.
        self.on_result = on_result
        #: A piece's parts as one result (needed where `run` answers with a `Rest`).
        self.join = join
        self.future: Future[list[R]] = Future()
        self._next = 0  # the first piece not yet handed to a batch
        self._again: list[int] = []  # pieces whose rest waits for a batch, before `_next`
        self._parts: dict[int, list[R]] = {}
        self._done = 0

    @property
    def finished(self) -> bool:
        """Whether every piece has its result, or the work failed or was withdrawn."""
        return self.future.done()

    def _ready(self) -> bool:
        return not self.finished and self._waiting() > 0

    def _waiting(self) -> int:
        return len(self._again) + len(self.pieces) - self._next

    def _left(self) -> list[P]:
        """The pieces (or rests) waiting for a batch."""
        return [self.pieces[i] for i in self._again] + self.pieces[self._next :]

    def _peek(self) -> int:
        """The index `_take` gives next."""
        return self._again[0] if self._again else self._next

    def _take(self) -> int:
        """The index of the next piece for a batch: a waiting rest first (earlier speech)."""
        if self._again:
            return self._again.pop(0)
        self._next += 1
        return self._next - 1

    def _keep(self, index: int, result: R | Rest[P, R]) -> bool:
        """Keep a piece's result, or its first part and its rest to decode next; whether the
        piece is done."""
        if isinstance(result, Rest):
            self._parts.setdefault(index, []).append(result.done)
            self.pieces[index] = result.rest
            bisect.insort(self._again, index)
            return False
        parts = self._parts.pop(index, None)
        if parts is not None and self.join is not None:
            result = self.join([*parts, result])
        self.results[index] = result
        self._done += 1
        return True


class Timing:
    """A batch's seconds as `fixed + per_unit * load` (its pieces' weights summed), fitted to
    the batches so far (least squares, each earlier batch counting TIMING_DECAY of the next):
    on a CPU a batch of one piece costs about twice as much a piece as a batch of eight."""

    def __init__(self) -> None:
        #: Decayed sums over the batches: count, load, seconds, load², load x seconds.
        self._sums = (0.0, 0.0, 0.0, 0.0, 0.0)

    def add(self, load: float, seconds: float) -> None:
        """Count one batch of `load` that took `seconds`."""
        w, n, t, nn, nt = (total * TIMING_DECAY for total in self._sums)
        self._sums = (w + 1, n + load, t + seconds, nn + load**2, nt + load * seconds)

    def fit(self) -> tuple[float, float] | None:
        """(fixed, per_unit) seconds, or None while no batch has taken any time."""
        w, n, t, nn, nt = self._sums
        if t <= 0 or n <= 0:
            return None
        spread = w * nn - n * n  # zero while every batch had the same load
        if spread > 1e-9 * w * nn:
            per_unit = (w * nt - n * t) / spread
            fixed = (t - per_unit * n) / w
            if per_unit > 0 and fixed >= 0:
                return fixed, per_unit
        return 0.0, t / n  # one load so far, or no line that makes sense: load alone


def _one(_piece: object) -> float:
    return 1.0


Item = tuple[Work[P, R], int]
"""One piece in a batch: its work and its index there."""
Report = Callable[[Sequence[tuple[int, Rest[P, R] | R | Exception]]], None]
"""Hands back the outcomes of some of a batch's items (by their place in the batch) before the
batch ends."""
Run = Callable[..., Sequence[Rest[P, R] | R | Exception]]
"""Decodes one batch, `run(batch)` (or `run(batch, report)` for a batcher that `streams`): per
item a result, a part of it and the rest to decode, or the exception that failed that item
alone."""


class Batcher(Generic[P, R]):
    """`threads` threads, each running batches of up to `size` pieces through `run`."""

    def __init__(
        self,
        run: Run[P, R],
        *,
        size: int,
        threads: int,
        name: str = "batch",
        on_batch: Callable[[int], None] | None = None,
        weight: Callable[[P], float] | None = None,
        streams: bool = False,
    ) -> None:
        self.run = run
        #: Whether `run` takes a `Report` too, for the items it finishes before the batch ends:
        #: their works go on at once (a rest joins the next batch of a thread that frees first).
        self.streams = streams
        #: A piece's share of a batch's time (the engine: its window and audio, in seconds); 1
        #: without.
        self.weight = weight or _one
        #: Told each batch's size as it starts (a metric).
        self.on_batch = on_batch
        self.size = size
        self.thread_count = threads
        self.name = name
        self._works: list[Work[P, R]] = []
        self._changed = threading.Condition()
        self._threads: list[threading.Thread] = []
        #: The threads running a batch: each one's start and load (its pieces' weights).
        self._running: dict[str, tuple[float, float]] = {}
        self._timing = Timing()  # the seconds a batch takes, from those so far
        self._closed = False
        #: Batches run and pieces in them, since the start (their ratio: the mean batch).
        self.batches = 0
        self.items = 0

    def submit(self, work: Work[P, R]) -> Work[P, R]:
        """Queue `work`'s pieces behind those already here; its future completes with them."""
        if not work.pieces:
            work.future.set_result([])
            return work
        with self._changed:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._start_threads()
            self._works.append(work)
            self._changed.notify()
        return work

    def withdraw(self, work: Work[P, R], error: BaseException) -> None:
        """Stop `work` (cancelled, timed out): no more of its pieces run, its future fails."""
        with self._changed:
            if work in self._works:
                self._works.remove(work)
            if not work.future.done():
                work.future.set_exception(error)

    def pending(self) -> int:
        """Pieces waiting for a batch, all recordings together."""
        with self._changed:
            return sum(w._waiting() for w in self._works)

    def close(self) -> None:
        """Stop the threads after their current batch; what still waits fails."""
        with self._changed:
            self._closed = True
            works, self._works = self._works, []
            self._changed.notify_all()
        for work in works:
            if not work.future.done():
                work.future.set_exception(RuntimeError("the engine was closed"))
        for thread in self._threads:
            thread.join()

    def _start_threads(self) -> None:
        if self._threads:
            return
        for number in range(self.thread_count):
            thread = threading.Thread(target=self._loop, name=f"{self.name}-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _loop(self) -> None:
        while True:
            with self._changed:
                batch = self._take()
                while not batch and not self._closed:
                    self._changed.wait(IDLE_WAKE_SECONDS)
                    batch = self._take()
                if not batch:
                    return
            reported: set[int] = set()
            results = self._run(batch, reported)
            self._finish(batch, results, reported)

    def _take(self) -> list[Item[P, R]]:
        """The next batch, round robin over ready works in arrival order (under the lock): at
        most `size` pieces, and no more than this thread's share of the ready ones (by weight)
        while other threads are free or free soon (one free is woken for the rest)."""
        batch: list[Item[P, R]] = []
        ready = [work for work in self._works if work._ready()]
        waiting = sum(self.weight(piece) for work in ready for piece in work._left())
        share = self._share(waiting, time.monotonic())
        load, full = 0.0, False
        while ready and not full:
            for work in list(ready):
                weight = self.weight(work.pieces[work._peek()])
                # The share to the nearest piece, and never an empty batch.
                full = len(batch) == self.size or bool(batch and load + weight / 2 > share)
                if full:
                    break
                batch.append((work, work._take()))
                load += weight
                if not work._ready():
                    ready.remove(work)
        if batch:
            self._running[threading.current_thread().name] = (time.monotonic(), load)
        if ready and len(self._running) < self.thread_count:
            self._changed.notify()
        return batch

    def _share(self, waiting: float, now: float) -> float:
        """The load (pieces' weights) of the `waiting` ones that the thread forming a batch
        takes (under the lock).

        With every thread free, or before any batch has taken time, its share among the free
        threads. Otherwise its share of all the work left, counting what the busy threads still
        have to decode (from the time batches have taken so far, `Timing`) as load at the cost
        of one more unit: so the last pieces of a burst are split between a thread that is free
        now and one that frees soon, and both end about together, rather than taken by the
        first while the other then waits idle."""
        free = self.thread_count - len(self._running)
        fit = self._timing.fit()
        if fit is None or not self._running:
            return waiting / free
        fixed, per_unit = fit
        ahead = sum(
            max(0.0, started + fixed + load * per_unit - now)
            for started, load in self._running.values()
        )
        return (waiting + ahead / per_unit) / self.thread_count

    def _run(
        self, batch: list[Item[P, R]], reported: set[int]
    ) -> Sequence[R | Rest[P, R] | Exception]:
        """`run`'s outcomes for the batch; those it reported early are recorded at once, and
        their places added to `reported`."""
        with self._changed:
            self.batches += 1
            self.items += len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch))

        def report(outcomes: Sequence[tuple[int, R | Rest[P, R] | Exception]]) -> None:
            fresh = [(place, outcome) for place, outcome in outcomes if place not in reported]
            reported.update(place for place, _ in fresh)
            self._record([batch[place] for place, _ in fresh], [outcome for _, outcome in fresh])

        try:
            results = self.run(batch, report) if self.streams else self.run(batch)
        # The boundary of a thread that must outlive any one batch: whatever `run` raised fails
        # this batch's works (and is logged), never the thread.
        except Exception as error:
            log.exception("batch_failed", items=len(batch))
            return [error] * len(batch)
        if len(results) != len(batch):
            wrong = RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
            return [wrong] * len(batch)
        return results

    def _finish(
        self,
        batch: list[Item[P, R]],
        results: Sequence[R | Rest[P, R] | Exception],
        reported: set[int],
    ) -> None:
        """The batch ended: its time counts, and the outcomes not reported early are recorded."""
        with self._changed:
            started, load = self._running.pop(threading.current_thread().name)
            self._timing.add(load, time.monotonic() - started)
        kept = [place for place in range(len(batch)) if place not in reported]
        self._record([batch[place] for place in kept], [results[place] for place in kept])

    def _record(
        self, items: list[Item[P, R]], results: Sequence[R | Rest[P, R] | Exception]
    ) -> None:
        """Record each piece's result (or part, queueing its rest); complete or fail its work;
        tell each work what came."""
        touched: list[Work[P, R]] = []
        completed: list[Work[P, R]] = []
        with self._changed:
            for (work, index), result in zip(items, results, strict=True):
                if work.finished:
                    continue  # withdrawn or failed meanwhile: its results are dropped
                if isinstance(result, Rest) and work.join is None:
                    result = RuntimeError("a Rest for a work that cannot join its results")
                if isinstance(result, Exception):
                    self._works.remove(work)
                    work.future.set_exception(result)
                    continue
                if not work._keep(index, result):
                    continue  # its rest waits for a batch
                if work not in touched:
                    touched.append(work)
                if work._done == len(work.pieces):
                    self._works.remove(work)
                    completed.append(work)
            self._changed.notify_all()
        for work in touched:
            if work.on_result is not None and not work.finished:
                try:
                    work.on_result(work)
                # A progress callback's bug fails its own recording, not the thread.
                except Exception as error:
                    log.exception("batch_callback_failed")
                    self.withdraw(work, error)
        with self._changed:  # under the lock: a withdrawal may be deciding at the same moment
            for work in completed:
                if not work.future.done():
                    work.future.set_result([r for r in work.results if r is not None])
