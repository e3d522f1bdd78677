"""Places in line count the slots of the processes that run jobs (`places`), on a real SQLite
file and a real PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from voicebot.db import Sessions, build_engine, build_sessions, upgrade_async
from voicebot.models import utcnow
from voicebot.places import register, running_at_once, unregister
from voicebot.status import place_in_line
from voicebot.texts import queued

LEASE = timedelta(seconds=60)


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[Sessions]:
    """Sessions over a migrated empty database."""
    await upgrade_async(database_url)
    engine = build_engine(database_url)
    yield build_sessions(engine)
    await engine.dispose()


async def at_once(sessions: Sessions) -> int:
    async with sessions() as session:
        return await running_at_once(session, seen_since=utcnow() - LEASE)


async def test_the_slots_of_live_workers_count_and_a_dead_ones_drop_out(
    sessions: Sessions,
) -> None:
    """Two workers (1 and 2 slots) make 3 at once; one not seen for a lease (killed) stops
    counting; a beat refreshes a row rather than adding one; one that stops is forgotten."""
    now = utcnow()
    async with sessions() as session:
        await register(session, worker_id="a", slots=1, now=now)
        await register(session, worker_id="b", slots=2, now=now)
        await register(session, worker_id="dead", slots=4, now=now - LEASE * 2)
        await session.commit()
    assert await at_once(sessions) == 3
    assert place_in_line(5, 3) == 3
    assert queued(5, 3) == "Queued, position 3"
    async with sessions() as session:
        await register(session, worker_id="dead", slots=4, now=utcnow())  # it came back
        await register(session, worker_id="b", slots=2, now=utcnow())
        await unregister(session, worker_id="a")
        await session.commit()
    assert await at_once(sessions) == 6


async def test_the_only_process_on_its_database_forgets_the_others(sessions: Sessions) -> None:
    """`voicebot run` on SQLite restarted within a lease of its crash: the dead process's row
    does not double the slots."""
    async with sessions() as session:
        await register(session, worker_id="before-the-crash", slots=1, now=utcnow())
        await register(session, worker_id="now", slots=1, now=utcnow(), sole=True)
        await session.commit()
    assert await at_once(sessions) == 1
