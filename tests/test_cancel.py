"""Cancel: the status message's button stops a queued or running job; others are refused."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest

from voicebot import texts

from .botproc import bot_database
from .fakes import FakeBotAPI, SentMessage
from .media import encode_audio, long_speech, voice_note
from .test_fairness import answered, execute, job_ids, rows, run_bot, text_of
from .test_polling import log_events

CLIPS = {
    "another door": "librispeech_alif_another_door.wav",
    "not poison": "librispeech_alif_i_tell_you.wav",
    "testing routine": "librispeech_alif_testing_routine.wav",
}
USER, OTHER, ADMIN = 7201, 7202, 7209
#: How soon a cancelled transcription must give its slot to the next job (issue 7, section 8).
STOP_WITHIN = 2.0


@pytest.fixture(scope="module")
def notes(corpus: Path) -> dict[str, bytes]:
    """Voice notes of short clips (3-4.5 s), by a phrase each transcript contains."""
    return {phrase: voice_note(corpus / "en" / name) for phrase, name in CLIPS.items()}


@pytest.fixture(scope="module")
def long_notes(corpus: Path) -> list[bytes]:
    """Three different voice notes of about 150 s: tiny.en needs several seconds for each, so
    each holds the one slot while it is cancelled (and none is a transcript-cache hit)."""
    samples = np.concatenate([long_speech(corpus)] * 3)
    return [encode_audio(np.roll(samples, 16000 * (7 * n + 1))) for n in range(3)]


def status(api: FakeBotAPI, chat_id: int, message_id: int) -> SentMessage:
    """The one status message (or result) the bot keeps for a user's message."""
    (found,) = [m for m in api.messages(chat_id) if m.reply_to == message_id and not m.deleted]
    return found


def buttons(message: SentMessage) -> list[str]:
    """The callback data of the message's inline buttons (none once they were removed)."""
    rows_ = (message.reply_markup or {}).get("inline_keyboard", [])
    return [str(button.get("callback_data")) for row in rows_ for button in row]


def file_id_of(where: Path | str, job_id: int) -> str:
    """The Telegram file id of a job's recording (`where`: as for `rows`)."""
    ((file_id,),) = rows(where, f"SELECT file_id FROM jobs WHERE id = {job_id}")
    return str(file_id)


def downloads_of(api: FakeBotAPI, file_id: str) -> list[float]:
    """When the bot asked for the file (getFile), oldest first."""
    return [c.at for c in api.calls_of("getFile") if c.params.get("file_id") == file_id]


async def answer_to(api: FakeBotAPI, query_id: str) -> dict[str, object]:
    """The bot's answerCallbackQuery parameters for a press."""
    await api.wait_for(lambda: api.query_answer(query_id) is not None, 20, "the press answered")
    answer = api.query_answer(query_id)
    assert answer is not None
    return answer.params


async def shows(api: FakeBotAPI, chat_id: int, message_id: int, text: str) -> None:
    """Wait until the status of a user's message shows `text`."""
    await api.wait_for(lambda: text_of(api, chat_id, message_id) == text, 30, repr(text))


async def transcribing(api: FakeBotAPI, chat_id: int, message_id: int) -> None:
    """Wait for a progress edit ("Transcribing… 20% …"): the transcription is under way."""
    await api.wait_for(lambda: "%" in text_of(api, chat_id, message_id), 60, "a progress edit")


def cancelled_elsewhere(database_url: str, job_id: int) -> None:
    """What another bot process's cancel does: the conditional update, in the database."""
    execute(
        database_url,
        "UPDATE jobs SET status = 'cancelled', finished_at = CURRENT_TIMESTAMP"
        f" WHERE id = {job_id} AND status IN ('queued', 'running')",
    )


