"""What admins do to users and what they read about the service; used by chat commands and CLI.

Every function takes `session` first and leaves the transaction to the caller: a command is one
transaction, so an unknown user (UnknownUserError) rolls back everything it would have done.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from voicebot.errors import UnknownUserError
from voicebot.groups import group_plan_row
from voicebot.models import ACTIVE, Job, JobStatus, Plan, Transaction, Usage, User, as_utc
from voicebot.texts import display_name

#: Largest DAYS for a grant and MINUTES for a credit that the commands accept (a typo guard).
MAX_DAYS = 36500
MAX_MINUTES = 1_000_000


@dataclass(frozen=True, slots=True)
class TopUser:
    """One user's share of the day."""

    user_id: int
    name: str
    jobs: int
    audio_seconds: float


@dataclass(frozen=True, slots=True)
class Stats:
    """The service since `since`: jobs, audio, cache hits and failures, queue, top users."""

    since: datetime
    #: Jobs accepted since `since`.
    jobs: int
    #: Jobs answered with a transcript (usage rows), of them `cached` from the cache.
    transcribed: int
    cached: int
    audio_seconds: float
    #: Jobs that failed since `since` (the user was told why).
    failures: int
    #: Unfinished jobs now, whenever they arrived.
    queue: int
    top: list[TopUser]

    @property
    def cache_hit_rate(self) -> float | None:
        """Share of transcripts answered from the cache; None before the first one."""
        return self.cached / self.transcribed if self.transcribed else None


async def find_user(session: AsyncSession, *, user_id: int) -> User:
    """The user with `user_id`; UnknownUserError when they never used the bot."""
    user = await session.get(User, user_id)
    if user is None:
        raise UnknownUserError(user_id)
    return user


async def grant_plan(
    session: AsyncSession, *, user_id: int, plan: Plan, days: int | None, now: datetime
) -> User:
    """Put the user on `plan` for `days` from `now` (None: no expiry); free has no expiry.

    A negative id is a group's: its plan row is created when missing (see quotas.effective_plan).
    """
    if user_id < 0:
        user = await group_plan_row(session, chat_id=user_id)
    else:
        user = await find_user(session, user_id=user_id)
    user.plan = plan
    user.plan_expires_at = now + timedelta(days=days) if days and plan != Plan.free else None
    await session.flush()
    return user


async def credit(session: AsyncSession, *, user_id: int, seconds: float) -> User:
    """Add `seconds` to the user's balance and record it as a `credit` transaction."""
    user = await find_user(session, user_id=user_id)
    # One UPDATE adding to the stored value: a charge committed meanwhile by another process
    # is not overwritten.
    found = await session.execute(
        update(User)
        .where(User.id == user_id)
        .values(balance_seconds=User.balance_seconds + seconds)
        .returning(User.balance_seconds)
        .execution_options(synchronize_session=False)
    )
    # The stored value, without marking the attribute changed (a flush would write it again).
    set_committed_value(user, "balance_seconds", float(found.scalar_one()))
    session.add(Transaction(user_id=user_id, kind="credit", seconds=seconds))
    await session.flush()
    return user


async def set_banned(session: AsyncSession, *, user_id: int, banned: bool) -> User:
    """Ban or unban the user (the door and the worker read the flag)."""
    user = await find_user(session, user_id=user_id)
    user.banned = banned
    await session.flush()
    return user


async def list_users(
    session: AsyncSession, *, limit: int = 100, banned: bool | None = None
) -> list[User]:
    """Users, most recently seen first; only banned (or only not banned) ones when asked."""
    query = select(User).order_by(User.last_seen_at.desc(), User.id).limit(limit)
    if banned is not None:
        query = query.where(User.banned == banned)
    return list((await session.scalars(query)).all())


async def stats(session: AsyncSession, *, since: datetime, top: int = 5) -> Stats:
    """What happened since `since` (quotas.day_start for today); `top` users by audio seconds."""
    # SQLite stores UTC without an offset: compare in UTC on every database.
    since_utc = as_utc(since)
    jobs = await session.scalar(
        select(func.count()).select_from(Job).where(Job.created_at >= since_utc)
    )
    used = (
        await session.execute(
            select(
                func.count(Usage.id),
                func.coalesce(func.sum(Usage.audio_seconds), 0.0),
                func.count(Usage.id).filter(Usage.cached),
            ).where(Usage.created_at >= since_utc)
        )
    ).one()
    failures = await session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.status == JobStatus.failed, Job.finished_at >= since_utc)
    )
    queue = await session.scalar(
        select(func.count()).select_from(Job).where(Job.status.in_(ACTIVE))
    )
    audio = func.sum(Usage.audio_seconds)
    leaders = await session.execute(
        select(User.id, User.first_name, User.username, func.count(Usage.id), audio)
        .join(Usage, Usage.user_id == User.id)
        .where(Usage.created_at >= since_utc)
        .group_by(User.id, User.first_name, User.username)
        .order_by(audio.desc(), User.id)
        .limit(top)
    )
    return Stats(
        since=since,
        jobs=int(jobs or 0),
        transcribed=int(used[0]),
        cached=int(used[2]),
        audio_seconds=float(used[1]),
        failures=int(failures or 0),
        queue=int(queue or 0),
        top=[
            TopUser(user_id, display_name(name, username), int(count), float(seconds))
            for user_id, name, username, count, seconds in leaders
        ],
    )
