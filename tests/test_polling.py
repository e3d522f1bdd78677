"""The door: updates are confirmed to Telegram only once recorded; a bad one never blocks."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from .botproc import BotProcess, bot_database
from .conftest import sqlite_only
from .fakes import FakeBotAPI, SentMessage
from .media import voice_note

USER = 4004
CLIPS = {
    "another door": "librispeech_alif_another_door.wav",
    "not poison": "librispeech_alif_i_tell_you.wav",
    "testing routine": "librispeech_alif_testing_routine.wav",
}


@pytest.fixture
async def bot(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, database_url: str
) -> AsyncIterator[BotProcess]:
    """`voicebot run` polling, on SQLite and on PostgreSQL."""
    process = BotProcess(
        api, tmp_path, model_cache, WHISPER_MODEL="tiny.en", **bot_database(database_url)
    )
    await process.start()
    yield process
    code = await process.stop()
    assert code == 0, process.output()


@pytest.fixture(scope="module")
def notes(corpus: Path) -> dict[str, bytes]:
    """Voice notes of short clips, by a phrase each transcript contains."""
    return {phrase: voice_note(corpus / "en" / name) for phrase, name in CLIPS.items()}


def replies(api: FakeBotAPI, message_id: int) -> list[SentMessage]:
    """The bot's visible replies to a user's message."""
    return [m for m in api.messages(USER) if m.reply_to == message_id and not m.deleted]


async def transcript_of(api: FakeBotAPI, message_id: int, phrase: str) -> None:
    """Wait until the one reply to `message_id` shows `phrase`."""

    def ready() -> bool:
        return any(phrase in (m.text or "").lower() for m in replies(api, message_id))

    await api.wait_for(ready, 60, f"transcript of {message_id}")
    assert len(replies(api, message_id)) == 1


def log_events(bot: BotProcess, event: str) -> list[dict[str, object]]:
    """The bot's JSON log lines for `event`."""
    found = []
    for line in bot.output().splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            entry = json.loads(line)
            if entry.get("event") == event:
                found.append(entry)
    return found


async def test_an_update_that_does_not_parse_is_skipped(
    api: FakeBotAPI, bot: BotProcess, notes: dict[str, bytes]
) -> None:
    """A video without width/height between two voice notes: both are answered, it is confirmed."""
    first = api.send_voice(USER, notes["another door"], duration=4)
    poison = {
        "message_id": 900,
        "date": int(time.time()),
        "from": {"id": USER, "is_bot": False, "first_name": "Test"},
        "chat": {"id": USER, "type": "private", "first_name": "Test"},
        "video": {"file_id": "v", "file_unique_id": "vu", "duration": 3},
    }
    poison_id = api.push_update({"message": poison})
    second = api.send_voice(USER, notes["not poison"], duration=4)
    await transcript_of(api, first, "another door")
    await transcript_of(api, second, "not poison")
    await api.wait_for(lambda: not api.pending_updates, 10, "the batch confirmed")
    (skipped,) = log_events(bot, "update_unparseable")
    assert skipped["update_id"] == poison_id
    problems = skipped["problems"]
    assert isinstance(problems, list)
    assert any("video.width" in str(problem) for problem in problems)
    assert not replies(api, 900)

    later = api.send_voice(USER, notes["testing routine"], duration=3)
    await transcript_of(api, later, "testing routine")


@sqlite_only  # a lock on the file; test_scale stops PostgreSQL mid-burst instead
async def test_nothing_is_confirmed_while_the_database_refuses_writes(
    api: FakeBotAPI, bot: BotProcess, tmp_path: Path, notes: dict[str, bytes]
) -> None:
    """With the database locked, the update stays unconfirmed; once free, it is answered once."""
    database = tmp_path / "data" / "voicebot.db"
    with closing(sqlite3.connect(database, isolation_level=None)) as lock:
        lock.execute("BEGIN EXCLUSIVE")
        sent = api.send_voice(USER, notes["another door"], duration=4)
        (update,) = api.pending_updates
        # The bot's write waits out its busy timeout (10 s), fails, backs off and fetches again.
        await api.wait_for(lambda: bool(log_events(bot, "polling_failed")), 30, "a failed write")
        await asyncio.sleep(1.5)
        assert [u["update_id"] for u in api.pending_updates] == [update["update_id"]]
        assert not replies(api, sent)
        lock.execute("ROLLBACK")
    await transcript_of(api, sent, "another door")
    await api.wait_for(lambda: not api.pending_updates, 10, "the update confirmed")
    with closing(sqlite3.connect(database)) as connection:
        assert connection.execute("SELECT count(*) FROM jobs").fetchone() == (1,)
