"""Recognition language: /language and its keyboard, and detection restricted to a few languages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from voicebot import texts
from voicebot.audio import decode
from voicebot.cache import language_setting
from voicebot.config import Settings
from voicebot.languages import BadLanguageError, EngineLanguage, for_engine, is_setting, parse

from .botproc import BotProcess, bot_database
from .fakes import FakeBotAPI, SentMessage
from .media import encode_audio
from .test_fairness import answered, job_ids, rows, text_of

USER, OTHER = 7301, 7302
#: The first 2.5 s of a German FLEURS clip ("dieses sediment …"): Whisper base hears English in
#: it ("This is sediment.", about 93 % sure); detection among German and Russian gets it right.
SHORT_GERMAN = ("de/fleurs_de-005.ogg", 2.5, "dieses sediment")


@pytest.fixture(scope="module")
def short_german(corpus: Path) -> bytes:
    """The short German clip as a voice note (OGG/Opus)."""
    name, seconds, _ = SHORT_GERMAN
    return encode_audio(decode(corpus / name, max_seconds=60)[: int(seconds * 16000)])


def words(text: str) -> list[str]:
    """Lower-case words without punctuation."""
    return re.findall(r"\w+", text.lower())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate (edit distance over the reference's words)."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[-1] / max(1, len(ref))


def buttons(message: SentMessage) -> list[str]:
    """Callback data of a message's inline buttons."""
    found = (message.reply_markup or {}).get("inline_keyboard", [])
    return [str(button.get("callback_data")) for row in found for button in row]


def labels(message: SentMessage) -> list[str]:
    """Labels of a message's inline buttons."""
    found = (message.reply_markup or {}).get("inline_keyboard", [])
    return [str(button.get("text")) for row in found for button in row]


def reply_to(api: FakeBotAPI, chat_id: int, message_id: int) -> SentMessage:
    """The bot's one reply to a message."""
    (found,) = [m for m in api.messages(chat_id) if m.reply_to == message_id]
    return found


async def replied(api: FakeBotAPI, chat_id: int, message_id: int) -> SentMessage:
    """Wait for the bot's reply to a message (a command's answer, not a job's)."""
    await api.wait_for(
        lambda: any(m.reply_to == message_id for m in api.messages(chat_id)), 20, "a reply"
    )
    return reply_to(api, chat_id, message_id)


async def answered_with(api: FakeBotAPI, chat_id: int, after: int) -> SentMessage:
    """Wait for the first message the bot sends (not as a reply) after message id `after`."""
    await api.wait_for(
        lambda: any(m.message_id > after for m in api.messages(chat_id)), 20, "an answer"
    )
    return next(m for m in api.messages(chat_id) if m.message_id > after)


async def query_answer(api: FakeBotAPI, query_id: str) -> dict[str, object]:
    """The bot's answerCallbackQuery parameters for a press."""
    await api.wait_for(lambda: api.query_answer(query_id) is not None, 20, "the press answered")
    answer = api.query_answer(query_id)
    assert answer is not None
    return answer.params


def test_a_setting_is_parsed_from_what_people_type() -> None:
    """A code, "auto", or several codes (spaces or commas) meaning detection among them."""
    assert parse("de") == "de"
    assert parse(" AUTO ") == "auto"
    assert parse("en ru") == parse("ru,en") == parse("auto:en,ru") == "auto:en,ru"
    assert parse("en, ru, en") == "auto:en,ru"
    assert parse("auto uk") == "uk"
    assert parse("auto:") == "auto"
    for bad, code in (("xx", "xx"), ("en klingon", "klingon"), ("", None), (", ;", None)):
        with pytest.raises(BadLanguageError) as raised:
            parse(bad)
        assert raised.value.code == code, bad
    with pytest.raises(BadLanguageError):
        parse("en ru de es fr it pt uk tr pl nl")  # eleven
    assert all(is_setting(value) for value in ("auto:en,ru", "de", "auto"))
    assert not any(is_setting(value) for value in ("auto:ru,en", "zz", "", "de,en"))


def test_the_engine_and_the_cache_follow_the_setting_and_the_task() -> None:
    """The engine is asked what the setting says; the cache key tells settings and tasks apart."""
    assert for_engine("auto") == EngineLanguage(None, ())
    assert for_engine("de") == EngineLanguage("de", ())
    assert for_engine("auto:en,ru") == EngineLanguage(None, ("en", "ru"))
    defaults = Settings(whisper_allowed_languages="en,ru", _env_file=None)
    assert language_setting(defaults) == "auto:en,ru"
    assert language_setting(defaults, language="auto") == "auto"
    assert language_setting(defaults, language="de") == "de"
    assert language_setting(defaults, language="de", task="translate") == "de+translate"


