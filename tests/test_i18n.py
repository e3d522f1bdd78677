"""The interface in Russian and English: the catalogs, plurals, numbers, and every flow."""

from __future__ import annotations

import gettext
import sqlite3
import string
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from aiogram import Bot, Dispatcher, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import Message, Update
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from voicebot import texts
from voicebot.bot import on_error
from voicebot.bot.locale import UserLocale
from voicebot.catalogs import LOCALES_DIR, Catalogs, build_i18n
from voicebot.db import upgrade_async
from voicebot.i18n import SUPPORTED, locale_for
from voicebot.models import Plan
from voicebot.quotas import Report, Standing

from .fakes import FakeBotAPI, SentMessage
from .media import encode_audio, long_speech, voice_note
from .test_cancel import answer_to, buttons, status
from .test_fairness import run_bot, text_of

SRC = Path(texts.__file__).parent
#: The keywords `make locales` extracts with.
KEYWORDS = {"_": None, "ngettext": (1, 2), "N_": None}
FIX = "run `make locales`, translate the new entries in locales/ru/LC_MESSAGES/messages.po"

Msgid = str | tuple[str, str]


def code_messages() -> dict[str, Msgid]:
    """Every message the code marks for translation, by its msgid."""
    found: dict[str, Msgid] = {}
    for _file, _line, message, _comments, _context in extract_from_dir(
        SRC, method_map=[("**.py", "python")], keywords=KEYWORDS
    ):
        if isinstance(message, tuple):
            found[message[0]] = (message[0], message[1])
        else:
            found[message] = message
    return found


def catalog(path: Path, locale: str | None = None) -> Catalog:
    """A .po or .pot file as Babel reads it."""
    with path.open("rb") as source:
        return read_po(source, locale=locale)


def po(locale: str) -> Path:
    """The catalog file of `locale`."""
    return LOCALES_DIR / locale / "LC_MESSAGES" / "messages.po"


def fields(text: str) -> set[str]:
    """The {placeholders} of a format string."""
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def test_the_code_has_messages_to_translate() -> None:
    """The extraction finds the texts module's messages (so the tests below check something)."""
    found = code_messages()
    assert len(found) > 100
    assert "Transcribing…" in found
    assert found["{day}: {count} recording, {length}"] == (
        "{day}: {count} recording, {length}",
        "{day}: {count} recordings, {length}",
    )


@pytest.mark.parametrize("name", ["messages.pot", *(f"{lang}.po" for lang in SUPPORTED)])
def test_the_catalogs_are_up_to_date_with_the_code(name: str) -> None:
    """Every message in the code is in the template and in each language's catalog."""
    path = LOCALES_DIR / name if name.endswith(".pot") else po(name.removesuffix(".po"))
    entries = catalog(path)
    stale = [
        msgid
        for key, msgid in code_messages().items()
        if (entry := entries.get(key)) is None
        or (entry.id if isinstance(msgid, tuple) else key) != msgid
    ]
    assert not stale, f"{path.name} lacks {len(stale)} message(s) of the code ({FIX}): {stale}"


def test_the_russian_plural_rule() -> None:
    """The catalog's Plural-Forms: one (1, 21), few (2-4, 22), many (5-20, 11-14, 111)."""
    ru = catalog(po("ru"), "ru")
    assert ru.num_plurals == 3
    plural = gettext.c2py(ru.plural_expr)
    numbers = (1, 2, 4, 5, 11, 12, 21, 22, 25, 111)
    assert [plural(n) for n in numbers] == [0, 1, 1, 2, 2, 2, 0, 1, 2, 2]


@pytest.mark.parametrize("locale", [lang for lang in SUPPORTED if lang != "en"])
def test_the_translations_are_complete(locale: str) -> None:
    """Every message is translated, not fuzzy, with its msgid's placeholders."""
    ru = catalog(po(locale), locale)
    problems: list[str] = []
    for key, msgid in code_messages().items():
        entry = ru.get(key)
        if entry is None:
            problems.append(f"missing: {key!r}")
            continue
        if entry.fuzzy:
            problems.append(f"fuzzy: {key!r}")
        if isinstance(msgid, tuple):
            forms = list(entry.string) if isinstance(entry.string, tuple) else [entry.string]
            wanted = fields(msgid[1])
            if len(forms) != ru.num_plurals:
                problems.append(f"needs {ru.num_plurals} plural forms: {key!r}")
        else:
            forms, wanted = [str(entry.string)], fields(msgid)
        for form in forms:
            if not form:
                problems.append(f"untranslated: {key!r}")
            elif fields(form) != wanted:
                problems.append(f"placeholders {sorted(fields(form))} != {sorted(wanted)}: {key!r}")
    assert not problems, (
        f"{len(problems)} problem(s) in the {locale} catalog ({FIX}):\n" + "\n".join(problems)
    )


