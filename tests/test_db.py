"""The database: Alembic migrations, SQLite settings, and the query helpers, on a real SQLite
file and a real PostgreSQL database (the `database_url` fixture gives each test both)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from voicebot.backup import head_revision
from voicebot.db import Sessions, build_engine, build_sessions, downgrade, upgrade, upgrade_async
from voicebot.models import (
    Base,
    Chat,
    Job,
    JobStatus,
    Sender,
    User,
    existing_jobs,
    set_job,
    untold_job_ids,
    upsert_senders,
    utcnow,
)
from voicebot.places import count_ahead

from .conftest import sqlite_only

#: The newest schema revision this checkout migrates to.
HEAD = head_revision()
TABLES = {
    "users",
    "chats",
    "jobs",
    "transcripts",
    "usage",
    "transactions",
    "handled_updates",
    "refusals",
    "workers",
    "alembic_version",
}


async def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Run one statement in its own committed transaction; its rows (none for a change)."""
    engine = build_engine(url)
    try:
        async with engine.begin() as connection:
            found = await connection.execute(text(sql))
            return [tuple(row) for row in found] if found.returns_rows else []
    finally:
        await engine.dispose()


async def inspected(url: str, look: Any) -> Any:
    """`look(connection)` over a plain connection to the database, e.g. to inspect its schema."""
    engine = build_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(look)
    finally:
        await engine.dispose()


