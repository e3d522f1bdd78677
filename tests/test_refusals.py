"""Refusals at the door are counted per UTC day and reason, by `intake.record`, on a real
SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime

import pytest
from aiogram.types import Chat, Message
from aiogram.types import User as TelegramUser
from sqlalchemy import text, update

from voicebot.config import Settings
from voicebot.db import Sessions, build_engine, build_sessions, upgrade_async
from voicebot.intake import Intake, Media, Recorded, record
from voicebot.models import User, utcnow
from voicebot.ratelimits import Limiters, build_limiters
from voicebot.refusals import count_refusals

from .test_db import add_user, fetch

ANN, BEN = 6001, 6002
#: Two unfinished jobs each, at most; a file named "poison" is refused by the database itself.
SETTINGS = Settings(_env_file=None, user_max_active_jobs=2)  # type: ignore[call-arg]
POISON = {
    "sqlite": [
        "CREATE TRIGGER poison BEFORE INSERT ON jobs WHEN NEW.file_id = 'poison'"
        " BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF NEW.file_id = 'poison' THEN RAISE EXCEPTION 'poisoned row'; END IF;"
        " RETURN NEW; END $$",
        "CREATE TRIGGER poison BEFORE INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION poison()",
    ],
}
message_ids = itertools.count(1)


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[Sessions]:
    """A migrated database (SQLite, PostgreSQL) with Ann, and Ben, who is banned."""
    await upgrade_async(database_url)
    engine = build_engine(database_url)
    made = build_sessions(engine)
    await add_user(made, ANN, "Ann")
    await add_user(made, BEN, "Ben")
    async with made() as session:
        await session.execute(update(User).where(User.id == BEN).values(banned=True))
        await session.commit()
    yield made
    await engine.dispose()


def voice(user_id: int, file_id: str = "f") -> tuple[Message, Media]:
    """A voice note of 4 s from `user_id` in their private chat."""
    sender = TelegramUser(id=user_id, is_bot=False, first_name=str(user_id))
    message = Message(
        message_id=next(message_ids),
        date=datetime.now(UTC),
        chat=Chat(id=user_id, type="private"),
        from_user=sender,
    )
    return message, Media("voice", file_id, f"u-{file_id}", 1000, 4.0)


async def recorded(
    sessions: Sessions, limiters: Limiters, *items: tuple[Message, Media]
) -> Recorded:
    """Record one batch of `items`."""
    intake = Intake()
    for message, media in items:
        intake.accept(message, media)
    return await record(sessions, intake, settings=SETTINGS, limiters=limiters)


async def counted(sessions: Sessions) -> dict[tuple[date, str], int]:
    """The refusals table."""
    rows = await fetch(sessions, "SELECT day, reason, count FROM refusals")
    # SQLite hands a date back as its ISO text, PostgreSQL as a date.
    return {
        (day if isinstance(day, date) else date.fromisoformat(day), reason): count
        for day, reason, count in rows
    }


async def test_each_batch_adds_its_refusals_to_the_days_counts(sessions: Sessions) -> None:
    """Two of Ann's three notes are accepted, Ben is banned; a later batch adds to the counts,
    and a batch that refuses nothing writes nothing."""
    limiters = build_limiters(SETTINGS)
    today = utcnow().date()
    first = await recorded(sessions, limiters, voice(ANN), voice(BEN), voice(ANN), voice(ANN))
    assert (len(first.job_ids), sorted(first.reasons)) == (2, ["banned", "too_many_active"])
    assert await counted(sessions) == {(today, "banned"): 1, (today, "too_many_active"): 1}

    second = await recorded(sessions, limiters, voice(ANN), voice(ANN), voice(BEN))
    assert sorted(second.reasons) == ["banned", "too_many_active", "too_many_active"]
    assert await counted(sessions) == {(today, "banned"): 2, (today, "too_many_active"): 3}

    async with sessions() as session:
        await session.execute(text("UPDATE jobs SET status = 'done'"))
        await session.commit()
    third = await recorded(sessions, limiters, voice(ANN))
    assert (len(third.job_ids), third.reasons) == (1, [])
    assert await counted(sessions) == {(today, "banned"): 2, (today, "too_many_active"): 3}


async def test_a_message_the_database_refuses_is_counted_as_failed(sessions: Sessions) -> None:
    """A row the database refuses fails its own message only: it is counted as failed, in a
    transaction of its own, beside the refusals of the messages stored one by one."""
    async with sessions() as session:
        for statement in POISON[session.get_bind().dialect.name]:
            await session.execute(text(statement))
        await session.commit()
    limiters = build_limiters(SETTINGS)
    today = utcnow().date()
    done = await recorded(sessions, limiters, voice(ANN), voice(ANN, "poison"), voice(BEN))
    assert (len(done.job_ids), sorted(done.reasons)) == (1, ["banned", "failed"])
    assert await counted(sessions) == {(today, "banned"): 1, (today, "failed"): 1}


async def test_counts_are_kept_per_day(sessions: Sessions) -> None:
    """Counts of another day are rows of their own; repeats in one call add up."""
    days = (date(2026, 3, 19), date(2026, 3, 20))
    async with sessions() as session:
        await count_refusals(session, day=days[0], reasons=["quota", "quota", "rate_limit"])
        await count_refusals(session, day=days[1], reasons=["quota"])
        await count_refusals(session, day=days[0], reasons=[])
        await session.commit()
    assert await counted(sessions) == {
        (days[0], "quota"): 2,
        (days[0], "rate_limit"): 1,
        (days[1], "quota"): 1,
    }


async def test_the_queue_bound_holds_for_batches_recorded_at_once(sessions: Sessions) -> None:
    """Eight batches recorded at the same moment, as eight bot processes would (concurrent
    transactions): no more than MAX_QUEUE_SIZE jobs are admitted in all, the rest are told the
    queue is full."""
    settings = Settings(_env_file=None, max_queue_size=5, user_max_active_jobs=10)  # type: ignore[call-arg]
    limiters = build_limiters(settings)

    async def one(user_id: int) -> Recorded:
        intake = Intake()
        for k in range(2):
            intake.accept(*voice(user_id, f"q{user_id}-{k}"))
        return await record(sessions, intake, settings=settings, limiters=limiters)

    done = await asyncio.gather(*(one(6100 + n) for n in range(8)))
    assert sum(len(batch.job_ids) for batch in done) == 5
    assert sum(batch.reasons.count("queue_full") for batch in done) == 11
    assert await fetch(sessions, "SELECT count(*) FROM jobs") == [(5,)]
