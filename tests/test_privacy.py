"""Privacy: /privacy, /forget with its confirmation, and retention, on the real bot and database."""

from __future__ import annotations

import re
import signal
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from voicebot import texts
from voicebot.cache import find_by_file, kept_days, serving_days
from voicebot.config import Settings
from voicebot.db import Sessions, build_engine, build_sessions, upgrade_async
from voicebot.models import (
    HandledUpdate,
    Job,
    JobStatus,
    Transcript,
    handled_update_ids,
    mark_handled,
)
from voicebot.privacy import forget, purge_old

from .botproc import BotProcess
from .fakes import FakeBotAPI, SentMessage
from .media import silence, voice_note
from .test_db import add_user
from .test_polling import log_events

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
USER, FRIEND, OTHER = 7301, 7302, 7303
PHRASE = "another door"


# ------------------------------------------------------------------ unit: privacy.py


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[Sessions]:
    """Sessions over a migrated database (SQLite, PostgreSQL) with users (and private chats)
    10 and 11."""
    await upgrade_async(database_url)
    engine = build_engine(database_url)
    made = build_sessions(engine)
    await add_user(made, 10)
    await add_user(made, 11)
    yield made
    await engine.dispose()


def transcript(age: timedelta, text: str, unique_id: str = "unique-1") -> Transcript:
    """A stored transcript made `age` before NOW."""
    return Transcript(
        file_unique_id=unique_id,
        text=text,
        language="en",
        language_probability=1.0,
        duration=3.5,
        segments=[{"start": 0.0, "end": 3.5, "text": text}],
        model="tiny.en",
        sha256=None,
        language_setting="auto",
        created_at=NOW - age,
    )


def job(
    message_id: int,
    status: JobStatus,
    *,
    transcript_id: int | None = None,
    age: timedelta = timedelta(0),
    user_id: int = 10,
) -> Job:
    """A job of `user_id` with a file name and a failure text, made `age` before NOW."""
    return Job(
        chat_id=user_id,
        user_id=user_id,
        message_id=message_id,
        kind="audio",
        file_id=f"file-{message_id}",
        file_unique_id=f"unique-{message_id}",
        file_name=f"name-{message_id}.ogg",
        error_text=f"error {message_id}",
        status=status,
        transcript_id=transcript_id,
        created_at=NOW - age,
    )


async def add(sessions: Sessions, *rows: Any) -> list[int]:
    """Insert rows; their ids."""
    async with sessions() as session:
        session.add_all(rows)
        await session.commit()
        return [row.id for row in rows]


def test_the_cache_and_the_store_keep_transcripts_within_both_limits() -> None:
    """The cache serves within the shorter limit; transcripts are kept for the shorter one set."""

    def both(ttl: float, retention: float) -> tuple[float, float]:
        settings = Settings(cache_ttl_days=ttl, retention_days=retention, _env_file=None)
        return serving_days(settings), kept_days(settings)

    assert both(7, 30) == (7, 7)
    assert both(7, 2) == (2, 2)
    assert both(0, 2) == (0, 2)  # cache off: still deleted after the retention
    assert both(7, 0) == (7, 7)  # kept forever, but the cache's own purge goes on
    assert both(0, 0) == (0, 0)


