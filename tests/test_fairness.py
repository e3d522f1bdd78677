"""Fairness: access, quotas and charging, limits and the queue bound, priorities, bans."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import make_url, select
from sqlalchemy.exc import IntegrityError

from voicebot import texts
from voicebot.config import Settings
from voicebot.db import Sessions, build_engine, build_sessions, upgrade_async
from voicebot.models import Job, JobStatus, Plan, Usage, User, utcnow
from voicebot.quotas import charge, day_start, effective_plan, next_reset, standing

from .botproc import BotProcess
from .fakes import FakeBotAPI, SentMessage
from .media import encode_audio, long_speech, voice_note
from .servers import postgres_rows
from .test_db import add_user
from .test_polling import log_events

CLIPS = {
    "another door": "librispeech_alif_another_door.wav",
    "not poison": "librispeech_alif_i_tell_you.wav",
    "testing routine": "librispeech_alif_testing_routine.wav",
    "another engineer": "librispeech_alif_another_engineer.wav",
}
FREE, OTHER, PREMIUM, ADMIN = 7001, 7002, 7003, 7009


# ----------------------------------------------------------------------------- quotas.py
@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[Sessions]:
    """A migrated database (SQLite, PostgreSQL) with user 10."""
    await upgrade_async(database_url)
    engine = build_engine(database_url)
    made = build_sessions(engine)
    await add_user(made, 10)
    yield made
    await engine.dispose()


async def charged_job(sessions: Sessions, message_id: int, seconds: float, at: datetime) -> None:
    """A finished job of user 10 charged `seconds` at `at`."""
    settings = Settings(daily_quota_seconds=60, quota_timezone="Europe/Berlin", _env_file=None)
    async with sessions() as session:
        job = Job(chat_id=10, user_id=10, message_id=message_id, kind="voice", file_id="f")
        job.file_unique_id, job.status = f"u{message_id}", JobStatus.done
        session.add(job)
        await session.flush()
        await charge(
            session,
            job=job,
            audio_seconds=seconds,
            processing_seconds=1,
            language="en",
            settings=settings,
            now=at,
        )
        await session.commit()


async def test_the_day_resets_at_midnight_in_the_quota_time_zone(sessions: Sessions) -> None:
    """With a frozen clock: use before local midnight is yesterday's; the day has 60 s again."""
    settings = Settings(daily_quota_seconds=60, quota_timezone="Europe/Berlin", _env_file=None)
    before_midnight = datetime(2026, 11, 27, 22, 50, tzinfo=UTC)  # 23:50 in Berlin
    after_midnight = datetime(2026, 11, 27, 23, 10, tzinfo=UTC)  # 00:10 in Berlin
    await charged_job(sessions, 1, 45, before_midnight)
    async with sessions() as session:
        user = await session.get(User, 10)
        assert user is not None
        late = await standing(session, user=user, settings=settings, now=before_midnight)
        early = await standing(session, user=user, settings=settings, now=after_midnight)
    assert (late.used_today, late.left) == (45, 15)
    assert (early.used_today, early.left) == (0, 60)
    assert late.resets_at == datetime(2026, 11, 27, 23, 0, tzinfo=UTC)
    assert day_start(after_midnight, "Europe/Berlin") == late.resets_at
    assert next_reset(after_midnight, "Europe/Berlin") == datetime(2026, 11, 28, 23, 0, tzinfo=UTC)


async def test_a_charge_takes_the_allowance_then_the_balance_and_never_more(
    sessions: Sessions,
) -> None:
    """60 s a day and 30 s of balance: 50 s, then 25 s (10 + 15 from the balance), then 30 s
    of which only the 15 s left are charged; the usage row is unique per job."""
    async with sessions() as session:
        user = await session.get(User, 10)
        assert user is not None
        user.balance_seconds = 30
        await session.commit()
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    for message_id, seconds in ((1, 50), (2, 25), (3, 30)):
        await charged_job(sessions, message_id, seconds, now)
    async with sessions() as session:
        charges = await session.execute(
            select(Usage.charged_seconds, Usage.balance_seconds).order_by(Usage.id)
        )
        balance = await session.scalar(select(User.balance_seconds))
    assert [tuple(row) for row in charges] == [(50, 0), (25, 15), (15, 15)]
    assert balance == 0
    with pytest.raises(IntegrityError):
        await charged_job(sessions, 1, 10, now)


