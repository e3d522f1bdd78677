"""Jobs: start a recorded job (its first reply, then its publish), run it as a taskiq task
(`transcribe_job`, in whichever process the broker gives it to), recover after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramForbiddenError,
    TelegramMigrateToChat,
)
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from taskiq import TaskiqDepends

from voicebot import leases, texts
from voicebot.answers import deliver_transcript, tell_cancelled, tell_failure
from voicebot.chatadmins import ChatAdmins
from voicebot.config import Settings
from voicebot.db import Sessions, unavailable
from voicebot.engine import Engine
from voicebot.errors import (
    BadAudioError,
    BannedError,
    JobCancelledError,
    LeaseLostError,
    QuotaExceededError,
    VoicebotError,
)
from voicebot.groups import chat_gone, drop_unreachable
from voicebot.health import Health
from voicebot.i18n import use_locale
from voicebot.metrics import Metrics, build_metrics
from voicebot.models import (
    ACTIVE,
    FINAL,
    Job,
    JobStatus,
    User,
    as_utc,
    set_job_if,
    untold_job_ids,
    utcnow,
)
from voicebot.quotas import is_admin
from voicebot.ratelimits import Limiters
from voicebot.slots import Slots
from voicebot.status import acknowledge
from voicebot.transcription import transcribe

log = structlog.get_logger(__name__)


@dataclass
class Runtime:
    """Everything jobs need, built once in `service.build_runtime` and passed explicitly."""

    settings: Settings
    bot: Bot
    sessions: Sessions
    #: The loaded model; None in a process that runs no jobs (`voicebot bot`).
    engine: Engine | None
    slots: Slots
    limiters: Limiters
    #: Group administrators as Telegram last said (for who may change a group's settings).
    chat_admins: ChatAdmins = field(default_factory=lambda: ChatAdmins(ttl=60.0))
    #: Jobs sending their status reply, waiting for a slot, and holding one: shutdown lets the
    #: first and last finish (a reply cut off mid-request would be in doubt) and drops the rest.
    acknowledging: set[asyncio.Task[Any]] = field(default_factory=set)
    waiting: set[asyncio.Task[Any]] = field(default_factory=set)
    running: set[asyncio.Task[Any]] = field(default_factory=set)
    #: Set at shutdown: a job that has just sent its status reply waits for the next start.
    stopping: bool = False
    #: Publishes job ids to the broker (set by `broker.build_broker`).
    publish: Callable[[Sequence[int]], Awaitable[None]] | None = None
    #: Status replies in flight at once: within Telegram's rate, and at most this many in doubt
    #: after a crash (see `acknowledge`).
    replies: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(4))
    #: The tasks of jobs waiting for or holding a slot, by job id: a cancel stops them there.
    tasks: dict[int, asyncio.Task[Any]] = field(default_factory=dict)
    #: Jobs whose task is being stopped because the database says they were cancelled (as
    #: opposed to a shutdown, which postpones them).
    cancelling: set[int] = field(default_factory=set)
    #: The place in line each waiting job's status message shows, and when it was shown
    #: (monotonic seconds), oldest first: what the position loop compares with. Display only,
    #: decides nothing; written through `status.remember_place`, which bounds it.
    positions: dict[int, tuple[int, float]] = field(default_factory=dict)
    #: See `status.status_lock`; an entry lives while someone holds or waits for it.
    status_locks: weakref.WeakValueDictionary[int, asyncio.Lock] = field(
        default_factory=weakref.WeakValueDictionary
    )
    #: The process's metrics, and the parts /ready reports (the polling loop's heartbeat).
    metrics: Metrics = field(default_factory=build_metrics)
    health: Health = field(default_factory=Health)
    #: This process's name in `jobs.claimed_by` (see `leases`).
    worker_id: str = field(default_factory=leases.new_worker_id)
    #: The only process on its database (`leases.sole_worker`): it takes back every lease at start.
    sole_worker: bool = False
    #: Jobs whose task is alive in this process, from its start to its end: a second kick of
    #: one ends at once, and the sweeper leaves them be.
    handling: set[int] = field(default_factory=set)
    #: Jobs this process is sending the first reply of, before it publishes them (`start`).
    starting: set[int] = field(default_factory=set)
    #: Jobs this process holds the lease of (the heartbeat renews them), and those whose lease
    #: another worker took and whose task is being stopped for it.
    leased: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)

    async def kick(self, *job_ids: int) -> None:
        """Publish jobs `job_ids` to the broker."""
        assert self.publish is not None, "broker.build_broker() sets it"
        await self.publish(job_ids)


def start(runtime: Runtime, job_ids: Sequence[int]) -> None:
    """Start newly recorded jobs: each replies with its place in line, then is published."""
    for job_id in job_ids:
        task = asyncio.create_task(_start(runtime, job_id))
        runtime.acknowledging.add(task)
        task.add_done_callback(runtime.acknowledging.discard)


async def _start(runtime: Runtime, job_id: int) -> None:
    # The reply comes first, from the process that took the message: the user hears at once
    # whatever the queue, and a worker finds it sent (its own `acknowledge` is then a read).
    runtime.starting.add(job_id)
    try:
        async with _about(runtime, job_id):
            await acknowledge(runtime, job_id)
            if not runtime.stopping:  # at shutdown the job stays recorded for the next start
                await runtime.kick(job_id)
    except Exception:  # recorded: the sweeper publishes what this did not
        log.exception("job_start_failed", job_id=job_id)
    finally:
        runtime.starting.discard(job_id)


@contextlib.asynccontextmanager
async def _about(runtime: Runtime, job_id: int) -> AsyncIterator[None]:
    """For the block, every line logged carries the job's ids (this task's context, copied
    into the tasks and threads it starts), and everything said is in its sender's language."""
    async with runtime.sessions() as session:
        row = (
            await session.execute(
                select(Job.locale, Job.user_id, Job.chat_id).where(Job.id == job_id)
            )
        ).one_or_none()
    ids = {"job_id": job_id}
    if row is not None:
        ids |= {"user_id": row.user_id, "chat_id": row.chat_id}
    locale = row.locale if row is not None else None
    with structlog.contextvars.bound_contextvars(**ids), use_locale(locale):
        yield


