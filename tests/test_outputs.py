"""Output buttons under a transcript (Timestamps, SRT, VTT, Translate, Details) and /format."""

from __future__ import annotations

import io
import itertools
import re
from pathlib import Path

import pytest
import srt
import webvtt

from voicebot import texts

from .botproc import BotProcess, bot_database
from .fakes import FakeBotAPI, SentMessage
from .media import voice_note
from .test_fairness import execute, job_ids, rows
from .test_language import buttons, query_answer, words

USER, OTHER = 7401, 7402
GERMAN = "de/fleurs_de-004.ogg"  # "die höhle befindet sich auf der spitze eines der berge …"
#: Words Whisper base's translation of GERMAN reliably has ("… mountains north of Mecca …").
ENGLISH_WORDS = {"mountains", "north", "mecca", "world"}
ENGLISH = "en/librispeech_alif_another_door.wav"  # "And he walked immediately out of …"


@pytest.fixture(scope="module")
def german(corpus: Path) -> bytes:
    """A 10 s German FLEURS clip as a voice note."""
    return voice_note(corpus / GERMAN)


@pytest.fixture(scope="module")
def english(corpus: Path) -> bytes:
    """A 4 s English clip as a voice note."""
    return voice_note(corpus / ENGLISH)


def replies(api: FakeBotAPI, chat_id: int, message_id: int) -> list[SentMessage]:
    """The bot's replies to a message, oldest first."""
    return [m for m in api.messages(chat_id) if m.reply_to == message_id and not m.deleted]


async def delivered(
    api: FakeBotAPI, where: Path | str, chat_id: int, message_id: int
) -> SentMessage:
    """Wait until the message's job is done; its transcript message (the status message)."""

    def done() -> bool:
        found = rows(
            where,
            f"SELECT status FROM jobs WHERE chat_id = {chat_id} AND message_id = {message_id}",
        )
        return found == [("done",)]

    await api.wait_for(done, 120, "the job done")
    ((status_message_id,),) = rows(
        where,
        f"SELECT status_message_id FROM jobs WHERE chat_id = {chat_id}"
        f" AND message_id = {message_id}",
    )
    (found,) = [m for m in api.messages(chat_id) if m.message_id == status_message_id]
    return found


async def new_replies(
    api: FakeBotAPI, chat_id: int, message_id: int, count: int
) -> list[SentMessage]:
    """Wait for `count` replies to a message; them."""
    await api.wait_for(lambda: len(replies(api, chat_id, message_id)) >= count, 60, "replies")
    return replies(api, chat_id, message_id)


def stored_text(where: Path | str, job_id: int) -> str:
    """The transcript text a job delivered."""
    ((text,),) = rows(
        where,
        f"SELECT t.text FROM transcripts t JOIN jobs j ON j.transcript_id = t.id"
        f" WHERE j.id = {job_id}",
    )
    return str(text)


