"""Jobs: acknowledge a recorded job, run it as a taskiq task, recover after a restart."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramMigrateToChat,
)
from sqlalchemy import select
from taskiq import AsyncBroker, InMemoryBroker, TaskiqDepends
from taskiq.decor import AsyncTaskiqDecoratedTask

from voicebot import cache, languages, leases, texts
from voicebot.answers import deliver_transcript, tell_cancelled, tell_failure
from voicebot.audio import SAMPLE_RATE, decode
from voicebot.chatadmins import ChatAdmins
from voicebot.config import Settings
from voicebot.db import Sessions
from voicebot.delivery import (
    try_edit,
    with_retries,
)
from voicebot.engine import Engine
from voicebot.engine import Transcript as EngineTranscript
from voicebot.errors import (
    BadAudioError,
    BannedError,
    FileTooLargeError,
    FileUnavailableError,
    JobCancelledError,
    LeaseLostError,
    QuotaExceededError,
    TranscriptionCancelledError,
    VoicebotError,
)
from voicebot.groups import chat_gone, drop_unreachable
from voicebot.health import Health
from voicebot.i18n import use_locale
from voicebot.metrics import Metrics, build_metrics
from voicebot.models import (
    ACTIVE,
    FINAL,
    RESERVING,
    Job,
    JobStatus,
    Transcript,
    User,
    as_utc,
    set_job,
    set_job_if,
    untold_job_ids,
    utcnow,
)
from voicebot.quotas import ROUNDING_SECONDS, charge, group_of, is_admin, lock_user, standing
from voicebot.ratelimits import Limiters
from voicebot.slots import Slots
from voicebot.status import Progress, acknowledge, cancel_keyboard, status_lock

log = structlog.get_logger(__name__)


@dataclass
class Runtime:
    """Everything jobs need, built once in `service.build_runtime` and passed explicitly."""

    settings: Settings
    bot: Bot
    sessions: Sessions
    engine: Engine
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
    task: AsyncTaskiqDecoratedTask[..., Any] | None = None
    #: Status replies in flight at once: within Telegram's rate, and at most this many in doubt
    #: after a crash (see `acknowledge`).
    replies: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(4))
    #: The tasks of jobs waiting for or holding a slot, by job id: a cancel stops them there.
    tasks: dict[int, asyncio.Task[Any]] = field(default_factory=dict)
    #: Jobs whose task is being stopped because the database says they were cancelled (as
    #: opposed to a shutdown, which postpones them).
    cancelling: set[int] = field(default_factory=set)
    #: The place in line each waiting job's status message shows, and when it was shown
    #: (monotonic seconds): what the position loop compares with. Display only, decides nothing.
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
    #: Jobs this process holds the lease of (the heartbeat renews them), and those whose lease
    #: another worker took and whose task is being stopped for it.
    leased: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)

    async def kick(self, job_id: int) -> None:
        """Queue job `job_id` on the broker."""
        assert self.task is not None, "build_broker() registers the task"
        await self.task.kiq(job_id)


def build_broker(runtime: Runtime) -> AsyncBroker:
    """The embedded in-process broker with the transcription task registered on it."""
    broker = InMemoryBroker(max_async_tasks=10_000, propagate_exceptions=False)
    broker.add_dependency_context({Runtime: runtime})
    runtime.task = broker.register_task(transcribe_job, task_name="transcribe_job")
    return broker


async def recover(runtime: Runtime) -> int:
    """Queue again every job accepted but not answered before the last stop."""
    async with runtime.sessions() as session:
        if runtime.sole_worker:
            # The process that held these leases is gone (see `leases`): no wait for expiry.
            taken = await leases.release_all(session)
            await session.commit()
            if taken:
                log.info("leases_taken_back", count=taken)
        ids = await untold_job_ids(session)
    for job_id in ids:
        await runtime.kick(job_id)
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
        async with runtime.sessions() as session:
            row = (
                await session.execute(
                    select(Job.locale, Job.user_id, Job.chat_id).where(Job.id == job_id)
                )
            ).one_or_none()
        ids = {"job_id": job_id}
        if row is not None:
            ids |= {"user_id": row.user_id, "chat_id": row.chat_id}
        # Every line the job logs carries its ids: this task's context, copied into the tasks
        # and threads it starts. Everything the job says (status, progress, failure,
        # "Cancelled") is in its sender's language.
        locale = row.locale if row is not None else None
        with structlog.contextvars.bound_contextvars(**ids), use_locale(locale):
            await _job(runtime, job_id)
    finally:
        runtime.handling.discard(job_id)


async def _job(runtime: Runtime, job_id: int) -> None:
    current = asyncio.current_task()
    assert current is not None
    runtime.acknowledging.add(current)
    try:
        await acknowledge(runtime, job_id)
    finally:
        runtime.acknowledging.discard(current)
    if runtime.stopping:
        return
    async with runtime.sessions() as session:
        job = await session.get(Job, job_id)
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
            await _run(runtime, job_id)
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
            raise  # shutdown: the job stays recorded for the next start
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
            await _transcribe(runtime, job)
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
            )
            await session.commit()
        if postponed:
            bound.info("job_postponed")
        raise
    except (JobCancelledError, LeaseLostError):
        raise
    except (VoicebotError, TelegramAPIError) as error:
        await _fail(runtime, job, error)
    except Exception as error:  # noqa: BLE001 - the job's one handler: log, tell, keep serving
        bound.exception("job_crashed")
        await _fail(runtime, job, error)


async def _sender_banned(runtime: Runtime, job: Job) -> bool:
    """Whether the job's sender was banned (admins cannot be) after it was accepted."""
    if is_admin(runtime.settings, job.user_id):
        return False
    async with runtime.sessions() as session:
        user = await session.get(User, job.user_id)
    return user is not None and user.banned


