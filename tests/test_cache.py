"""The transcript cache: lookups and purging on a real SQLite file, hits in the real bot."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from voicebot.cache import (
    find_by_file,
    find_by_sha256,
    language_setting,
    purge_expired,
    record_hit,
)
from voicebot.config import Settings
from voicebot.db import Sessions, build_engine, build_sessions, upgrade_async
from voicebot.models import Job, JobStatus, Transcript, Usage

from .botproc import BotProcess
from .fakes import FakeBotAPI, SentMessage
from .media import voice_note
from .test_db import add_user
from .test_polling import log_events

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
TTL = 7.0
SHA = "ab" * 32
KEY: dict[str, Any] = {"model": "tiny.en", "language_setting": "auto", "now": NOW, "ttl_days": TTL}


# ------------------------------------------------------------------ unit: cache.py


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[Sessions]:
    """Sessions over a migrated database (SQLite, PostgreSQL) with one user (and chat) 10."""
    await upgrade_async(database_url)
    engine = build_engine(database_url)
    made = build_sessions(engine)
    await add_user(made, 10)
    yield made
    await engine.dispose()


def transcript(
    *,
    age: timedelta = timedelta(days=1),
    file_unique_id: str = "unique-1",
    sha256: str | None = SHA,
    model: str = "tiny.en",
    setting: str = "auto",
    text: str = "hello",
) -> Transcript:
    """A stored transcript made `age` before NOW."""
    return Transcript(
        file_unique_id=file_unique_id,
        text=text,
        language="en",
        language_probability=1.0,
        duration=3.5,
        segments=[{"start": 0.0, "end": 3.5, "text": text}],
        model=model,
        sha256=sha256,
        language_setting=setting,
        created_at=NOW - age,
    )


def job_for(message_id: int, status: JobStatus, transcript_id: int | None = None) -> Job:
    """A voice job of user 10."""
    return Job(
        chat_id=10,
        user_id=10,
        message_id=message_id,
        kind="voice",
        file_id=f"file-{message_id}",
        file_unique_id=f"unique-{message_id}",
        status=status,
        transcript_id=transcript_id,
    )


async def add(sessions: Sessions, *rows: Any) -> list[int]:
    """Insert rows, return their ids."""
    async with sessions() as session:
        session.add_all(rows)
        await session.commit()
        return [row.id for row in rows]


def test_language_setting_names_what_the_engine_is_asked_for() -> None:
    """A fixed language wins over the allowed list; the list is normalised and sorted."""
    assert language_setting(Settings(whisper_language=None, whisper_allowed_languages=[])) == "auto"
    assert language_setting(Settings(whisper_language=" EN ")) == "en"
    assert language_setting(
        Settings(whisper_language="", whisper_allowed_languages="ru, EN,en")
    ) == ("auto:en,ru")
    both = Settings(whisper_language="de", whisper_allowed_languages="en,ru")
    assert language_setting(both) == "de"


async def test_a_hit_needs_the_same_file_model_and_language_setting(sessions: Sessions) -> None:
    """Only a transcript of this file, made with this model and setting, is served."""
    (hit, *_) = await add(
        sessions,
        transcript(),
        transcript(model="base"),
        transcript(setting="en"),
        transcript(file_unique_id="unique-2"),
    )
    async with sessions() as session:
        found = await find_by_file(session, file_unique_id="unique-1", **KEY)
        assert found is not None
        assert found.id == hit
        assert await find_by_file(session, file_unique_id="unique-3", **KEY) is None
        assert (
            await find_by_file(session, file_unique_id="unique-1", **KEY | {"model": "small"})
            is None
        )
        miss = KEY | {"language_setting": "auto:en,ru"}
        assert await find_by_file(session, file_unique_id="unique-1", **miss) is None


async def test_a_long_allowed_list_is_stored_as_its_hash_and_served(sessions: Sessions) -> None:
    """Twenty-one allowed languages make a setting wider than the column (PostgreSQL would refuse
    it): its SHA-256 is stored instead, served to the same list and to no other."""
    languages = "af,ar,bg,ca,cs,da,de,el,en,es,et,fi,fr,he,hi,hr,hu,id,it,ja,ko"
    many = language_setting(Settings(whisper_allowed_languages=languages))
    fewer = language_setting(Settings(whisper_allowed_languages=languages[:-3]))
    assert many.startswith("sha256:")
    assert len(many) == 64
    assert many != fewer
    (hit,) = await add(sessions, transcript(setting=many))
    async with sessions() as session:
        found = await find_by_file(
            session, file_unique_id="unique-1", **KEY | {"language_setting": many}
        )
        assert found is not None
        assert found.id == hit
        other = KEY | {"language_setting": fewer}
        assert await find_by_file(session, file_unique_id="unique-1", **other) is None


async def test_a_hit_by_sha256_needs_the_same_model_and_language_setting(
    sessions: Sessions,
) -> None:
    """The bytes' digest finds a transcript made under any file_unique_id, with the same key."""
    hit, _, english, *_ = await add(
        sessions,
        transcript(file_unique_id="first-upload"),
        transcript(model="base"),
        transcript(setting="en"),
        transcript(sha256="cd" * 32),
        transcript(sha256=None),
    )
    async with sessions() as session:
        found = await find_by_sha256(session, sha256=SHA, **KEY)
        other = await find_by_sha256(session, sha256=SHA, **KEY | {"language_setting": "en"})
        assert await find_by_sha256(session, sha256="ef" * 32, **KEY) is None
        assert await find_by_sha256(session, sha256=SHA, **KEY | {"model": "small"}) is None
    assert found is not None
    assert (found.id, found.file_unique_id) == (hit, "first-upload")
    assert other is not None
    assert other.id == english