async def test_restricting_detection_fixes_a_short_clip_the_model_misdetects(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, short_german: bytes, database_url: str
) -> None:
    """Unrestricted, base takes the short German clip for English; after `/language de ru` the
    same clip (a cache miss: another setting) is German and transcribed right."""
    bot = BotProcess(api, tmp_path, model_cache, WHISPER_MODEL="base", **bot_database(database_url))
    await bot.start()
    try:
        reference = SHORT_GERMAN[2]
        first = api.send_voice(USER, short_german, duration=3)
        await api.wait_for(lambda: bool(text_of(api, USER, first)), 90, "the first transcript")
        await api.wait_for(
            lambda: rows(database_url, "SELECT status FROM jobs") == [("done",)], 30, "done"
        )
        ((language, setting),) = rows(
            database_url, "SELECT language, language_setting FROM transcripts"
        )
        assert (language, setting) == ("en", "auto")
        assert wer(reference, text_of(api, USER, first)) > 0.5  # "This is sediment."

        command = api.send_text(USER, "/language de ru")
        reply = await replied(api, USER, command)
        assert reply.text == texts.outputs.language_set("Detect among: Deutsch (de), Русский (ru)")
        assert rows(database_url, f"SELECT language FROM chats WHERE id = {USER}") == [
            ("auto:de,ru",)
        ]

        second = api.send_voice(USER, short_german, duration=3)
        await answered(api, USER, second, "sediment")
        job = job_ids(database_url)[USER, second]
        assert rows(database_url, f"SELECT language FROM jobs WHERE id = {job}") == [
            ("auto:de,ru",)
        ]
        found = rows(
            database_url,
            "SELECT t.language, t.language_setting FROM transcripts t"
            f" JOIN jobs j ON j.transcript_id = t.id WHERE j.id = {job}",
        )
        assert found == [("de", "auto:de,ru")]
        assert wer(reference, text_of(api, USER, second)) <= 0.5
        assert rows(database_url, "SELECT count(*) FROM usage WHERE cached") == [(0,)]
    finally:
        await bot.stop()


async def test_the_keyboard_sets_the_language_and_bad_input_gets_one_line(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, database_url: str
) -> None:
    """/language shows the setting and the buttons; a press changes it (committed before the
    answer); unknown codes, garbage and crafted button data get one line and change nothing."""
    bot = BotProcess(
        api, tmp_path, model_cache, WHISPER_MODEL="tiny.en", **bot_database(database_url)
    )
    await bot.start()
    try:
        last = api.send_text(USER, "/language")
        menu = await answered_with(api, USER, 0)
        assert "Default of this bot: Detect automatically" in (menu.text or "")
        assert buttons(menu)[:4] == ["lang:auto", "lang:en", "lang:ru", "lang:de"]
        assert labels(menu)[0] == "✓ " + texts.outputs.language_auto()
        assert {"Deutsch", "Español", "Русский"} <= set(labels(menu))

        pressed = api.press_button(USER, menu.message_id, "lang:es")
        assert await query_answer(api, pressed) == {
            "text": texts.outputs.language_set("Español (es)")
        }
        assert rows(database_url, f"SELECT language FROM chats WHERE id = {USER}") == [("es",)]
        await api.wait_for(lambda: "✓ Español" in labels(menu), 10, "the tick moved")
        assert "Recognition language: Español (es)" in (menu.text or "")

        crafted = api.press_button(USER, menu.message_id, "lang:zz", stale=True)
        assert (await query_answer(api, crafted))["show_alert"] is True
        for typed, line in (
            ("/language xx", texts.outputs.language_unknown("xx")),
            ("/language en,", texts.outputs.language_set("English (en)")),
            ("/language ,", texts.outputs.language_usage(10)),
            ("/language uk", texts.outputs.language_set("Українська (uk)")),
        ):
            last = api.send_text(USER, typed)
            assert (await replied(api, USER, last)).text == line, typed
        assert rows(database_url, f"SELECT language FROM chats WHERE id = {USER}") == [("uk",)]

        # Another user's setting is their own.
        api.send_text(OTHER, "/language auto")
        await api.wait_for(
            lambda: (
                rows(database_url, f"SELECT language FROM chats WHERE id = {OTHER}") == [("auto",)]
            ),
            10,
        )
        assert rows(database_url, f"SELECT language FROM chats WHERE id = {USER}") == [("uk",)]
    finally:
        await bot.stop()
