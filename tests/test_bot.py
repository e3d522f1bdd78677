"""The real bot over real HTTP against the fake Bot API: voice in, transcript out."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from voicebot.audio import decode

from .botproc import BotProcess, bot_database
from .fakes import FakeBotAPI, SentMessage
from .media import (
    encode_audio,
    long_speech,
    png,
    silence,
    video_with_sound,
    video_without_sound,
    voice_note,
)
from .test_db import query

USER = 1001


@pytest.fixture
async def bot(api: FakeBotAPI, tmp_path: Path, model_cache: Path) -> AsyncIterator[BotProcess]:
    process = BotProcess(
        api, tmp_path, model_cache, MAX_AUDIO_SECONDS="30", USER_MAX_ACTIVE_JOBS="10"
    )
    await process.start()
    yield process
    code = await process.stop()
    assert code == 0, process.output()


def replies_to(api: FakeBotAPI, chat_id: int, message_id: int) -> list[SentMessage]:
    """Bot messages replying to a user's message."""
    return [m for m in api.messages(chat_id) if m.reply_to == message_id]


async def answer(api: FakeBotAPI, message_id: int, *, contains: str, timeout: float = 60) -> str:
    """Wait until the reply to `message_id` contains `contains`; return its text."""

    def ready() -> bool:
        return any(contains in (m.text or "").lower() for m in replies_to(api, USER, message_id))

    await api.wait_for(ready, timeout, f"reply to {message_id} containing {contains!r}")
    (reply,) = replies_to(api, USER, message_id)
    return reply.text or ""


async def test_voice_message_gets_its_transcript(
    api: FakeBotAPI, bot: BotProcess, corpus: Path
) -> None:
    sent = api.send_voice(USER, voice_note(corpus / "en" / "jfk.flac"), duration=11)
    text = await answer(api, sent, contains="ask not what your country can do for you")
    (reply,) = replies_to(api, USER, sent)
    assert reply.edits[0] == "Transcribing…"
    assert text.startswith("And so my fellow Americans")
    assert [c["command"] for c in api.commands()][:3] == ["start", "help", "me"]
    assert len(api.messages(USER)) == 1


async def test_every_media_kind(api: FakeBotAPI, bot: BotProcess, corpus: Path) -> None:
    clip = corpus / "en" / "librispeech_alif_another_engineer.wav"
    note = voice_note(clip)
    video = video_with_sound(clip)
    sent = [
        api.send_audio(USER, note, duration=4, file_name="memo.ogg", mime_type="audio/ogg"),
        api.send_video_note(USER, video, duration=4),
        api.send_video(USER, video, duration=4, width=64, height=64),
        api.send_document(USER, note, file_name="memo.opus", mime_type="audio/opus"),
        api.send_document(USER, video, file_name="clip.mp4", mime_type="application/octet-stream"),
    ]
    for message_id in sent:
        await answer(api, message_id, contains="another engineer")


async def test_text_and_commands(api: FakeBotAPI, bot: BotProcess) -> None:
    api.send_text(USER, "/start")
    api.send_text(USER, "hello?")
    api.send_document(USER, b"%PDF-1.4", file_name="paper.pdf", mime_type="application/pdf")
    await api.wait_for(lambda: len(api.messages(USER)) == 3, 20)
    # Updates are handled concurrently, so the answers may come in any order.
    starts = sorted((m.text or "")[:22] for m in api.messages(USER))
    assert starts == ["Hi! Send me a voice me", "Send me a voice messag", "This file does not loo"]


async def test_bad_input_gets_a_clear_message_and_the_bot_goes_on(
    api: FakeBotAPI, bot: BotProcess, corpus: Path
) -> None:
    cases = [
        (
            api.send_document(USER, png(), file_name="voice.ogg", mime_type="audio/ogg"),
            "not an audio or video file",
        ),
        (api.send_voice(USER, b"", duration=1), "the file is empty"),
        (
            api.send_video(USER, video_without_sound(), duration=1, width=64, height=64),
            "no sound track",
        ),
        (
            api.send_voice(USER, silence(3.0, container="ogg", codec="libopus"), duration=3),
            "could not hear any speech",
        ),
        (
            api.send_voice_ref(
                USER,
                file_id="big",
                file_unique_id="big-u",
                file_size=25 * 1024 * 1024,
                duration=1500,
            ),
            "too large",
        ),
        (
            api.send_voice(USER, voice_note(corpus / "en" / "jfk.flac")[:150], duration=11),
            "damaged",
        ),
        (
            api.send_voice(
                USER,
                encode_audio(np.tile(decode(corpus / "en" / "jfk.flac", max_seconds=60), 3)),
                duration=33,
            ),
            "too long",
        ),
    ]
    for message_id, expected in cases:
        await answer(api, message_id, contains=expected)
    good = api.send_voice(USER, voice_note(corpus / "en" / "jfk.flac"), duration=11)
    await answer(api, good, contains="fellow americans")


async def test_transient_telegram_failures_are_retried(
    api: FakeBotAPI, bot: BotProcess, corpus: Path
) -> None:
    api.fail_next("sendMessage", status=429, retry_after=1)
    api.fail_next("getFile", status=502, times=2)
    api.fail_next("editMessageText", status=500)
    sent = api.send_voice(
        USER, voice_note(corpus / "en" / "librispeech_alif_i_tell_you.wav"), duration=4
    )
    await answer(api, sent, contains="not poison")
    replies = [c for c in api.calls_of("sendMessage") if c.params.get("chat_id") == USER]
    assert len(replies) == 2  # the 429, then the honoured retry
    assert replies[1].at - replies[0].at >= 0.9
    assert len(api.calls_of("getFile")) == 3