async def fetch(sessions: Sessions, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one plain SQL query through `sessions` (on whichever database they are)."""
    async with sessions() as session:
        return [tuple(row) for row in await session.execute(text(sql))]


async def tables(url: str) -> set[str]:
    """Table names in the database."""
    return set(await inspected(url, lambda c: inspect(c).get_table_names()))


async def version(url: str) -> list[str]:
    """Rows of alembic_version."""
    return [v for (v,) in await query(url, "SELECT version_num FROM alembic_version")]


async def migrate(url: str, revision: str = "head") -> None:
    """Upgrade to `revision` without blocking the event loop."""
    await asyncio.to_thread(upgrade, url, revision)


async def test_upgrade_creates_the_schema(database_url: str) -> None:
    """One upgrade creates every table and records the newest revision."""
    await migrate(database_url)
    assert await tables(database_url) == TABLES
    assert await version(database_url) == [HEAD]
    columns = await inspected(
        database_url, lambda c: {column["name"] for column in inspect(c).get_columns("jobs")}
    )
    assert {"chat_id", "message_id", "status", "delivered_parts", "transcript_id"} <= columns
    assert "status_requested_at" in columns


async def seed_ann(url: str) -> None:
    """User 7 (Ann) and her private chat, as any schema revision stores them."""
    await query(
        url,
        "INSERT INTO users (id, first_name, created_at, last_seen_at) "
        "VALUES (7, 'Ann', '2024-01-01 00:00:00', '2024-01-01 00:00:00')",
    )
    await query(url, "INSERT INTO chats (id, type, created_at) VALUES (7, 'private', '2024-01-01')")


async def test_upgrade_from_the_first_revision_keeps_jobs(database_url: str) -> None:
    """A database made by 0001 gains the later columns (with defaults) and keeps its jobs."""
    url = database_url
    await migrate(url, "0001")
    await seed_ann(url)
    await query(
        url,
        "INSERT INTO jobs (chat_id, user_id, message_id, kind, file_id, file_unique_id, status,"
        " attempts, delivered_parts, created_at)"
        " VALUES (7, 7, 3, 'voice', 'f', 'u', 'queued', 0, 0, '2024-01-01')",
    )
    # A usage row references the job, as on a bot that has answered before.
    await query(
        url,
        "INSERT INTO usage (user_id, job_id, audio_seconds, processing_seconds, created_at)"
        " VALUES (7, 1, 3.0, 1.0, '2024-01-01')",
    )
    await migrate(url)
    assert await version(url) == [HEAD]
    assert await query(
        url, "SELECT message_id, status, status_requested_at, priority, reserved_seconds FROM jobs"
    ) == [(3, "queued", None, 0, 0.0)]
    assert await query(url, "SELECT plan, banned, balance_seconds FROM users") == [
        ("free", False, 0.0)
    ]


async def test_0006_gives_old_usage_its_transcripts_language_and_downgrades(
    database_url: str,
) -> None:
    """Usage charged before 0006 takes its transcript's language; a purged one stays NULL. The
    downgrade to 0005 drops the column and the refusals table and keeps the usage rows."""
    url = database_url
    await migrate(url, "0005")
    await seed_ann(url)
    await query(
        url,
        "INSERT INTO transcripts (id, file_unique_id, text, language, language_probability,"
        " duration, segments, model, created_at) VALUES (1, 'u', 'hallo', 'de', 0.9, 3.0, '[]',"
        " 'tiny', '2024-01-01')",
    )
    for message_id, transcript in ((3, "1"), (4, "NULL")):
        await query(
            url,
            "INSERT INTO jobs (chat_id, user_id, message_id, kind, file_id, file_unique_id,"
            " status, attempts, delivered_parts, created_at, transcript_id) VALUES (7, 7,"
            f" {message_id}, 'voice', 'f', 'u', 'done', 0, 0, '2024-01-01', {transcript})",
        )
        await query(
            url,
            "INSERT INTO usage (user_id, job_id, audio_seconds, processing_seconds, created_at)"
            f" SELECT 7, id, 3.0, 1.0, '2024-01-01' FROM jobs WHERE message_id = {message_id}",
        )
    await migrate(url)
    assert await version(url) == [HEAD]
    assert await query(
        url,
        "SELECT jobs.message_id, usage.language FROM usage JOIN jobs ON jobs.id = job_id"
        " ORDER BY jobs.message_id",
    ) == [(3, "de"), (4, None)]
    await query(url, "INSERT INTO refusals (day, reason, count) VALUES ('2024-01-01', 'quota', 2)")
    await asyncio.to_thread(downgrade, url, "0005")
    assert await version(url) == ["0005"]
    assert await tables(url) == TABLES - {"refusals", "workers"}
    columns = await inspected(
        url, lambda c: {column["name"] for column in inspect(c).get_columns("usage")}
    )
    assert "language" not in columns
    assert await query(url, "SELECT count(*) FROM usage") == [(2,)]


async def test_0007_leaves_old_jobs_unclaimed_and_downgrades(database_url: str) -> None:
    """Jobs from before 0007 are unclaimed (the first worker takes them); the downgrade to 0006
    drops the lease columns and keeps the jobs."""
    url = database_url
    await migrate(url, "0006")
    await seed_ann(url)
    await query(
        url,
        "INSERT INTO jobs (chat_id, user_id, message_id, kind, file_id, file_unique_id, status,"
        " attempts, delivered_parts, created_at)"
        " VALUES (7, 7, 3, 'voice', 'f', 'u', 'running', 1, 0, '2024-01-01')",
    )
    await migrate(url)
    assert await query(url, "SELECT status, claimed_by, lease_until FROM jobs") == [
        ("running", None, None)
    ]
    await asyncio.to_thread(downgrade, url, "0006")
    assert await version(url) == ["0006"]
    columns = await inspected(
        url, lambda c: {column["name"] for column in inspect(c).get_columns("jobs")}
    )
    assert not columns & {"claimed_by", "lease_until"}
    assert await query(url, "SELECT message_id, status FROM jobs") == [(3, "running")]


async def test_0008_and_0009_leave_old_jobs_unpublished_and_downgrade(database_url: str) -> None:
    """Jobs from before 0008 are in no broker (the first bot publishes them); 0009 adds the
    workers' slots; the downgrade to 0007 drops both and keeps the jobs."""
    url = database_url
    await migrate(url, "0007")
    await seed_ann(url)
    await query(
        url,
        "INSERT INTO jobs (chat_id, user_id, message_id, kind, file_id, file_unique_id, status,"
        " attempts, delivered_parts, created_at)"
        " VALUES (7, 7, 3, 'voice', 'f', 'u', 'queued', 0, 0, '2024-01-01')",
    )
    await migrate(url)
    assert await query(url, "SELECT status, published_priority FROM jobs") == [("queued", None)]
    assert "workers" in await tables(url)
    await asyncio.to_thread(downgrade, url, "0007")
    assert await version(url) == ["0007"]
    columns = await inspected(
        url, lambda c: {column["name"] for column in inspect(c).get_columns("jobs")}
    )
    assert "published_priority" not in columns
    assert "workers" not in await tables(url)
    assert await query(url, "SELECT message_id, status FROM jobs") == [(3, "queued")]


def differences(connection: Connection) -> list[Any]:
    """What autogenerate would add or change to make the database match the models."""
    found: list[Any] = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    return found


async def test_migrations_match_the_models(database_url: str) -> None:
    """Autogenerate finds nothing to add: the tables the code uses are the migrated ones."""
    await migrate(database_url)
    assert await inspected(database_url, differences) == []


async def test_downgrade_to_nothing_and_back(database_url: str) -> None:
    """Every revision's downgrade runs: down to an empty schema, then up again to the models."""
    await migrate(database_url)
    await asyncio.to_thread(downgrade, database_url, "base")
    assert await tables(database_url) == {"alembic_version"}
    assert await version(database_url) == []
    await migrate(database_url)
    assert await version(database_url) == [HEAD]
    assert await inspected(database_url, differences) == []


async def test_upgrade_twice_is_harmless(database_url: str) -> None:
    """A second upgrade changes nothing and keeps the data."""
    await migrate(database_url)
    await query(
        database_url,
        "INSERT INTO users (id, first_name, created_at, last_seen_at) "
        "VALUES (7, 'Ann', '2024-01-01 00:00:00', '2024-01-01 00:00:00')",
    )
    await migrate(database_url)
    assert await tables(database_url) == TABLES
    assert await version(database_url) == [HEAD]
    assert await query(database_url, "SELECT id, first_name FROM users") == [(7, "Ann")]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_processes_starting_at_once_on_a_new_database_migrate_it_once(
    database_url: str,
) -> None:
    """A bot and workers started together on a new PostgreSQL database (SQLite has one process
    per file) each run the migrations at start: one applies them, the others wait for its
    commit and find the schema at head. (Processes: Alembic runs one migration at a time in a
    process, its `context` being a module global.)"""
    started = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; from voicebot.db import upgrade; upgrade(sys.argv[1])",
            database_url,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(4)
    ]
    for process in started:
        _, errors = await process.communicate()
        assert process.returncode == 0, errors.decode()[-2000:]
    assert await tables(database_url) == TABLES
    assert await version(database_url) == [HEAD]


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[Sessions]:
    """Sessions over a migrated database (on SQLite, a file made in a missing folder)."""
    await upgrade_async(database_url)
    engine = build_engine(database_url)
    yield build_sessions(engine)
    await engine.dispose()


