"""Job leases: the database decides which worker runs a job, so that no two run it at once.

A worker (one process: `Runtime.worker_id`) takes a job's lease when it starts running it, in
one conditional UPDATE (`claim`): only while the job is unfinished and unclaimed, claimed by
this worker already, or its lease expired. The lease is `jobs.claimed_by` and
`jobs.lease_until`, JOB_LEASE_SECONDS ahead; `heartbeat` renews this worker's leases every
third of that, in one UPDATE that only touches rows still claimed by it. The broker decides
nothing: a job published twice (a re-publish, a redelivery) is run by whoever claims it, and the
other copy finds it taken and ends.

A worker that lost a lease (it stalled past `lease_until`, and another took the job) stops that
job as a cancel stops it (`drop`, noticed by the heartbeat), but says and writes nothing: the
new holder answers. Every write that moves a running job on (running, the transcript and its
charge, a cache hit, each delivered part, done, a failure, a postponement) is conditional on
`claimed_by` still being this worker, and delivery renews the lease first (`ensure_held`), so a
worker that lost it stops before it sends. (Not conditional: dropping a job whose chat is gone,
which tells no one, and the status reply, which is sent before the job is claimed.) The one
window left: a worker stalled for a whole lease between that renewal and a send (or between a
send and its record) can send a part the new holder sends again.

`sweep` (every half lease) publishes again the unfinished jobs no worker holds: those whose
lease expired (a worker killed mid-job), and those unclaimed for over a lease since they were
recorded that no durable broker holds (a publish that was lost, a job given back at a
shutdown), leaving out the jobs this process has in hand. With the embedded broker a process
has every job it was given in hand while it waits for a slot; RabbitMQ's jobs are marked in
`jobs.published_priority` (see `broker`), and free jobs it holds that have waited
PRIORITY_MAX_WAIT_SECONDS are published again at premium priority. Publishing one twice is
harmless: the claim decides. A job cancelled elsewhere (a press, /forget) while its worker died
is published again the same way, and run again it only shows "Cancelled".

Ownership is `claimed_by` alone: a worker whose lease expired but that nobody took still holds
the job (its writes and its heartbeat go through); expiry only lets another worker take it.
A job keeps its `claimed_by` when it ends (who ran it); a postponed one is released at once.

`voicebot run` on SQLite is the only process on its database (it holds the run lock beside the
file), so the leases it finds at start are those of a process that is gone: it takes them all
back at once (`release_all`, from `jobs.recover`) instead of waiting for them to expire. With
another database several processes may share it, and the sweeper waits for the expiry.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from voicebot import cancels, places, texts
from voicebot.broker import starving
from voicebot.config import Settings
from voicebot.errors import JobCancelledError, LeaseLostError
from voicebot.models import ACTIVE, Job, untold, utcnow

if TYPE_CHECKING:
    from voicebot.jobs import Runtime

log = structlog.get_logger(__name__)

#: Most jobs one sweep queues again (the rest are found by the next one).
SWEEP_LIMIT = 1000
#: A job a durable broker has held unclaimed this many leases is published again (see `broker`).
REPUBLISH_AFTER_LEASES = 10


def new_worker_id() -> str:
    """A name for this process in `jobs.claimed_by`: host, pid, and a random part (pids recur)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def sole_worker(settings: Settings) -> bool:
    """Whether this process is the only one on its database: SQLite, which `voicebot run`
    holds the run lock of (see `backup.run_lock`); other databases may be shared."""
    return make_url(settings.sqlalchemy_url).get_backend_name() == "sqlite"


def _expiry(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)


async def claim(
    session: AsyncSession, *, job_id: int, holder: str, now: datetime, seconds: float
) -> bool:
    """Take the unfinished job's lease for `holder` for `seconds` if it is free, expired or
    `holder`'s already; whether it did."""
    done = await session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status.in_(ACTIVE),
            or_(Job.claimed_by.is_(None), Job.claimed_by == holder, Job.lease_until < now),
        )
        .values(claimed_by=holder, lease_until=_expiry(now, seconds))
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(done, "rowcount", 0))


