"""Single-instance locks: a loop that must run in one process at a time among the processes
that share one database runs where its named lock is held.

Long polling (Telegram gives getUpdates to one consumer: `POLLING`) and the live queue
positions (`positions`, whose edits would be repeated by every process: `POSITIONS`) run so.

    async with locks.hold(engine, locks.POLLING, health=health) as lock:
        ...  # run the loop; stop it when `lock.lost` is set
    await locks.run_held(engine, locks.POSITIONS, lambda: show_positions(runtime))

`hold(engine, name)` waits until this process holds the lock `name`, then yields a `Lock` for
the block; leaving the block releases it.
- On PostgreSQL the lock is a session-level advisory lock (`pg_try_advisory_lock`; the key is
  the first 8 bytes of the name's SHA-256, a signed bigint), taken on a connection of its own
  (made from the engine's URL, outside its pool) that stays open while the lock is held. The
  lock belongs to that connection: when the process dies its connection closes and PostgreSQL
  frees the lock at once; nothing has to expire. The connection's application_name,
  `voicebot NAME HOLDER` (HOLDER: host:pid unless given), says who holds it.
- On SQLite there is one process per database (`voicebot run` holds the run lock beside the
  file, see `backup.run_lock`), so the lock is granted at once and never lost.

Standby: while another process holds the lock, `hold` waits and tries again every `interval`
seconds. It logs `lock_standby` once (with the holder's application_name, from pg_locks and
pg_stat_activity), keeps `health.standby[name]` naming the holder while it waits (so /ready can
say this instance stands by: see `health.checks`), and logs `lock_taken` once it has the lock:
within `interval` of the holder releasing it or dying. A database that does not answer is
waited for the same way. So a new instance started beside the old one (a zero-downtime deploy)
stands by, and takes over when the old one stops.

Losing it: the holder's connection can drop (PostgreSQL restarted, the backend terminated, the
network gone). The lock is then free, and another process may take it. While the block runs,
`hold` checks every `interval` that its connection still holds the lock; when it does not (an
error, or no answer within QUERY_TIMEOUT) it sets `Lock.lost`, logs `lock_lost` and closes the
connection. The caller then stops the loop and leaves the block, and enters `hold` again to
stand by; `run_held` does all of that around a coroutine. Between the drop and the check that
notices it, two processes may run the loop for up to `interval` seconds: what a lock guards
must bear that (a second getUpdates gets 409 Conflict; a position edit is made twice at most).
A holder whose host vanishes without closing its connection keeps the lock until PostgreSQL's
TCP keepalives, set on the lock's connection (KEEPALIVE), give the connection up: about 25 s.
A pooler in transaction mode (PgBouncer) cannot carry a session's lock: connect to PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

if TYPE_CHECKING:
    from voicebot.health import Health

log = structlog.get_logger(__name__)

#: The lock of long polling: Telegram gives getUpdates to one consumer at a time.
POLLING = "polling"
#: The lock of the live queue positions loop (`positions.show_positions`).
POSITIONS = "positions"
#: The lock of the door's decisions, held by one batch's transaction at a time
#: (`hold_for_transaction`, from `intake`): the queue's bound holds across bot processes.
DOOR = "door"
#: How often a standby tries to take the lock, and a holder checks that it still has it.
INTERVAL_SECONDS = 5.0
#: How long one lock query may take before the database counts as not answering.
QUERY_TIMEOUT = 5.0
#: PostgreSQL gives up the lock's connection (and so the lock) when its client stops answering
#: TCP keepalives: the first after 10 idle seconds, then every 5 s, 3 unanswered.
KEEPALIVE = {"tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 3}
#: pg_locks' row of a granted advisory lock on a bigint key: its high half in classid, its low
#: half in objid, objsubid 1 (`prefix`: the table's alias and a dot, or nothing).
_THE_LOCK = (
    "{prefix}locktype = 'advisory' AND {prefix}granted AND {prefix}objsubid = 1 "
    "AND {prefix}classid::bigint = :high AND {prefix}objid::bigint = :low"
)
#: Connection errors and timeouts: the database does not answer, or the connection is gone.
_UNANSWERED = (SQLAlchemyError, OSError, TimeoutError)


@dataclass(eq=False)
class Lock:
    """A lock this process holds (from `hold`) until the block ends or `lost` is set."""

    name: str
    #: Set once the lock is no longer held: its connection dropped or stopped answering.
    lost: asyncio.Event = field(default_factory=asyncio.Event)

    def is_held(self) -> bool:
        """Whether this process still holds the lock, as of the last check."""
        return not self.lost.is_set()


async def hold_for_transaction(session: AsyncSession | AsyncConnection, name: str) -> None:
    """Hold the lock `name` until `session`'s transaction ends, waiting for it if another
    transaction holds it (PostgreSQL's transaction-level advisory lock; on SQLite, whose write
    lock already lets one writer at a time, nothing)."""
    bind = session.get_bind() if isinstance(session, AsyncSession) else session
    if bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(name)})


def lock_key(name: str) -> int:
    """The advisory lock key of `name`: the first 8 bytes of its SHA-256, a signed bigint."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@asynccontextmanager
