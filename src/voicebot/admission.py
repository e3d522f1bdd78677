"""Who may add a job now: bans, the per-user and total bounds, the quota, the rate limits.

Decided inside the transaction that records the batch, from what the database holds (and the
rate-limit storage), so several bot processes sharing one database decide alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from voicebot import texts
from voicebot.config import Settings
from voicebot.models import ACTIVE, Job, User
from voicebot.quotas import daily_allowance, is_admin, priority_of, standing
from voicebot.ratelimits import Limiters, take_job


@dataclass(frozen=True, slots=True)
class Admission:
    """Admitted (with the job's priority and reservation), or refused with what to tell."""

    refusal: str | None = None
    priority: int = 0
    reserve: float = 0.0
    #: Why it was refused, for metrics and the refusals table (see `metrics.REFUSAL_REASONS`).
    reason: str = ""


@dataclass
class Counts:
    """Unfinished jobs, in all and per user, read once per batch and kept up as jobs are added."""

    total: int
    by_user: dict[int, int]

    def add(self, user_id: int) -> None:
        """Count a job just admitted."""
        self.total += 1
        self.by_user[user_id] = self.by_user.get(user_id, 0) + 1


async def count_active(session: AsyncSession, *, user_ids: list[int]) -> Counts:
    """Unfinished jobs in all and of each of `user_ids`."""
    total = await session.scalar(
        select(func.count()).select_from(Job).where(Job.status.in_(ACTIVE))
    )
    found = await session.execute(
        select(Job.user_id, func.count())
        .where(Job.status.in_(ACTIVE), Job.user_id.in_(user_ids))
        .group_by(Job.user_id)
    )
    return Counts(int(total or 0), {user_id: int(count) for user_id, count in found})


async def admit(
    session: AsyncSession,
    *,
    user: User,
    duration: float | None,
    counts: Counts,
    settings: Settings,
    limiters: Limiters,
    now: datetime,
    group: User | None = None,
) -> Admission:
    """Whether `user` may add a job of `duration` seconds (None: not declared) now.

    `group`: the plan row of the group the job is in; its plan counts when it is better.
    """
    if is_admin(settings, user.id):
        return Admission(priority=1, reserve=duration or 0.0)
    if user.banned:
        return Admission(texts.BANNED, reason="banned")
    if counts.by_user.get(user.id, 0) >= settings.user_max_active_jobs:
        return Admission(
            texts.too_many_active(settings.user_max_active_jobs), reason="too_many_active"
        )
    if counts.total >= settings.max_queue_size:
        return Admission(texts.QUEUE_FULL, reason="queue_full")
    need = duration or 0.0
    if daily_allowance(settings, user, now, group) is not None:
        where = await standing(session, user=user, settings=settings, now=now, group=group)
        left = where.left
        # A file without a declared duration reserves after decoding; it needs something left.
        if left is not None and (need > left or left <= 0):
            purchases = bool(settings.stars_packages)
            return Admission(
                texts.quota_refused(
                    need, left, where.resets_at, settings.quota_timezone, purchases
                ),
                reason="quota",
            )
    exceeded = await take_job(limiters, user_id=user.id)
    if exceeded is not None:
        return Admission(
            texts.rate_limited(exceeded.scope, exceeded.per_minute, exceeded.retry_after),
            reason="rate_limit",
        )
    return Admission(priority=priority_of(settings, user, now, group), reserve=need)