class _GaveUpError(VoicebotError):
    """The job failed (or crashed the process) too many times."""


async def _transcribe(runtime: Runtime, job: Job) -> None:
    settings = runtime.settings
    if await cache.answer(runtime, job, time.monotonic()):
        return  # a file seen before (a forwarded voice note): no download, no transcription
    job.attempts += 1
    started = time.monotonic()
    async with runtime.sessions() as session:
        began = await set_job_if(
            session,
            job_id=job.id,
            statuses=RESERVING,  # not one cancelled just before it got its slot
            holder=runtime.worker_id,  # nor one another worker took meanwhile
            status=JobStatus.running,
            attempts=job.attempts,
            started_at=utcnow(),
        )
        if not began:
            raise await leases.why_refused(session, job_id=job.id, holder=runtime.worker_id)
        await session.commit()
    if job.status_message_id is not None:
        async with status_lock(runtime, job.id):
            await try_edit(
                runtime.bot,
                chat_id=job.chat_id,
                message_id=job.status_message_id,
                text=texts.TRANSCRIBING,
                reply_markup=cancel_keyboard(job.id),
            )
    fetching = time.monotonic()
    data = await _download(runtime, job)
    runtime.metrics.download.observe(time.monotonic() - fetching)
    sha256 = (await asyncio.to_thread(hashlib.sha256, data)).hexdigest()
    if await cache.answer(runtime, job, started, sha256=sha256):
        return  # the same bytes sent again as a new file: no transcription
    audio = await asyncio.to_thread(decode, data, max_seconds=settings.max_audio_seconds)
    del data  # the audio is not kept after its job
    await _check_quota(runtime, job, len(audio) / SAMPLE_RATE)
    progress = Progress(runtime, job, seconds=len(audio) / SAMPLE_RATE)
    transcribing = time.monotonic()
    try:
        language = languages.for_engine(languages.effective(job.language, settings))
        result = await runtime.engine.transcribe_async(
            audio,
            language=language.language,
            allowed_languages=language.allowed,
            task="translate" if job.task == "translate" else "transcribe",
            progress=progress.report,
            on_segment=progress.segment,
            time_limit=settings.job_timeout_seconds,
        )
    except TranscriptionCancelledError as error:
        raise asyncio.CancelledError from error
    finally:
        await progress.stop()
    del audio
    runtime.metrics.transcribed(audio=result.duration, seconds=time.monotonic() - transcribing)
    async with runtime.sessions() as session:
        stored = _stored(result, job=job, settings=settings, sha256=sha256)
        session.add(stored)
        await session.flush()
        # Only a job still queued or running, and still this worker's, gets its transcript and
        # charge: the cancel, a worker taking the job over and this transaction each change it
        # conditionally, so whichever commits first wins.
        kept = await set_job_if(
            session,
            job_id=job.id,
            statuses=RESERVING,
            holder=runtime.worker_id,
            transcript_id=stored.id,
            status=JobStatus.transcribed,
        )
        if not kept:
            await session.rollback()
            raise await leases.why_refused(session, job_id=job.id, holder=runtime.worker_id)
        job.transcript_id = stored.id
        job.status = JobStatus.transcribed
        # The one charge, in the transaction that stores the transcript (usage.job_id is
        # unique): a crash before the commit charges nothing, a retry cannot charge twice.
        await charge(
            session,
            job=job,
            audio_seconds=result.duration,
            processing_seconds=time.monotonic() - started,
            language=stored.language,
            settings=settings,
            now=utcnow(),
        )
        await session.commit()
    log.info(
        "job_transcribed",
        job_id=job.id,
        seconds=round(time.monotonic() - started, 2),
        audio=round(result.duration, 1),
        language=result.language,
    )