async def hold(
    engine: AsyncEngine,
    name: str,
    *,
    interval: float = INTERVAL_SECONDS,
    holder: str | None = None,
    health: Health | None = None,
) -> AsyncIterator[Lock]:
    """Wait until this process holds the lock `name` (standing by while another does), then
    hold it for the block; see the module docstring."""
    lock = Lock(name)
    if engine.dialect.name == "sqlite":
        yield lock
        return
    if engine.dialect.name != "postgresql":
        raise ValueError(f"no single-instance locks on {engine.dialect.name}")
    # A pool of none: closing the connection ends its session, and with it the lock; it is
    # never handed to other work still holding it.
    own = create_async_engine(engine.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        label = f"voicebot {name} {holder or f'{socket.gethostname()}:{os.getpid()}'}"
        connection = await _take(own, lock, label=label[:63], interval=interval, health=health)
        watch = asyncio.create_task(_watch(connection, lock, interval=interval))
        try:
            yield lock
        finally:
            watch.cancel()
            await asyncio.wait((watch,))
            # Ending the session releases the lock (it is gone already when the lock was lost).
            await _close(connection)
            if not lock.lost.is_set():
                log.info("lock_released", lock=name)
    finally:
        await own.dispose()


async def run_held(
    engine: AsyncEngine,
    name: str,
    work: Callable[[], Awaitable[None]],
    *,
    stop: asyncio.Event | None = None,
    interval: float = INTERVAL_SECONDS,
    holder: str | None = None,
    health: Health | None = None,
) -> None:
    """Run `work()` while this process holds the lock `name`, until it returns (its error
    raised), or `stop` is set while standing by; a lost lock cancels it, and it runs again
    once the lock is taken again. Work that is running watches `stop` itself."""
    while stop is None or not stop.is_set():
        taken = asyncio.Event()
        turn = asyncio.create_task(
            _turn(engine, name, work, taken, interval=interval, holder=holder, health=health)
        )
        waits = [asyncio.create_task(taken.wait())]
        if stop is not None:
            waits.append(asyncio.create_task(stop.wait()))
        try:
            await asyncio.wait((turn, *waits), return_when=asyncio.FIRST_COMPLETED)
            if stop is not None and stop.is_set() and not taken.is_set():
                return  # stopped while standing by: the finally below ends the wait
            if await turn:
                return
        finally:
            for task in (turn, *waits):
                task.cancel()
            await asyncio.wait((turn, *waits))


async def _turn(
    engine: AsyncEngine,
    name: str,
    work: Callable[[], Awaitable[None]],
    taken: asyncio.Event,
    *,
    interval: float,
    holder: str | None,
    health: Health | None,
) -> bool:
    """Take the lock, set `taken`, and run `work()`: True when it returned, False when the
    lock was lost first (the work is cancelled then)."""
    async with hold(engine, name, interval=interval, holder=holder, health=health) as lock:
        taken.set()
        running = asyncio.ensure_future(work())
        lost = asyncio.create_task(lock.lost.wait())
        try:
            await asyncio.wait((running, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            finished = running.done()
            if not finished:
                running.cancel()
                await asyncio.wait((running,))
        if finished:
            running.result()
        elif not running.cancelled() and running.exception() is not None:
            log.warning("lock_lost_work_failed", lock=name, exc_info=running.exception())
        return finished


async def _take(
    own: AsyncEngine, lock: Lock, *, label: str, interval: float, health: Health | None
) -> AsyncConnection:
    """A connection on which this process holds `lock`, once it can have it."""
    key, started = lock_key(lock.name), time.monotonic()
    connection: AsyncConnection | None = None
    standing_by = failing = False
    try:
        while True:
            try:
                if connection is None:
                    connection = await _connect(own, label)
                async with asyncio.timeout(QUERY_TIMEOUT):
                    taken = await connection.scalar(
                        text("SELECT pg_try_advisory_lock(:key)"), {"key": key}
                    )
                    if taken:
                        waited = round(time.monotonic() - started, 1)
                        log.info("lock_taken", lock=lock.name, waited=waited)
                        return connection
                    holder = await _holder(connection, key)
                failing = False
            except _UNANSWERED as error:
                # A timeout may leave the lock taken on the server: closing the session frees it.
                await _close(connection)
                connection, holder = None, "unknown (the database does not answer)"
                if not failing:
                    log.warning("lock_wait_failed", lock=lock.name, error=_said(error))
                failing = True
            if not standing_by:
                log.info("lock_standby", lock=lock.name, holder=holder)
                standing_by = True
            if health is not None:
                health.standby[lock.name] = holder
            await asyncio.sleep(interval)
    except BaseException:
        await _close(connection)
        raise
    finally:
        if health is not None:
            health.standby.pop(lock.name, None)


async def _connect(own: AsyncEngine, label: str) -> AsyncConnection:
    """A new connection named `label` in pg_stat_activity, with the lock's TCP keepalives."""
    connection = await own.connect()
    keepalives = ", ".join(
        f"set_config('{name}', '{value}', false)" for name, value in KEEPALIVE.items()
    )
    try:
        async with asyncio.timeout(QUERY_TIMEOUT):
            await connection.execute(
                text(f"SELECT set_config('application_name', :label, false), {keepalives}"),
                {"label": label},
            )
    except BaseException:
        await _close(connection)
        raise
    return connection


async def _holder(connection: AsyncConnection, key: int) -> str:
    """Who holds the advisory lock `key` in this database: its application_name (or pid)."""
    row = (
        await connection.execute(
            text(
                "SELECT a.application_name, a.pid FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid "
                f"WHERE {_THE_LOCK.format(prefix='l.')} AND l.database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            _halves(key),
        )
    ).first()
    if row is None:
        return "unknown (released just now)"
    return str(row.application_name or f"pid {row.pid}")


async def _watch(connection: AsyncConnection, lock: Lock, *, interval: float) -> None:
    """Every `interval`, check that `connection` still holds `lock`; set `lock.lost` when not."""
    key = lock_key(lock.name)
    while True:
        await asyncio.sleep(interval)
        error: str | None = None
        try:
            async with asyncio.timeout(QUERY_TIMEOUT):
                held = await connection.scalar(
                    text(
                        "SELECT count(*) FROM pg_locks "
                        f"WHERE pid = pg_backend_pid() AND {_THE_LOCK.format(prefix='')}"
                    ),
                    _halves(key),
                )
        except _UNANSWERED as failure:
            held, error = 0, _said(failure)
        if not held:
            lock.lost.set()
            log.warning("lock_lost", lock=lock.name, error=error or "no longer held")
            # A connection that only stopped answering may still hold it: end the session.
            await _close(connection)
            return


def _halves(key: int) -> dict[str, int]:
    """The parameters of _THE_LOCK for `key`: its high and low 32 bits, unsigned."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return {"high": unsigned >> 32, "low": unsigned & 0xFFFF_FFFF}


async def _close(connection: AsyncConnection | None) -> None:
    """Close `connection` for good, even a broken one (its session, and locks, end)."""
    if connection is None:
        return
    try:
        async with asyncio.timeout(QUERY_TIMEOUT):
            await connection.close()  # the pool of none closes the session itself
    except _UNANSWERED:
        with contextlib.suppress(*_UNANSWERED):
            await connection.invalidate()  # drops the socket without a word to the server


def _said(error: BaseException) -> str:
    """An error in one short line for the log."""
    return f"{error.__class__.__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