async def recover(runtime: Runtime, *, durable: bool) -> int:
    """Publish again every job accepted but not answered before the last stop; with a
    `durable` broker, only those it does not hold (the others wait there)."""
    async with runtime.sessions() as session:
        if runtime.sole_worker:
            # The process that held these leases is gone (see `leases`): no wait for expiry.
            taken = await leases.release_all(session)
            await session.commit()
            if taken:
                log.info("leases_taken_back", count=taken)
        ids = await untold_job_ids(session, unpublished_only=durable)
    await runtime.kick(*ids)
    if ids:
        log.info("jobs_recovered", count=len(ids), job_ids=ids)
    return len(ids)


async def transcribe_job(job_id: int, runtime: Runtime = TaskiqDepends()) -> None:
    """The task: transcribe one job and deliver it exactly once; safe to run again."""
    if runtime.stopping:
        return  # queued after shutdown began: recovered, and acknowledged, at the next start
    if job_id in runtime.handling:
        return  # queued twice (the sweeper, a redelivery): the task already here answers it
    runtime.handling.add(job_id)
    try:
        # What the job says (status, progress, failure, "Cancelled") is in its sender's language.
        async with _about(runtime, job_id):
            await _job(runtime, job_id)
    finally:
        runtime.handling.discard(job_id)