async def test_an_expired_plan_falls_back_to_free(sessions: Sessions) -> None:
    """Premium until yesterday is free today: the free quota applies."""
    settings = Settings(daily_quota_seconds=60, premium_daily_quota_seconds=600, _env_file=None)
    now = utcnow()
    async with sessions() as session:
        user = await session.get(User, 10)
        assert user is not None
        user.plan, user.plan_expires_at = Plan.premium, now + timedelta(days=1)
        assert effective_plan(user, now) == Plan.premium
        assert (await standing(session, user=user, settings=settings, now=now)).left == 600
        user.plan_expires_at = now - timedelta(seconds=1)
        assert effective_plan(user, now) == Plan.free
        assert (await standing(session, user=user, settings=settings, now=now)).left == 60


# ----------------------------------------------------------------------------- the real bot
@pytest.fixture(scope="module")
def notes(corpus: Path) -> dict[str, bytes]:
    """Voice notes of four short clips (3-4.5 s), by a phrase each transcript contains."""
    return {phrase: voice_note(corpus / "en" / name) for phrase, name in CLIPS.items()}


def replies(api: FakeBotAPI, chat_id: int, message_id: int) -> list[SentMessage]:
    """The bot's visible replies to a message."""
    return [m for m in api.messages(chat_id) if m.reply_to == message_id and not m.deleted]


def text_of(api: FakeBotAPI, chat_id: int, message_id: int) -> str:
    """The text of the one reply to a message ('' when there is none yet)."""
    found = replies(api, chat_id, message_id)
    assert len(found) <= 1, [m.text for m in found]
    return (found[0].text or "") if found else ""


async def answered(api: FakeBotAPI, chat_id: int, message_id: int, phrase: str) -> None:
    """Wait for the transcript of a message."""
    await api.wait_for(
        lambda: phrase in text_of(api, chat_id, message_id).lower(), 90, f"{phrase!r}"
    )


def rows(where: Path | str, sql: str) -> list[tuple[object, ...]]:
    """Rows from the bot's database: the SQLite file of the bot's work folder `where`, or the
    database at `where`, a URL (the `database_url` fixture's). Blocking: a PostgreSQL query
    runs on a loop of its own in a thread (the test's loop is waiting in this call)."""
    database = _sqlite_file(where)
    if database is None:
        return _on_postgres(str(where), sql)
    with closing(sqlite3.connect(database)) as connection:
        return connection.execute(sql).fetchall()


def execute(where: Path | str, sql: str) -> None:
    """Run a statement on the bot's database (`where`: as for `rows`) and commit it: what
    another process does to it."""
    database = _sqlite_file(where)
    if database is None:
        _on_postgres(str(where), sql)  # asyncpg commits each statement on its own
        return
    with closing(sqlite3.connect(database, timeout=10)) as connection, connection:
        connection.execute(sql)


def _sqlite_file(where: Path | str) -> Path | None:
    if isinstance(where, Path):
        return where / "data" / "voicebot.db"
    url = make_url(where)
    return Path(str(url.database)) if url.get_backend_name() == "sqlite" else None


def _on_postgres(url: str, sql: str) -> list[tuple[object, ...]]:
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, postgres_rows(url, sql)).result()


async def seed_users(workdir: Path, *users: tuple[int, str, str | None]) -> None:
    """Users (id, plan, plan_expires_at) in the bot's database before it starts."""
    database = workdir / "data" / "voicebot.db"
    database.parent.mkdir(parents=True, exist_ok=True)
    await upgrade_async(f"sqlite+aiosqlite:///{database}")
    with closing(sqlite3.connect(database)) as connection, connection:
        for user_id, plan, expires in users:
            connection.execute(
                "INSERT INTO users (id, first_name, created_at, last_seen_at, plan,"
                " plan_expires_at) VALUES (?, 'T', '2026-11-27', '2026-11-27', ?, ?)",
                (user_id, plan, expires),
            )