async def _check_quota(runtime: Runtime, job: Job, seconds: float) -> None:
    """Reserve the real duration when it is longer than declared; refuse it if it does not fit."""
    if seconds <= job.reserved_seconds + ROUNDING_SECONDS:
        return
    settings = runtime.settings
    async with runtime.sessions() as session:
        user = await lock_user(session, user_id=job.user_id)
        if user is None:
            return
        now = utcnow()
        group = await group_of(session, chat_id=job.chat_id)
        where = await standing(
            session, user=user, settings=settings, now=now, excluding_job=job.id, group=group
        )
        left = where.left
        if left is not None and seconds > left + ROUNDING_SECONDS:
            raise QuotaExceededError(
                texts.quota_after_decoding(seconds, left, where.resets_at, settings.quota_timezone)
            )
        await set_job(session, job_id=job.id, reserved_seconds=seconds)
        await session.commit()


def _stored(result: EngineTranscript, *, job: Job, settings: Settings, sha256: str) -> Transcript:
    return Transcript(
        file_unique_id=job.file_unique_id,
        text=result.text,
        language=result.language,
        language_probability=result.language_probability,
        duration=result.duration,
        segments=[{"start": s.start, "end": s.end, "text": s.text} for s in result.segments],
        model=settings.whisper_model,
        sha256=sha256,
        language_setting=cache.language_setting(settings, language=job.language, task=job.task),
    )


async def _download(runtime: Runtime, job: Job) -> bytes:
    """The file's bytes, in memory; too large or unavailable files are named errors."""
    settings, bot = runtime.settings, runtime.bot
    limit = settings.file_limit_bytes
    if job.file_size is not None and job.file_size > limit:
        raise FileTooLargeError(texts.too_large(limit))
    try:
        file = await with_retries(lambda: bot.get_file(job.file_id))
    except TelegramBadRequest as error:
        if "too big" in error.message:
            raise FileTooLargeError(texts.too_large(limit)) from error
        raise FileUnavailableError(texts.UNAVAILABLE) from error
    if file.file_path is None:
        raise FileUnavailableError(texts.UNAVAILABLE)
    if settings.telegram_local_mode and Path(file.file_path).is_absolute():
        return await asyncio.to_thread(Path(file.file_path).read_bytes)
    path = file.file_path

    async def fetch() -> bytes:
        buffer = io.BytesIO()
        await bot.download_file(path, destination=buffer)
        return buffer.getvalue()

    return await with_retries(fetch)


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