def test_fuzzy_and_untranslated_entries_fall_back_to_english(tmp_path: Path) -> None:
    """The in-memory compilation leaves out fuzzy entries and plurals without their forms."""
    folder = tmp_path / "ru" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    (folder / "messages.po").write_text(
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=utf-8\\n"\n'
        '"Plural-Forms: nplurals=3; plural=(n%10==1 && n%100!=11 ? 0 : n%10>=2 && n%10<=4 && '
        '(n%100<10 || n%100>=20) ? 1 : 2);\\n"\n\n'
        '#, fuzzy\nmsgid "Cancel"\nmsgstr "Отмена"\n\n'
        'msgid "Cancelled."\nmsgstr "Отменено."\n\n'
        'msgid "{n} file"\nmsgid_plural "{n} files"\nmsgstr[0] ""\nmsgstr[1] ""\nmsgstr[2] ""\n\n'
        'msgid "{n} day"\nmsgid_plural "{n} days"\n'
        'msgstr[0] "{n} день"\nmsgstr[1] "{n} дня"\nmsgstr[2] "{n} дней"\n',
        encoding="utf-8",
    )
    loaded = Catalogs(path=tmp_path)
    assert loaded.gettext("Cancel", locale="ru") == "Cancel"
    assert loaded.gettext("Cancelled.", locale="ru") == "Отменено."
    assert loaded.gettext("{n} file", "{n} files", 5, locale="ru") == "{n} files"
    days = [loaded.gettext("{n} day", "{n} days", n, locale="ru") for n in (1, 3, 5, 21)]
    assert days == ["{n} день", "{n} дня", "{n} дней", "{n} день"]


def test_the_real_catalogs_load() -> None:
    """Both languages load from the repository's .po files, plural forms included."""
    assert set(SUPPORTED) <= set(build_i18n().available_locales)


# ------------------------------------------------------------------- plurals, numbers, dates
@pytest.fixture
def russian() -> Iterator[None]:
    """Texts in Russian within the test."""
    i18n = build_i18n()
    with i18n.context(), i18n.use_locale("ru"):
        yield


@pytest.fixture
def english() -> Iterator[None]:
    """Texts in English, from the catalogs, within the test."""
    i18n = build_i18n()
    with i18n.context(), i18n.use_locale("en"):
        yield


@pytest.mark.usefixtures("russian")
def test_russian_plurals() -> None:
    """1 минута, 2 минуты, 5 минут, 11 минут, 21 минута; записи and символы alike."""
    titles = [texts.payments.invoice_title(n) for n in (1, 2, 5, 11, 21, 22, 111)]
    assert titles == [
        "1 минута распознавания",
        "2 минуты распознавания",
        "5 минут распознавания",
        "11 минут распознавания",
        "21 минута распознавания",
        "22 минуты распознавания",
        "111 минут распознавания",
    ]
    assert [texts.too_many_active(n).split(" в очереди")[0] for n in (1, 2, 5)] == [
        "У вас уже 1 запись",
        "У вас уже 2 записи",
        "У вас уже 5 записей",
    ]
    assert "(21 символ)" in texts.as_file(21)
    assert "(1\xa0234 символа)" in texts.as_file(1234)  # a no-break space groups thousands


@pytest.mark.usefixtures("english")
def test_english_plurals() -> None:
    """The English forms from the same calls."""
    assert [texts.payments.invoice_title(n) for n in (1, 2)] == [
        "1 minute of transcription",
        "2 minutes of transcription",
    ]
    assert texts.too_many_active(1).startswith("You already have 1 recording waiting")
    assert "(1,234 characters)" in texts.as_file(1234)


