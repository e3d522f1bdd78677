"""Single-instance locks: one holder at a time on a real PostgreSQL, standby and takeover; on
SQLite granted at once. Each engine plays one bot process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from voicebot import locks
from voicebot.db import build_engine
from voicebot.health import Health, checks

from .conftest import sqlite_only
from .servers import PostgresServer

#: Short, so that standby and takeover take a fraction of a second.
INTERVAL = 0.05
#: Long enough for many tries: what has not happened by then is not going to.
SETTLE = 0.5


@pytest.fixture
async def engines(postgres: PostgresServer) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """Two engines on one fresh PostgreSQL database: two bot processes."""
    url = await postgres.create_database()
    first, second = build_engine(url), build_engine(url)
    yield first, second
    await first.dispose()
    await second.dispose()
    await postgres.drop_database(url)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Wait until `condition()` holds; the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def terminate(engine: AsyncEngine, holder: str) -> int:
    """Kill the backend of `holder`'s lock connection, as a PostgreSQL restart would; how many."""
    async with engine.connect() as connection:
        killed = await connection.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name LIKE :name"
            ),
            {"name": f"voicebot % {holder}"},
        )
    return int(killed or 0)


class Holder:
    """Enters `locks.hold` in a task of its own, as another process would, and stays in."""

    def __init__(
        self, engine: AsyncEngine, name: str, *, holder: str, health: Health | None = None
    ) -> None:
        self.taken = asyncio.Event()
        self.leave = asyncio.Event()
        self.lock: locks.Lock | None = None
        self.task = asyncio.create_task(self._hold(engine, name, holder, health))

    async def _hold(
        self, engine: AsyncEngine, name: str, holder: str, health: Health | None
    ) -> None:
        async with locks.hold(
            engine, name, interval=INTERVAL, holder=holder, health=health
        ) as lock:
            self.lock = lock
            self.taken.set()
            await self.leave.wait()

    async def release(self) -> None:
        """Leave the block and wait until it is left."""
        self.leave.set()
        await self.task


