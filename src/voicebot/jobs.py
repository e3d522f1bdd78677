"""Jobs: acknowledge a recorded job, run it as a taskiq task, recover after a restart."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import structlog
from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from aiogram.types import ReplyParameters
from taskiq import AsyncBroker, InMemoryBroker, TaskiqDepends
from taskiq.decor import AsyncTaskiqDecoratedTask

from voicebot import texts
from voicebot.config import Settings
from voicebot.db import Sessions
from voicebot.delivery import (
    deliver,
    put_status,
    split_text,
    try_edit,
    with_retries,
)
from voicebot.engine import Engine
from voicebot.engine import Transcript as EngineTranscript
from voicebot.errors import (
    BadAudioError,
    FileTooLargeError,
    FileUnavailableError,
    TranscriptionCancelledError,
    VoicebotError,
)
from voicebot.models import (
    ACTIVE,
    FINAL,
    Job,
    JobStatus,
    Transcript,
    Usage,
    count_ahead,
    set_job,
    unfinished_job_ids,
    utcnow,
)

log = structlog.get_logger(__name__)


@dataclass
class Runtime:
    """Everything jobs need, built once in `service.build_runtime` and passed explicitly."""

    settings: Settings
    bot: Bot
    sessions: Sessions
    engine: Engine
    slots: asyncio.Semaphore
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


async def acknowledge(runtime: Runtime, job_id: int) -> None:
    """Reply to the job's message with its place in line, once: never a second time."""
    async with runtime.replies:
        if not runtime.stopping:  # at shutdown only replies already under way finish
            await _acknowledge(runtime, job_id)


async def _acknowledge(runtime: Runtime, job_id: int) -> None:
    async with runtime.sessions() as session:
        job = await session.get(Job, job_id)
        if job is None or job.status not in ACTIVE or job.status_message_id is not None:
            return
        if job.status_requested_at is not None:
            # The one window that stays open: the reply may have reached Telegram just before
            # the process died, and sendMessage cannot be asked whether it did. Not sending
            # another keeps it to at most one stray status; the transcript becomes a new reply.
            log.warning("status_reply_in_doubt", job_id=job_id, chat_id=job.chat_id)
            return
        ahead = await count_ahead(session, job_id=job_id)
        await set_job(session, job_id=job_id, status_requested_at=utcnow())
        await session.commit()
    reply = ReplyParameters(message_id=job.message_id, allow_sending_without_reply=True)
    text = texts.queued(ahead, runtime.settings.workers)
    try:
        status = await with_retries(
            partial(runtime.bot.send_message, job.chat_id, text, reply_parameters=reply)
        )
    except TelegramAPIError as error:
        # The job is recorded: it still runs, and its result becomes a reply of its own.
        log.warning("status_not_sent", job_id=job_id, error=str(error))
        return
    async with runtime.sessions() as session:
        await set_job(session, job_id=job_id, status_message_id=status.message_id)
        await session.commit()


async def recover(runtime: Runtime) -> int:
    """Queue again every job accepted but not answered before the last stop."""
    async with runtime.sessions() as session:
        ids = await unfinished_job_ids(session)
    for job_id in ids:
        await runtime.kick(job_id)
    if ids:
        log.info("jobs_recovered", count=len(ids), job_ids=ids)
    return len(ids)


async def transcribe_job(job_id: int, runtime: Runtime = TaskiqDepends()) -> None:
    """The task: transcribe one job and deliver it exactly once; safe to run again."""
    current = asyncio.current_task()
    assert current is not None
    if runtime.stopping:
        return  # queued after shutdown began: recovered, and acknowledged, at the next start
    runtime.acknowledging.add(current)
    try:
        await acknowledge(runtime, job_id)
    finally:
        runtime.acknowledging.discard(current)
    if runtime.stopping:
        return
    runtime.waiting.add(current)
    try:
        async with runtime.slots:
            runtime.waiting.discard(current)
            runtime.running.add(current)
            await _run(runtime, job_id)
    finally:
        runtime.waiting.discard(current)
        runtime.running.discard(current)


async def _run(runtime: Runtime, job_id: int) -> None:
    async with runtime.sessions() as session:
        job = await session.get(Job, job_id)
    if job is None or job.status in FINAL:
        return
    bound = log.bind(job_id=job_id, chat_id=job.chat_id)
    if job.error_text is not None:
        # The failure was recorded but the process died before the user was told.
        await _tell_failure(runtime, job, job.error_text)
        return
    attempts = job.attempts
    try:
        if job.transcript_id is None:
            if job.attempts >= runtime.settings.job_max_attempts:
                raise _GaveUpError(texts.GAVE_UP)
            await _transcribe(runtime, job)
        await _deliver(runtime, job)
    except asyncio.CancelledError:
        # Shutdown: leave the job for the next start, without counting this attempt.
        status = JobStatus.queued if job.transcript_id is None else JobStatus.transcribed
        async with runtime.sessions() as session:
            await set_job(session, job_id=job_id, status=status, attempts=attempts)
            await session.commit()
        bound.info("job_postponed")
        raise
    except (VoicebotError, TelegramAPIError) as error:
        await _fail(runtime, job, error)
    except Exception as error:  # noqa: BLE001 - the job's one handler: log, tell, keep serving
        bound.exception("job_crashed")
        await _fail(runtime, job, error)


class _GaveUpError(VoicebotError):
    """The job failed (or crashed the process) too many times."""