@sqlite_only
async def test_sqlite_connections_use_wal_and_foreign_keys(sessions: Sessions) -> None:
    """Every connection gets WAL, enforced foreign keys and a busy timeout."""
    async with sessions() as session:
        connection = await session.connection()

        async def pragma(name: str) -> object:
            return (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar()

        assert await pragma("journal_mode") == "wal"
        assert await pragma("foreign_keys") == 1
        assert await pragma("busy_timeout") == 10000


async def test_foreign_keys_are_enforced(sessions: Sessions) -> None:
    """A job for an unknown user and chat is refused."""
    async with sessions() as session:
        session.add(job(chat_id=1, user_id=1, message_id=1))
        with pytest.raises(IntegrityError):
            await session.commit()


async def add_user(
    sessions: Sessions, user_id: int, first_name: str = "Ann", chat_title: str | None = None
) -> None:
    """Record a user and their private chat (same id)."""
    async with sessions() as session:
        await upsert_senders(session, senders=[sender(user_id, first_name, chat_title)])
        await session.commit()


def sender(user_id: int, first_name: str, chat_title: str | None = None) -> Sender:
    """A user writing in their private chat (same id)."""
    return Sender(
        user_id=user_id,
        first_name=first_name,
        username=None,
        language_code="en",
        chat_id=user_id,
        chat_type="private",
        chat_title=chat_title,
    )


def job(
    *, chat_id: int, user_id: int, message_id: int, status: JobStatus = JobStatus.queued
) -> Job:
    """A voice job, not yet added to a session."""
    return Job(
        chat_id=chat_id,
        user_id=user_id,
        message_id=message_id,
        kind="voice",
        file_id=f"file-{chat_id}-{message_id}",
        file_unique_id=f"unique-{chat_id}-{message_id}",
        status=status,
    )


async def test_upsert_senders_is_idempotent(sessions: Sessions) -> None:
    """Seeing a user again updates their profile and chat title, never duplicates them."""
    await add_user(sessions, 10, "Ann", chat_title="old")
    async with sessions() as session:
        first = await session.get(User, 10)
        assert first is not None
        created = first.created_at
    await add_user(sessions, 10, "Annie", chat_title="new")
    await add_user(sessions, 10, "Annie", chat_title="new")
    async with sessions() as session:
        users = (await session.execute(select(User))).scalars().all()
        chats = (await session.execute(select(Chat))).scalars().all()
    assert [(u.id, u.first_name) for u in users] == [(10, "Annie")]
    assert users[0].created_at == created
    assert users[0].last_seen_at >= created
    assert [(c.id, c.title) for c in chats] == [(10, "new")]


async def test_a_message_is_one_job_only(sessions: Sessions) -> None:
    """(chat_id, message_id) is unique; the same message_id in another chat is fine."""
    await add_user(sessions, 10)
    await add_user(sessions, 11)
    async with sessions() as session:
        session.add(job(chat_id=10, user_id=10, message_id=5))
        await session.commit()
    async with sessions() as session:
        session.add(job(chat_id=10, user_id=10, message_id=5))
        with pytest.raises(IntegrityError):
            await session.commit()
    async with sessions() as session:
        session.add(job(chat_id=11, user_id=11, message_id=5))
        await session.commit()
        count = (await session.execute(select(func.count()).select_from(Job))).scalar_one()
        found = await existing_jobs(session, keys=[(10, 5), (10, 6)])
    assert count == 2
    assert found == {(10, 5)}


async def test_queue_queries(sessions: Sessions) -> None:
    """count_ahead and untold_job_ids see only jobs not answered yet (and untold_job_ids the
    cancelled ones never told)."""
    await add_user(sessions, 10)
    statuses = [
        JobStatus.queued,
        JobStatus.running,
        JobStatus.done,
        JobStatus.failed,
        JobStatus.transcribed,
        JobStatus.queued,
        JobStatus.cancelled,
    ]
    async with sessions() as session:
        jobs = [
            job(chat_id=10, user_id=10, message_id=n, status=status)
            for n, status in enumerate(statuses, 1)
        ]
        session.add_all(jobs)
        await session.commit()
        ids = [j.id for j in jobs]
        assert ids == sorted(ids)
        # The cancelled one is still to be told so.
        assert await untold_job_ids(session) == [ids[0], ids[1], ids[4], ids[5], ids[6]]
        ahead = [await count_ahead(session, job_id=i, max_wait=300, now=utcnow()) for i in ids]
        # The running and transcribed jobs hold slots; queued ones count in order of arrival.
        assert ahead[:6] == [2, 2, 3, 3, 2, 3]

        await set_job(session, job_id=ids[0], status=JobStatus.done)
        await set_job(session, job_id=ids[6], status_message_id=99)  # shown, not yet told
        await session.commit()
        assert await untold_job_ids(session) == [ids[1], ids[4], ids[5], ids[6]]
        await set_job(session, job_id=ids[6], told_at=utcnow())
        await session.commit()
        assert await untold_job_ids(session) == [ids[1], ids[4], ids[5]]
        assert await count_ahead(session, job_id=ids[5], max_wait=300, now=utcnow()) == 2


async def test_positions_put_premium_first_and_promote_old_free_jobs(sessions: Sessions) -> None:
    """A premium job is ahead of earlier free ones; a free job waiting past max_wait is promoted."""
    await add_user(sessions, 10)
    now = utcnow()
    async with sessions() as session:
        old_free = job(chat_id=10, user_id=10, message_id=1, status=JobStatus.queued)
        old_free.created_at = now - timedelta(seconds=400)
        free = [job(chat_id=10, user_id=10, message_id=n, status=JobStatus.queued) for n in (2, 3)]
        premium = job(chat_id=10, user_id=10, message_id=4, status=JobStatus.queued)
        premium.priority = 1
        session.add_all([old_free, *free, premium])
        await session.commit()

        async def ahead(item: Job) -> int:
            return await count_ahead(session, job_id=item.id, max_wait=300, now=now)

        assert await ahead(old_free) == 0  # promoted: it runs first, even before the premium job
        assert await ahead(premium) == 1
        assert [await ahead(item) for item in free] == [2, 3]
        # Without promotion the old free job would wait behind the premium one.
        assert await count_ahead(session, job_id=old_free.id, max_wait=500, now=now) == 1


async def test_positions_take_turns_between_people(sessions: Sessions) -> None:
    """Three from one person, then one from another: the latter is second in line."""
    await add_user(sessions, 10)
    await add_user(sessions, 11)
    async with sessions() as session:
        flood = [job(chat_id=10, user_id=10, message_id=n) for n in (1, 2, 3)]
        other = job(chat_id=11, user_id=11, message_id=1)
        session.add_all([*flood, other])
        await session.commit()
        now = utcnow()
        ahead = [
            await count_ahead(session, job_id=item.id, max_wait=300, now=now)
            for item in [*flood, other]
        ]
    assert ahead == [0, 2, 3, 1]


async def test_overlapping_batches_of_senders_do_not_deadlock(sessions: Sessions) -> None:
    """Two transactions recording the same people in other orders both commit: the rows are
    taken in id order, so neither holds one the other waits for while it waits itself."""
    await add_user(sessions, 10, "Ann")
    await add_user(sessions, 11, "Bob")

    async def record(*people: Sender) -> None:
        async with sessions() as session:
            await upsert_senders(session, senders=list(people))
            await session.commit()

    async with sessions() as first:
        await upsert_senders(first, senders=[sender(10, "Ann")])
        second = asyncio.create_task(record(sender(11, "Bobby"), sender(10, "Annie")))
        # Time for the second to reach the row the first holds (it waits there on PostgreSQL;
        # on SQLite it waits for the file's write lock).
        await asyncio.sleep(0.5)
        await upsert_senders(first, senders=[sender(11, "Bob")])
        await first.commit()
    await asyncio.wait_for(second, 15)
    async with sessions() as session:
        names = (await session.execute(select(User.id, User.first_name).order_by(User.id))).all()
    assert [tuple(row) for row in names] == [(10, "Annie"), (11, "Bobby")]
