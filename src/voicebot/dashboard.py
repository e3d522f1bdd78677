"""What the admin dashboard shows, read from the database (all bot processes together).

Every function takes `session` first and only reads. Days are UTC calendar days on SQLite and
PostgreSQL alike (see `_utc_day`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from voicebot.admin import Stats, stats
from voicebot.models import ACTIVE, Job, JobStatus, RefusalCount, Usage, User
from voicebot.texts import display_name

#: Days the charts cover, today included.
DAYS = 30
#: Users in the "top users by minutes" chart.
TOP_USERS = 10
#: Rows of the queue table: a longer queue is counted, not listed.
QUEUE_ROWS = 200
#: The label of a usage row without a language (charged before schema 0006, its transcript
#: gone by then), or of a failed job without an error code.
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Day:
    """One UTC day: jobs accepted, transcripts answered, and how long transcribing took."""

    day: date
    #: Jobs accepted that day.
    jobs: int
    #: Jobs answered with a transcript that day (usage rows), of them `cached` from the cache.
    transcribed: int
    cached: int
    audio_seconds: float
    #: Processing seconds of the transcripts not from the cache: median and 95th percentile.
    p50_seconds: float | None
    p95_seconds: float | None

    @property
    def cache_hit_rate(self) -> float | None:
        """Share of the day's transcripts answered from the cache; None without any."""
        return self.cached / self.transcribed if self.transcribed else None


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """An unfinished job as the queue table shows it."""

    id: int
    user_id: int
    user: str
    status: JobStatus
    kind: str
    duration: float | None
    priority: int
    attempts: int
    created_at: datetime
    started_at: datetime | None


@dataclass(frozen=True, slots=True)
class Overview:
    """Everything on the dashboard page for the `DAYS` days up to `today`."""

    today: date
    days: list[Day]
    #: (detected language, transcripts), most first.
    languages: list[tuple[str, int]]
    #: (reason, messages and presses refused at the door), most first.
    refusals: list[tuple[str, int]]
    #: (error code, failed jobs), most first.
    failures: list[tuple[str, int]]
    #: Totals since the first day and its top users by audio (admin.stats, as /stats shows).
    totals: Stats
    queue: list[QueuedJob]
    #: Unfinished jobs in all, `queue` lists the first QUEUE_ROWS of them.
    queue_length: int


def day_start(day: date) -> datetime:
    """Midnight UTC at the start of `day`."""
    return datetime.combine(day, time(), tzinfo=UTC)


def percentile(values: Sequence[float], share: float) -> float:
    """The `share` (0..1) percentile of sorted `values`, interpolated as percentile_cont does."""
    if not values:
        raise ValueError("percentile of no values")
    position = share * (len(values) - 1)
    low, high = math.floor(position), math.ceil(position)
    return values[low] + (values[high] - values[low]) * (position - low)


def _utc_day(session: AsyncSession, column: Any) -> Any:
    """SQL for the UTC calendar day of a timestamp column."""
    if session.get_bind().dialect.name == "postgresql":
        # date() of a timestamptz is the day in the connection's TimeZone, which the server or
        # the role may set to anything: take the day of its UTC wall time instead.
        return func.date(func.timezone("UTC", column))
    return func.date(column)  # SQLite stores UTC wall times


def _day(value: Any) -> date:
    """A `func.date` result as a date: SQLite answers 'YYYY-MM-DD', PostgreSQL a date."""
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


