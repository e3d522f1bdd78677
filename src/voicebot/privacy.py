"""What the bot forgets: a user's texts on /forget, and everyone's old texts (RETENTION_DAYS).

Stored about a user: the transcripts of their recordings (text and timed segments), one record
per recording (file name, length, status, the failure text it was told), the seconds each
transcription used and the language it was detected in (`usage`, needed for quotas, /me and
the dashboard), their settings (interface language, output format, the recognition language of
their private chat), and what Telegram says about them (name, username, language). Audio is
never stored. Refusals are counted per day and reason only, with nothing about who was refused.

`forget` deletes the texts and settings and keeps the seconds with their languages (a language
code is no text of theirs). A recording of the user's still waiting, being transcribed or being
delivered is cancelled by it (its text would otherwise arrive, and be stored, after the user
asked to be forgotten); so is any other job about to deliver one of the forgotten transcripts
(a cache hit of someone who sent the same audio).

Retention: transcripts live `cache.kept_days` (the shorter of CACHE_TTL_DAYS and RETENTION_DAYS)
and the cache serves them only that long (`cache.serving_days`); the texts of finished jobs are
cleared after RETENTION_DAYS. The ids of handled updates (no user data) go after
HANDLED_UPDATE_DAYS. `purge_periodically` does all three at start and every
PURGE_INTERVAL_SECONDS.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from voicebot import cache
from voicebot.config import Settings
from voicebot.db import Sessions
from voicebot.models import (
    ACTIVE,
    FINAL,
    Chat,
    HandledUpdate,
    Job,
    JobStatus,
    Transcript,
    User,
    utcnow,
)
from voicebot.quotas import lock_user

log = structlog.get_logger(__name__)

#: Telegram keeps an unconfirmed update for 24 hours: a redelivery comes within that, so the
#: id of a handled update is kept twice as long, then dropped.
HANDLED_UPDATE_DAYS = 2


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What `forget` did."""

    #: Transcripts deleted.
    transcripts: int
    #: Jobs cancelled because they were about to produce or deliver a forgotten text.
    cancelled: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Purged:
    """What `purge_old` did."""

    transcripts: int
    #: Finished jobs whose texts (file name, failure text) were cleared.
    jobs: int
    #: Ids of handled updates dropped (past HANDLED_UPDATE_DAYS).
    updates: int = 0


async def forget(session: AsyncSession, *, user_id: int, now: datetime) -> Forgotten:
    """Delete the user's transcripts, job texts and settings, keeping usage seconds (no commit)."""
    # The user's row lock orders this against the charge that stores a transcript of theirs
    # (PostgreSQL; SQLite serialises writers anyway).
    await lock_user(session, user_id=user_id)
    mine = select(Job.id).where(Job.user_id == user_id)
    # The transcripts of the user's jobs, and of translations others asked for of them.
    linked = await session.scalars(
        select(Job.transcript_id)
        .where(
            or_(Job.user_id == user_id, Job.source_job_id.in_(mine)),
            Job.transcript_id.is_not(None),
        )
        .distinct()
    )
    transcript_ids = [tid for tid in linked if tid is not None]
    cancelled = await session.scalars(
        update(Job)
        .where(
            Job.status.in_(ACTIVE),
            or_(Job.user_id == user_id, Job.transcript_id.in_(transcript_ids)),
        )
        .values(status=JobStatus.cancelled, finished_at=now)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    cancelled_ids = tuple(sorted(cancelled))
    # Every job linking them loses the link first (another user's cache hit included).
    await session.execute(
        update(Job)
        .where(Job.transcript_id.in_(transcript_ids))
        .values(transcript_id=None)
        .execution_options(synchronize_session=False)
    )
    deleted = await session.execute(
        delete(Transcript)
        .where(Transcript.id.in_(transcript_ids))
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(Job)
        .where(Job.user_id == user_id)
        .values(file_name=None, error_text=None)
        .execution_options(synchronize_session=False)
    )
    # Settings back to their defaults; name, username and language come back with the next
    # message (Telegram sends them with every update).
    await session.execute(
        update(User)
        .where(User.id == user_id)
        .values(
            ui_language=None, output_format="text", first_name="", username=None, language_code=None
        )
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(Chat)
        .where(Chat.id == user_id)  # the private chat, whose language is the user's
        .values(language=None)
        .execution_options(synchronize_session=False)
    )
    count = int(getattr(deleted, "rowcount", 0) or 0)
    log.info("user_forgotten", user_id=user_id, transcripts=count, cancelled=list(cancelled_ids))
    return Forgotten(transcripts=count, cancelled=cancelled_ids)


async def purge_old(session: AsyncSession, *, now: datetime, settings: Settings) -> Purged:
    """Delete transcripts past their lifetime, clear texts of finished jobs past retention, and
    drop the ids of handled updates past HANDLED_UPDATE_DAYS."""
    transcripts = await cache.purge_expired(session, now=now, ttl_days=cache.kept_days(settings))
    jobs = 0
    if settings.retention_days > 0:
        cleared = await session.execute(
            update(Job)
            .where(
                Job.status.in_(FINAL),  # an unfinished job still needs its failure text
                Job.created_at <= now - timedelta(days=settings.retention_days),
                or_(Job.file_name.is_not(None), Job.error_text.is_not(None)),
            )
            .values(file_name=None, error_text=None)
            .execution_options(synchronize_session=False)
        )
        jobs = int(getattr(cleared, "rowcount", 0) or 0)
    dropped = await session.execute(
        delete(HandledUpdate)
        .where(HandledUpdate.handled_at <= now - timedelta(days=HANDLED_UPDATE_DAYS))
        .execution_options(synchronize_session=False)
    )
    updates = int(getattr(dropped, "rowcount", 0) or 0)
    return Purged(transcripts=transcripts, jobs=jobs, updates=updates)


async def purge_periodically(sessions: Sessions, *, settings: Settings) -> None:
    """`purge_old` now and every PURGE_INTERVAL_SECONDS, until cancelled."""
    while True:
        try:
            async with sessions() as session:
                purged = await purge_old(session, now=utcnow(), settings=settings)
                await session.commit()
            if purged.transcripts or purged.jobs or purged.updates:
                log.info(
                    "cache_purged",
                    transcripts=purged.transcripts,
                    jobs=purged.jobs,
                    updates=purged.updates,
                )
        except (SQLAlchemyError, OSError) as error:
            # A busy or unreachable database: the next round tries again; serving goes on.
            log.warning("cache_purge_failed", error=repr(error))
        await asyncio.sleep(settings.purge_interval_seconds)