@pytest.mark.usefixtures("russian")
def test_russian_numbers_and_durations() -> None:
    """Durations say мин and с; decimals take a comma; the queue place is a plain number."""
    assert [texts.duration(s) for s in (42, 65, 7380, 0)] == [
        "42 с",
        "1 мин 05 с",
        "2 ч 03 мин",
        "0 с",
    ]
    assert texts.admin.minutes(30) == "0,5 мин"
    assert texts.admin.minutes(1800) == "30 мин"
    assert texts.queued(3, 1) == "В очереди, место 3"
    assert texts.progress(0.456, 75) == "Распознаю… 45\xa0% (прошло 1:15)"
    assert texts.payments.package_button(1000, 50) == "1\xa0000 мин за 50 ⭐"


@pytest.mark.usefixtures("english")
def test_english_numbers_and_durations() -> None:
    """The English forms, unchanged from before the catalogs."""
    assert [texts.duration(s) for s in (42, 65, 7380)] == ["42 s", "1 min 05 s", "2 h 03 min"]
    assert texts.admin.minutes(30) == "0.5 min"
    assert texts.progress(0.456, 75) == "Transcribing… 45% (1:15 elapsed)"


def report() -> Report:
    """A /me report: a premium plan with an expiry, some use, three days of history."""
    resets = datetime(2026, 1, 6, 0, 0, tzinfo=UTC)
    standing = Standing(
        plan=Plan.premium,
        plan_expires_at=datetime(2026, 2, 1, 12, 0, tzinfo=UTC),
        allowance=600.0,
        used_today=65.0,
        reserved=0.0,
        balance=0.0,
        resets_at=resets,
    )
    days = [
        (date(2026, 1, 5) - timedelta(days=n), jobs, 30.0 * jobs)
        for n, jobs in enumerate([5, 2, 1])
    ]
    return Report(standing=standing, days=days)


@pytest.mark.usefixtures("russian")
def test_me_in_russian_names_days_and_months_in_russian() -> None:
    """/me: the plan, Russian weekdays and months, and the right form of записи."""
    lines = texts.me(report(), "UTC", purchases=False).splitlines()
    assert lines[0] == "Тариф: Премиум (до 1 февраля 2026, 12:00 UTC)"
    assert lines[1] == "Сегодня: использовано 1 мин 05 с из 10 мин 00 с; осталось 8 мин 55 с."
    assert lines[-3:] == [
        "сб 3 янв.: 1 запись, 30 с",
        "вс 4 янв.: 2 записи, 1 мин 00 с",
        "пн 5 янв.: 5 записей, 2 мин 30 с",
    ]


@pytest.mark.usefixtures("english")
def test_me_in_english() -> None:
    """The same report in English."""
    lines = texts.me(report(), "UTC", purchases=False).splitlines()
    assert lines[0] == "Plan: Premium (until 1 February 2026, 12:00 UTC)"
    assert lines[-1] == "Mon 5 Jan: 5 recordings, 2 min 30 s"
    assert lines[-3] == "Sat 3 Jan: 1 recording, 30 s"


def test_locale_for_prefers_the_choice_then_telegram_then_english() -> None:
    """/settings' choice wins; Telegram's code counts by its base language; others are English."""
    assert locale_for("en", "ru") == "en"
    assert locale_for(None, "ru-RU") == "ru"
    assert locale_for(None, "uk") == "en"
    assert locale_for("xx", None) == "en"
    assert texts.CANCEL == "Cancel"  # outside any context (the CLI): English


# ------------------------------------------------------------------ the error handler
async def test_the_error_handler_speaks_the_senders_language(api: FakeBotAPI) -> None:
    """A handler that fails: the one line the user gets is in their language."""
    router = Router()

    @router.message()
    async def broken(message: Message) -> None:
        raise RuntimeError("boom")

    dispatcher = Dispatcher()
    UserLocale(build_i18n()).setup(dispatcher)
    dispatcher.include_router(router)
    dispatcher.errors.register(on_error)
    server = TelegramAPIServer.from_base(api.url)
    bot = Bot(api.token, session=AiohttpSession(api=server))
    try:
        for user_id, language in ((9101, "ru"), (9102, "en")):
            sender = {"id": user_id, "is_bot": False, "first_name": "T", "language_code": language}
            update = Update.model_validate(
                {
                    "update_id": user_id,
                    "message": {
                        "message_id": 1,
                        "date": 0,
                        "chat": {"id": user_id, "type": "private"},
                        "from": sender,
                        "text": "hello",
                    },
                },
                context={"bot": bot},
            )
            await dispatcher.feed_update(bot, update)
    finally:
        await bot.session.close()
    assert [m.text for m in api.messages(9101)] == [
        "Извините, при распознавании у меня что-то пошло не так. Пожалуйста, пришлите запись "
        "ещё раз позже."
    ]
    assert [m.text for m in api.messages(9102)] == [texts.FAILED]