async def renew(
    session: AsyncSession, *, job_ids: list[int], holder: str, now: datetime, seconds: float
) -> set[int]:
    """Extend the leases `holder` still has among `job_ids` to `seconds` from `now`; their ids."""
    if not job_ids:
        return set()
    kept = await session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.claimed_by == holder)
        .values(lease_until=_expiry(now, seconds))
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    return set(kept.scalars())


async def set_if_held(session: AsyncSession, *, job_id: int, holder: str, **values: object) -> bool:
    """Update columns of one job only while `holder` holds its lease; whether it did."""
    done = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.claimed_by == holder)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(done, "rowcount", 0))


async def release_all(session: AsyncSession) -> int:
    """Free every unfinished job's lease (for the only process on the database); how many."""
    done = await session.execute(
        update(Job)
        .where(Job.status.in_(ACTIVE), Job.claimed_by.is_not(None))
        .values(claimed_by=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(done, "rowcount", 0))


async def release_expired(session: AsyncSession, *, job_ids: list[int], now: datetime) -> list[int]:
    """Free the leases of the untold jobs among `job_ids` that expired by `now` (their worker
    died or stalled: its later writes are refused); the ids freed."""
    if not job_ids:
        return []
    freed = await session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), untold(), Job.lease_until < now)
        # Not in any broker until the publish that follows says so: if that publish fails,
        # the next sweep finds the job unclaimed and unpublished.
        .values(claimed_by=None, lease_until=None, published_priority=None)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    return sorted(freed.scalars())


async def why_refused(
    session: AsyncSession, *, job_id: int, holder: str
) -> JobCancelledError | LeaseLostError:
    """Why a write of `holder`'s job conditional on its status and lease changed nothing."""
    claimed_by = await session.scalar(select(Job.claimed_by).where(Job.id == job_id))
    if claimed_by != holder:
        return LeaseLostError(f"job {job_id} is claimed by {claimed_by}")
    return JobCancelledError(texts.CANCELLED)


async def stale_jobs(
    session: AsyncSession, *, now: datetime, unclaimed_before: datetime, published_before: datetime
) -> list[tuple[int, bool]]:
    """Untold jobs (`models.untold`) no worker holds, oldest first, with whether a lease of
    theirs expired: expired leases, jobs unclaimed in no durable broker recorded before
    `unclaimed_before`, and jobs a durable broker has held unclaimed since before
    `published_before` (see `broker`)."""
    # A cancelled job counts until its "Cancelled" is shown: the worker that would show it may
    # have died mid-job (a /forget or a press in another process cancelled it), and run again
    # the job only tells it (`jobs._job`). `ix_jobs_status` finds the candidates; `told_at` and
    # the rest are filters on those.
    found = await session.execute(
        select(Job.id, Job.claimed_by.is_not(None))
        .where(
            untold(),
            or_(
                Job.lease_until < now,
                and_(
                    Job.claimed_by.is_(None),
                    Job.published_priority.is_(None),
                    Job.created_at < unclaimed_before,
                ),
                and_(
                    Job.claimed_by.is_(None),
                    Job.published_priority.is_not(None),
                    Job.published_at < published_before,
                ),
            ),
        )
        .order_by(Job.id)
        .limit(SWEEP_LIMIT)
    )
    return [(job_id, bool(expired)) for job_id, expired in found]


async def take(runtime: Runtime, job_id: int) -> bool:
    """Claim job `job_id` for this process (see `claim`); whether it did."""
    seconds = runtime.settings.job_lease_seconds
    async with runtime.sessions() as session:
        taken = await claim(
            session, job_id=job_id, holder=runtime.worker_id, now=utcnow(), seconds=seconds
        )
        await session.commit()
        if taken:
            runtime.leased.add(job_id)
            return True
        found = (
            await session.execute(select(Job.status, Job.claimed_by).where(Job.id == job_id))
        ).one_or_none()
    if found is not None and found.status in ACTIVE:  # not just a job that ended meanwhile
        log.info("job_claimed_elsewhere", job_id=job_id, claimed_by=found.claimed_by)
    return False


async def ensure_held(runtime: Runtime, job_id: int) -> None:
    """Renew job `job_id`'s lease for a whole JOB_LEASE_SECONDS; LeaseLostError if it is lost."""
    async with runtime.sessions() as session:
        kept = await renew(
            session,
            job_ids=[job_id],
            holder=runtime.worker_id,
            now=utcnow(),
            seconds=runtime.settings.job_lease_seconds,
        )
        await session.commit()
    if not kept:
        raise LeaseLostError(f"job {job_id} was taken by another worker")