async def test_the_newest_of_several_matches_is_served(sessions: Sessions) -> None:
    """Two transcripts of the same file under the same key: the newer one."""
    _, newer = await add(
        sessions, transcript(age=timedelta(days=3)), transcript(age=timedelta(hours=1))
    )
    async with sessions() as session:
        by_file = await find_by_file(session, file_unique_id="unique-1", **KEY)
        by_digest = await find_by_sha256(session, sha256=SHA, **KEY)
    assert by_file is not None
    assert by_digest is not None
    assert by_file.id == by_digest.id == newer


async def test_expired_transcripts_are_not_served(sessions: Sessions) -> None:
    """A transcript exactly TTL_DAYS old is expired; one second younger is served; 0 is off."""
    await add(sessions, transcript(age=timedelta(days=TTL)))
    async with sessions() as session:
        assert await find_by_file(session, file_unique_id="unique-1", **KEY) is None
        assert await find_by_sha256(session, sha256=SHA, **KEY) is None
        earlier = KEY | {"now": NOW - timedelta(seconds=1)}
        assert await find_by_file(session, file_unique_id="unique-1", **earlier) is not None
        assert await find_by_sha256(session, sha256=SHA, **earlier) is not None
        off = earlier | {"ttl_days": 0}
        assert await find_by_file(session, file_unique_id="unique-1", **off) is None
        assert await find_by_sha256(session, sha256=SHA, **off) is None


async def test_purge_deletes_expired_transcripts_no_active_job_needs(sessions: Sessions) -> None:
    """Finished jobs are detached from expired transcripts; unfinished jobs keep theirs."""
    old = timedelta(days=TTL + 1)
    (for_done, for_failed, for_cancelled, orphan, for_active, shared, fresh) = await add(
        sessions,
        *(transcript(age=old, text=name) for name in ("done", "failed", "cancelled", "orphan")),
        transcript(age=old, text="active"),
        transcript(age=old, text="shared"),  # a cache hit: one done job, one still delivering
        transcript(age=timedelta(days=1), text="fresh"),
    )
    jobs = await add(
        sessions,
        job_for(1, JobStatus.done, for_done),
        job_for(2, JobStatus.failed, for_failed),
        job_for(3, JobStatus.cancelled, for_cancelled),
        job_for(4, JobStatus.transcribed, for_active),
        job_for(5, JobStatus.done, shared),
        job_for(6, JobStatus.transcribed, shared),
        job_for(7, JobStatus.done, fresh),
        job_for(8, JobStatus.queued),
    )
    async with sessions() as session:
        assert await purge_expired(session, now=NOW, ttl_days=0) == 0
        assert await purge_expired(session, now=NOW, ttl_days=TTL) == 4
        await session.commit()
    async with sessions() as session:
        left = set((await session.execute(select(Transcript.id))).scalars())
        links = {j.id: j.transcript_id for j in (await session.execute(select(Job))).scalars()}
        assert await purge_expired(session, now=NOW, ttl_days=TTL) == 0
    assert left == {for_active, shared, fresh}
    assert orphan not in left
    assert [links[job_id] for job_id in jobs] == [
        None,
        None,
        None,
        for_active,
        shared,
        shared,
        fresh,
        None,
    ]


