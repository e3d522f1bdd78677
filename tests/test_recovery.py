"""Recovery from each state a killed process can leave a job in, seeded into a real database
(SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from voicebot import texts
from voicebot.db import build_engine, build_sessions, upgrade_async
from voicebot.models import Job, JobStatus, utcnow

from .botproc import BotProcess, bot_database
from .conftest import sqlite_only
from .fakes import FakeBotAPI, SentMessage
from .media import voice_note
from .test_db import add_user
from .test_fairness import rows
from .test_polling import log_events

USER = 5005
PHRASE = "another door"

State = list[tuple[str, int | None]]


async def seed_job(database_url: str, update: dict[str, object], **columns: object) -> None:
    """Record the job for `update` as a killed process would have left it."""
    message = update["message"]
    assert isinstance(message, dict)
    voice = message["voice"]
    await upgrade_async(database_url)
    engine = build_engine(database_url)
    try:
        sessions = build_sessions(engine)
        await add_user(sessions, USER)
        async with sessions() as session:
            values: dict[str, object] = {
                "status": JobStatus.queued,
                "attempts": 0,
                "delivered_parts": 0,
                "created_at": utcnow() - timedelta(minutes=1),
                **columns,
            }
            session.add(
                Job(
                    chat_id=USER,
                    user_id=USER,
                    message_id=message["message_id"],
                    kind="voice",
                    file_id=voice["file_id"],
                    file_unique_id=voice["file_unique_id"],
                    duration=voice["duration"],
                    **values,
                )
            )
            await session.commit()
    finally:
        await engine.dispose()


def job_state(database_url: str) -> State:
    """(status, status_message_id) of every job."""
    found = rows(database_url, "SELECT status, status_message_id FROM jobs")
    return [(str(status), message_id) for status, message_id in found]


async def until_state(
    database_url: str, check: Callable[[State], bool], timeout: float, what: str
) -> None:
    """Poll the jobs until `check` holds; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check(state := job_state(database_url)):
        assert time.monotonic() < deadline, f"{what}: jobs still {state}"
        await asyncio.sleep(0.1)


def visible_replies(api: FakeBotAPI, message_id: int) -> list[SentMessage]:
    """The bot's replies to `message_id` a user sees."""
    return [m for m in api.messages(USER) if m.reply_to == message_id and not m.deleted]


async def recover(
    api: FakeBotAPI,
    tmp_path: Path,
    model_cache: Path,
    corpus: Path,
    database_url: str,
    **columns: object,
) -> tuple[int, BotProcess]:
    """Send a voice note whose update was never confirmed, seed its job, start the bot."""
    note = voice_note(corpus / "en" / "librispeech_alif_another_door.wav")
    sent = api.send_voice(USER, note, duration=4)
    (update,) = api.pending_updates
    await seed_job(database_url, update, **columns)
    bot = BotProcess(
        api, tmp_path, model_cache, WHISPER_MODEL="tiny.en", **bot_database(database_url)
    )
    await bot.start()
    return sent, bot


async def test_recorded_job_without_status_reply_gets_one(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, corpus: Path, database_url: str
) -> None:
    """Killed after the commit, before the reply: one status reply, then the transcript in it."""
    sent, bot = await recover(api, tmp_path, model_cache, corpus, database_url)

    def answered() -> bool:
        return any(PHRASE in (m.text or "").lower() for m in visible_replies(api, sent))

    await api.wait_for(answered, 60, "transcript")
    assert await bot.stop() == 0, bot.output()
    (reply,) = visible_replies(api, sent)
    assert reply.edits[0] == texts.TRANSCRIBING
    assert job_state(database_url) == [("done", reply.message_id)]
    assert not api.pending_updates  # the redelivered update was confirmed, not a second job


