"""Admin: the data functions on a real database, the chat commands through the real bot, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from voicebot import admin, texts
from voicebot.audio import decode
from voicebot.db import Sessions, build_engine, build_sessions, upgrade_async
from voicebot.errors import UnknownUserError
from voicebot.models import Job, JobStatus, Plan, Sender, Transaction, Usage, upsert_senders
from voicebot.quotas import day_start

from .botproc import BotProcess
from .fakes import FakeBotAPI
from .media import png, voice_note

ADMIN = 9001
#: In ADMIN_IDS but has never opened the bot: Telegram cannot set a menu in that chat.
ABSENT_ADMIN = 9002
USER = 4004
OTHER = 4005
UNKNOWN = 777
CLIP = "librispeech_alif_another_door.wav"


# ----------------------------------------------------------------- the data functions


async def _add_users(sessions: Sessions, *users: tuple[int, str, str | None]) -> None:
    async with sessions() as session:
        # One at a time: each is seen a moment after the one before (list order depends on it).
        for user_id, first_name, username in users:
            sender = Sender(
                user_id=user_id,
                first_name=first_name,
                username=username,
                language_code="en",
                chat_id=user_id,
                chat_type="private",
                chat_title=None,
            )
            await upsert_senders(session, senders=[sender])
        await session.commit()


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[Sessions]:
    """Sessions on a migrated database (SQLite, PostgreSQL) holding users USER (Ada) and OTHER
    (Bob)."""
    await upgrade_async(database_url)
    engine = build_engine(database_url)
    made = build_sessions(engine)
    await _add_users(made, (USER, "Ada", "ada"), (OTHER, "Bob", None))
    yield made
    await engine.dispose()


async def test_grant_sets_the_plan_and_its_expiry(sessions: Sessions) -> None:
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    async with sessions() as session:
        user = await admin.grant_plan(session, user_id=USER, plan=Plan.premium, days=30, now=now)
        await session.commit()
    assert (user.plan, user.plan_expires_at) == (Plan.premium, now + timedelta(days=30))
    assert texts.admin.granted(user, now, "UTC") == (
        "User 4004 (Ada @ada) is now on premium until 2026-04-09 12:00 UTC."
    )
    async with sessions() as session:
        user = await admin.grant_plan(
            session, user_id=USER, plan=Plan.unlimited, days=None, now=now
        )
        await session.commit()
    assert (user.plan, user.plan_expires_at) == (Plan.unlimited, None)
    async with sessions() as session:
        # Free is the fallback: it never expires, whatever DAYS says.
        user = await admin.grant_plan(session, user_id=USER, plan=Plan.free, days=5, now=now)
        await session.commit()
    async with sessions() as session:
        stored = await admin.find_user(session, user_id=USER)
    assert (stored.plan, stored.plan_expires_at) == (Plan.free, None)


async def test_credit_adds_to_the_balance_and_records_a_transaction(sessions: Sessions) -> None:
    for seconds in (1800.0, 90.0):
        async with sessions() as session:
            user = await admin.credit(session, user_id=USER, seconds=seconds)
            await session.commit()
    assert user.balance_seconds == 1890.0
    assert texts.admin.credited(user, 90.0) == (
        "Credited 1.5 min to user 4004 (Ada @ada); balance now 31.5 min."
    )
    async with sessions() as session:
        rows = (await session.scalars(select(Transaction).order_by(Transaction.id))).all()
        assert [(t.user_id, t.kind, t.seconds, t.stars) for t in rows] == [
            (USER, "credit", 1800.0, None),
            (USER, "credit", 90.0, None),
        ]
        assert (await admin.find_user(session, user_id=USER)).balance_seconds == 1890.0


async def test_an_unknown_user_changes_nothing(sessions: Sessions) -> None:
    """Each function names the unknown id, and the command's transaction holds nothing."""
    now = datetime.now(UTC)
    calls = [
        lambda s: admin.grant_plan(s, user_id=UNKNOWN, plan=Plan.premium, days=3, now=now),
        lambda s: admin.credit(s, user_id=UNKNOWN, seconds=60),
        lambda s: admin.set_banned(s, user_id=UNKNOWN, banned=True),
        lambda s: admin.find_user(s, user_id=UNKNOWN),
    ]
    for call in calls:
        async with sessions() as session:
            with pytest.raises(UnknownUserError) as raised:
                await call(session)
            assert str(raised.value) == "Unknown user 777: they have not used this bot yet."
            assert not session.new
            assert not session.dirty
            await session.commit()
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Transaction)) == 0