def events(logs: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_a_second_instance_stands_by_until_the_first_releases(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    """While A holds the lock B waits, says once who holds it (log and /ready), and takes it
    within a try or two of A leaving."""
    first, second = engines
    health = Health()
    with capture_logs() as logs:
        a = Holder(first, locks.POLLING, holder="host-a:101")
        await asyncio.wait_for(a.taken.wait(), 5)
        b = Holder(second, locks.POLLING, holder="host-b:202", health=health)
        await until(lambda: locks.POLLING in health.standby)
        await asyncio.sleep(SETTLE)
        assert not b.taken.is_set()
        assert health.standby == {locks.POLLING: "voicebot polling host-a:101"}
        polling = {check.name: check for check in await checks(health)}["polling"]
        assert polling.ok
        assert polling.detail == "standby: voicebot polling host-a:101 polls"

        await a.release()
        took = await until(b.taken.is_set)
        assert took < 1.0
        assert health.standby == {}
        assert b.lock is not None
        assert b.lock.is_held()
        await b.release()
    standby = events(logs, "lock_standby")
    assert [(e["lock"], e["holder"]) for e in standby] == [
        ("polling", "voicebot polling host-a:101")
    ]
    assert len(events(logs, "lock_taken")) == 2
    assert len(events(logs, "lock_released")) == 2


async def test_a_killed_holder_loses_the_lock_and_the_standby_takes_it(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    """A's connection killed (PostgreSQL restarted under it): B takes the lock at its next
    try, and A's check finds it lost; A leaves its block without an error."""
    first, second = engines
    with capture_logs() as logs:
        a = Holder(first, locks.POLLING, holder="host-a:101")
        await asyncio.wait_for(a.taken.wait(), 5)
        b = Holder(second, locks.POLLING, holder="host-b:202")
        await asyncio.sleep(SETTLE)
        assert not b.taken.is_set()
        assert a.lock is not None

        assert await terminate(second, "host-a:101") == 1
        await asyncio.wait_for(b.taken.wait(), 5)
        await asyncio.wait_for(a.lock.lost.wait(), 5)
        assert not a.lock.is_held()
        await a.release()
        assert b.lock is not None
        assert b.lock.is_held()
        await b.release()
    lost = events(logs, "lock_lost")
    assert [entry["lock"] for entry in lost] == ["polling"]
    assert len(events(logs, "lock_released")) == 1  # B's: A had nothing left to release


async def test_different_names_are_different_locks(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    """Polling held in one process does not keep the positions loop from another."""
    first, second = engines
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(locks.hold(first, locks.POLLING, interval=INTERVAL))
        held = await asyncio.wait_for(
            stack.enter_async_context(locks.hold(second, locks.POSITIONS, interval=INTERVAL)), 5
        )
        assert held.is_held()
    assert locks.lock_key(locks.POLLING) == locks.lock_key("polling")
    assert locks.lock_key(locks.POLLING) != locks.lock_key(locks.POSITIONS)


async def test_run_held_runs_the_work_again_after_a_lost_lock(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    """The holder's connection killed: its work is cancelled; with nobody else waiting it takes
    the lock again and starts the work anew. `stop` ends it while it stands by."""
    first, second = engines
    starts: list[float] = []
    cancels: list[float] = []

    async def work() -> None:
        starts.append(time.monotonic())
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancels.append(time.monotonic())
            raise

    running = asyncio.create_task(
        locks.run_held(first, locks.POSITIONS, work, interval=INTERVAL, holder="host-a:101")
    )
    try:
        await until(lambda: len(starts) == 1)
        assert await terminate(second, "host-a:101") == 1
        await until(lambda: len(starts) == 2)
        assert len(cancels) == 1
    finally:
        running.cancel()
        await asyncio.wait((running,))
    assert len(cancels) == 2

    # Stopped while standing by: returns without ever running the work.
    stop = asyncio.Event()
    async with locks.hold(second, locks.POSITIONS, interval=INTERVAL):
        waiting = asyncio.create_task(
            locks.run_held(first, locks.POSITIONS, work, stop=stop, interval=INTERVAL)
        )
        await asyncio.sleep(SETTLE)
        assert not waiting.done()
        stop.set()
        await asyncio.wait_for(waiting, 1)
    assert len(starts) == 2


async def test_run_held_returns_when_the_work_does(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    """Work that ends (polling after a stop) ends run_held and frees the lock; its error is
    raised."""
    first, second = engines

    async def done() -> None:
        await asyncio.sleep(0)

    async def fails() -> None:
        raise RuntimeError("boom")

    await asyncio.wait_for(locks.run_held(first, locks.POLLING, done, interval=INTERVAL), 5)
    with pytest.raises(RuntimeError, match="boom"):
        await locks.run_held(second, locks.POLLING, fails, interval=INTERVAL)
    async with locks.hold(first, locks.POLLING, interval=INTERVAL) as lock:
        assert lock.is_held()


@sqlite_only
@pytest.mark.exclusive  # granted within 0.1 s
async def test_sqlite_grants_at_once(database_url: str) -> None:
    """One process per SQLite database: every lock is granted at once, and never lost."""
    engine = build_engine(database_url)
    try:
        started = time.monotonic()
        async with (
            locks.hold(engine, locks.POLLING) as first,
            locks.hold(engine, locks.POLLING) as second,
        ):
            assert first.is_held()
            assert second.is_held()
        assert time.monotonic() - started < 0.1
    finally:
        await engine.dispose()


async def test_a_standby_is_told_from_a_loop_that_is_not_running() -> None:
    """/ready: polling not running is not ready, unless this instance stands by for it."""

    async def polling(health: Health) -> tuple[bool, str]:
        found = {check.name: check for check in await checks(health)}["polling"]
        return found.ok, found.detail

    assert await polling(Health()) == (False, "not running")
    assert await polling(Health(standby={locks.POSITIONS: "x"})) == (False, "not running")
    standby = Health(standby={locks.POLLING: "voicebot polling b:2"})
    assert await polling(standby) == (True, "standby: voicebot polling b:2 polls")
