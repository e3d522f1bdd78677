"""Transcription slots handed out by priority: premium before free, turn by turn between people.

A waiting job's key is (class, turn, id):
- class 0 for premium, unlimited and admin senders, 1 for free ones;
- turn n when it is the n-th job its sender sent in the last PRIORITY_MAX_WAIT_SECONDS, so one
  person's flood takes turns with everyone else instead of going first;
- then order of arrival.
One rule against starvation: a free job that has waited PRIORITY_MAX_WAIT_SECONDS is class 0, so
it runs before any premium job that arrived after it (with the same turn). `places.count_ahead`
counts positions with the same key, so what users are told matches what happens.

With a shared broker (RabbitMQ) the same key becomes each message's priority (see `broker`):
class and turn, the turn counted up to the fifth; a sweeper publishes a free job again as
class 0 once it has waited that long (the job's lease makes the second copy harmless).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from voicebot.models import utcnow


@dataclass(eq=False)
class _Job:
    job_id: int
    user_id: int
    priority: int
    created_at: datetime
    granted: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def job_class(priority: int, created_at: datetime, *, now: datetime, max_wait: float) -> int:
    """0 runs first (premium, or free that waited `max_wait` seconds), then 1 (free)."""
    if priority > 0 or now - created_at >= timedelta(seconds=max_wait):
        return 0
    return 1


class Slots:
    """`size` slots; when one frees, the waiting job with the smallest (class, turn, id) gets it."""

    def __init__(self, size: int, *, max_wait: float) -> None:
        self.size = size
        self.max_wait = max_wait
        self.busy = 0
        self.waiters: list[_Job] = []
        #: Every job seen in the last `max_wait` seconds, by id: turns are counted from them.
        self.recent: dict[int, _Job] = {}

    @asynccontextmanager
    async def take(
        self, *, job_id: int, user_id: int, priority: int, created_at: datetime
    ) -> AsyncIterator[None]:
        """Hold a slot for the block; waits for its turn when all are busy."""
        job = _Job(job_id, user_id, priority, created_at)
        self.recent[job_id] = job
        if self.busy < self.size and not self.waiters:
            self.busy += 1
        else:
            self.waiters.append(job)
            try:
                await job.granted
            except asyncio.CancelledError:
                if job in self.waiters:
                    self.waiters.remove(job)
                elif job.granted.done() and not job.granted.cancelled():
                    self._release()  # granted just as it was cancelled: pass the slot on
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        self.busy -= 1
        if not self.waiters or self.busy >= self.size:
            return
        now = utcnow()
        since = now - timedelta(seconds=self.max_wait)
        waiting = {job.job_id for job in self.waiters}
        self.recent = {
            key: job
            for key, job in self.recent.items()
            if job.created_at >= since or key in waiting
        }

        def key(job: _Job) -> tuple[int, int, int]:
            turn = sum(
                1
                for other in self.recent.values()
                if other.user_id == job.user_id
                and other.job_id <= job.job_id
                and other.created_at >= since
            )
            klass = job_class(job.priority, job.created_at, now=now, max_wait=self.max_wait)
            return klass, turn, job.job_id

        best = min(self.waiters, key=key)
        self.waiters.remove(best)
        self.busy += 1
        best.granted.set_result(None)