# ------------------------------------------------------------------ the real bot
RU, EN, CHOSE_EN, ADMIN = 9201, 9202, 9203, 9209


@pytest.fixture(scope="module")
def notes(corpus: Path) -> list[bytes]:
    """Short voice notes (3-4.5 s) of English speech."""
    names = ("librispeech_alif_another_door.wav", "librispeech_alif_i_tell_you.wav")
    return [voice_note(corpus / "en" / name) for name in names]


@pytest.fixture(scope="module")
def long_note(corpus: Path) -> bytes:
    """About 150 s of speech: it holds the one slot while the others queue."""
    return encode_audio(np.concatenate([long_speech(corpus)] * 3))


def ru(name: str) -> str:
    """The Russian of a fixed text."""
    i18n = build_i18n()
    with i18n.context(), i18n.use_locale("ru"):
        value = getattr(texts, name)
    assert isinstance(value, str)
    return value


def menu(api: FakeBotAPI, language_code: str = "", **scope: object) -> dict[str, str]:
    """A command menu as set: command → description."""
    found = api.commands(scope=scope or None, language_code=language_code)
    return {c["command"]: c["description"] for c in found}


def last_text(api: FakeBotAPI, chat_id: int) -> str:
    """The text of the bot's last message in a chat."""
    sent = api.messages(chat_id)
    return (sent[-1].text or "") if sent else ""


def shown(message: SentMessage) -> list[str]:
    """Every text a status message showed, oldest first."""
    return [*message.edits, message.text or ""]


async def seed_choice(workdir: Path, user_id: int, ui_language: str) -> None:
    """A user who chose an interface language in /settings (before the bot starts)."""
    database = workdir / "data" / "voicebot.db"
    database.parent.mkdir(parents=True, exist_ok=True)
    await upgrade_async(f"sqlite+aiosqlite:///{database}")
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute(
            "INSERT INTO users (id, first_name, created_at, last_seen_at, plan, ui_language)"
            " VALUES (?, 'T', '2026-11-27', '2026-11-27', 'free', ?)",
            (user_id, ui_language),
        )