async def test_retention_deletes_old_texts_but_not_what_a_job_is_delivering(
    sessions: Sessions,
) -> None:
    """RETENTION_DAYS=2, CACHE_TTL_DAYS=7: a 3-day-old transcript is not served (the cache
    respects the retention before any purge), then purged unless an unfinished job needs it;
    texts of finished jobs older than 2 days are cleared, the rest stay."""
    settings = Settings(retention_days=2, cache_ttl_days=7, _env_file=None)
    old, recent = timedelta(days=3), timedelta(days=1)
    done_old, delivering, fresh = await add(
        sessions,
        transcript(old, "old words"),
        transcript(old, "delivering words", "unique-2"),
        transcript(recent, "fresh words", "unique-3"),
    )
    jobs = await add(
        sessions,
        job(1, JobStatus.done, transcript_id=done_old, age=old),
        job(2, JobStatus.transcribed, transcript_id=delivering, age=old),
        job(3, JobStatus.done, transcript_id=fresh, age=recent),
        job(4, JobStatus.failed, age=old),
    )
    key: dict[str, Any] = {"model": "tiny.en", "language_setting": "auto", "now": NOW}
    async with sessions() as session:
        served = await find_by_file(
            session, file_unique_id="unique-1", ttl_days=serving_days(settings), **key
        )
        assert served is None
        unbounded = await find_by_file(session, file_unique_id="unique-1", ttl_days=7, **key)
        assert unbounded is not None  # only the retention keeps it from being served
        # Handled update ids: 1 past HANDLED_UPDATE_DAYS, 2 within it, 3 another bot's, as old.
        await mark_handled(session, bot_id=1, update_ids=[1])
        await mark_handled(session, bot_id=2, update_ids=[3])
        await session.execute(update(HandledUpdate).values(handled_at=NOW - timedelta(days=3)))
        await mark_handled(session, bot_id=1, update_ids=[2])
        purged = await purge_old(session, now=NOW, settings=settings)
        await session.commit()
    assert (purged.transcripts, purged.jobs, purged.updates) == (1, 2, 2)
    async with sessions() as session:
        assert await handled_update_ids(session, bot_id=1, update_ids=[1, 2, 3]) == {2}
    async with sessions() as session:
        left = set((await session.scalars(select(Transcript.id))).all())
        found = {j.id: j for j in (await session.scalars(select(Job))).all()}
    assert left == {delivering, fresh}
    assert [(found[i].transcript_id, found[i].file_name, found[i].error_text) for i in jobs] == [
        (None, None, None),
        (delivering, "name-2.ogg", "error 2"),  # unfinished: nothing of it is touched
        (fresh, "name-3.ogg", "error 3"),
        (None, None, None),
    ]
    async with sessions() as session:
        nothing = await purge_old(session, now=NOW, settings=Settings(_env_file=None))
        kept = await purge_old(
            session, now=NOW, settings=Settings(retention_days=0, cache_ttl_days=0, _env_file=None)
        )
    assert (nothing.transcripts, kept.transcripts, kept.jobs) == (0, 0, 0)


async def test_forget_takes_the_users_transcripts_from_every_job_and_cancels_unfinished_ones(
    sessions: Sessions,
) -> None:
    """User 10's transcript is also linked by user 11's cache hit: both lose it. 10's running
    job is cancelled; 11's own transcript and job are untouched."""
    mine, theirs = await add(
        sessions, transcript(timedelta(hours=1), "my words"), transcript(timedelta(0), "theirs")
    )
    jobs = await add(
        sessions,
        job(1, JobStatus.done, transcript_id=mine),
        job(2, JobStatus.running),
        job(3, JobStatus.done, transcript_id=mine, user_id=11),
        job(4, JobStatus.done, transcript_id=theirs, user_id=11),
    )
    async with sessions() as session:
        forgotten = await forget(session, user_id=10, now=NOW)
        await session.commit()
    assert (forgotten.transcripts, forgotten.cancelled) == (1, (jobs[1],))
    async with sessions() as session:
        left = set((await session.scalars(select(Transcript.id))).all())
        found = {j.id: j for j in (await session.scalars(select(Job))).all()}
    assert left == {theirs}
    assert [(found[i].status, found[i].transcript_id, found[i].file_name) for i in jobs] == [
        (JobStatus.done, None, None),
        (JobStatus.cancelled, None, None),
        (JobStatus.done, None, "name-3.ogg"),
        (JobStatus.done, theirs, "name-4.ogg"),
    ]


# ------------------------------------------------------------------ end to end: the real bot


@pytest.fixture(scope="module")
def note(corpus: Path) -> bytes:
    """A voice note whose transcript says PHRASE."""
    return voice_note(corpus / "en" / "librispeech_alif_another_door.wav")