async def test_persistent_failure_is_told_and_the_bot_goes_on(
    api: FakeBotAPI, bot: BotProcess, corpus: Path
) -> None:
    api.fail_next("getFile", status=500, times=3)
    failed = api.send_voice(USER, voice_note(corpus / "en" / "jfk.flac"), duration=11)
    await answer(api, failed, contains="something went wrong")
    good = api.send_voice(USER, voice_note(corpus / "en" / "jfk.flac"), duration=11)
    await answer(api, good, contains="fellow americans")


async def test_sigkill_mid_job_then_restart_gives_exactly_one_transcript(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, corpus: Path, database_url: str
) -> None:
    speech = long_speech(corpus)
    database = bot_database(database_url)
    if database:
        # On PostgreSQL the next process takes the killed one's job back once its lease expires
        # (SQLite: at start, being the only process on its file): a short lease, as in
        # test_scale, rather than the default minute. (Found by a helper timing CI.)
        database["JOB_LEASE_SECONDS"] = "6"
    first = BotProcess(api, tmp_path, model_cache, **database)
    await first.start()
    sent = api.send_voice(USER, encode_audio(speech), duration=int(len(speech) / 16000))
    await api.wait_for(lambda: len(api.calls_of("downloadFile")) == 1, 30)
    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert not any("myself" in (m.text or "") for m in api.messages(USER))

    second = BotProcess(api, tmp_path, model_cache, **database)
    await second.start()
    await answer(api, sent, contains="painful to myself", timeout=120)
    assert await second.stop() == 0
    transcripts = [m for m in api.messages(USER) if "fellow Americans" in (m.text or "")]
    assert len(transcripts) == 1
    assert len(api.messages(USER)) == 1
    assert len(api.calls_of("downloadFile")) == 2
    assert await query(database_url, "SELECT status FROM jobs") == [("done",)]


async def test_burst_from_five_users(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, corpus: Path, database_url: str
) -> None:
    clips = {
        "another door": "librispeech_alif_another_door.wav",
        "not poison": "librispeech_alif_i_tell_you.wav",
        "testing routine": "librispeech_alif_testing_routine.wav",
        "another engineer": "librispeech_alif_another_engineer.wav",
    }
    notes = {phrase: voice_note(corpus / "en" / name) for phrase, name in clips.items()}
    process = BotProcess(
        api,
        tmp_path,
        model_cache,
        WHISPER_MODEL="tiny.en",
        USER_MAX_ACTIVE_JOBS="10",
        **bot_database(database_url),
    )
    await process.start()
    expected: dict[tuple[int, int], str] = {}
    for index in range(20):
        user = 2000 + index % 5
        phrase = list(notes)[index % len(notes)]
        expected[(user, api.send_voice(user, notes[phrase], duration=4))] = phrase

    def all_answered() -> bool:
        return all(
            any(phrase in (m.text or "").lower() for m in api.messages(user))
            for (user, _), phrase in expected.items()
        )

    await api.wait_for(all_answered, 180, "all 20 transcripts")
    assert await process.stop() == 0
    for (user, message_id), phrase in expected.items():
        (reply,) = [m for m in api.messages(user) if m.reply_to == message_id]
        assert phrase in (reply.text or "").lower()
    assert sum(len(api.messages(2000 + u)) for u in range(5)) == 20
    # Recorded, charged and finished in the database under test (SQLite or PostgreSQL).
    assert await query(database_url, "SELECT status, count(*) FROM jobs GROUP BY status") == [
        ("done", 20)
    ]
    assert await query(database_url, "SELECT count(DISTINCT job_id) FROM usage") == [(20,)]

    # The first answer to each message is its honest place in line: jobs ahead of it, minus
    # the one being transcribed.
    first_texts = [c.params["text"] for c in api.calls_of("sendMessage")]
    positions = [int(t.rsplit(" ", 1)[1]) for t in first_texts if t.startswith("Queued")]
    assert first_texts.count("Transcribing…") + len(positions) == 20
    assert positions
    assert max(positions) >= 10
    # A place can repeat: a job may finish between two arrivals and move the line up.
    assert all(1 <= p <= 19 for p in positions)
    # A job shown a place is edited to "Transcribing…" when it starts (unless the cache
    # answers it first: the notes repeat); one whose reply said so at once (a slot was free)
    # is not edited to the same text again.
    started = {
        (int(c.params["chat_id"]), int(c.params["message_id"]))
        for c in api.calls_of("editMessageText")
        if c.params["text"] == "Transcribing…"
    }
    queued = set()
    for user, message_id in expected:
        (reply,) = [m for m in api.messages(user) if m.reply_to == message_id]
        if (reply.edits[0] if reply.edits else reply.text or "").startswith("Queued"):
            queued.add((user, reply.message_id))
    assert started, "no queued job was edited when it started"
    assert started <= queued, started - queued


async def test_local_bot_api_server_mode(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, corpus: Path
) -> None:
    """With TELEGRAM_LOCAL_MODE the file is read from the server's local path, past 20 MB."""
    local = tmp_path / "telegram-bot-api" / "voice" / "file_1.oga"
    local.parent.mkdir(parents=True)
    data = voice_note(corpus / "en" / "librispeech_alif_another_door.wav")
    local.write_bytes(data)
    file_id, unique_id = api.add_file(data, file_path=str(local))
    process = BotProcess(
        api, tmp_path, model_cache, WHISPER_MODEL="tiny.en", TELEGRAM_LOCAL_MODE="true"
    )
    await process.start()
    sent = api.send_voice_ref(
        USER, file_id=file_id, file_unique_id=unique_id, file_size=25 * 1024 * 1024, duration=4
    )
    await answer(api, sent, contains="another door")
    assert await process.stop() == 0
    assert api.calls_of("downloadFile") == []