async def test_ban_unban_and_list(sessions: Sessions) -> None:
    async with sessions() as session:
        user = await admin.set_banned(session, user_id=OTHER, banned=True)
        await session.commit()
    assert texts.admin.ban_changed(user).startswith("User 4005 (Bob) is banned")
    # Ada wrote last, so she is listed first.
    await _add_users(sessions, (USER, "Ada", "ada"))
    async with sessions() as session:
        assert [u.id for u in await admin.list_users(session)] == [USER, OTHER]
        assert [u.id for u in await admin.list_users(session, banned=True)] == [OTHER]
        assert [u.id for u in await admin.list_users(session, limit=1)] == [USER]
        user = await admin.set_banned(session, user_id=OTHER, banned=False)
        await session.commit()
    assert texts.admin.ban_changed(user) == "User 4005 (Bob) is no longer banned."
    async with sessions() as session:
        assert await admin.list_users(session, banned=True) == []


async def test_stats_count_the_day_in_the_quota_time_zone(sessions: Sessions) -> None:
    """Berlin's day began at 23:00 UTC: what happened before it is yesterday's."""
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    since = day_start(now, "Europe/Berlin")
    assert since == datetime(2026, 3, 9, 23, 0, tzinfo=UTC)
    third = 4006
    await _add_users(sessions, (third, "Cy", None))

    def at(day: int, hour: int, minute: int = 0) -> datetime:
        return datetime(2026, 3, day, hour, minute, tzinfo=UTC)

    jobs = [
        # (user, created, status, finished, usage: (audio seconds, cached) or None)
        (USER, at(9, 23, 30), JobStatus.done, at(9, 23, 40), (100.0, False)),
        (OTHER, at(10, 8), JobStatus.done, at(10, 8, 1), (30.0, True)),
        (OTHER, at(10, 8, 10), JobStatus.failed, at(10, 8, 11), None),
        (USER, at(10, 11), JobStatus.running, None, None),
        # Yesterday in Berlin: Bob's 500 s would put him on top if they counted.
        (OTHER, at(9, 22), JobStatus.done, at(9, 22, 5), (500.0, False)),
        (USER, at(9, 22, 30), JobStatus.failed, at(9, 22, 31), None),
        (third, at(9, 20), JobStatus.queued, None, None),
    ]
    async with sessions() as session:
        for number, (user_id, created, status, finished, used) in enumerate(jobs, 1):
            job = Job(
                chat_id=user_id,
                user_id=user_id,
                message_id=number,
                kind="voice",
                file_id=f"f{number}",
                file_unique_id=f"u{number}",
                status=status,
                created_at=created,
                finished_at=finished,
            )
            session.add(job)
            await session.flush()
            if used is not None:
                seconds, cached = used
                session.add(
                    Usage(
                        user_id=user_id,
                        job_id=job.id,
                        audio_seconds=seconds,
                        processing_seconds=1.0,
                        cached=cached,
                        created_at=finished,
                    )
                )
        await session.commit()
    async with sessions() as session:
        found = await admin.stats(session, since=since)
    assert (found.jobs, found.transcribed, found.cached, found.audio_seconds) == (4, 2, 1, 130.0)
    assert (found.failures, found.queue, found.cache_hit_rate) == (1, 2, 0.5)
    assert found.top == [
        admin.TopUser(USER, "Ada @ada", 1, 100.0),
        admin.TopUser(OTHER, "Bob", 1, 30.0),
    ]
    assert texts.admin.admin_stats(found, "Europe/Berlin").splitlines() == [
        "Today, since 2026-03-10 00:00 CET",
        "Jobs: 4",
        "Transcribed: 2",
        "Audio: 2 min 10 s",
        "Cache hits: 1 of 2 (50%)",
        "Failures: 1",
        "Queue: 2 unfinished",
        "Top users:",
        "1. Ada @ada (4004): 1 job, 1 min 40 s",
        "2. Bob (4005): 1 job, 30 s",
    ]