async def test_a_hit_is_recorded_as_cached_and_charges_nothing(sessions: Sessions) -> None:
    """record_hit links the transcript, marks the job transcribed, and writes a cached usage row
    with the transcript's language."""
    (stored,) = await add(sessions, transcript())
    (job_id,) = await add(sessions, job_for(1, JobStatus.running))
    async with sessions() as session:
        job = await session.get(Job, job_id)
        hit = await session.get(Transcript, stored)
        assert job is not None
        assert hit is not None
        await record_hit(session, job=job, transcript=hit, processing_seconds=0.01)
        await session.commit()
    async with sessions() as session:
        job = await session.get(Job, job_id)
        usage = (await session.execute(select(Usage))).scalars().all()
    assert job is not None
    assert (job.status, job.transcript_id) == (JobStatus.transcribed, stored)
    assert [
        (u.job_id, u.cached, u.charged_seconds, u.balance_seconds, u.audio_seconds, u.language)
        for u in usage
    ] == [(job_id, True, 0.0, 0.0, 3.5, "en")]


# ------------------------------------------------------------------ end to end: the real bot

USER, FRIEND = 7007, 7008
PHRASE = "another door"


@pytest.fixture(scope="module")
def note(corpus: Path) -> bytes:
    """A voice note whose transcript says PHRASE."""
    return voice_note(corpus / "en" / "librispeech_alif_another_door.wav")


def replies(api: FakeBotAPI, chat_id: int, message_id: int) -> list[SentMessage]:
    """The bot's visible replies to a message in a private chat."""
    return [m for m in api.messages(chat_id) if m.reply_to == message_id and not m.deleted]


async def answered(api: FakeBotAPI, chat_id: int, message_id: int) -> None:
    """Wait until the one reply to `message_id` is a transcript saying PHRASE."""

    def ready() -> bool:
        return any(PHRASE in (m.text or "").lower() for m in replies(api, chat_id, message_id))

    await api.wait_for(ready, 60, f"transcript of {chat_id}/{message_id}")
    assert len(replies(api, chat_id, message_id)) == 1