async def _job(runtime: Runtime, job_id: int) -> None:
    current = asyncio.current_task()
    assert current is not None
    async with runtime.sessions() as session:
        job = await session.get(Job, job_id)
    if job is not None and job.status_message_id is None:
        # Its reply was not sent (a job recovered, or its process died before replying). Looked
        # up first: the usual job, replied to by `_start`, must not wait for a reply slot
        # behind the replies of a whole burst to learn that.
        runtime.acknowledging.add(current)
        try:
            await acknowledge(runtime, job_id)
        finally:
            runtime.acknowledging.discard(current)
        async with runtime.sessions() as session:
            job = await session.get(Job, job_id)
    if runtime.stopping:
        return
    if job is not None and job.status == JobStatus.cancelled:
        # Cancelled by a press handled before this task could be stopped: it ends here, and
        # shows "Cancelled" again (an idempotent edit).
        await tell_cancelled(runtime, job_id, running=False)
        return
    if job is None or job.status in FINAL:
        return
    runtime.waiting.add(current)
    runtime.tasks[job_id] = current
    try:
        async with runtime.slots.take(
            job_id=job.id,
            user_id=job.user_id,
            priority=job.priority,
            created_at=as_utc(job.created_at),
        ):
            runtime.waiting.discard(current)
            runtime.running.add(current)
            runtime.metrics.queue_wait.observe((utcnow() - as_utc(job.created_at)).total_seconds())
            await _run_when_reachable(runtime, job_id)
    except JobCancelledError:
        # Found cancelled by a conditional update (the transcript, a cache hit, the start).
        runtime.tasks.pop(job_id, None)
        await tell_cancelled(runtime, job_id, running=current in runtime.running)
    except LeaseLostError:
        # Found taken by another worker by a conditional update: that worker answers.
        leases.note_lost(runtime, job_id, noticed="write")
    except asyncio.CancelledError:
        if job_id in runtime.lost:
            # `leases.drop` stopped it: another worker took the job, and answers it.
            current.uncancel()
            leases.note_lost(runtime, job_id, noticed="heartbeat")
            return
        if job_id not in runtime.cancelling:
            # Shutdown: the job stays recorded. Its broker message is acknowledged as this
            # task ends, so a job not started yet is marked as in no broker: the sweeper
            # publishes it again (a running one `_run` postponed so already).
            await _give_back(runtime, job_id)
            raise
        # `cancels.stop` cancelled this task: the job was cancelled, and ends here.
        current.uncancel()
        runtime.tasks.pop(job_id, None)
        await tell_cancelled(runtime, job_id, running=current in runtime.running)
    finally:
        runtime.waiting.discard(current)
        runtime.running.discard(current)
        runtime.tasks.pop(job_id, None)
        runtime.cancelling.discard(job_id)
        runtime.leased.discard(job_id)
        runtime.lost.discard(job_id)


async def _give_back(runtime: Runtime, job_id: int) -> None:
    """Mark job `job_id`, given to this process and not started, as in no broker."""
    try:
        async with runtime.sessions() as session:
            await session.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.status == JobStatus.queued,
                    Job.claimed_by.is_(None),
                    Job.published_priority.is_not(None),
                )
                .values(published_priority=None)
            )
            await session.commit()
    except (SQLAlchemyError, OSError) as error:  # then it runs after the next bot's start
        log.warning("job_not_given_back", job_id=job_id, error=repr(error))


