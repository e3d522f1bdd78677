"""The `voicebot run` process: configuration errors, progress and graceful shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from .botproc import BotProcess, bot_database
from .fakes import FakeBotAPI, SentMessage
from .media import encode_audio, long_speech, voice_note
from .test_fairness import rows

USER = 3003
PROGRESS = re.compile(r"Transcribing… \d+% \(\d+:\d\d elapsed\)")


# ----------------------------------------------------------------------------- configuration
TOKEN_CASES = {
    # case: (TELEGRAM_BOT_TOKEN in the environment, .env contents, words the line must have)
    "missing": (None, None, ["TELEGRAM_BOT_TOKEN", "not set", "@BotFather"]),
    "blank in .env": (None, "TELEGRAM_BOT_TOKEN=\n", ["TELEGRAM_BOT_TOKEN", "not set"]),
    "malformed": ("abc", None, ["TELEGRAM_BOT_TOKEN", "does not look like a bot token"]),
}


def start_without_a_good_token(
    workdir: Path, token: str | None, dotenv: str | None
) -> subprocess.Popen[str]:
    """`python -m voicebot run` in its own directory, with `token` (or none) in the env."""
    workdir.mkdir()
    if dotenv is not None:
        (workdir / ".env").write_text(dotenv)
    env = {k: v for k, v in os.environ.items() if k.upper() != "TELEGRAM_BOT_TOKEN"}
    env["DATA_DIR"] = str(workdir / "data")
    if token is not None:
        env["TELEGRAM_BOT_TOKEN"] = token
    return subprocess.Popen(
        [sys.executable, "-m", "voicebot", "run"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_bad_token_is_one_clear_line(tmp_path: Path) -> None:
    """A missing, blank or malformed token stops the bot with one line on stderr, before it
    touches the database (`communicate`'s timeout bounds the wait; no speed is asserted here)."""
    processes = {
        case: start_without_a_good_token(tmp_path / str(n), token, dotenv)
        for n, (case, (token, dotenv, _)) in enumerate(TOKEN_CASES.items())
    }
    for case, process in processes.items():
        stdout, stderr = process.communicate(timeout=30)
        lines = stderr.strip().splitlines()
        assert process.returncode != 0, case
        assert len(lines) == 1, f"{case}: {stderr}"
        assert all(word in lines[0] for word in TOKEN_CASES[case][2]), f"{case}: {lines[0]}"
        assert stdout == "", case
    assert not list(tmp_path.glob("*/data/*.db"))  # it stopped before touching the database


# ----------------------------------------------------------------------------- shutdown
Spawn = Callable[..., BotProcess]


@pytest.fixture
async def spawn(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, database_url: str
) -> AsyncIterator[Spawn]:
    """Make bot processes on `tmp_path` and `database_url` (SQLite and PostgreSQL); any still
    running at the end is killed."""
    started: list[BotProcess] = []

    def make(**env: str) -> BotProcess:
        process = BotProcess(api, tmp_path, model_cache, **bot_database(database_url), **env)
        started.append(process)
        return process

    yield make
    for process in started:
        if process.process is not None and not process.exited:
            await process.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def long_voice(corpus: Path) -> tuple[bytes, int]:
    """About 45 s of speech as an OGG/Opus voice note, and its duration in seconds."""
    speech = long_speech(corpus)
    return encode_audio(speech), int(len(speech) / 16000)


def status_message(api: FakeBotAPI, message_id: int) -> SentMessage:
    """The bot's one reply to `message_id`."""
    (reply,) = [m for m in api.messages(USER) if m.reply_to == message_id]
    return reply


def has_transcript(message: SentMessage) -> bool:
    """Whether the message shows words from the start and the end of the recording."""
    text = message.text or ""
    return "fellow Americans" in text and "myself" in text


async def send_and_wait_for_download(api: FakeBotAPI, voice: tuple[bytes, int]) -> int:
    """Send the long voice note; return once the bot has fetched its file."""
    downloads = len(api.calls_of("downloadFile"))
    sent = api.send_voice(USER, voice[0], duration=voice[1])
    await api.wait_for(lambda: len(api.calls_of("downloadFile")) > downloads, 30, "download")
    return sent


def job_row(database_url: str) -> tuple[str, int, int]:
    """(status, attempts, delivered_parts) of the only job in the bot's database."""
    (row,) = rows(database_url, "SELECT status, attempts, delivered_parts FROM jobs")
    status, attempts, delivered = row
    return str(status), int(attempts), int(delivered)


async def test_sigterm_lets_the_running_job_finish(
    api: FakeBotAPI, spawn: Spawn, database_url: str, long_voice: tuple[bytes, int]
) -> None:
    """With the default grace, SIGTERM waits for the transcript, then exits 0.

    On the way, the status message shows the progress of the long recording.
    """
    bot = spawn()
    await bot.start()
    sent = await send_and_wait_for_download(api, long_voice)
    assert not has_transcript(status_message(api, sent))
    signalled = time.monotonic()
    assert await bot.stop(signal.SIGTERM) == 0, bot.output()

    reply = status_message(api, sent)
    assert has_transcript(reply), bot.output()
    assert len(api.messages(USER)) == 1
    final_edit = [c for c in api.calls_of("editMessageText") if c.params["text"] == reply.text]
    assert final_edit[0].at > signalled  # delivered during the drain, not before the signal
    assert job_row(database_url) == ("done", 1, 1)
    progress = [text for text in reply.edits if PROGRESS.fullmatch(text)]
    assert progress, reply.edits
    assert reply.edits[0] == "Transcribing…"


async def test_sigterm_without_grace_postpones_the_job(
    api: FakeBotAPI, spawn: Spawn, database_url: str, long_voice: tuple[bytes, int]
) -> None:
    """With SHUTDOWN_GRACE_SECONDS=0 the bot stops at once; the next start delivers once."""
    first = spawn(SHUTDOWN_GRACE_SECONDS="0")
    await first.start()
    sent = await send_and_wait_for_download(api, long_voice)
    signalled = time.monotonic()
    assert await first.stop(signal.SIGTERM, timeout=20) == 0, first.output()
    assert time.monotonic() - signalled < 10
    assert not has_transcript(status_message(api, sent))
    assert job_row(database_url) == ("queued", 0, 0)  # the interrupted attempt is not counted

    second = spawn()
    await second.start()
    await api.wait_for(lambda: has_transcript(status_message(api, sent)), 120, "transcript")
    assert await second.stop() == 0, second.output()
    assert len(api.messages(USER)) == 1
    assert sum("fellow Americans" in (m.text or "") for m in api.messages(USER)) == 1
    assert len(api.calls_of("downloadFile")) == 2
    assert job_row(database_url) == ("done", 1, 1)


async def test_sigterm_during_a_burst_leaves_no_reply_in_doubt(
    api: FakeBotAPI, spawn: Spawn, database_url: str, corpus: Path
) -> None:
    """Stopped just as a burst is recorded: replies under way finish, the rest come next start."""
    note = voice_note(corpus / "en" / "librispeech_alif_testing_routine.wav")
    first = spawn(WHISPER_MODEL="tiny.en", USER_MAX_ACTIVE_JOBS="20", USER_JOBS_PER_MINUTE="20")
    await first.start()
    sent = [api.send_voice(USER, note, duration=3) for _ in range(12)]
    await api.wait_for(lambda: not api.pending_updates, 20, "the burst confirmed")
    assert await first.stop(signal.SIGTERM) == 0, first.output()

    second = spawn(WHISPER_MODEL="tiny.en", USER_MAX_ACTIVE_JOBS="20", USER_JOBS_PER_MINUTE="20")
    await second.start()

    def transcribed(message_id: int) -> bool:
        return any("testing routine" in (m.text or "").lower() for m in replies(api, message_id))

    await api.wait_for(lambda: all(map(transcribed, sent)), 120, "every transcript")
    assert await second.stop() == 0, second.output()
    assert all(len(replies(api, message_id)) == 1 for message_id in sent)
    assert '"status_reply_in_doubt"' not in second.output()
    assert rows(database_url, "SELECT DISTINCT status FROM jobs") == [("done",)]


def replies(api: FakeBotAPI, message_id: int) -> list[SentMessage]:
    """The bot's visible replies to one of USER's messages."""
    return [m for m in api.messages(USER) if m.reply_to == message_id and not m.deleted]