def rows(workdir: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one statement on the bot's database (committed through the standard library)."""
    with closing(sqlite3.connect(workdir / "data" / "voicebot.db")) as connection, connection:
        return connection.execute(sql).fetchall()


def reply(api: FakeBotAPI, chat_id: int, message_id: int) -> SentMessage | None:
    """The bot's one visible reply to a message, once there is one."""
    found = [m for m in api.messages(chat_id) if m.reply_to == message_id and not m.deleted]
    assert len(found) <= 1, [m.text for m in found]
    return found[0] if found else None


async def answered(api: FakeBotAPI, chat_id: int, message_id: int, phrase: str) -> str:
    """Wait until the reply to `message_id` contains `phrase`; its text."""

    def text() -> str:
        found = reply(api, chat_id, message_id)
        return (found.text or "") if found else ""

    await api.wait_for(lambda: phrase in text().lower(), 60, f"{phrase!r} for {message_id}")
    return text()


async def bot_says(api: FakeBotAPI, chat_id: int, text: str) -> SentMessage:
    """Wait for the bot's message in `chat_id` that says `text` (as sent or edited)."""

    def found() -> list[SentMessage]:
        return [m for m in api.messages(chat_id) if text in (m.text or "")]

    await api.wait_for(lambda: bool(found()), 20, repr(text))
    return found()[-1]


def words(text: str) -> set[str]:
    """The lowercase words of `text`."""
    return set(re.findall(r"[a-z']+", text.lower()))


#: What /forget keeps of each usage row.
USAGE = "job_id, audio_seconds, charged_seconds, language"


def texts_in_database(workdir: Path) -> list[tuple[str, str, str]]:
    """(table, column, value) of every non-empty text, string or JSON value in every table."""
    found: list[tuple[str, str, str]] = []
    for (table,) in rows(workdir, "SELECT name FROM sqlite_master WHERE type = 'table'"):
        for _, column, kind, *_ in rows(workdir, f"PRAGMA table_info('{table}')"):
            if any(word in kind.upper() for word in ("CHAR", "TEXT", "JSON", "CLOB")):
                for (value,) in rows(workdir, f'SELECT "{column}" FROM "{table}"'):
                    if isinstance(value, str) and value:
                        found.append((table, column, value))
    return found


async def test_privacy_and_forget_leave_no_text_keep_usage_and_the_cache_misses(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, note: bytes
) -> None:
    """/privacy tells what is kept; /forget asks, refuses another user's crafted confirmation,
    then deletes every text of the user in one commit made before the press is answered: their
    transcript (also from a friend's cache hit of it), file names, failure texts, settings. Usage
    stays; the same recording sent again is transcribed anew."""
    bot = BotProcess(api, tmp_path, model_cache, WHISPER_MODEL="tiny.en", RETENTION_DAYS="30")
    await bot.start()
    first = api.send_audio(
        USER, note, duration=4, file_name="quarterly-plans.ogg", mime_type="audio/ogg"
    )
    said = words(await answered(api, USER, first, PHRASE))
    (unique_id,) = rows(tmp_path, "SELECT file_unique_id FROM jobs")[0]
    hit = api.send_voice_as(FRIEND, note, duration=4, file_unique_id=unique_id, forward_from=USER)
    await answered(api, FRIEND, hit, PHRASE)
    quiet = api.send_voice(USER, silence(2.0, container="ogg", codec="libopus"), duration=2)
    failure = await answered(api, USER, quiet, "speech")
    rows(
        tmp_path,
        f"UPDATE users SET ui_language = 'en', output_format = 'srt' WHERE id = {USER}",
    )
    rows(tmp_path, f"UPDATE chats SET language = 'auto:en,de' WHERE id = {USER}")
    usage = rows(tmp_path, f"SELECT {USAGE} FROM usage ORDER BY id")
    assert len(usage) == 2  # the transcription and the friend's cache hit
    assert [language for *_, language in usage] == ["en", "en"]
    assert rows(tmp_path, "SELECT count(*) FROM transcripts") == [(1,)]

    api.send_text(USER, "/privacy")
    shown = await bot_says(api, USER, "What I store about you")
    assert shown.text == texts.privacy.summary(kept_days=7, serving_days=7, retention_days=30)
    assert "Audio is never stored" in shown.text
    assert "kept for 7 days, then deleted" in shown.text

    api.send_text(USER, "/forget")
    question = await bot_says(api, USER, texts.privacy.forget_confirm())
    assert question.reply_markup is not None
    yes, no = (b["callback_data"] for b in question.reply_markup["inline_keyboard"][0])
    assert (yes, no) == (f"forget:yes:{USER}", f"forget:no:{USER}")

    # Another user crafts the confirmation (as if they could press it): nothing happens.
    crafted = api.press_button(OTHER, question.message_id, yes, chat_id=USER)
    await api.wait_for(lambda: api.query_answer(crafted) is not None, 20, "the crafted press")
    refused = api.query_answer(crafted)
    assert refused is not None
    assert refused.params == {"text": texts.privacy.forget_not_yours(), "show_alert": True}
    assert rows(tmp_path, "SELECT count(*) FROM transcripts") == [(1,)]

    pressed = api.press_button(USER, question.message_id, yes)
    await api.wait_for(lambda: api.query_answer(pressed) is not None, 20, "the confirmation")
    # Already committed when the press is answered.
    assert rows(tmp_path, "SELECT count(*) FROM transcripts") == [(0,)]
    await bot_says(api, USER, texts.privacy.forget_done(1))

    left = [
        (table, column, value)
        for table, column, value in texts_in_database(tmp_path)
        if words(value) & (said | {"quarterly", "plans", "hear", "speech"})
    ]
    assert left == []
    assert failure not in {value for *_, value in texts_in_database(tmp_path)}
    assert rows(
        tmp_path,
        "SELECT first_name, username, ui_language, output_format, language_code FROM users"
        f" WHERE id = {USER}",
    ) == [("", None, None, "text", None)]
    assert rows(tmp_path, f"SELECT language FROM chats WHERE id = {USER}") == [(None,)]
    assert rows(tmp_path, "SELECT count(*) FROM jobs WHERE transcript_id IS NOT NULL") == [(0,)]
    assert rows(tmp_path, f"SELECT {USAGE} FROM usage ORDER BY id") == usage  # language too

    # The cache cannot serve the forgotten transcript: the same file is transcribed anew.
    again = api.send_voice_as(USER, note, duration=4, file_unique_id=unique_id)
    await answered(api, USER, again, PHRASE)
    assert await bot.stop() == 0, bot.output()
    assert len(log_events(bot, "job_transcribed")) == 2
    assert len(log_events(bot, "job_cached")) == 1  # the friend's, before the forget


async def test_a_recording_sent_just_before_forget_in_the_same_batch_is_cancelled(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, note: bytes
) -> None:
    """A recording, the /forget confirmation and another recording reach the bot in one batch
    (it was down): the first is cancelled like everything recorded before the forget, the one
    sent after it is transcribed."""
    bot = BotProcess(api, tmp_path, model_cache, WHISPER_MODEL="tiny.en")
    await bot.start()
    api.send_text(USER, "/forget")
    question = await bot_says(api, USER, texts.privacy.forget_confirm())
    assert await bot.stop() == 0, bot.output()

    before = api.send_voice(USER, note, duration=4)
    pressed = api.press_button(USER, question.message_id, f"forget:yes:{USER}")
    after = api.send_voice(USER, note, duration=4)
    await bot.start()
    await api.wait_for(lambda: api.query_answer(pressed) is not None, 30, "the confirmation")
    await answered(api, USER, after, PHRASE)
    told = await answered(api, USER, before, "cancelled")
    assert told == texts.CANCELLED
    assert await bot.stop() == 0, bot.output()
    assert rows(tmp_path, "SELECT message_id, status, transcript_id FROM jobs ORDER BY id")[:2] == [
        (before, "cancelled", None),
        (after, "done", 1),
    ]
    assert rows(tmp_path, "SELECT count(*) FROM usage") == [(1,)]  # the cancelled one is free


async def test_the_running_bot_purges_transcripts_past_the_retention(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, note: bytes
) -> None:
    """RETENTION_DAYS=1, purged every second: a transcript made 2 days ago is deleted by the
    periodic task while the bot runs (not only at start), with its job's file name; the same
    file is then transcribed anew."""
    env = {"RETENTION_DAYS": "1", "PURGE_INTERVAL_SECONDS": "1", "WHISPER_MODEL": "tiny.en"}
    bot = BotProcess(api, tmp_path, model_cache, **env)
    await bot.start()
    first = api.send_audio(USER, note, duration=4, file_name="minutes.ogg", mime_type="audio/ogg")
    await answered(api, USER, first, PHRASE)
    await api.wait_for(
        lambda: rows(tmp_path, "SELECT status FROM jobs") == [("done",)], 20, "the job done"
    )
    (unique_id,) = rows(tmp_path, "SELECT file_unique_id FROM jobs")[0]
    assert log_events(bot, "cache_purged") == []
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%d %H:%M:%S")
    rows(tmp_path, f"UPDATE transcripts SET created_at = '{two_days_ago}'")
    rows(tmp_path, f"UPDATE jobs SET created_at = '{two_days_ago}'")

    await api.wait_for(lambda: bool(log_events(bot, "cache_purged")), 10, "a periodic purge")
    (purged,) = log_events(bot, "cache_purged")
    assert (purged["transcripts"], purged["jobs"]) == (1, 1)
    assert rows(tmp_path, "SELECT count(*) FROM transcripts") == [(0,)]
    assert rows(tmp_path, "SELECT file_name, transcript_id, status FROM jobs") == [
        (None, None, "done")
    ]
    again = api.send_voice_as(FRIEND, note, duration=4, file_unique_id=unique_id)
    await answered(api, FRIEND, again, PHRASE)
    assert await bot.stop() == 0, bot.output()
    assert len(log_events(bot, "job_transcribed")) == 2
    assert log_events(bot, "job_cached") == []


async def test_a_forget_press_that_meets_a_busy_database_is_not_confirmed(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, note: bytes
) -> None:
    """A recording, then the /forget press, in one batch: the first process answers the press
    and dies before the batch is recorded; the next meets a database busy past its timeout
    while handling the press again. The batch is not confirmed until the press is handled, so
    the recording sent before it ends cancelled, not transcribed after "Deleted"."""
    bot = BotProcess(api, tmp_path, model_cache, WHISPER_MODEL="tiny.en")
    await bot.start()
    api.send_text(USER, "/forget")
    question = await bot_says(api, USER, texts.privacy.forget_confirm())
    assert await bot.stop() == 0, bot.output()

    before = api.send_voice(USER, note, duration=4)
    pressed = api.press_button(USER, question.message_id, f"forget:yes:{USER}")
    api.hold("editMessageText")  # the question's edit comes after the answer: killed there
    await bot.start()
    await api.wait_for(lambda: api.query_answer(pressed) is not None, 30, "the answer")
    assert await bot.stop(signal.SIGKILL) == -signal.SIGKILL
    api.release("editMessageText")

    api.hold("getUpdates")
    await bot.start()
    with closing(
        sqlite3.connect(tmp_path / "data" / "voicebot.db", isolation_level=None, timeout=30)
    ) as locker:
        locker.execute("BEGIN IMMEDIATE")  # another writer, for longer than the busy timeout
        api.release("getUpdates")
        await api.wait_for(lambda: bool(log_events(bot, "polling_failed")), 40, "the failure")
        locker.execute("ROLLBACK")
    ended = f"SELECT status, transcript_id FROM jobs WHERE message_id = {before}"
    await api.wait_for(
        lambda: rows(tmp_path, ended) in ([("cancelled", None)], [("done", 1)]), 60, "its end"
    )
    assert await bot.stop() == 0, bot.output()
    assert rows(tmp_path, ended) == [("cancelled", None)]
    assert not log_events(bot, "handler_failed")
    assert rows(tmp_path, "SELECT count(*) FROM transcripts") == [(0,)]
