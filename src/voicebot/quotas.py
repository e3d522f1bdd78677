"""Plans and daily quotas: what a user may still spend, reservations, and the one charge per job.

A job reserves its declared duration when it is accepted, so a burst cannot together exceed what
is left; it is charged its real duration, once, in the transaction that stores its transcript.
What is left = the day's allowance not yet charged + the balance - what active jobs reserve.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from voicebot.config import Settings
from voicebot.models import RESERVING, Job, Plan, Usage, User, as_utc

#: Telegram rounds a voice note's duration to whole seconds: a job may run this much over its
#: reservation without a second check (the charge itself is still capped at what is left).
ROUNDING_SECONDS = 1.0


def day_start(now: datetime, timezone: str) -> datetime:
    """The start of the quota day that contains `now` (midnight in `timezone`), in UTC."""
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    # In UTC: SQLite stores times without their zone, and every stored time is UTC.
    return datetime.combine(local.date(), time(0), tzinfo=zone).astimezone(UTC)


def next_reset(now: datetime, timezone: str) -> datetime:
    """When the quota day that contains `now` ends, in UTC."""
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    # A calendar day in local time, so a DST change does not shift the reset by an hour.
    tomorrow = datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=zone)
    return tomorrow.astimezone(UTC)


#: Plans from least to most: in a group, a job counts under the group's plan when it is better.
PLAN_RANK = {Plan.free: 0, Plan.premium: 1, Plan.unlimited: 2}


def effective_plan(user: User, now: datetime, group: User | None = None) -> Plan:
    """The user's plan (free once a granted plan has expired), or `group`'s when that is better."""
    plan = _own_plan(user, now)
    if group is not None and PLAN_RANK[_own_plan(group, now)] > PLAN_RANK[plan]:
        return _own_plan(group, now)
    return plan


def _own_plan(user: User, now: datetime) -> Plan:
    expires = user.plan_expires_at
    if expires is not None and as_utc(expires) <= now:
        return Plan.free
    return Plan(user.plan)


async def group_of(session: AsyncSession, *, chat_id: int) -> User | None:
    """The row carrying the plan of group `chat_id` (its id is the chat's); None in private."""
    return await session.get(User, chat_id) if chat_id < 0 else None


def is_admin(settings: Settings, user_id: int) -> bool:
    """Whether ADMIN_IDS names the user."""
    return user_id in settings.admin_ids


def priority_of(settings: Settings, user: User, now: datetime, group: User | None = None) -> int:
    """1 for premium, unlimited and admin senders (or a group with such a plan), 0 for free."""
    if is_admin(settings, user.id) or effective_plan(user, now, group) != Plan.free:
        return 1
    return 0


def daily_allowance(
    settings: Settings, user: User, now: datetime, group: User | None = None
) -> float | None:
    """Seconds a day the user's plan (or `group`'s, if better) allows; None: no limit."""
    if is_admin(settings, user.id):
        return None
    plan = effective_plan(user, now, group)
    seconds = {
        Plan.free: settings.daily_quota_seconds,
        Plan.premium: settings.premium_daily_quota_seconds,
        Plan.unlimited: 0.0,
    }[plan]
    return seconds or None


@dataclass(frozen=True, slots=True)
class Standing:
    """Where a user stands today; `left` is None when no quota applies."""

    plan: Plan
    plan_expires_at: datetime | None
    allowance: float | None
    used_today: float
    reserved: float
    balance: float
    resets_at: datetime

    @property
    def left(self) -> float | None:
        """Seconds the user may still send (allowance, then balance), net of reservations."""
        if self.allowance is None:
            return None
        return max(0.0, self.allowance - self.used_today) + self.balance - self.reserved

    @property
    def allowance_left(self) -> float:
        """Seconds of today's allowance not yet charged (reservations not subtracted)."""
        return max(0.0, (self.allowance or 0.0) - self.used_today)


async def standing(
    session: AsyncSession,
    *,
    user: User,
    settings: Settings,
    now: datetime,
    excluding_job: int | None = None,
    group: User | None = None,
) -> Standing:
    """The user's plan, today's use, active reservations (but `excluding_job`'s) and balance.

    In a group with a better plan (`group`), the plan and allowance are the group's; the use,
    reservations and balance are still the sender's own.
    """
    since = day_start(now, settings.quota_timezone)
    used = await session.scalar(
        select(func.coalesce(func.sum(Usage.charged_seconds - Usage.balance_seconds), 0.0)).where(
            Usage.user_id == user.id, Usage.created_at >= since
        )
    )
    reserving = select(func.coalesce(func.sum(Job.reserved_seconds), 0.0)).where(
        Job.user_id == user.id, Job.status.in_(RESERVING)
    )
    if excluding_job is not None:
        reserving = reserving.where(Job.id != excluding_job)
    reserved = await session.scalar(reserving)
    plan = effective_plan(user, now, group)
    holder = user if plan == _own_plan(user, now) or group is None else group
    return Standing(
        plan=plan,
        plan_expires_at=holder.plan_expires_at if plan != Plan.free else None,
        allowance=daily_allowance(settings, user, now, group),
        used_today=float(used or 0.0),
        reserved=float(reserved or 0.0),
        balance=user.balance_seconds,
        resets_at=next_reset(now, settings.quota_timezone),
    )


async def lock_users(session: AsyncSession, *, user_ids: list[int]) -> dict[int, User]:
    """The users' rows by id, locked for this transaction where the database can (PostgreSQL).

    Locked in id order, so two transactions locking overlapping sets cannot deadlock.
    """
    found = await session.execute(
        select(User).where(User.id.in_(user_ids)).order_by(User.id).with_for_update()
    )
    return {user.id: user for user in found.scalars()}


async def lock_user(session: AsyncSession, *, user_id: int) -> User | None:
    """The user row, locked for this transaction where the database can (PostgreSQL)."""
    return (await lock_users(session, user_ids=[user_id])).get(user_id)


async def charge(
    session: AsyncSession,
    *,
    job: Job,
    audio_seconds: float,
    processing_seconds: float,
    language: str | None,
    settings: Settings,
    now: datetime,
) -> Usage:
    """Write the job's one usage row: today's allowance first, then the balance, never beyond;
    `language` is the transcript's (the dashboard counts it after the transcript is purged).

    Call it in the transaction that stores the transcript: `usage.job_id` is unique, so a
    retried or recovered job can never be charged twice.
    """
    user = await lock_user(session, user_id=job.user_id)
    charged = from_balance = 0.0
    if user is not None:
        group = await group_of(session, chat_id=job.chat_id)
        where = await standing(
            session, user=user, settings=settings, now=now, excluding_job=job.id, group=group
        )
        if where.allowance is not None:
            charged = min(audio_seconds, where.allowance_left + max(0.0, where.balance))
            from_balance = max(0.0, charged - where.allowance_left)
        if from_balance:
            await session.execute(
                update(User)
                .where(User.id == user.id)
                .values(balance_seconds=User.balance_seconds - from_balance)
            )
    usage = Usage(
        user_id=job.user_id,
        job_id=job.id,
        audio_seconds=audio_seconds,
        processing_seconds=processing_seconds,
        charged_seconds=charged,
        balance_seconds=from_balance,
        language=language,
        created_at=now,
    )
    session.add(usage)
    return usage


@dataclass(frozen=True, slots=True)
class Report:
    """What /me shows: today's standing and the last 7 days (local date, jobs, audio seconds)."""

    standing: Standing
    days: list[tuple[date, int, float]]


async def report(
    session: AsyncSession, *, user_id: int, settings: Settings, now: datetime
) -> Report:
    """The user's standing and recent use; a user never seen before stands on the free plan."""
    user = await session.get(User, user_id) or User(
        id=user_id, plan=Plan.free, plan_expires_at=None, banned=False, balance_seconds=0.0
    )
    where = await standing(session, user=user, settings=settings, now=now)
    zone = ZoneInfo(settings.quota_timezone)
    first = now.astimezone(zone).date() - timedelta(days=6)
    since = datetime.combine(first, time(0), tzinfo=zone).astimezone(UTC)
    rows = await session.execute(
        select(Usage.created_at, Usage.audio_seconds).where(
            Usage.user_id == user_id, Usage.created_at >= since
        )
    )
    days = {first + timedelta(days=n): (0, 0.0) for n in range(7)}
    for created_at, seconds in rows:
        day = as_utc(created_at).astimezone(zone).date()
        if day in days:
            jobs, total = days[day]
            days[day] = (jobs + 1, total + seconds)
    return Report(where, [(day, jobs, total) for day, (jobs, total) in days.items()])