def note_lost(runtime: Runtime, job_id: int, *, noticed: str) -> None:
    """Log and count job `job_id`'s lease lost, `noticed` by a "write" or the "heartbeat"."""
    log.warning("lease_lost", job_id=job_id, worker=runtime.worker_id, noticed=noticed)
    runtime.metrics.lease("lost")


def drop(runtime: Runtime, job_id: int) -> bool:
    """Stop the task of job `job_id`, whose lease another worker took; whether there was one."""
    return cancels.stop_task(runtime, job_id, reason=runtime.lost)


async def heartbeat(runtime: Runtime, *, interval: float | None = None) -> None:
    """Renew this process's leases (and its row in `workers`) every `interval` s (a third of
    the lease); stop the jobs whose lease another worker took."""
    seconds = runtime.settings.job_lease_seconds
    while True:
        await asyncio.sleep(interval or seconds / 3)
        mine = set(runtime.leased)
        try:
            async with runtime.sessions() as session:
                now = utcnow()
                # This process's slots count in everyone's places in line while it beats.
                await places.register(
                    session,
                    worker_id=runtime.worker_id,
                    slots=runtime.settings.jobs_at_once,
                    now=now,
                )
                kept = await renew(
                    session,
                    job_ids=sorted(mine),
                    holder=runtime.worker_id,
                    now=now,
                    seconds=seconds,
                )
                await session.commit()
        except (SQLAlchemyError, OSError) as error:
            # The leases run on: the next beat (two more before they expire) tries again.
            log.warning("lease_heartbeat_failed", error=repr(error))
            continue
        except Exception:  # the loop must outlive any one round: log it, go on
            log.exception("lease_heartbeat_crashed")
            continue
        for job_id in sorted(mine - kept):
            with structlog.contextvars.bound_contextvars(job_id=job_id):
                if job_id in runtime.leased and drop(runtime, job_id):
                    log.info("lease_lost_noticed")


async def sweep(runtime: Runtime) -> int:
    """Queue again the unfinished jobs no worker holds and this process has not in hand."""
    now = utcnow()
    lease = timedelta(seconds=runtime.settings.job_lease_seconds)
    async with runtime.sessions() as session:
        found = await stale_jobs(
            session,
            now=now,
            unclaimed_before=now - lease,
            published_before=now - lease * REPUBLISH_AFTER_LEASES,
        )
        promoted = await starving(session, settings=runtime.settings, limit=SWEEP_LIMIT)
        in_hand = runtime.handling | runtime.starting
        found = [(job_id, expired) for job_id, expired in found if job_id not in in_hand]
        # An expired lease is freed before its job is published again: of several sweepers
        # (bots) one frees it and publishes it, once; the next sweeps find it held by the
        # broker, or claimed again.
        expired = await release_expired(
            session, job_ids=[job_id for job_id, lapsed in found if lapsed], now=now
        )
        await session.commit()
    unclaimed = [job_id for job_id, lapsed in found if not lapsed]
    await runtime.kick(*sorted(expired + unclaimed), *promoted)
    if expired:
        log.warning("lease_expired_requeued", count=len(expired), job_ids=expired)
    if unclaimed:
        log.warning("unclaimed_requeued", count=len(unclaimed), job_ids=unclaimed)
    if promoted:
        log.info("waited_long_requeued", count=len(promoted), job_ids=promoted)
    runtime.metrics.lease("expired_requeued", len(expired))
    runtime.metrics.lease("unclaimed_requeued", len(unclaimed))
    return len(expired) + len(unclaimed) + len(promoted)


async def sweep_periodically(runtime: Runtime, *, interval: float | None = None) -> None:
    """`sweep` every `interval` s (half a lease), for as long as the process runs."""
    while True:
        await asyncio.sleep(interval or runtime.settings.job_lease_seconds / 2)
        try:
            await sweep(runtime)
        except (SQLAlchemyError, OSError) as error:  # busy or out of reach: look next round
            log.warning("lease_sweep_failed", error=repr(error))
        except Exception:  # the loop must outlive any one round: log it, go on
            log.exception("lease_sweep_crashed")