async def _run(runtime: Runtime, job_id: int) -> None:
    if not await leases.take(runtime, job_id):
        return  # another worker runs it (or it ended meanwhile)
    async with runtime.sessions() as session:
        job = await session.get(Job, job_id)
    if job is None or job.status in FINAL:
        return
    bound = log.bind(job_id=job_id, chat_id=job.chat_id)
    if job.error_text is not None:
        # The failure was recorded but the process died before the user was told.
        await tell_failure(runtime, job, job.error_text)
        return
    attempts = job.attempts
    if await chat_gone(runtime, job):
        return  # the bot left the group, or it became a supergroup: no one to answer
    try:
        if job.transcript_id is None and await _sender_banned(runtime, job):
            raise BannedError(texts.BANNED)
        if job.transcript_id is None:
            if job.attempts >= runtime.settings.job_max_attempts:
                raise _GaveUpError(texts.GAVE_UP)
            await transcribe(runtime, job)
        await deliver_transcript(runtime, job)
    except asyncio.CancelledError:
        if job_id in runtime.cancelling or job_id in runtime.lost:
            raise  # cancelled by its sender, or taken by another worker: `_job` ends it
        # Shutdown: leave the job for the next start, without counting this attempt (unless
        # it was cancelled meanwhile, which is final), and free its lease for any worker.
        status = JobStatus.queued if job.transcript_id is None else JobStatus.transcribed
        async with runtime.sessions() as session:
            postponed = await set_job_if(
                session,
                job_id=job_id,
                statuses=ACTIVE,
                holder=runtime.worker_id,
                status=status,
                attempts=attempts,
                claimed_by=None,
                lease_until=None,
                # Its message is acknowledged as this task ends: the sweeper publishes it again.
                published_priority=None,
            )
            await session.commit()
        if postponed:
            bound.info("job_postponed")
        raise
    except (JobCancelledError, LeaseLostError):
        raise
    except (VoicebotError, TelegramAPIError) as error:
        await _fail(runtime, job, error)
    except Exception as error:  # the job's one handler: log, tell, keep serving
        if unavailable(error):
            raise  # not the job's fault: `_run_when_reachable` runs it again
        bound.exception("job_crashed")
        await _fail(runtime, job, error)


async def _run_when_reachable(runtime: Runtime, job_id: int) -> None:
    """`_run`, again after a pause (1 s, doubling to 30 s) while the database is out of reach."""
    pause = 1.0
    while True:
        try:
            await _run(runtime, job_id)
            return
        except (SQLAlchemyError, OSError) as error:
            if not unavailable(error):
                raise
            # The job keeps its record: once the database is back this worker takes it up
            # again, unless its lease lapsed meanwhile and another worker took it.
            log.warning("job_database_unavailable", error=repr(error), retry_in=pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 30.0)


async def _sender_banned(runtime: Runtime, job: Job) -> bool:
    """Whether the job's sender was banned (admins cannot be) after it was accepted."""
    if is_admin(runtime.settings, job.user_id):
        return False
    async with runtime.sessions() as session:
        user = await session.get(User, job.user_id)
    return user is not None and user.banned


class _GaveUpError(VoicebotError):
    """The job failed (or crashed the process) too many times."""


async def _fail(runtime: Runtime, job: Job, error: BaseException) -> None:
    """Record the failure and what the user is told, then tell them in their status message."""
    if isinstance(error, TelegramForbiddenError | TelegramMigrateToChat):
        # The bot cannot write there any more.
        moved = error.migrate_to_chat_id if isinstance(error, TelegramMigrateToChat) else None
        await drop_unreachable(runtime, job, migrated_to=moved, error=str(error))
        runtime.metrics.job_failed(error.__class__.__name__)
        return
    permanent = isinstance(error, BadAudioError | _GaveUpError | QuotaExceededError | BannedError)
    message = str(error) if isinstance(error, VoicebotError) else texts.FAILED
    log.warning(
        "job_failed",
        job_id=job.id,
        error=error.__class__.__name__,
        detail=str(error),
        permanent=permanent,
    )
    async with runtime.sessions() as session:
        recorded = await set_job_if(
            session,
            job_id=job.id,
            statuses=ACTIVE,  # a job cancelled meanwhile stays cancelled, and says so
            holder=runtime.worker_id,  # one another worker took is its to answer
            error_code=error.__class__.__name__,
            error_text=message,
        )
        await session.commit()
    if recorded:
        job.error_code = error.__class__.__name__  # for the metric `tell_failure` counts
        await tell_failure(runtime, job, message)