# ----------------------------------------------------------------- chat commands


async def _seed(database: Path, *users: tuple[int, str, str | None]) -> None:
    """Migrate the bot's database and add users, as if they had written before."""
    url = f"sqlite+aiosqlite:///{database}"
    await upgrade_async(url)
    engine = build_engine(url)
    await _add_users(build_sessions(engine), *users)
    await engine.dispose()


def _row(database: Path, query: str, *args: object) -> tuple[object, ...]:
    with closing(sqlite3.connect(database)) as connection:
        found = connection.execute(query, args).fetchone()
    assert found is not None, query
    return tuple(found)


async def _ask(api: FakeBotAPI, chat: int, text: str) -> str:
    """Send `text` from `chat` and return the bot's one answer."""
    before = len(api.messages(chat))
    api.send_text(chat, text)
    await api.wait_for(lambda: len(api.messages(chat)) > before, 10, f"an answer to {text!r}")
    await api.wait_for(lambda: not api.pending_updates, 10, f"{text!r} confirmed")
    answers = api.messages(chat)[before:]
    assert len(answers) == 1, [m.text for m in answers]
    return answers[0].text or ""


@pytest.fixture
async def bot(api: FakeBotAPI, tmp_path: Path, model_cache: Path) -> AsyncIterator[BotProcess]:
    """The real bot with ADMIN and ABSENT_ADMIN as admins; ADMIN has opened the bot before."""
    await _seed(tmp_path / "data" / "voicebot.db", (USER, "Test", None))
    api.send_text(ADMIN, "/start")
    process = BotProcess(
        api,
        tmp_path,
        model_cache,
        WHISPER_MODEL="tiny.en",
        ADMIN_IDS=f"{ADMIN},{ABSENT_ADMIN}",
        STARS_PACKAGES="30:50",
    )
    await process.start()
    await api.wait_for(lambda: bool(api.messages(ADMIN)), 10, "the admin's /start answered")
    yield process
    code = await process.stop()
    assert code == 0, process.output()


async def test_admin_menu_is_per_admin_and_commands_are_hidden_from_others(
    api: FakeBotAPI, bot: BotProcess, tmp_path: Path
) -> None:
    everyone = [c["command"] for c in api.commands()]
    mine = [c["command"] for c in api.commands(scope={"type": "chat", "chat_id": ADMIN})]
    admin_only = ["stats", "grant", "credit", "ban", "unban", "refund"]
    assert mine == everyone + admin_only
    assert not set(admin_only) & set(everyone)
    # The admin who never opened the bot: Telegram says "chat not found"; the bot runs on.
    assert api.commands(scope={"type": "chat", "chat_id": ABSENT_ADMIN}) == []
    (skipped,) = [
        json.loads(line)
        for line in bot.output().splitlines()
        if line.startswith("{") and '"admin_menu_not_set"' in line
    ]
    assert skipped["admin_id"] == ABSENT_ADMIN
    assert "chat not found" in skipped["error"]

    for command in ("/stats", "/grant 4004 premium", "/credit 4004 30", "/ban 4004", "/unban 4004"):
        assert await _ask(api, OTHER, command) == texts.HELP, command
    database = tmp_path / "data" / "voicebot.db"
    assert _row(database, "SELECT plan, balance_seconds, banned FROM users WHERE id = ?", USER) == (
        "free",
        0.0,
        0,
    )
    assert _row(database, "SELECT count(*) FROM transactions") == (0,)


