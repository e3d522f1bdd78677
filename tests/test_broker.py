"""The broker: what `publish` puts in a real RabbitMQ (priorities, queues, the record in the
job row) and what the sweeper publishes again, over real PostgreSQL and SQLite databases."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aio_pika
import pytest
from aiogram import Bot
from sqlalchemy import select

from voicebot import leases
from voicebot.broker import Broker, build_broker, priority, queue_of
from voicebot.config import Settings
from voicebot.db import Sessions, build_engine, build_sessions, upgrade_async
from voicebot.jobs import Runtime, transcribe_job
from voicebot.models import Job, JobStatus, utcnow
from voicebot.ratelimits import build_limiters
from voicebot.slots import Slots

from .test_db import add_user

FREE, FLOOD, PREMIUM = 7401, 7402, 7403
MESSAGE_IDS = itertools.count(1)


def test_priorities_follow_class_then_turn() -> None:
    """Class 0 takes 10..6, class 1 takes 5..1, one less per turn down to the fifth."""
    assert [priority(0, turn) for turn in range(1, 8)] == [10, 9, 8, 7, 6, 6, 6]
    assert [priority(1, turn) for turn in range(1, 8)] == [5, 4, 3, 2, 1, 1, 1]


def test_long_recordings_go_to_their_queue_only_when_asked() -> None:
    on = Settings(_env_file=None, long_queue=True, long_audio_seconds=600)
    off = Settings(_env_file=None, long_audio_seconds=600)
    assert queue_of(on, 601) == "long"
    assert queue_of(on, 600) == queue_of(on, None) == queue_of(off, 3600) == "default"


def test_worker_queues_are_checked() -> None:
    assert Settings(_env_file=None, worker_queues="long").worker_queues == ["long"]
    with pytest.raises(ValueError, match="default, long"):
        Settings(_env_file=None, worker_queues="default,slow")


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[Sessions]:
    """Sessions over a migrated database with three senders."""
    await upgrade_async(database_url)
    engine = build_engine(database_url)
    made = build_sessions(engine)
    for user in (FREE, FLOOD, PREMIUM):
        await add_user(made, user)
    yield made
    await engine.dispose()


async def add_job(
    sessions: Sessions, user_id: int, *, premium: bool = False, age: float = 0, **values: object
) -> int:
    """A queued voice job of `user_id`, recorded `age` seconds ago; its id."""
    async with sessions() as session:
        job = Job(
            chat_id=user_id,
            user_id=user_id,
            message_id=next(MESSAGE_IDS),
            kind="voice",
            file_id="file",
            file_unique_id=f"unique-{next(MESSAGE_IDS)}",
            status=JobStatus.queued,
            attempts=0,
            delivered_parts=0,
            priority=1 if premium else 0,
            created_at=utcnow() - timedelta(seconds=age),
            **values,
        )
        session.add(job)
        await session.commit()
        return job.id


@pytest.fixture
async def runtime(sessions: Sessions, tmp_path: Path) -> AsyncIterator[Runtime]:
    """A runtime over `sessions` that publishes only (a bot: no model, no consuming)."""
    settings = Settings(_env_file=None, data_dir=tmp_path, long_queue=True)
    bot = Bot("123456:" + "A" * 35)
    yield Runtime(
        settings=settings,
        bot=bot,
        sessions=sessions,
        engine=None,
        slots=Slots(1, max_wait=settings.priority_max_wait_seconds),
        limiters=build_limiters(settings),
    )
    await bot.session.close()


@pytest.fixture
async def broker(runtime: Runtime, amqp_url: str) -> AsyncIterator[Broker]:
    """RabbitMQ at `amqp_url` for `runtime`, publishing only."""
    runtime.settings = runtime.settings.model_copy(update={"broker_url": amqp_url})
    built = build_broker(runtime, transcribe_job, consume=False)
    await built.start()
    yield built
    await built.close()


async def queued(amqp_url: str, queue: str) -> list[tuple[int, int]]:
    """(job id, priority) of every message in `queue`, in the order a consumer gets them."""
    connection = await aio_pika.connect(amqp_url)
    found = []
    async with connection:
        channel = await connection.channel()
        source = await channel.get_queue(queue, ensure=True)
        while (message := await source.get(fail=False, no_ack=True)) is not None:
            found.append((json.loads(message.body)["args"][0], message.priority or 0))
    return found


async def published(sessions: Sessions) -> dict[int, int | None]:
    async with sessions() as session:
        rows = await session.execute(select(Job.id, Job.published_priority))
    return {job_id: level for job_id, level in rows}


async def test_rabbitmq_gives_premium_first_and_takes_turns(
    runtime: Runtime, broker: Broker, sessions: Sessions, amqp_url: str
) -> None:
    """Published in the order recorded; RabbitMQ gives them back premium first, then each
    sender's first job before anyone's second; the job rows record what it holds."""
    flood = [await add_job(sessions, FLOOD) for _ in range(3)]
    free = await add_job(sessions, FREE)
    premium = await add_job(sessions, PREMIUM, premium=True)
    long = await add_job(sessions, FREE, duration=3600.0)
    await runtime.kick(*flood, free, premium, long)
    assert await queued(amqp_url, "voicebot.default") == [
        (premium, 10),
        (flood[0], 5),
        (free, 5),
        (flood[1], 4),
        (flood[2], 3),
    ]
    assert await queued(amqp_url, "voicebot.long") == [(long, 4)]  # FREE's second job
    assert await published(sessions) == {
        flood[0]: 5,
        flood[1]: 4,
        flood[2]: 3,
        free: 5,
        premium: 10,
        long: 4,
    }


async def test_the_sweeper_leaves_what_rabbitmq_holds_and_promotes_the_long_waiting(
    runtime: Runtime, broker: Broker, sessions: Sessions, amqp_url: str
) -> None:
    """A job RabbitMQ holds is not published again however old; one it does not hold is; a
    free job held at a free priority past PRIORITY_MAX_WAIT_SECONDS comes again at premium."""
    wait = runtime.settings.priority_max_wait_seconds
    lease = runtime.settings.job_lease_seconds
    held = await add_job(sessions, FREE, age=lease + 5, published_priority=5)
    lost = await add_job(sessions, FREE, age=lease + 5)
    starving = await add_job(sessions, FLOOD, age=wait + 5, published_priority=4)
    recent = await add_job(sessions, FLOOD, published_priority=4)
    assert await leases.sweep(runtime) == 2
    found = await queued(amqp_url, "voicebot.default")
    assert sorted(found) == sorted([(lost, 4), (starving, 10)])
    levels = await published(sessions)
    assert (levels[held], levels[lost], levels[starving], levels[recent]) == (5, 4, 10, 4)
    assert await leases.sweep(runtime) == 0  # now all held, none starving
