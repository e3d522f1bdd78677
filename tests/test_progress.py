"""Progress edits: live partial text for long recordings, throttling in groups, a blocked bot.
Each test runs on SQLite and on PostgreSQL (the `database_url` fixture)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from voicebot import texts
from voicebot.audio import decode
from voicebot.engine import Engine

from .botproc import BotProcess, bot_database
from .fake_groups import GroupFakeBotAPI
from .fakes import Call, FakeBotAPI, SentMessage
from .media import encode_audio, long_speech
from .test_fairness import job_ids, rows
from .test_outputs import stored_text
from .test_polling import log_events

USER = 7401
GROUP = -1001740
#: The percentage line of a progress edit, then the text so far after a blank line.
PROGRESS = re.compile(r"^Transcribing… (\d+)% \(\d+:\d\d elapsed\)(?:\n\n(.+))?$", re.DOTALL)
MORE_CLIPS = (
    *(f"fleurs_en-00{n}.ogg" for n in range(10)),
    "ljspeech_LJ001-0004.wav",
    "ljspeech_LJ001-0006.wav",
    "ljspeech_LJ001-0007.wav",
)


@pytest.fixture(scope="module")
def long_note(corpus: Path) -> bytes:
    """A voice note of about 160 s of English speech: tiny.en needs several seconds for it."""
    more = [decode(corpus / "en" / name, max_seconds=60) for name in MORE_CLIPS]
    return encode_audio(np.concatenate([long_speech(corpus), *more]))


@pytest.fixture(scope="module")
def shorter_note(corpus: Path) -> bytes:
    """A voice note of about 80 s (other audio than `long_note`)."""
    more = [decode(corpus / "en" / name, max_seconds=60) for name in MORE_CLIPS[:3]]
    return encode_audio(np.concatenate([long_speech(corpus), *more]))


@pytest.fixture
async def group_api() -> AsyncIterator[GroupFakeBotAPI]:
    """The fake Bot API with a supergroup the bot is in."""
    async with GroupFakeBotAPI() as fake:
        fake.add_group(GROUP, "Team")
        fake.set_member(GROUP, fake.bot_id, "administrator")
        yield fake


def status_of(api: FakeBotAPI, chat_id: int, message_id: int) -> SentMessage | None:
    """The bot's one status message (later the transcript) for a user's message."""
    found = [m for m in api.messages(chat_id) if m.reply_to == message_id and not m.deleted]
    assert len(found) <= 1, [m.text for m in found]
    return found[0] if found else None


def edits_of(api: FakeBotAPI, chat_id: int, message_id: int) -> list[Call]:
    """editMessageText calls (made, whatever Telegram answered) on one message, oldest first."""
    return [
        call
        for call in api.calls_of("editMessageText")
        if int(call.params["chat_id"]) == chat_id and int(call.params["message_id"]) == message_id
    ]


async def delivered(api: FakeBotAPI, chat_id: int, message_id: int) -> SentMessage:
    """Wait until the status message of `message_id` holds a transcript; that message."""

    def done() -> bool:
        status = status_of(api, chat_id, message_id)
        text = (status.text or "") if status else ""
        return bool(text) and not text.startswith(("Transcribing", "Queued"))

    await api.wait_for(done, 120, f"the transcript of {message_id}")
    status = status_of(api, chat_id, message_id)
    assert status is not None
    return status


async def stored(api: FakeBotAPI, where: str, chat_id: int, message_id: int) -> str:
    """Wait until the job of `message_id` is done in the bot's database (`where`: as for
    `rows`; it is marked so just after its transcript is shown); the transcript text it stored."""
    job = f"chat_id = {chat_id} AND message_id = {message_id}"
    await api.wait_for(
        lambda: rows(where, f"SELECT status FROM jobs WHERE {job}") == [("done",)],
        30,
        f"the job of {message_id} done",
    )
    return stored_text(where, job_ids(where)[(chat_id, message_id)])


async def test_a_long_recording_shows_its_text_so_far_and_then_the_engines_transcript(
    api: FakeBotAPI,
    tmp_path: Path,
    model_cache: Path,
    long_note: bytes,
    tiny_engine: Engine,
    database_url: str,
) -> None:
    """Progress edits of a 160 s note carry a percentage and the end of the text recognised so
    far (part of the final text, growing); the transcript that replaces them is exactly what
    the engine makes of the same audio."""
    database = bot_database(database_url)
    bot = BotProcess(api, tmp_path, model_cache, WHISPER_MODEL="tiny.en", **database)
    await bot.start()
    sent = api.send_voice(USER, long_note, duration=160)
    final = await delivered(api, USER, sent)
    kept = await stored(api, database_url, USER, sent)
    assert await bot.stop() == 0, bot.output()

    expected = tiny_engine.transcribe(long_note)
    assert final.text == expected.text
    assert kept == expected.text
    shown = [PROGRESS.match(text) for text in final.edits]
    progress = [match for match in shown if match is not None]
    assert len(progress) >= 2, final.edits
    partial = [match.group(2) for match in progress if match.group(2)]
    assert partial, final.edits
    for text in partial:
        assert text.removeprefix("…") in expected.text
    assert len(partial[-1]) > len(partial[0]) or partial[-1].startswith("…")
    percents = [int(match.group(1)) for match in progress]
    assert percents == sorted(percents)
    assert all(0 < percent < 100 for percent in percents)


async def test_progress_edits_stop_when_telegram_forbids_them_and_the_job_goes_on(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, long_note: bytes, database_url: str
) -> None:
    """A 403 on a progress edit ("bot was blocked by the user") stops the edits, logged; the
    transcription is not failed (its job is done) and its transcript still replaces the status."""
    database = bot_database(database_url)
    bot = BotProcess(api, tmp_path, model_cache, WHISPER_MODEL="tiny.en", **database)
    await bot.start()
    sent = api.send_voice(USER, long_note, duration=160)
    await api.wait_for(lambda: status_of(api, USER, sent) is not None, 30, "the status reply")
    status = status_of(api, USER, sent)
    assert status is not None
    # The job's own "Transcribing…" edit comes first; the next edit is the first progress tick.
    await api.wait_for(lambda: len(edits_of(api, USER, status.message_id)) >= 1, 30, "starting")
    api.fail_next("editMessageText", status=403)
    final = await delivered(api, USER, sent)
    kept = await stored(api, database_url, USER, sent)
    assert await bot.stop() == 0, bot.output()

    (stopped,) = log_events(bot, "progress_stopped")
    assert "blocked" in str(stopped["error"])
    assert log_events(bot, "job_failed") == []
    calls = edits_of(api, USER, status.message_id)
    # The refused progress edit, then only the transcript.
    assert PROGRESS.match(str(calls[1].params["text"])) is not None
    assert [str(call.params["text"]) for call in calls[2:]] == [final.text]
    assert texts.TRANSCRIBING in final.edits
    assert kept == final.text


async def test_groups_get_no_progress_edits_for_shorter_recordings_and_fewer_for_long_ones(
    group_api: GroupFakeBotAPI,
    tmp_path: Path,
    model_cache: Path,
    long_note: bytes,
    shorter_note: bytes,
    database_url: str,
) -> None:
    """In a group, with progress every second but GROUP_PROGRESS_MIN_SECONDS=100 and
    GROUP_EDIT_INTERVAL_SECONDS=2: the 80 s note (which in a private chat would get edits) gets
    none, the 160 s note gets its progress edits at least 2 s apart."""
    api = group_api
    env = {
        "GROUP_PROGRESS_MIN_SECONDS": "100",
        "GROUP_EDIT_INTERVAL_SECONDS": "2",
        **bot_database(database_url),
    }
    bot = BotProcess(api, tmp_path, model_cache, WHISPER_MODEL="tiny.en", **env)
    await bot.start()
    short = api.send_group_voice(GROUP, USER, shorter_note, duration=80)
    short_final = await delivered(api, GROUP, short)
    short_text = await stored(api, database_url, GROUP, short)
    long = api.send_group_voice(GROUP, USER, long_note, duration=160)
    long_final = await delivered(api, GROUP, long)
    long_text = await stored(api, database_url, GROUP, long)
    assert await bot.stop() == 0, bot.output()

    assert (short_text, long_text) == (short_final.text, long_final.text)
    assert [text for text in short_final.edits if PROGRESS.match(text)] == []
    progress = [
        call.at
        for call in edits_of(api, GROUP, long_final.message_id)
        if PROGRESS.match(str(call.params["text"]))
    ]
    assert len(progress) >= 2, long_final.edits
    assert all(later - earlier >= 1.9 for earlier, later in pairwise(progress))