async def _transcribe(runtime: Runtime, job: Job) -> None:
    settings = runtime.settings
    job.attempts += 1
    started = time.monotonic()
    async with runtime.sessions() as session:
        await set_job(
            session,
            job_id=job.id,
            status=JobStatus.running,
            attempts=job.attempts,
            started_at=utcnow(),
        )
        await session.commit()
    if job.status_message_id is not None:
        await try_edit(
            runtime.bot,
            chat_id=job.chat_id,
            message_id=job.status_message_id,
            text=texts.TRANSCRIBING,
        )
    data = await _download(runtime, job)
    progress = _Progress(runtime, job)
    try:
        result = await runtime.engine.transcribe_async(
            data,
            language=settings.whisper_language,
            allowed_languages=settings.whisper_allowed_languages,
            progress=progress.report,
            time_limit=settings.job_timeout_seconds,
        )
    except TranscriptionCancelledError as error:
        raise asyncio.CancelledError from error
    finally:
        await progress.stop()
    del data  # the audio is not kept after its job
    async with runtime.sessions() as session:
        stored = _stored(result, job=job, model=runtime.settings.whisper_model)
        session.add(stored)
        await session.flush()
        job.transcript_id = stored.id
        job.status = JobStatus.transcribed
        await set_job(session, job_id=job.id, transcript_id=stored.id, status=JobStatus.transcribed)
        session.add(
            Usage(
                user_id=job.user_id,
                job_id=job.id,
                audio_seconds=result.duration,
                processing_seconds=time.monotonic() - started,
            )
        )
        await session.commit()
    log.info(
        "job_transcribed",
        job_id=job.id,
        seconds=round(time.monotonic() - started, 2),
        audio=round(result.duration, 1),
        language=result.language,
    )


def _stored(result: EngineTranscript, *, job: Job, model: str) -> Transcript:
    return Transcript(
        file_unique_id=job.file_unique_id,
        text=result.text,
        language=result.language,
        language_probability=result.language_probability,
        duration=result.duration,
        segments=[{"start": s.start, "end": s.end, "text": s.text} for s in result.segments],
        model=model,
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


async def _deliver(runtime: Runtime, job: Job) -> None:
    async with runtime.sessions() as session:
        stored = await session.get(Transcript, job.transcript_id)
        assert stored is not None
        fresh = await session.get(Job, job.id)
        assert fresh is not None
        done, status_message_id = fresh.delivered_parts, fresh.status_message_id
    text = stored.text
    if len(text) > runtime.settings.transcript_file_chars:
        parts = [texts.as_file(len(text))]
        document: tuple[str, bytes] | None = (
            f"transcript-{job.message_id}.txt",
            (text + "\n").encode("utf-8"),
        )
    else:
        parts, document = split_text(text), None

    async def on_part_sent(count: int, message_id: int) -> None:
        async with runtime.sessions() as session:
            await set_job(
                session, job_id=job.id, delivered_parts=count, status_message_id=message_id
            )
            await session.commit()

    await deliver(
        runtime.bot,
        chat_id=job.chat_id,
        reply_to=job.message_id,
        status_message_id=status_message_id,
        parts=parts,
        document=document,
        done=done,
        on_part_sent=on_part_sent,
    )
    async with runtime.sessions() as session:
        await set_job(session, job_id=job.id, status=JobStatus.done, finished_at=utcnow())
        await session.commit()
    log.info("job_delivered", job_id=job.id, parts=len(parts) + (1 if document else 0))


async def _fail(runtime: Runtime, job: Job, error: BaseException) -> None:
    """Record the failure and what the user is told, then tell them in their status message."""
    permanent = isinstance(error, BadAudioError | _GaveUpError)
    message = str(error) if isinstance(error, VoicebotError) else texts.FAILED
    log.warning(
        "job_failed",
        job_id=job.id,
        error=error.__class__.__name__,
        detail=str(error),
        permanent=permanent,
    )
    async with runtime.sessions() as session:
        await set_job(
            session, job_id=job.id, error_code=error.__class__.__name__, error_text=message
        )
        await session.commit()
    await _tell_failure(runtime, job, message)


async def _tell_failure(runtime: Runtime, job: Job, message: str) -> None:
    """Show `message` in the status message (an idempotent edit), then mark the job failed."""
    try:
        await put_status(
            runtime.bot,
            chat_id=job.chat_id,
            status_message_id=job.status_message_id,
            reply_to=job.message_id,
            text=message,
        )
    except TelegramAPIError as notify_error:
        log.warning("failure_not_told", job_id=job.id, error=str(notify_error))
    async with runtime.sessions() as session:
        await set_job(session, job_id=job.id, status=JobStatus.failed, finished_at=utcnow())
        await session.commit()


class _Progress:
    """Relays engine progress (from its thread) into throttled status-message edits."""

    def __init__(self, runtime: Runtime, job: Job) -> None:
        self.runtime = runtime
        self.job = job
        self.started = time.monotonic()
        self.fraction = 0.0
        self.shown = 0.0
        self.ticker = asyncio.create_task(self._tick()) if job.status_message_id else None

    def report(self, done: float, total: float) -> None:
        """Engine callback (worker thread)."""
        self.fraction = done / total if total else 1.0

    async def _tick(self) -> None:
        interval = self.runtime.settings.progress_interval_seconds
        assert self.job.status_message_id is not None
        while True:
            await asyncio.sleep(interval)
            if self.fraction > self.shown and self.fraction < 1.0:
                self.shown = self.fraction
                await try_edit(
                    self.runtime.bot,
                    chat_id=self.job.chat_id,
                    message_id=self.job.status_message_id,
                    text=texts.progress(self.fraction, time.monotonic() - self.started),
                )

    async def stop(self) -> None:
        """Stop editing; called when the transcription ends either way."""
        if self.ticker is not None:
            self.ticker.cancel()
            await asyncio.gather(self.ticker, return_exceptions=True)