async def run_bot(api: FakeBotAPI, tmp_path: Path, model_cache: Path, **env: str) -> BotProcess:
    """Start the bot (tiny.en) with `env` and wait until it polls."""
    process = BotProcess(api, tmp_path, model_cache, WHISPER_MODEL="tiny.en", **env)
    await process.start()
    return process


async def test_quota_refusals_name_the_numbers_and_a_burst_is_refused_in_part(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, notes: dict[str, bytes]
) -> None:
    """10 s a day: three 4-s notes at once, two are accepted and the third told 2 s are left."""
    bot = await run_bot(api, tmp_path, model_cache, DAILY_QUOTA_SECONDS="10")
    sent = [
        api.send_voice(FREE, notes[phrase], duration=4)
        for phrase in ("another door", "not poison", "testing routine")
    ]
    await answered(api, FREE, sent[0], "another door")
    await answered(api, FREE, sent[1], "not poison")
    refusal = text_of(api, FREE, sent[2])
    assert refusal.startswith("This recording is 4 s long, but you have 2 s left today."), refusal
    assert "starts again at 00:00 UTC" in refusal
    assert "/buy" not in refusal
    # The real durations were charged: 3.1-4.5 s each, under the 10 s of the day.
    charged = rows(tmp_path, "SELECT charged_seconds, audio_seconds FROM usage")
    assert len(charged) == 2
    assert all(c == a for c, a in charged)
    assert len(rows(tmp_path, "SELECT id FROM jobs")) == 2  # nothing recorded for the refusal

    api.send_text(FREE, "/me")

    def summaries() -> list[str]:
        return [m.text or "" for m in api.messages(FREE) if (m.text or "").startswith("Plan:")]

    await api.wait_for(lambda: bool(summaries()), 20, "/me")
    (shown,) = summaries()
    assert shown.startswith("Plan: Free")
    used = sum(float(a) for _, a in charged)  # type: ignore[arg-type]
    assert f"Today: {texts.duration(used)} of 10 s used" in shown
    assert "Last 7 days:" in shown
    assert await bot.stop() == 0, bot.output()


async def test_each_delivered_job_is_charged_once_across_a_sigkill(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, notes: dict[str, bytes]
) -> None:
    """Killed mid-transcription, then restarted: the charges add up to the delivered audio."""
    env = {"DAILY_QUOTA_SECONDS": "3600", "USER_MAX_ACTIVE_JOBS": "10"}
    first = await run_bot(api, tmp_path, model_cache, **env)
    sent = {phrase: api.send_voice(FREE, note, duration=4) for phrase, note in notes.items()}
    await api.wait_for(lambda: len(api.calls_of("downloadFile")) >= 2, 60, "a download")
    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
    second = await run_bot(api, tmp_path, model_cache, **env)
    for phrase, message_id in sent.items():
        await answered(api, FREE, message_id, phrase)
    assert await second.stop() == 0, second.output()
    usage = rows(tmp_path, "SELECT job_id, charged_seconds, audio_seconds, cached FROM usage")
    assert len(usage) == len({job_id for job_id, *_ in usage}) == 4
    assert all(charged == audio and not cached for _, charged, audio, cached in usage)
    assert rows(tmp_path, "SELECT DISTINCT status FROM jobs") == [("done",)]