async def test_admin_commands_in_chat(
    api: FakeBotAPI, bot: BotProcess, tmp_path: Path, corpus: Path
) -> None:
    database = tmp_path / "data" / "voicebot.db"
    clip = corpus / "en" / CLIP
    api.send_voice(USER, voice_note(clip), duration=4)
    api.send_voice(USER, png(), duration=1)
    done = "SELECT count(*) FROM jobs WHERE status IN ('done', 'failed')"
    await api.wait_for(lambda: _row(database, done) == (2,), 60, "both jobs finished")

    audio = texts.duration(len(decode(clip, max_seconds=60)) / 16000)
    lines = (await _ask(api, ADMIN, "/stats")).splitlines()
    assert lines[1:] == [
        "Jobs: 2",
        "Transcribed: 1",
        f"Audio: {audio}",
        "Cache hits: 0 of 1 (0%)",
        "Failures: 1",
        "Queue: 0 unfinished",
        "Top users:",
        f"1. Test (4004): 1 job, {audio}",
    ]

    before = datetime.now(UTC)
    answer = await _ask(api, ADMIN, "/grant 4004 premium 30")
    assert answer.startswith("User 4004 (Test) is now on premium until ")
    plan, expires = _row(database, "SELECT plan, plan_expires_at FROM users WHERE id = ?", USER)
    assert plan == "premium"
    expiry = datetime.fromisoformat(str(expires)).replace(tzinfo=UTC)
    assert before + timedelta(days=30) - timedelta(seconds=1) <= expiry
    assert expiry <= datetime.now(UTC) + timedelta(days=30)
    assert await _ask(api, ADMIN, "/grant 4004 UNLIMITED") == (
        "User 4004 (Test) is now on unlimited with no expiry."
    )

    assert await _ask(api, ADMIN, "/credit 4004 30") == (
        "Credited 30 min to user 4004 (Test); balance now 30 min."
    )
    assert await _ask(api, ADMIN, "/credit 4004 1.5") == (
        "Credited 1.5 min to user 4004 (Test); balance now 31.5 min."
    )
    assert _row(database, "SELECT balance_seconds FROM users WHERE id = ?", USER) == (1890.0,)
    assert _row(
        database, "SELECT count(*), sum(seconds) FROM transactions WHERE kind = 'credit'"
    ) == (
        2,
        1890.0,
    )

    assert (await _ask(api, ADMIN, "/ban 4004")).startswith("User 4004 (Test) is banned:")
    assert _row(database, "SELECT banned FROM users WHERE id = ?", USER) == (1,)
    assert await _ask(api, ADMIN, "/unban 4004") == "User 4004 (Test) is no longer banned."
    assert _row(database, "SELECT banned FROM users WHERE id = ?", USER) == (0,)

    usage = {
        texts.GRANT_USAGE: [
            *("/grant", "/grant 4004", "/grant x premium", "/grant 4004 gold"),
            *("/grant 4004 premium 0", "/grant 4004 premium 2.5", "/grant 4004 premium 3 4"),
        ],
        texts.CREDIT_USAGE: [
            *("/credit", "/credit 4004", "/credit 4004 -5", "/credit 4004 nan"),
            *("/credit 4004 inf", "/credit 4004 5 6", "/credit x 5"),
        ],
        texts.BAN_USAGE: ["/ban", "/ban x", "/ban 4004 4005"],
        texts.UNBAN_USAGE: ["/unban"],
    }
    for expected, commands in usage.items():
        for command in commands:
            assert await _ask(api, ADMIN, command) == expected, command
    unknown = "Unknown user 777: they have not used this bot yet."
    for command in ("/grant 777 premium", "/credit 777 5", "/ban 777", "/unban 777"):
        assert await _ask(api, ADMIN, command) == unknown, command
    # Nothing of the refused commands was applied.
    state = "SELECT plan, plan_expires_at, balance_seconds, banned FROM users WHERE id = ?"
    assert _row(database, state, USER) == ("unlimited", None, 1890.0, 0)
    assert _row(database, "SELECT count(*) FROM transactions") == (2,)
    assert _row(database, "SELECT count(*) FROM users WHERE id = ?", UNKNOWN) == (0,)


# ----------------------------------------------------------------- command line