async def test_output_buttons_render_the_stored_transcript_and_translate_it(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, german: bytes, database_url: str
) -> None:
    """A German transcript carries the five buttons; SRT and VTT parse and hold its text,
    Timestamps marks each segment, Details names the language, and Translate runs a job of its
    own (one, however often pressed) whose English answer replies to the transcript."""
    bot = BotProcess(api, tmp_path, model_cache, WHISPER_MODEL="base", **bot_database(database_url))
    await bot.start()
    try:
        sent = api.send_voice(USER, german, duration=10)
        transcript = await delivered(api, database_url, USER, sent)
        job = job_ids(database_url)[USER, sent]
        text = stored_text(database_url, job)
        assert transcript.text == text
        assert buttons(transcript) == [f"out:{job}:{a}" for a in ("ts", "srt", "vtt", "tr", "info")]

        # SRT and VTT: files replying to the transcript, parsed by their own libraries.
        for action, count in (("srt", 1), ("vtt", 2), ("ts", 3)):
            pressed = api.press_button(USER, transcript.message_id, f"out:{job}:{action}")
            assert await query_answer(api, pressed) == {"text": texts.outputs.output_sent()}
            await new_replies(api, USER, transcript.message_id, count)
        subtitles, captions, marked = replies(api, USER, transcript.message_id)
        assert subtitles.document is not None
        assert captions.document is not None
        assert subtitles.document.filename == f"transcript-{sent}.srt"
        assert captions.document.filename == f"transcript-{sent}.vtt"
        cues = list(srt.parse(subtitles.document.data.decode("utf-8")))
        assert words(" ".join(cue.content for cue in cues)) == words(text)
        assert all(a.start < a.end <= b.start for a, b in itertools.pairwise(cues))
        vtt = webvtt.from_buffer(io.StringIO(captions.document.data.decode("utf-8")))
        assert words(" ".join(caption.text for caption in vtt.captions)) == words(text)
        assert len(vtt.captions) == len(cues)
        lines = (marked.text or "").splitlines()
        assert lines
        assert all(re.fullmatch(r"\[\d+:\d\d\] \S.*", line) for line in lines)
        assert lines[0].startswith("[0:0")
        assert words(" ".join(line.split("] ", 1)[1] for line in lines)) == words(text)

        details = api.press_button(USER, transcript.message_id, f"out:{job}:info")
        answer = await query_answer(api, details)
        assert answer["show_alert"] is True
        shown = str(answer["text"])
        for part in ("Language: Deutsch (de), ", "% sure", "Length: 10 s", "Processing time: "):
            assert part in shown, shown

        # Translate: a job of its own, accepted once however often pressed.
        first = api.press_button(USER, transcript.message_id, f"out:{job}:tr")
        assert await query_answer(api, first) == {
            "text": texts.outputs.translation_started(),
            "show_alert": False,
        }
        again = api.press_button(USER, transcript.message_id, f"out:{job}:tr")
        assert await query_answer(api, again) == {
            "text": texts.outputs.translation_pending(),
            "show_alert": False,
        }
        translation = await delivered(api, database_url, USER, transcript.message_id)
        assert translation.reply_to == transcript.message_id
        found = rows(
            database_url,
            "SELECT task, source_job_id, language, file_id, user_id FROM jobs"
            f" WHERE message_id = {transcript.message_id}",
        )
        ((file_id,),) = rows(database_url, f"SELECT file_id FROM jobs WHERE id = {job}")
        assert found == [("translate", job, "de", file_id, USER)]
        assert set(words(translation.text or "")) >= ENGLISH_WORDS, translation.text
        getfiles = [c for c in api.calls_of("getFile") if c.params.get("file_id") == file_id]
        assert len(getfiles) == 2  # downloaded again: the audio is never kept
        ((setting, language),) = rows(
            database_url,
            "SELECT t.language_setting, t.language FROM transcripts t JOIN jobs j"
            f" ON j.transcript_id = t.id WHERE j.message_id = {transcript.message_id}",
        )
        assert (setting, language) == ("de+translate", "de")
        translation_job = job_ids(database_url)[USER, transcript.message_id]
        # The translation has its own buttons, without Translate.
        assert buttons(translation) == [
            f"out:{translation_job}:{a}" for a in ("ts", "srt", "vtt", "info")
        ]
    finally:
        await bot.stop()