async def test_limits_and_the_queue_bound_refuse_with_their_reasons(
    api: FakeBotAPI,
    tmp_path: Path,
    model_cache: Path,
    notes: dict[str, bytes],
    long_notes: list[bytes],
) -> None:
    """Active jobs, jobs a minute, the queue bound; one refusal a minute; admins bypass all."""
    bot = await run_bot(
        api,
        tmp_path,
        model_cache,
        USER_MAX_ACTIVE_JOBS="2",
        USER_JOBS_PER_MINUTE="3",
        MAX_QUEUE_SIZE="4",
        ADMIN_IDS=str(ADMIN),
    )
    note = notes["another door"]
    first = [api.send_voice(FREE, note, duration=4) for _ in range(4)]
    await api.wait_for(lambda: bool(text_of(api, FREE, first[2])), 20, "a refusal")
    assert text_of(api, FREE, first[2]) == texts.too_many_active(2)
    assert text_of(api, FREE, first[3]) == ""  # one refusal a minute per person
    for message_id in first[:2]:
        await answered(api, FREE, message_id, "another door")
    # Two more are within the active bound, but only one fits in 3 a minute.
    later = [api.send_voice(FREE, note, duration=4) for _ in range(2)]
    await answered(api, FREE, later[0], "another door")
    assert text_of(api, FREE, later[1]) == ""  # refused, and the notice is throttled
    assert len(rows(tmp_path, f"SELECT id FROM jobs WHERE user_id = {FREE}")) == 3

    # The queue bound: 4 unfinished in all. The admin fills it past the bound; others are
    # turned away with the busy line.
    admin = [api.send_voice(ADMIN, note, duration=45) for note in long_notes]
    await api.wait_for(
        lambda: len(rows(tmp_path, f"SELECT id FROM jobs WHERE user_id = {ADMIN}")) == 5, 20
    )
    turned = api.send_voice(OTHER, note, duration=4)
    await api.wait_for(lambda: bool(text_of(api, OTHER, turned)), 20, "the busy line")
    assert text_of(api, OTHER, turned) == texts.QUEUE_FULL
    assert all(not text_of(api, ADMIN, m).startswith(("You", "I am")) for m in admin)
    # Every refusal is counted, told or not, in the transaction that decided it (committed
    # before its line was sent); summed over days in case the test straddles midnight UTC.
    assert rows(
        tmp_path, "SELECT reason, sum(count) FROM refusals GROUP BY reason ORDER BY reason"
    ) == [("queue_full", 1), ("rate_limit", 1), ("too_many_active", 2)]
    assert await bot.stop(signal.SIGKILL) == -signal.SIGKILL


@pytest.fixture(scope="module")
def long_notes(corpus: Path) -> list[bytes]:
    """Five different voice notes of about 45 s: each holds the one slot for a while (and,
    being different files, none is answered from the transcript cache)."""
    samples = long_speech(corpus)
    return [encode_audio(np.roll(samples, 16000 * shift)) for shift in range(5)]


async def test_a_flood_does_not_hold_up_everyone_else(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, notes: dict[str, bytes]
) -> None:
    """One free user sends 30 notes, then three others one each: theirs come first."""
    bot = await run_bot(
        api, tmp_path, model_cache, USER_MAX_ACTIVE_JOBS="30", USER_JOBS_PER_MINUTE="30"
    )
    note = notes["testing routine"]
    flood = [api.send_voice(FREE, note, duration=3) for _ in range(30)]
    others = [api.send_voice(user, notes["not poison"], duration=4) for user in (7101, 7102, 7103)]
    for user, message_id in zip((7101, 7102, 7103), others, strict=True):
        await answered(api, user, message_id, "not poison")
    done = sum("testing routine" in text_of(api, FREE, m).lower() for m in flood)
    assert done < 15, f"{done} of the flood were answered before the three others"
    assert await bot.stop(signal.SIGKILL) == -signal.SIGKILL


def job_ids(where: Path | str) -> dict[tuple[int, int], int]:
    """Job ids by (chat_id, message_id) (`where`: as for `rows`)."""
    found = rows(where, "SELECT chat_id, message_id, id FROM jobs")
    return {(int(c), int(m)): int(i) for c, m, i in found}  # type: ignore[call-overload]


def transcribed_order(bot: BotProcess) -> list[int]:
    """Job ids in the order their transcription finished."""
    return [int(str(e["job_id"])) for e in log_events(bot, "job_transcribed")]


