"""The transcript cache: a recording seen before is answered from its stored transcript.

Only transcripts are cached, never audio. A transcript is found by the file's `file_unique_id`
(a forwarded voice note keeps it, so no download is needed) or by the SHA-256 of its bytes (the
same audio sent again as a new file, so no transcription is needed). A hit must have been made
with the model and language setting in use now, and be younger than CACHE_TTL_DAYS and
RETENTION_DAYS (`serving_days`); older ones are never served, and `purge_expired` deletes them
(`privacy.purge_periodically`, after `kept_days`). CACHE_TTL_DAYS=0 turns the cache off.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import ColumnElement, delete, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from voicebot import leases
from voicebot.config import Settings
from voicebot.languages import effective
from voicebot.models import (
    ACTIVE,
    FINAL,
    RESERVING,
    Job,
    JobStatus,
    Transcript,
    Usage,
    set_job_if,
    utcnow,
)

if TYPE_CHECKING:
    from voicebot.jobs import Runtime

log = structlog.get_logger(__name__)


def serving_days(settings: Settings) -> float:
    """Days a transcript may be served from the cache: CACHE_TTL_DAYS, within RETENTION_DAYS.

    0: the cache is off.
    """
    ttl, retention = settings.cache_ttl_days, settings.retention_days
    if ttl <= 0:
        return 0.0
    return min(ttl, retention) if retention > 0 else ttl


def kept_days(settings: Settings) -> float:
    """Days a transcript is kept before `purge_expired` deletes it; 0: kept until /forget.

    The shorter of CACHE_TTL_DAYS and RETENTION_DAYS of those set: past the first it is no
    longer served, past the second it must not be stored.
    """
    return min((d for d in (settings.cache_ttl_days, settings.retention_days) if d > 0), default=0)


#: The width of `transcripts.language_setting` (PostgreSQL enforces it; SQLite does not).
LANGUAGE_SETTING_CHARS = 64


def language_setting(
    settings: Settings, *, language: str | None = None, task: str = "transcribe"
) -> str:
    """The cache key's language part: the job's setting ("en", "auto", "auto:en,ru"; None: the
    settings' defaults), with "+translate" for a translation, so neither reuses the other; one
    past LANGUAGE_SETTING_CHARS (a long allowed list) is its SHA-256 instead."""
    setting = effective(language, settings)
    key = setting if task == "transcribe" else f"{setting}+{task}"
    if len(key) <= LANGUAGE_SETTING_CHARS:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[: LANGUAGE_SETTING_CHARS - 7]


def _cutoff(now: datetime, ttl_days: float) -> datetime:
    """Transcripts created at or before this moment have expired."""
    return now - timedelta(days=ttl_days)


async def _newest(
    session: AsyncSession,
    key: ColumnElement[bool],
    *,
    model: str,
    language_setting: str,
    now: datetime,
    ttl_days: float,
) -> Transcript | None:
    """The newest unexpired transcript matching `key`, this model and setting (None when off)."""
    if ttl_days <= 0:
        return None
    query = (
        select(Transcript)
        .where(
            key,
            Transcript.model == model,
            Transcript.language_setting == language_setting,
            Transcript.created_at > _cutoff(now, ttl_days),
        )
        .order_by(Transcript.created_at.desc(), Transcript.id.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def find_by_file(
    session: AsyncSession,
    *,
    file_unique_id: str,
    model: str,
    language_setting: str,
    now: datetime,
    ttl_days: float,
) -> Transcript | None:
    """The newest unexpired transcript of this Telegram file made with this model and setting."""
    return await _newest(
        session,
        Transcript.file_unique_id == file_unique_id,
        model=model,
        language_setting=language_setting,
        now=now,
        ttl_days=ttl_days,
    )


async def find_by_sha256(
    session: AsyncSession,
    *,
    sha256: str,
    model: str,
    language_setting: str,
    now: datetime,
    ttl_days: float,
) -> Transcript | None:
    """The newest unexpired transcript of these bytes made with this model and setting."""
    return await _newest(
        session,
        Transcript.sha256 == sha256,
        model=model,
        language_setting=language_setting,
        now=now,
        ttl_days=ttl_days,
    )


async def record_hit(
    session: AsyncSession,
    *,
    job: Job,
    transcript: Transcript,
    processing_seconds: float,
    holder: str | None = None,
) -> bool:
    """Answer `job` with `transcript` (transcribed, a usage row that charges 0); False if cancelled
    (or, with `holder`, if that worker lost the job's lease).

    Only a job still queued or running is answered: for one cancelled meanwhile nothing is written.
    """
    # Leaving queued/running also releases the job's quota reservation.
    answered = await set_job_if(
        session,
        job_id=job.id,
        statuses=RESERVING,
        holder=holder,
        transcript_id=transcript.id,
        status=JobStatus.transcribed,
    )
    if not answered:
        return False
    session.add(
        Usage(
            user_id=job.user_id,
            job_id=job.id,
            audio_seconds=transcript.duration,
            processing_seconds=processing_seconds,
            charged_seconds=0.0,
            balance_seconds=0.0,
            cached=True,
            language=transcript.language,
        )
    )
    return True


async def purge_expired(session: AsyncSession, *, now: datetime, ttl_days: float) -> int:
    """Delete expired transcripts no unfinished job needs, detaching finished jobs; the count."""
    if ttl_days <= 0:
        return 0  # the cache is off: transcripts are kept, as they were before it
    needing = aliased(Job)  # its own alias: the UPDATE below is over jobs too
    needed = (
        exists()
        .where(needing.transcript_id == Transcript.id, needing.status.in_(ACTIVE))
        .correlate(Transcript)
    )
    expired = select(Transcript.id).where(Transcript.created_at <= _cutoff(now, ttl_days), ~needed)
    await session.execute(
        update(Job)
        .where(Job.transcript_id.in_(expired), Job.status.in_(FINAL))
        .values(transcript_id=None)
    )
    deleted = await session.execute(
        delete(Transcript)
        .where(Transcript.id.in_(expired))
        .execution_options(synchronize_session=False)
    )
    return int(getattr(deleted, "rowcount", 0) or 0)


async def answer(runtime: Runtime, job: Job, started: float, *, sha256: str | None = None) -> bool:
    """Answer `job` from the transcript cache (by file, or by `sha256` of its bytes) if it can."""
    settings = runtime.settings
    setting = language_setting(settings, language=job.language, task=job.task)
    now, ttl = utcnow(), serving_days(settings)
    async with runtime.sessions() as session:
        if sha256 is None:
            hit = await find_by_file(
                session,
                file_unique_id=job.file_unique_id,
                model=settings.whisper_model,
                language_setting=setting,
                now=now,
                ttl_days=ttl,
            )
        else:
            hit = await find_by_sha256(
                session,
                sha256=sha256,
                model=settings.whisper_model,
                language_setting=setting,
                now=now,
                ttl_days=ttl,
            )
        if hit is None:
            if sha256 is not None and ttl > 0:  # the last lookup of a job
                runtime.metrics.cache_misses.inc()
            return False
        try:
            if not await record_hit(
                session,
                job=job,
                transcript=hit,
                processing_seconds=time.monotonic() - started,
                holder=runtime.worker_id,
            ):
                # Nothing written: it was cancelled, or another worker took it.
                raise await leases.why_refused(session, job_id=job.id, holder=runtime.worker_id)
            await session.commit()
        except IntegrityError:
            # The transcript expired and was purged since the lookup: a miss after all.
            return False
    job.transcript_id, job.status = hit.id, JobStatus.transcribed
    runtime.metrics.cache_hits.inc()
    log.info(
        "job_cached",
        job_id=job.id,
        transcript_id=hit.id,
        by="file_unique_id" if sha256 is None else "sha256",
    )
    return True