@pytest.mark.exclusive  # STOP_WITHIN: timed on a machine no busier than a serial run's
async def test_cancel_a_queued_job_a_running_one_and_one_cancelled_elsewhere(
    api: FakeBotAPI,
    tmp_path: Path,
    model_cache: Path,
    notes: dict[str, bytes],
    long_notes: list[bytes],
    database_url: str,
) -> None:
    """A queued job never starts; a running one stops within 2 s and the next job starts; so
    does one cancelled by another process. Nothing of theirs is stored or charged."""
    bot = await run_bot(
        api, tmp_path, model_cache, USER_MAX_ACTIVE_JOBS="10", **bot_database(database_url)
    )
    first = api.send_voice(USER, long_notes[0], duration=150)
    await shows(api, USER, first, texts.TRANSCRIBING)
    queued = api.send_voice(USER, notes["another door"], duration=4)
    second = api.send_voice(USER, long_notes[1], duration=150)
    last = api.send_voice(USER, notes["not poison"], duration=4)
    for place, message_id in enumerate((queued, second, last), 1):
        await shows(api, USER, message_id, f"Queued, position {place}")
    ids = job_ids(database_url)
    job = {message_id: ids[USER, message_id] for message_id in (first, queued, second, last)}
    for message_id, job_id in job.items():
        assert buttons(status(api, USER, message_id)) == [f"cancel:{job_id}"]

    # A queued job: cancelled at once, and the jobs behind it move up.
    pressed = api.press_button(USER, status(api, USER, queued).message_id, f"cancel:{job[queued]}")
    assert await answer_to(api, pressed) == {"text": texts.CANCEL_DONE, "show_alert": False}
    await shows(api, USER, queued, texts.CANCELLED)
    assert buttons(status(api, USER, queued)) == []
    await shows(api, USER, second, "Queued, position 1")
    await shows(api, USER, last, "Queued, position 2")
    assert buttons(status(api, USER, last)) == [f"cancel:{job[last]}"]

    # The running job, mid-transcription (its progress edits keep the button).
    await transcribing(api, USER, first)
    assert buttons(status(api, USER, first)) == [f"cancel:{job[first]}"]
    pressed_at = time.monotonic()
    pressed = api.press_button(USER, status(api, USER, first).message_id, f"cancel:{job[first]}")
    second_file = file_id_of(database_url, job[second])
    await api.wait_for(lambda: bool(downloads_of(api, second_file)), 10, "the next job")
    stopped = downloads_of(api, second_file)[0] - pressed_at
    assert stopped < STOP_WITHIN, f"the next job started {stopped:.2f} s after the press"
    assert await answer_to(api, pressed) == {"text": texts.CANCEL_DONE, "show_alert": False}
    await shows(api, USER, first, texts.CANCELLED)
    assert buttons(status(api, USER, first)) == []

    # Cancelled by another process: this one notices in the database and stops it too.
    await transcribing(api, USER, second)
    cancelled_at = time.monotonic()
    cancelled_elsewhere(database_url, job[second])
    last_file = file_id_of(database_url, job[last])
    await api.wait_for(lambda: bool(downloads_of(api, last_file)), 10, "the last job")
    noticed = downloads_of(api, last_file)[0] - cancelled_at
    assert noticed < STOP_WITHIN, f"the last job started {noticed:.2f} s after the cancel"
    await shows(api, USER, second, texts.CANCELLED)
    assert buttons(status(api, USER, second)) == []

    await answered(api, USER, last, "not poison")
    # The transcript carries its output buttons, no Cancel.
    assert not [data for data in buttons(status(api, USER, last)) if data.startswith("cancel:")]
    assert await bot.stop() == 0, bot.output()
    print(f"\npress -> next job's getFile {stopped:.2f} s; database -> {noticed:.2f} s")

    states = dict(rows(database_url, "SELECT id, status FROM jobs"))
    assert states == {
        job[first]: "cancelled",
        job[queued]: "cancelled",
        job[second]: "cancelled",
        job[last]: "done",
    }
    assert not downloads_of(api, file_id_of(database_url, job[queued]))  # never started
    assert rows(database_url, "SELECT job_id FROM usage") == [(job[last],)]  # nothing else charged
    assert rows(database_url, "SELECT COUNT(*) FROM transcripts") == [(1,)]
    assert rows(database_url, "SELECT COUNT(*) FROM jobs WHERE finished_at IS NULL") == [(0,)]
    stops = {int(str(e["job_id"])): e["running"] for e in log_events(bot, "job_cancelled")}
    assert stops == {job[first]: True, job[queued]: False, job[second]: True}
    assert [int(str(e["job_id"])) for e in log_events(bot, "job_transcribed")] == [job[last]]


