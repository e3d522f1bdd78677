"""One job's transcription: its file downloaded and decoded, checked against the quota, run
through the engine, and stored with its one charge, each step conditional on the job still
being this worker's and not cancelled (see `leases`, `cancels`)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from aiogram.exceptions import TelegramBadRequest

from voicebot import cache, languages, leases, texts
from voicebot.audio import SAMPLE_RATE, decode
from voicebot.config import Settings
from voicebot.delivery import try_edit, with_retries
from voicebot.errors import (
    FileTooLargeError,
    FileUnavailableError,
    QuotaExceededError,
    TranscriptionCancelledError,
)
from voicebot.models import RESERVING, Job, JobStatus, Transcript, set_job, set_job_if, utcnow
from voicebot.quotas import ROUNDING_SECONDS, charge, group_of, lock_user, standing
from voicebot.recording import Transcript as EngineTranscript
from voicebot.status import Progress, cancel_keyboard, status_lock

if TYPE_CHECKING:
    from voicebot.jobs import Runtime

log = structlog.get_logger(__name__)


async def transcribe(runtime: Runtime, job: Job) -> None:
    """Download, decode and transcribe the job's file, then store its transcript and its one
    charge (or answer it from the cache); named errors for what the user is told."""
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
            # Under the lock, after any position edit decided while the job was queued: a reply
            # this process sent as "Transcribing…" (a slot was free, place 0) and no position
            # edit has changed since already says it, so the edit is not sent again. A reply
            # sent by another process, or since moved back in line, is edited.
            shown, _ = runtime.positions.get(job.id, (None, 0.0))
            if shown != 0:
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
        assert runtime.engine is not None, "only a process with a model consumes jobs"
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