async def test_premium_goes_first_and_an_old_free_job_is_promoted(
    api: FakeBotAPI,
    tmp_path: Path,
    model_cache: Path,
    notes: dict[str, bytes],
    long_notes: list[bytes],
) -> None:
    """Five free notes, then a premium one: it runs next. A free job past the wait is promoted."""
    await seed_users(tmp_path, (PREMIUM, "premium", None))
    bot = await run_bot(
        api,
        tmp_path,
        model_cache,
        USER_MAX_ACTIVE_JOBS="10",
        PRIORITY_MAX_WAIT_SECONDS="6",
    )
    api.send_voice(OTHER, long_notes[0], duration=45)
    await api.wait_for(lambda: len(api.calls_of("downloadFile")) == 1, 30, "the long job")
    free = [api.send_voice(FREE, notes["another door"], duration=4) for _ in range(5)]
    premium = api.send_voice(PREMIUM, notes["not poison"], duration=4)
    await api.wait_for(lambda: bool(text_of(api, PREMIUM, premium)), 20, "a status")
    assert text_of(api, PREMIUM, premium) == "Queued, position 1"
    await answered(api, PREMIUM, premium, "not poison")
    ids = job_ids(tmp_path)
    order = transcribed_order(bot)
    assert order.index(ids[PREMIUM, premium]) == 1  # right after the long job it waited for
    for message_id in free:
        await answered(api, FREE, message_id, "another door")

    # Promotion: a free job that waited past 6 s runs before a premium job that came later.
    downloads = len(api.calls_of("downloadFile"))
    api.send_voice(OTHER, long_notes[1], duration=45)
    await api.wait_for(
        lambda: len(api.calls_of("downloadFile")) > downloads, 30, "the second long job"
    )
    waiting = api.send_voice(FREE, notes["testing routine"], duration=3)
    await api.wait_for(lambda: bool(text_of(api, FREE, waiting)), 20, "a status")
    await asyncio.sleep(7)
    later = api.send_voice(PREMIUM, notes["another engineer"], duration=4)
    await answered(api, FREE, waiting, "testing routine")
    await answered(api, PREMIUM, later, "another engineer")
    ids = job_ids(tmp_path)
    order = transcribed_order(bot)
    assert order.index(ids[FREE, waiting]) < order.index(ids[PREMIUM, later]), order
    assert await bot.stop(signal.SIGKILL) == -signal.SIGKILL


async def test_bans_and_the_allowlist(
    api: FakeBotAPI,
    tmp_path: Path,
    model_cache: Path,
    notes: dict[str, bytes],
    long_notes: list[bytes],
) -> None:
    """Outsiders get the private line; a ban drops a waiting job and refuses new ones."""
    bot = await run_bot(
        api,
        tmp_path,
        model_cache,
        ALLOWED_USER_IDS=f"{FREE},{OTHER}",
        ADMIN_IDS=str(ADMIN),
    )
    outsider = api.send_voice(7777, notes["another door"], duration=4)
    await api.wait_for(lambda: bool(api.messages(7777)), 20, "the private line")
    assert [m.text for m in api.messages(7777)] == [texts.PRIVATE]
    assert not rows(tmp_path, "SELECT id FROM jobs WHERE user_id = 7777")
    by_admin = api.send_voice(ADMIN, notes["not poison"], duration=4)
    await answered(api, ADMIN, by_admin, "not poison")
    del outsider

    api.send_voice(OTHER, long_notes[0], duration=45)  # holds the slot
    await api.wait_for(lambda: len(api.calls_of("downloadFile")) == 2, 30, "the long job")
    waiting = api.send_voice(FREE, notes["testing routine"], duration=3)
    await api.wait_for(lambda: bool(text_of(api, FREE, waiting)), 20, "a status")
    ban = api.send_text(ADMIN, f"/ban {FREE}")
    await api.wait_for(lambda: len(api.messages(ADMIN)) >= 2, 20, "the ban answered")
    del ban
    await api.wait_for(lambda: text_of(api, FREE, waiting) == texts.BANNED, 90, "dropped")
    refused = api.send_voice(FREE, notes["another door"], duration=4)
    await api.wait_for(lambda: text_of(api, FREE, refused) == texts.BANNED, 20, "refused")
    dropped = (
        "SELECT j.status, u.id FROM jobs j LEFT JOIN usage u ON u.job_id = j.id"
        f" WHERE j.user_id = {FREE}"
    )
    # Dropped (marked failed just after the user is told), nothing charged, the refusal not
    # recorded.
    await api.wait_for(lambda: rows(tmp_path, dropped) == [("failed", None)], 10, "dropped")
    assert await bot.stop(signal.SIGKILL) == -signal.SIGKILL