async def test_status_reply_in_doubt_is_logged_and_the_transcript_is_an_edit(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, corpus: Path, database_url: str
) -> None:
    """Killed while the status reply was in flight: logged, a new status, the transcript in it."""
    sent, bot = await recover(
        api, tmp_path, model_cache, corpus, database_url, status_requested_at=utcnow()
    )

    def answered() -> bool:
        return any(PHRASE in (m.text or "").lower() for m in visible_replies(api, sent))

    await api.wait_for(answered, 60, "transcript")
    assert await bot.stop() == 0, bot.output()
    (reply,) = visible_replies(api, sent)  # the seeded reply never reached this fake
    assert reply.edits
    assert reply.edits[0] in (texts.TRANSCRIBING, texts.queued(0, 1))
    (doubt,) = log_events(bot, "status_reply_in_doubt")
    assert doubt["chat_id"] == USER
    assert job_state(database_url) == [("done", reply.message_id)]
    sends = [c for c in api.calls_of("sendMessage") if c.params.get("chat_id") == USER]
    assert [c.params["text"] for c in sends] == [reply.edits[0]]  # the transcript is no send


async def test_recorded_failure_is_told_once(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, corpus: Path, database_url: str
) -> None:
    """Killed after the failure was recorded, before it was shown: shown on the next start."""
    sent, bot = await recover(
        api,
        tmp_path,
        model_cache,
        corpus,
        database_url,
        error_code="FileUnavailableError",
        error_text=texts.UNAVAILABLE,
        attempts=1,
    )
    await api.wait_for(lambda: bool(visible_replies(api, sent)), 30, "the failure told")
    await until_state(database_url, lambda jobs: jobs[0][0] == "failed", 10, "job failed")
    assert await bot.stop() == 0, bot.output()
    (reply,) = visible_replies(api, sent)
    assert reply.text == texts.UNAVAILABLE
    assert api.calls_of("downloadFile") == []


async def test_job_cancelled_before_its_first_reply_is_told_on_the_next_start(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, corpus: Path, database_url: str
) -> None:
    """Cancelled (by /forget) before any status reply, then killed: "Cancelled." once, no work."""
    sent, bot = await recover(
        api,
        tmp_path,
        model_cache,
        corpus,
        database_url,
        status=JobStatus.cancelled,
        finished_at=utcnow(),
    )
    await api.wait_for(lambda: bool(visible_replies(api, sent)), 30, "the cancel told")
    await until_state(database_url, lambda jobs: jobs[0][1] is not None, 10, "reply recorded")
    assert await bot.stop() == 0, bot.output()
    (reply,) = visible_replies(api, sent)
    assert reply.text == texts.CANCELLED
    assert job_state(database_url) == [("cancelled", reply.message_id)]
    assert api.calls_of("getFile") == []

    # Told once: a later start finds it told and sends nothing more.
    await bot.start()
    await api.wait_for(lambda: bool(api.calls_of("getUpdates")[1:]), 30, "the second start")
    assert await bot.stop() == 0, bot.output()
    assert visible_replies(api, sent) == [reply]


@sqlite_only  # on PostgreSQL another process may hold the lease: it waits for the expiry
async def test_a_lease_left_by_a_killed_process_is_taken_back_at_once(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, corpus: Path, database_url: str
) -> None:
    """Killed mid-transcription, its lease an hour from expiring: the next start (the only
    process on its SQLite file) takes the job back at once, and answers it once."""
    note = voice_note(corpus / "en" / "librispeech_alif_another_door.wav")
    sent = api.send_voice(USER, note, duration=4)
    (update,) = api.pending_updates
    await seed_job(
        database_url,
        update,
        status=JobStatus.running,
        attempts=1,
        claimed_by="gone:4242:deadbeef",
        lease_until=utcnow() + timedelta(hours=1),
    )
    bot = BotProcess(api, tmp_path, model_cache, WHISPER_MODEL="tiny.en", JOB_LEASE_SECONDS="3600")
    await bot.start()

    def answered() -> bool:
        return any(PHRASE in (m.text or "").lower() for m in visible_replies(api, sent))

    await api.wait_for(answered, 60, "transcript")
    assert await bot.stop() == 0, bot.output()
    (taken,) = log_events(bot, "leases_taken_back")
    assert taken["count"] == 1
    assert len(visible_replies(api, sent)) == 1
    assert [status for status, _ in job_state(database_url)] == ["done"]
