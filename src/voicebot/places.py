"""Places in line: how many jobs are ahead of one (the order `slots` and the broker keep), and
how many run at once, from the database, so every bot process shows the same honest place.

Jobs run at once: the slots of every process that runs jobs (`voicebot run`, `voicebot
worker`), each registered in `workers` with its WORKERS and kept fresh by its lease heartbeat
(`leases.heartbeat`); one not seen for a whole lease is gone (killed) and no longer counted. A
process that stops deletes its row.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cache

from sqlalchemy import ColumnElement, and_, case, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from voicebot.models import Job, JobStatus, WorkerSlots, _insert_for, as_utc


async def register(
    session: AsyncSession, *, worker_id: str, slots: int, now: datetime, sole: bool = False
) -> None:
    """Note that `worker_id` runs up to `slots` jobs at once, as of `now`; `sole`: it is the
    only process on the database (`leases.sole_worker`), so any other row is a dead one's."""
    if sole:
        await session.execute(delete(WorkerSlots).where(WorkerSlots.id != worker_id))
    insert = _insert_for(session)(WorkerSlots).values(id=worker_id, slots=slots, seen_at=now)
    await session.execute(
        insert.on_conflict_do_update(index_elements=["id"], set_={"slots": slots, "seen_at": now})
    )


async def unregister(session: AsyncSession, *, worker_id: str) -> None:
    """Forget `worker_id` (it stops)."""
    await session.execute(delete(WorkerSlots).where(WorkerSlots.id == worker_id))


async def running_at_once(session: AsyncSession, *, seen_since: datetime) -> int:
    """The slots of the processes seen since `seen_since`: jobs that can run at once."""
    found = await session.scalar(
        select(func.sum(WorkerSlots.slots)).where(WorkerSlots.seen_at >= seen_since)
    )
    return int(found or 0)


@cache
def _earlier() -> type[Job]:
    """`Job` aliased as the sender's earlier jobs, made once.

    SQLAlchemy indexes an alias's columns the first time an expression is adapted to it: about
    1 ms of Python for this table on an idle process, and up to 10 ms on a busy event loop.
    A fresh alias for each reply's place in line made that the largest part of the event
    loop's work in a burst (0.39 of 1.34 s). The alias itself holds no state of a query.
    """
    return aliased(Job, name="earlier")


def order_of(*, since: datetime) -> tuple[ColumnElement[int], ColumnElement[int]]:
    """A job row's class (0 premium, or free recorded at or before `since`; 1 free) and turn
    (its sender's jobs recorded since `since`, up to it), as SQL over `Job`: the key of `slots`."""
    earlier = _earlier()
    turn = (
        select(func.count())
        .select_from(earlier)
        .where(earlier.user_id == Job.user_id, earlier.id <= Job.id, earlier.created_at >= since)
        .correlate(Job)
        .scalar_subquery()
    )
    klass = case((or_(Job.priority > 0, Job.created_at <= since), 0), else_=1)
    return klass, turn


async def count_ahead(session: AsyncSession, *, job_id: int, max_wait: float, now: datetime) -> int:
    """Unfinished jobs that hold a slot or will get one before `job_id` (the key of `slots`)."""
    job = await session.get(Job, job_id)
    if job is None:
        return 0
    promoted_since = now - timedelta(seconds=max_wait)
    mine = (
        0 if job.priority > 0 or as_utc(job.created_at) <= promoted_since else 1,
        await _turn_of(session, user_id=job.user_id, job_id=job_id, since=promoted_since),
    )
    klass, turn = order_of(since=promoted_since)
    before = or_(
        klass < mine[0],
        and_(klass == mine[0], or_(turn < mine[1], and_(turn == mine[1], Job.id < job_id))),
    )
    found = await session.execute(
        select(func.count())
        .select_from(Job)
        .where(
            Job.id != job_id,
            or_(
                Job.status.in_((JobStatus.running, JobStatus.transcribed)),
                and_(Job.status == JobStatus.queued, before),
            ),
        )
    )
    return int(found.scalar_one())


async def _turn_of(session: AsyncSession, *, user_id: int, job_id: int, since: datetime) -> int:
    """How many jobs (this one included) its sender has sent since `since`."""
    found = await session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.user_id == user_id, Job.id <= job_id, Job.created_at >= since)
    )
    return int(found or 0)