async def test_crafted_and_stale_presses_get_an_alert_and_nothing_else(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, english: bytes, database_url: str
) -> None:
    """Buttons work only on their own transcript message in its chat: another chat, another
    message, another job's id and garbage get a short alert; a deleted transcript says so."""
    bot = BotProcess(
        api, tmp_path, model_cache, WHISPER_MODEL="tiny.en", **bot_database(database_url)
    )
    await bot.start()
    try:
        mine = api.send_voice(USER, english, duration=4)
        theirs = api.send_voice(OTHER, english, duration=4)
        transcript = await delivered(api, database_url, USER, mine)
        other = await delivered(api, database_url, OTHER, theirs)
        ids = job_ids(database_url)
        job, other_job = ids[USER, mine], ids[OTHER, theirs]
        # English: no Translate button.
        assert buttons(transcript) == [f"out:{job}:{a}" for a in ("ts", "srt", "vtt", "info")]
        before = len(api.calls_of("sendDocument")) + len(api.calls_of("sendMessage"))

        presses = [
            # USER's job pressed from OTHER's chat, on OTHER's transcript message
            api.press_button(OTHER, other.message_id, f"out:{job}:srt", stale=True),
            # OTHER's job pressed on USER's own transcript message
            api.press_button(USER, transcript.message_id, f"out:{other_job}:srt", stale=True),
            # USER's job on another of USER's messages (their voice message's id is no status)
            api.press_button(USER, mine, f"out:{job}:srt", stale=True),
            # a job that does not exist, and garbage
            api.press_button(USER, transcript.message_id, f"out:{job + 100}:vtt", stale=True),
            api.press_button(USER, transcript.message_id, "out:abc:srt", stale=True),
            api.press_button(USER, transcript.message_id, f"out:{job}:zip", stale=True),
            api.press_button(USER, transcript.message_id, "out:", stale=True),
            # Translate on an English transcript
            api.press_button(USER, transcript.message_id, f"out:{job}:tr", stale=True),
        ]
        for pressed in presses:
            answer = await query_answer(api, pressed)
            assert answer["show_alert"] is True
            assert answer["text"] in (
                texts.outputs.output_not_here(),
                texts.outputs.output_already_english(),
            )
        assert len(api.calls_of("sendDocument")) + len(api.calls_of("sendMessage")) == before
        assert rows(database_url, "SELECT count(*) FROM jobs") == [(2,)]

        # The transcript deleted meanwhile (what /forget and retention do to the job).
        execute(database_url, f"UPDATE jobs SET transcript_id = NULL WHERE id = {job}")
        gone = api.press_button(USER, transcript.message_id, f"out:{job}:srt")
        assert await query_answer(api, gone) == {
            "text": texts.outputs.output_gone(),
            "show_alert": True,
        }
        assert len(api.calls_of("sendDocument")) == 0
    finally:
        await bot.stop()


async def test_format_sets_the_default_output_of_a_private_chat(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, english: bytes, database_url: str
) -> None:
    """/format srt: the answer is an .srt file under a short status line; /format timestamps:
    the [m:ss] text; the buttons set it too; anything else gets the usage line."""
    bot = BotProcess(
        api, tmp_path, model_cache, WHISPER_MODEL="tiny.en", **bot_database(database_url)
    )
    await bot.start()
    try:
        command = api.send_text(USER, "/format srt")
        await api.wait_for(lambda: bool(replies(api, USER, command)), 20, "the /format reply")
        assert replies(api, USER, command)[0].text == texts.outputs.format_set("srt")
        assert rows(database_url, f"SELECT output_format FROM users WHERE id = {USER}") == [
            ("srt",)
        ]

        sent = api.send_voice(USER, english, duration=4)
        status = await delivered(api, database_url, USER, sent)
        assert status.text == texts.outputs.srt_attached()
        (document,) = [m for m in replies(api, USER, sent) if m.document is not None]
        assert document.document is not None
        assert document.document.filename == f"transcript-{sent}.srt"
        cues = list(srt.parse(document.document.data.decode("utf-8")))
        assert "another door" in " ".join(cue.content for cue in cues).lower()
        assert rows(database_url, f"SELECT output FROM jobs WHERE message_id = {sent}") == [
            ("srt",)
        ]

        menu_command = api.send_text(USER, "/format")

        def menus() -> list[SentMessage]:
            return [m for m in api.messages(USER) if buttons(m)[:1] == ["fmt:text"]]

        await api.wait_for(lambda: bool(menus()), 20, "the /format menu")
        (menu,) = menus()
        assert "SRT subtitles file" in (menu.text or "")
        pressed = api.press_button(USER, menu.message_id, "fmt:timestamps")
        assert await query_answer(api, pressed) == {"text": texts.outputs.format_set("timestamps")}
        found = rows(database_url, f"SELECT output_format FROM users WHERE id = {USER}")
        assert found == [("timestamps",)]

        again = api.send_voice(USER, english, duration=4)  # a cache hit: same rendering
        status = await delivered(api, database_url, USER, again)
        assert re.fullmatch(r"\[0:0\d\] .*another door.*", status.text or "", re.I | re.S)

        bad = api.send_text(USER, "/format pdf")
        await api.wait_for(lambda: bool(replies(api, USER, bad)), 20, "the usage line")
        assert replies(api, USER, bad)[0].text == texts.outputs.format_usage()
        assert menu_command < bad
    finally:
        await bot.stop()