async def test_only_the_sender_or_an_admin_may_cancel_and_a_late_press_is_told(
    api: FakeBotAPI,
    tmp_path: Path,
    model_cache: Path,
    notes: dict[str, bytes],
    long_notes: list[bytes],
    database_url: str,
) -> None:
    """Someone else's press is refused with an alert; an admin's works; a press after the
    transcript says it is finished; a cancelled job stays cancelled across a SIGKILL."""
    env = {"ADMIN_IDS": str(ADMIN), "USER_MAX_ACTIVE_JOBS": "10", **bot_database(database_url)}
    bot = await run_bot(api, tmp_path, model_cache, **env)
    long = api.send_voice(USER, long_notes[2], duration=150)
    await shows(api, USER, long, texts.TRANSCRIBING)
    short = api.send_voice(USER, notes["testing routine"], duration=3)
    await shows(api, USER, short, "Queued, position 1")
    ids = job_ids(database_url)
    long_job, short_job = ids[USER, long], ids[USER, short]
    short_status = status(api, USER, short).message_id

    # Someone else (in a group where both see the message) may not cancel it.
    refused = api.press_button(OTHER, short_status, f"cancel:{short_job}", chat_id=USER)
    assert await answer_to(api, refused) == {"text": texts.CANCEL_NOT_YOURS, "show_alert": True}
    assert rows(database_url, f"SELECT status FROM jobs WHERE id = {short_job}") == [("queued",)]
    assert text_of(api, USER, short) == "Queued, position 1"
    assert buttons(status(api, USER, short)) == [f"cancel:{short_job}"]

    # An admin may.
    long_status = status(api, USER, long).message_id
    by_admin = api.press_button(ADMIN, long_status, f"cancel:{long_job}", chat_id=USER)
    assert await answer_to(api, by_admin) == {"text": texts.CANCEL_DONE, "show_alert": False}
    await shows(api, USER, long, texts.CANCELLED)

    # The short job runs and is answered; a press from an app that still shows the button
    # (the edit has not reached it yet) is told it is finished, and changes nothing.
    await answered(api, USER, short, "testing routine")
    transcript = text_of(api, USER, short)
    assert not [data for data in buttons(status(api, USER, short)) if data.startswith("cancel:")]
    with pytest.raises(ValueError, match="has no button"):
        api.press_button(USER, short_status, f"cancel:{short_job}")
    late = api.press_button(USER, short_status, f"cancel:{short_job}", stale=True)
    assert await answer_to(api, late) == {"text": texts.CANCEL_FINISHED, "show_alert": True}
    assert text_of(api, USER, short) == transcript
    assert rows(database_url, "SELECT job_id FROM usage") == [(short_job,)]
    # The job is marked done just after its transcript is shown; the late press changed nothing.
    await api.wait_for(
        lambda: (
            rows(database_url, f"SELECT status FROM jobs WHERE id = {short_job}") == [("done",)]
        ),
        10,
        "the short job done",
    )

    # A job cancelled while queued is final: after a SIGKILL and a start it never runs.
    busy = api.send_voice(USER, long_notes[0], duration=150)
    await shows(api, USER, busy, texts.TRANSCRIBING)
    dropped = api.send_voice(USER, notes["another door"], duration=4)
    await shows(api, USER, dropped, "Queued, position 1")
    dropped_job = job_ids(database_url)[USER, dropped]
    dropped_status = status(api, USER, dropped).message_id
    pressed = api.press_button(USER, dropped_status, f"cancel:{dropped_job}")
    assert await answer_to(api, pressed) == {"text": texts.CANCEL_DONE, "show_alert": False}
    assert await bot.stop(signal.SIGKILL) == -signal.SIGKILL
    again = await run_bot(api, tmp_path, model_cache, **env)
    busy_job = job_ids(database_url)[USER, busy]
    await api.wait_for(
        lambda: rows(database_url, f"SELECT status FROM jobs WHERE id = {busy_job}") == [("done",)],
        90,
        "the busy job answered",
    )
    assert await again.stop() == 0, again.output()
    (recovered,) = log_events(again, "jobs_recovered")
    # The cancelled one comes back only when the kill beat its "Cancelled" (jobs.told_at):
    # then it is told again, and still never runs.
    assert recovered["job_ids"] in ([busy_job], [busy_job, dropped_job]), recovered
    assert not downloads_of(api, file_id_of(database_url, dropped_job))
    assert text_of(api, USER, dropped) == texts.CANCELLED
    assert rows(database_url, f"SELECT status FROM jobs WHERE id = {dropped_job}") == [
        ("cancelled",)
    ]