def rows(workdir: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one query on the bot's database (committed through the standard library)."""
    with closing(sqlite3.connect(workdir / "data" / "voicebot.db")) as connection, connection:
        return connection.execute(sql).fetchall()


def usage(workdir: Path) -> list[tuple[Any, ...]]:
    """(message_id, cached, charged_seconds) of every usage row, in job order."""
    return rows(
        workdir,
        "SELECT jobs.message_id, usage.cached, usage.charged_seconds FROM usage"
        " JOIN jobs ON jobs.id = usage.job_id ORDER BY jobs.id",
    )


async def first_transcript(api: FakeBotAPI, note: bytes) -> tuple[int, str]:
    """Send the note from USER, wait for its transcript; its message_id and file_unique_id."""
    sent = api.send_voice(USER, note, duration=4)
    (update,) = [u for u in api.pending_updates if u["message"]["message_id"] == sent]
    await answered(api, USER, sent)
    return sent, str(update["message"]["voice"]["file_unique_id"])


def start_bot(api: FakeBotAPI, workdir: Path, model_cache: Path, **env: str) -> BotProcess:
    """The real bot with the fast English model."""
    return BotProcess(api, workdir, model_cache, WHISPER_MODEL="tiny.en", **env)


async def test_forwarded_voice_note_is_answered_without_downloading(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, note: bytes
) -> None:
    """Same file_unique_id, new file_id: the stored transcript, no getFile, nothing charged."""
    bot = start_bot(api, tmp_path, model_cache)
    await bot.start()
    original, unique_id = await first_transcript(api, note)
    assert len(api.calls_of("getFile")) == 1

    forwarded = api.send_voice_as(
        FRIEND, note, duration=4, file_unique_id=unique_id, forward_from=USER
    )
    await answered(api, FRIEND, forwarded)
    assert await bot.stop() == 0, bot.output()

    assert len(api.calls_of("getFile")) == 1
    assert len(api.calls_of("downloadFile")) == 1
    assert len(log_events(bot, "job_transcribed")) == 1
    (hit,) = log_events(bot, "job_cached")
    assert hit["by"] == "file_unique_id"
    assert usage(tmp_path) == [(original, 0, 0.0), (forwarded, 1, 0.0)]
    (friend,) = [m for m in api.messages(FRIEND) if m.reply_to == forwarded]
    (mine,) = [m for m in api.messages(USER) if m.reply_to == original]
    assert friend.text == mine.text


async def test_same_audio_uploaded_again_is_not_transcribed_again(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, note: bytes
) -> None:
    """Same bytes, new file_unique_id: downloaded, found by SHA-256, not transcribed."""
    bot = start_bot(api, tmp_path, model_cache)
    await bot.start()
    original, unique_id = await first_transcript(api, note)

    again = api.send_voice_as(USER, note, duration=4, file_unique_id="AgADuploadedAgain")
    await answered(api, USER, again)
    assert await bot.stop() == 0, bot.output()

    assert len(api.calls_of("getFile")) == 2  # a new file: it must be downloaded to be hashed
    assert len(log_events(bot, "job_transcribed")) == 1
    (hit,) = log_events(bot, "job_cached")
    assert hit["by"] == "sha256"
    assert usage(tmp_path) == [(original, 0, 0.0), (again, 1, 0.0)]
    assert rows(
        tmp_path, "SELECT file_unique_id, length(sha256), language_setting FROM transcripts"
    ) == [(unique_id, 64, "auto")]


async def test_another_language_setting_is_a_miss(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, note: bytes
) -> None:
    """Made with detection ("auto"), asked for with WHISPER_LANGUAGE=en: transcribed anew.

    tiny.en is English-only, so the text would come out the same: the key is the setting the
    transcript was made with, not what a model makes of it.
    """
    bot = start_bot(api, tmp_path, model_cache)
    await bot.start()
    _, unique_id = await first_transcript(api, note)
    assert await bot.stop() == 0, bot.output()

    bot = start_bot(api, tmp_path, model_cache, WHISPER_LANGUAGE="en")
    await bot.start()
    miss = api.send_voice_as(FRIEND, note, duration=4, file_unique_id=unique_id, forward_from=USER)
    await answered(api, FRIEND, miss)
    hit = api.send_voice_as(FRIEND, note, duration=4, file_unique_id=unique_id, forward_from=USER)
    await answered(api, FRIEND, hit)
    assert await bot.stop() == 0, bot.output()

    assert len(api.calls_of("getFile")) == 2  # the first and the miss; the hit needs none
    assert len(log_events(bot, "job_transcribed")) == 2  # one per run (the log is appended)
    assert [event["by"] for event in log_events(bot, "job_cached")] == ["file_unique_id"]
    assert rows(tmp_path, "SELECT language_setting FROM transcripts ORDER BY id") == [
        ("auto",),
        ("en",),
    ]
    assert [cached for _, cached, _ in usage(tmp_path)] == [0, 0, 1]


async def test_expired_transcript_is_purged_and_not_served(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, note: bytes
) -> None:
    """A transcript older than CACHE_TTL_DAYS is purged at start; the forward is transcribed."""
    bot = start_bot(api, tmp_path, model_cache, CACHE_TTL_DAYS="7")
    await bot.start()
    original, unique_id = await first_transcript(api, note)
    assert await bot.stop() == 0, bot.output()
    eight_days_ago = (datetime.now(UTC) - timedelta(days=8)).strftime("%Y-%m-%d %H:%M:%S")
    rows(tmp_path, f"UPDATE transcripts SET created_at = '{eight_days_ago}'")

    bot = start_bot(api, tmp_path, model_cache, CACHE_TTL_DAYS="7")
    await bot.start()
    await api.wait_for(lambda: bool(log_events(bot, "cache_purged")), 10, "the purge at start")
    (purged,) = log_events(bot, "cache_purged")
    assert purged["transcripts"] == 1
    assert rows(tmp_path, "SELECT count(*) FROM transcripts") == [(0,)]
    assert rows(tmp_path, "SELECT message_id, status, transcript_id FROM jobs") == [
        (original, "done", None)
    ]
    forwarded = api.send_voice_as(
        FRIEND, note, duration=4, file_unique_id=unique_id, forward_from=USER
    )
    await answered(api, FRIEND, forwarded)
    assert await bot.stop() == 0, bot.output()

    assert len(api.calls_of("getFile")) == 2
    assert log_events(bot, "job_cached") == []
    assert [cached for _, cached, _ in usage(tmp_path)] == [0, 0]
    assert rows(tmp_path, "SELECT count(*) FROM transcripts") == [(1,)]