async def days(session: AsyncSession, *, first: date, last: date) -> list[Day]:
    """Each day from `first` to `last`, days without jobs included (with zeros)."""
    since, until = day_start(first), day_start(last + timedelta(days=1))
    job_day = _utc_day(session, Job.created_at)
    accepted = {
        _day(day): int(count)
        for day, count in await session.execute(
            select(job_day, func.count(Job.id))
            .where(Job.created_at >= since, Job.created_at < until)
            .group_by(job_day)
        )
    }
    usage_day = _utc_day(session, Usage.created_at)
    used = {
        _day(day): (int(count), int(cached or 0), float(seconds or 0.0))
        for day, count, cached, seconds in await session.execute(
            select(
                usage_day,
                func.count(Usage.id),
                func.count(Usage.id).filter(Usage.cached),
                func.sum(Usage.audio_seconds),
            )
            .where(Usage.created_at >= since, Usage.created_at < until)
            .group_by(usage_day)
        )
    }
    # Percentiles in Python from every row of the period: portable (SQLite has no
    # percentile_cont) and fine for some hundred thousand transcripts a month; past that, ask
    # PostgreSQL's percentile_cont per day instead.
    processing: defaultdict[date, list[float]] = defaultdict(list)
    for day, seconds in await session.execute(
        select(usage_day, Usage.processing_seconds)
        .where(Usage.created_at >= since, Usage.created_at < until, Usage.cached.is_(False))
        .order_by(Usage.processing_seconds)
    ):
        processing[_day(day)].append(float(seconds))
    found = []
    for offset in range((last - first).days + 1):
        day = first + timedelta(days=offset)
        transcribed, cached, audio = used.get(day, (0, 0, 0.0))
        seconds = processing.get(day)
        found.append(
            Day(
                day=day,
                jobs=accepted.get(day, 0),
                transcribed=transcribed,
                cached=cached,
                audio_seconds=audio,
                p50_seconds=percentile(seconds, 0.5) if seconds else None,
                p95_seconds=percentile(seconds, 0.95) if seconds else None,
            )
        )
    return found


async def languages(session: AsyncSession, *, since: datetime) -> list[tuple[str, int]]:
    """Transcripts answered since `since` by the language Whisper detected, most first.

    Read from the usage rows, which keep it when the transcript is purged (retention, /forget);
    rows without one count as UNKNOWN.
    """
    language = func.coalesce(Usage.language, UNKNOWN)
    count = func.count(Usage.id)
    found = await session.execute(
        select(language, count)
        .where(Usage.created_at >= since)
        .group_by(language)
        .order_by(count.desc(), language)
    )
    return [(str(name), int(number)) for name, number in found]


async def refusals(session: AsyncSession, *, first: date, last: date) -> list[tuple[str, int]]:
    """Messages and presses refused at the door from `first` to `last` (UTC days) by reason,
    most first."""
    count = func.sum(RefusalCount.count)
    found = await session.execute(
        select(RefusalCount.reason, count)
        .where(RefusalCount.day >= first, RefusalCount.day <= last)
        .group_by(RefusalCount.reason)
        .order_by(count.desc(), RefusalCount.reason)
    )
    return [(str(reason), int(number)) for reason, number in found]


async def failures(session: AsyncSession, *, since: datetime) -> list[tuple[str, int]]:
    """Jobs that failed since `since` by error code, most first."""
    code = func.coalesce(Job.error_code, UNKNOWN)
    count = func.count(Job.id)
    found = await session.execute(
        select(code, count)
        .where(Job.status == JobStatus.failed, Job.finished_at >= since)
        .group_by(code)
        .order_by(count.desc(), code)
    )
    return [(str(name), int(number)) for name, number in found]


async def queue(session: AsyncSession, *, limit: int = QUEUE_ROWS) -> tuple[list[QueuedJob], int]:
    """The unfinished jobs, those being worked on first, then by priority and age; and how many."""
    working = case((Job.status == JobStatus.queued, 1), else_=0)
    found = await session.execute(
        select(Job, User.first_name, User.username)
        .join(User, User.id == Job.user_id)
        .where(Job.status.in_(ACTIVE))
        .order_by(working, Job.priority.desc(), Job.id)
        .limit(limit)
    )
    jobs = [
        QueuedJob(
            id=job.id,
            user_id=job.user_id,
            user=display_name(first_name, username),
            status=job.status,
            kind=job.kind,
            duration=job.duration,
            priority=job.priority,
            attempts=job.attempts,
            created_at=job.created_at,
            started_at=job.started_at,
        )
        for job, first_name, username in found
    ]
    total = await session.scalar(
        select(func.count()).select_from(Job).where(Job.status.in_(ACTIVE))
    )
    return jobs, int(total or 0)


async def overview(session: AsyncSession, *, today: date, top: int = TOP_USERS) -> Overview:
    """The dashboard's data for the DAYS days up to and including `today` (UTC)."""
    first = today - timedelta(days=DAYS - 1)
    since = day_start(first)
    jobs, length = await queue(session)
    return Overview(
        today=today,
        days=await days(session, first=first, last=today),
        languages=await languages(session, since=since),
        refusals=await refusals(session, first=first, last=today),
        failures=await failures(session, since=since),
        totals=await stats(session, since=since, top=top),
        queue=jobs,
        queue_length=length,
    )
