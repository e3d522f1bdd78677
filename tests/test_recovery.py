"""Recovery from each state a killed process can leave a job in, seeded into a real database."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from voicebot import texts
from voicebot.db import upgrade_async

from .botproc import BotProcess
from .fakes import FakeBotAPI, SentMessage
from .media import voice_note
from .test_polling import log_events

USER = 5005
PHRASE = "another door"


async def seed_job(workdir: Path, update: dict[str, object], **columns: object) -> None:
    """Record the job for `update` as a killed process would have left it."""
    message = update["message"]
    assert isinstance(message, dict)
    voice = message["voice"]
    database = workdir / "data" / "voicebot.db"
    database.parent.mkdir(parents=True, exist_ok=True)
    await upgrade_async(f"sqlite+aiosqlite:///{database}")
    values: dict[str, object] = {
        "chat_id": USER,
        "user_id": USER,
        "message_id": message["message_id"],
        "kind": "voice",
        "file_id": voice["file_id"],
        "file_unique_id": voice["file_unique_id"],
        "duration": voice["duration"],
        "status": "queued",
        "attempts": 0,
        "delivered_parts": 0,
        "created_at": "2026-11-27 00:00:00",
        **columns,
    }
    names = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute(
            "INSERT INTO users (id, first_name, created_at, last_seen_at) "
            "VALUES (?, 'Test', '2026-11-27', '2026-11-27')",
            (USER,),
        )
        connection.execute(
            "INSERT INTO chats (id, type, created_at) VALUES (?, 'private', '2026-11-27')", (USER,)
        )
        connection.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", list(values.values()))


def job_state(workdir: Path) -> list[tuple[str, int | None]]:
    """(status, status_message_id) of every job."""
    with closing(sqlite3.connect(workdir / "data" / "voicebot.db")) as connection:
        rows = connection.execute("SELECT status, status_message_id FROM jobs").fetchall()
    return [(str(status), message_id) for status, message_id in rows]


def visible_replies(api: FakeBotAPI, message_id: int) -> list[SentMessage]:
    """The bot's replies to `message_id` a user sees."""
    return [m for m in api.messages(USER) if m.reply_to == message_id and not m.deleted]


async def recover(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, corpus: Path, **columns: object
) -> tuple[int, BotProcess]:
    """Send a voice note whose update was never confirmed, seed its job, start the bot."""
    note = voice_note(corpus / "en" / "librispeech_alif_another_door.wav")
    sent = api.send_voice(USER, note, duration=4)
    (update,) = api.pending_updates
    await seed_job(tmp_path, update, **columns)
    bot = BotProcess(api, tmp_path, model_cache, WHISPER_MODEL="tiny.en")
    await bot.start()
    return sent, bot


async def test_recorded_job_without_status_reply_gets_one(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, corpus: Path
) -> None:
    """Killed after the commit, before the reply: one status reply, then the transcript in it."""
    sent, bot = await recover(api, tmp_path, model_cache, corpus)

    def answered() -> bool:
        return any(PHRASE in (m.text or "").lower() for m in visible_replies(api, sent))

    await api.wait_for(answered, 60, "transcript")
    assert await bot.stop() == 0, bot.output()
    (reply,) = visible_replies(api, sent)
    assert reply.edits[0] == texts.TRANSCRIBING
    assert job_state(tmp_path) == [("done", reply.message_id)]
    assert not api.pending_updates  # the redelivered update was confirmed, not a second job


async def test_status_reply_in_doubt_is_logged_and_the_transcript_is_an_edit(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, corpus: Path
) -> None:
    """Killed while the status reply was in flight: logged, a new status, the transcript in it."""
    sent, bot = await recover(
        api, tmp_path, model_cache, corpus, status_requested_at="2026-11-27 00:00:01"
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
    assert job_state(tmp_path) == [("done", reply.message_id)]
    sends = [c for c in api.calls_of("sendMessage") if c.params.get("chat_id") == USER]
    assert [c.params["text"] for c in sends] == [reply.edits[0]]  # the transcript is no send


async def test_recorded_failure_is_told_once(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, corpus: Path
) -> None:
    """Killed after the failure was recorded, before it was shown: shown on the next start."""
    sent, bot = await recover(
        api,
        tmp_path,
        model_cache,
        corpus,
        error_code="FileUnavailableError",
        error_text=texts.UNAVAILABLE,
        attempts=1,
    )
    await api.wait_for(lambda: bool(visible_replies(api, sent)), 30, "the failure told")
    await api.wait_for(lambda: job_state(tmp_path)[0][0] == "failed", 10, "job failed")
    assert await bot.stop() == 0, bot.output()
    (reply,) = visible_replies(api, sent)
    assert reply.text == texts.UNAVAILABLE
    assert api.calls_of("downloadFile") == []


async def test_job_cancelled_before_its_first_reply_is_told_on_the_next_start(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, corpus: Path
) -> None:
    """Cancelled (by /forget) before any status reply, then killed: "Cancelled." once, no work."""
    sent, bot = await recover(
        api, tmp_path, model_cache, corpus, status="cancelled", finished_at="2026-11-27 00:00:02"
    )
    await api.wait_for(lambda: bool(visible_replies(api, sent)), 30, "the cancel told")
    await api.wait_for(lambda: job_state(tmp_path)[0][1] is not None, 10, "its reply recorded")
    assert await bot.stop() == 0, bot.output()
    (reply,) = visible_replies(api, sent)
    assert reply.text == texts.CANCELLED
    assert job_state(tmp_path) == [("cancelled", reply.message_id)]
    assert api.calls_of("getFile") == []

    # Told once: a later start finds it told and sends nothing more.
    await bot.start()
    await api.wait_for(lambda: bool(api.calls_of("getUpdates")[1:]), 30, "the second start")
    assert await bot.stop() == 0, bot.output()
    assert visible_replies(api, sent) == [reply]


async def test_a_lease_left_by_a_killed_process_is_taken_back_at_once(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, corpus: Path
) -> None:
    """Killed mid-transcription, its lease an hour from expiring: the next start (the only
    process on its SQLite file) takes the job back at once, and answers it once."""
    note = voice_note(corpus / "en" / "librispeech_alif_another_door.wav")
    sent = api.send_voice(USER, note, duration=4)
    (update,) = api.pending_updates
    await seed_job(
        tmp_path,
        update,
        status="running",
        attempts=1,
        claimed_by="gone:4242:deadbeef",
        lease_until="2099-01-01 00:00:00.000000",
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
    assert [status for status, _ in job_state(tmp_path)] == ["done"]
