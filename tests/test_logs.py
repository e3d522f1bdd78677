"""Logs: every line of a job or an update carries its ids, the bot token never appears."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from .botproc import BotProcess
from .fakes import FakeBotAPI
from .media import voice_note

USER = 5105
#: A token shaped like a real one (BotFather's secrets are 35 characters).
TOKEN = "7012345678:AAF-logsTest_Secret0123456789abcdefXYZ"
SECRET = TOKEN.split(":", 1)[1]
CLIP = "librispeech_alif_another_door.wav"


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    """The fake Bot API answering only to TOKEN."""
    async with FakeBotAPI(token=TOKEN) as fake:
        yield fake


def lines(bot: BotProcess) -> list[dict[str, object]]:
    """Every JSON line the bot logged (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in bot.output().splitlines() if line.strip()]


def job_ids(workdir: Path) -> list[int]:
    with closing(sqlite3.connect(workdir / "data" / "voicebot.db")) as db:
        return [row[0] for row in db.execute("SELECT id FROM jobs ORDER BY id")]


async def test_a_job_and_its_update_log_their_ids_and_never_the_token(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, corpus: Path
) -> None:
    """A job (its first reply failing once), a download that fails: ids bound, token redacted."""
    bot = BotProcess(api, tmp_path, model_cache, WHISPER_MODEL="tiny.en", LOG_LEVEL="DEBUG")
    await bot.start()
    try:
        api.fail_next("sendMessage", status=502)  # the status reply: retried, and logged
        api.send_voice(USER, voice_note(corpus / "en" / CLIP), duration=4)
        await api.wait_for(
            lambda: any("another door" in (m.text or "").lower() for m in api.messages(USER)),
            60,
            "the transcript",
        )
        # Telegram lists the file, but its download fails: aiohttp's error names the URL, which
        # holds the token, and the job's crash is logged with its traceback.
        bad = api.send_voice_ref(
            USER, file_id="gone-file", file_unique_id="gone-unique", file_size=9000, duration=3
        )
        await api.wait_for(
            lambda: any(
                m.reply_to == bad and "went wrong" in (m.text or "") for m in api.messages(USER)
            ),
            60,
            "the failure",
        )
    finally:
        assert await bot.stop() == 0, bot.output()
    output = bot.output()
    assert TOKEN not in output
    assert SECRET not in output
    assert "<token>" in output, "the failing download was not logged: nothing was redacted"
    logged = lines(bot)
    first, second = job_ids(tmp_path)

    # Every line written while a job runs carries the job's ids, those it names and those it
    # does not (the retried reply, the engine's lines, one of them from a worker thread, the
    # crash).
    by_job = [line for line in logged if line.get("job_id") in (first, second)]
    assert by_job
    for line in by_job:
        assert (line.get("user_id"), line.get("chat_id")) == (USER, USER), line
    events = {(line["event"], line["job_id"]) for line in by_job}
    assert {("telegram_retry", first), ("job_transcribed", first)} <= events
    assert {("job_crashed", second), ("job_failed", second)} <= events
    (decoded,) = [line for line in by_job if line["event"] == "segments_decoded"]
    assert decoded["job_id"] == first
    (cut,) = [line for line in by_job if line["event"] == "recording_cut"]
    assert cut["job_id"] == first
    assert cut["thread"] != "MainThread"
    (crash,) = [line for line in by_job if line["event"] == "job_crashed"]
    assert "<token>" in str(crash["exception"])

    # aiogram's line for each update, at DEBUG, with the update's id and sender.
    handled = [line for line in logged if str(line["event"]).startswith("Update id=")]
    assert len(handled) == 2
    for line in handled:
        assert line["level"] == "debug"
        assert line["logger"] == "aiogram.event"
        assert f"Update id={line['update_id']} is handled" in str(line["event"])
        assert (line["user_id"], line["chat_id"]) == (USER, USER)


async def test_aiogram_update_lines_are_debug(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path
) -> None:
    """At the default LOG_LEVEL (INFO) the updates are handled without aiogram's line for each."""
    bot = BotProcess(api, tmp_path, model_cache, WHISPER_MODEL="tiny.en")
    await bot.start()
    try:
        for _ in range(3):
            api.send_text(USER, "/help")
        await api.wait_for(lambda: len(api.messages(USER)) >= 3, 20, "three answers")
    finally:
        assert await bot.stop() == 0, bot.output()
    logged = lines(bot)
    (started,) = [line for line in logged if line["event"] == "bot_started"]
    # What start-up built is kept out of the collector's full passes (service._freeze_start_up).
    assert started["frozen_objects"] > 100_000, started
    assert not [line for line in logged if line.get("logger") == "aiogram.event"]
    assert "is handled" not in bot.output()


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter (logging set up there, not in the test process)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


def test_every_form_of_the_token_is_redacted() -> None:
    """The token, its secret alone and URL-quoted, in messages, values, arguments, tracebacks."""
    done = run_python(
        f"""
        import logging, structlog
        from voicebot.config import Settings
        from voicebot.logs import start_logging
        start_logging(Settings(telegram_bot_token={TOKEN!r}, log_format="json"))
        log = structlog.get_logger("t")
        log.info("in_values", url="http://x/bot{TOKEN}/getMe", nested={{"a": ["{SECRET}"]}})
        log.info("quoted", url="http://x/bot{TOKEN.replace(":", "%3A")}/getMe")
        logging.getLogger("aiohttp.client").warning("GET %s failed", "http://x/bot{TOKEN}/f")
        try:
            raise RuntimeError("http://x/file/bot{TOKEN}/voice/1.oga")
        except RuntimeError:
            logging.getLogger("aiogram.event").exception("stdlib_crash")
            log.exception("structlog_crash")
        log.info("bare_object", error=RuntimeError("{SECRET}"))
        """
    )
    assert done.returncode == 0, done.stderr
    assert TOKEN not in done.stderr
    assert SECRET not in done.stderr
    logged = [json.loads(line) for line in done.stderr.splitlines()]
    assert [line["event"] for line in logged] == [
        "in_values",
        "quoted",
        "GET http://x/bot<token>/f failed",
        "stdlib_crash",
        "structlog_crash",
        "bare_object",
    ]
    assert logged[0]["url"] == "http://x/bot<token>/getMe"
    assert logged[0]["nested"] == {"a": ["<token>"]}
    assert logged[1]["url"] == "http://x/bot<token>/getMe"
    for crash in logged[3:5]:
        assert "RuntimeError: http://x/file/bot<token>/voice/1.oga" in crash["exception"]
    assert logged[5]["error"] == "RuntimeError('<token>')"


def test_sentry_is_off_without_a_dsn() -> None:
    """Without SENTRY_DSN no Sentry client is started."""
    done = run_python(
        f"""
        import sentry_sdk
        from voicebot.config import Settings
        from voicebot.logs import start_logging
        start_logging(Settings(telegram_bot_token={TOKEN!r}))
        print(sentry_sdk.get_client().is_active())
        """,
        SENTRY_DSN="",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_malformed_sentry_dsn_is_one_line_at_start(tmp_path: Path) -> None:
    """`voicebot run` with SENTRY_DSN=nonsense exits 2 with one line naming the setting."""
    done = subprocess.run(
        [sys.executable, "-m", "voicebot", "run"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "SENTRY_DSN": "not a dsn", "TELEGRAM_BOT_TOKEN": TOKEN},
        check=False,
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("voicebot: SENTRY_DSN:"), line