async def test_a_russian_user_gets_russian_in_every_flow(
    api: FakeBotAPI,
    tmp_path: Path,
    model_cache: Path,
    notes: list[bytes],
    long_note: bytes,
) -> None:
    """Commands, menus, statuses, the Cancel button, a refusal and a transcript in Russian; an
    English user and one who chose English in /settings get English in the same run."""
    api.set_user(RU, language_code="ru")
    api.set_user(CHOSE_EN, language_code="ru")
    api.set_user(EN, language_code="en")
    api.set_user(ADMIN, language_code="en")
    await seed_choice(tmp_path, CHOSE_EN, "en")
    api.send_text(ADMIN, "/start")  # the admin's chat exists, so the bot can set its menu
    bot = await run_bot(
        api,
        tmp_path,
        model_cache,
        DAILY_QUOTA_SECONDS="30",
        USER_MAX_ACTIVE_JOBS="10",
        ADMIN_IDS=str(ADMIN),
    )
    try:
        # The menus: Russian for Russian users, English by default and for English users.
        russian_menu = menu(api, "ru")
        assert list(russian_menu) == [
            "start",
            "help",
            "me",
            "settings",
            "language",
            "format",
            "privacy",
            "forget",
        ]
        assert russian_menu["help"] == "Как пользоваться ботом"
        assert menu(api)["help"] == menu(api, "en")["help"] == "How to use the bot"
        groups = menu(api, "ru", type="all_group_chats")
        assert groups == {
            "transcribe": "Расшифровать запись, на которую вы отвечаете",
            "settings": "Как бот работает в этом чате",
            "language": "Язык записей в этом чате",
            "help": "Как пользоваться ботом",
        }
        assert menu(api, type="all_group_chats")["transcribe"] == (
            "Transcribe the recording you reply to"
        )
        admins = menu(api, "ru", type="chat", chat_id=ADMIN)
        assert admins["stats"] == "Сегодня: задания, аудио, попадания в кэш, сбои, очередь"
        assert admins["help"] == "Как пользоваться ботом"

        # Commands and a file that is not media.
        api.send_text(RU, "/start")
        await api.wait_for(lambda: last_text(api, RU).startswith("Привет!"), 20, "/start")
        assert ru("HELP") in last_text(api, RU)
        assert "На сегодня у вас осталось 30 с аудио" in last_text(api, RU)
        api.send_text(RU, "/help")
        await api.wait_for(lambda: last_text(api, RU) == ru("HELP"), 20, "/help")
        api.send_text(RU, "/me")
        await api.wait_for(lambda: last_text(api, RU).startswith("Тариф: Бесплатный"), 20, "/me")
        assert "Последние 7 дней:" in last_text(api, RU)
        assert "0 записей, 0 с" in last_text(api, RU)
        api.send_document(RU, b"%PDF-1.4", file_name="notes.pdf", mime_type="application/pdf")
        await api.wait_for(lambda: last_text(api, RU) == ru("NOT_MEDIA"), 20, "not media")
        api.send_text(EN, "/start")
        await api.wait_for(lambda: last_text(api, EN).startswith("Hi! "), 20, "English /start")
        api.send_text(CHOSE_EN, "/help")
        await api.wait_for(lambda: last_text(api, CHOSE_EN) == texts.HELP, 20, "chosen English")

        # The admin's long recording holds the one slot; the Russian user's notes queue.
        long_job = api.send_voice(ADMIN, long_note, duration=150)
        await api.wait_for(lambda: text_of(api, ADMIN, long_job) == texts.TRANSCRIBING, 30)
        first = api.send_voice(RU, notes[0], duration=4)
        await api.wait_for(lambda: text_of(api, RU, first) == "В очереди, место 1", 30, "queued")
        second = api.send_voice(RU, notes[1], duration=4)
        await api.wait_for(lambda: text_of(api, RU, second) == "В очереди, место 2", 30)
        # The English user's first job goes before the Russian user's second (turns): the
        # position loop moves the Russian status back, in Russian.
        english = api.send_voice(EN, notes[0], duration=4)
        await api.wait_for(lambda: text_of(api, EN, english) == "Queued, position 2", 30)
        await api.wait_for(lambda: text_of(api, RU, second) == "В очереди, место 3", 30)
        (label,) = [
            button["text"]
            for row in status(api, RU, first).reply_markup["inline_keyboard"]
            for button in row
        ]
        assert label == "Отменить"

        # Cancel: the passing note and the status in Russian; the next job moves up, in Russian.
        (data,) = buttons(status(api, RU, first))
        pressed = api.press_button(RU, status(api, RU, first).message_id, data)
        assert await answer_to(api, pressed) == {"text": ru("CANCEL_DONE"), "show_alert": False}
        await api.wait_for(lambda: text_of(api, RU, first) == "Отменено.", 20, "cancelled")
        await api.wait_for(lambda: text_of(api, EN, english) == "Queued, position 1", 30)
        await api.wait_for(lambda: text_of(api, RU, second) == "В очереди, место 2", 30)

        # A refusal: the quota (30 s a day, 4 s reserved) does not fit a minute.
        refused = api.send_voice(RU, notes[0], duration=60)
        await api.wait_for(lambda: text_of(api, RU, refused) != "", 30, "the refusal")
        assert text_of(api, RU, refused).startswith(
            "Эта запись длится 1 мин 00 с, а у вас на сегодня осталось 26 с. Дневной лимит "
            "обновится в 00:00 UTC (через "
        )

        # The admin (English) cancels the long job; the queued ones run and are answered.
        (data,) = buttons(status(api, ADMIN, long_job))
        pressed = api.press_button(ADMIN, status(api, ADMIN, long_job).message_id, data)
        assert (await answer_to(api, pressed))["text"] == texts.CANCEL_DONE
        await api.wait_for(lambda: text_of(api, ADMIN, long_job) == texts.CANCELLED, 30)
        await api.wait_for(lambda: "door" in text_of(api, EN, english).lower(), 120, "English")
        await api.wait_for(lambda: "poison" in text_of(api, RU, second).lower(), 120, "Russian")
        assert "Распознаю…" in shown(status(api, RU, second))
        assert "Transcribing…" in shown(status(api, EN, english))
        assert not any(
            "Распознаю" in text or "очереди" in text for text in shown(status(api, EN, english))
        )
    finally:
        await bot.stop()