def _cli(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m voicebot ARGS` with its database in `workdir` (and no .env of the checkout)."""
    env = {**os.environ, "DATA_DIR": str(workdir / "data"), "COLUMNS": "200"}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "voicebot", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        timeout=120,
        check=False,
    )


def test_cli_users_and_stats(tmp_path: Path) -> None:
    database = tmp_path / "data" / "voicebot.db"
    asyncio.run(_seed(database, (USER, "Ada", "ada"), (OTHER, "Bob", None)))

    started = datetime.now(UTC)
    result = _cli(tmp_path, "users", "grant", str(USER), "--plan", "premium", "--days", "7")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("User 4004 (Ada @ada) is now on premium until ")
    plan, expires = _row(database, "SELECT plan, plan_expires_at FROM users WHERE id = ?", USER)
    expiry = datetime.fromisoformat(str(expires)).replace(tzinfo=UTC)
    assert plan == "premium"
    assert started + timedelta(days=7) <= expiry <= datetime.now(UTC) + timedelta(days=7)

    result = _cli(tmp_path, "users", "credit", str(USER), "--minutes", "2.5")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Credited 2.5 min to user 4004 (Ada @ada); balance now 2.5 min.\n"
    assert _row(database, "SELECT user_id, kind, seconds FROM transactions") == (
        USER,
        "credit",
        150.0,
    )

    result = _cli(tmp_path, "users", "ban", str(OTHER))
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "User 4005 (Bob) is banned: nothing of theirs is transcribed, and their queued jobs are "
        "dropped.\n"
    )
    listed = _cli(tmp_path, "users", "list")
    assert listed.returncode == 0, listed.stderr
    # Cells of the table's rows: ID, Name, Plan, Balance, Banned (Last seen left out).
    rows = [
        [cell.strip() for cell in line.split("│")[1:-2]]
        for line in listed.stdout.splitlines()
        if line.startswith("│ 400")
    ]
    assert rows[0][0] == "4005"  # written last (seeded second): listed first
    assert rows[0] == ["4005", "Bob", "free", "0 min", "yes"]
    assert rows[1][:2] == ["4004", "Ada @ada"]
    assert rows[1][2].startswith("premium until ")
    assert rows[1][3:] == ["2.5 min", ""]

    result = _cli(tmp_path, "users", "unban", str(OTHER))
    assert (result.returncode, result.stdout) == (0, "User 4005 (Bob) is no longer banned.\n")
    assert _row(database, "SELECT banned FROM users WHERE id = ?", OTHER) == (0,)

    result = _cli(tmp_path, "stats")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        "Jobs: 0",
        "Transcribed: 0",
        "Audio: 0 s",
        "Cache hits: none yet",
        "Failures: 0",
        "Queue: 0 unfinished",
        "Top users: none yet",
    ]


def test_cli_bad_arguments_and_unknown_user(tmp_path: Path) -> None:
    database = tmp_path / "data" / "voicebot.db"
    asyncio.run(_seed(database, (USER, "Ada", "ada")))
    bad = [
        ("users", "grant", str(USER), "--plan", "gold"),
        ("users", "grant", str(USER), "--plan", "premium", "--days", "0"),
        ("users", "credit", str(USER), "--minutes", "0"),
        ("users", "credit", str(USER)),
        ("users", "ban", "someone"),
        ("users", "unban"),
    ]
    for args in bad:
        result = _cli(tmp_path, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        usage = result.stderr.splitlines()[0]
        assert usage.startswith("Usage: "), args
        assert f"voicebot {args[0]} {args[1]} [OPTIONS]" in usage, args
    unknown = "voicebot: Unknown user 777: they have not used this bot yet.\n"
    for args in [
        ("users", "grant", "777", "--plan", "premium"),
        ("users", "credit", "777", "--minutes", "5"),
        ("users", "ban", "777"),
    ]:
        result = _cli(tmp_path, *args)
        assert (result.returncode, result.stdout, result.stderr) == (1, "", unknown), args
    state = "SELECT plan, plan_expires_at, balance_seconds, banned FROM users WHERE id = ?"
    assert _row(database, state, USER) == ("free", None, 0.0, 0)
    assert _row(database, "SELECT count(*) FROM transactions") == (0,)
    assert _row(database, "SELECT count(*) FROM users") == (1,)
