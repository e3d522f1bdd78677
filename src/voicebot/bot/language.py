"""/language: the recognition language of a private chat (its user's) or of a group.

`/language` shows the setting with a keyboard ("Detect automatically" and the most used
languages); `/language de` sets any Whisper code; `/language en ru` (or `en,ru`) detects only
among those. Anyone may look; in groups only administrators may change it. A change is
committed before the bot says so.
"""

from __future__ import annotations

from aiogram import Bot, F, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import (
    CallbackQuery,
    Chat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    User,
)

from voicebot import languages, texts
from voicebot.config import Settings
from voicebot.delivery import try_edit
from voicebot.jobs import Runtime
from voicebot.models import Chat as ChatRow
from voicebot.models import set_chat_language

#: callback_data of a language button: the prefix and the setting ("auto", "de").
LANGUAGE_PREFIX = "lang:"
_PER_ROW = 3


def build_router() -> Router:
    """/language and its buttons, in private chats and groups."""
    router = Router(name="language")
    router.message.register(on_language, Command("language"))
    router.callback_query.register(on_choice, F.data.startswith(LANGUAGE_PREFIX))
    return router


async def on_language(message: Message, command: CommandObject, runtime: Runtime) -> None:
    """Show the setting and its keyboard, or set the one typed after the command."""
    chat, settings = message.chat, runtime.settings
    if not (command.args or "").strip():
        current = await _current(runtime, chat.id)
        await message.answer(
            texts.outputs.language_menu(describe(current, settings), group=chat.type != "private"),
            reply_markup=keyboard(languages.effective(current, settings)),
        )
        return
    try:
        setting = languages.parse(command.args or "")
    except languages.BadLanguageError as error:
        bad = error.code
        await message.reply(
            texts.outputs.language_unknown(bad)
            if bad
            else texts.outputs.language_usage(languages.MAX_CHOICES)
        )
        return
    if not await _may_change(runtime, message.bot, chat, message.from_user, message.sender_chat):
        await message.reply(texts.outputs.language_admins_only())
        return
    await _store(runtime, chat, setting)
    await message.reply(texts.outputs.language_set(describe(setting, settings)))


async def on_choice(query: CallbackQuery, runtime: Runtime) -> None:
    """A language button: change the setting if the presser may; every press is answered."""
    setting = (query.data or "").removeprefix(LANGUAGE_PREFIX)
    message = query.message
    if message is None or not languages.is_setting(setting):
        await query.answer(texts.outputs.language_usage(languages.MAX_CHOICES), show_alert=True)
        return
    chat = message.chat
    if not await _may_change(runtime, query.bot, chat, query.from_user, None):
        await query.answer(texts.outputs.language_admins_only(), show_alert=True)
        return
    await _store(runtime, chat, setting)
    described = describe(setting, runtime.settings)
    if query.bot is not None:
        await try_edit(
            query.bot,
            chat_id=chat.id,
            message_id=message.message_id,
            text=texts.outputs.language_menu(described, group=chat.type != "private"),
            reply_markup=keyboard(setting),
        )
    await query.answer(texts.outputs.language_set(described))


async def _may_change(
    runtime: Runtime, bot: Bot | None, chat: Chat, user: User | None, sender_chat: Chat | None
) -> bool:
    if chat.type == "private":
        return True
    assert bot is not None
    return await runtime.chat_admins.may_change(bot, chat=chat, user=user, sender_chat=sender_chat)


async def _current(runtime: Runtime, chat_id: int) -> str | None:
    async with runtime.sessions() as session:
        row = await session.get(ChatRow, chat_id)
    return row.language if row is not None else None


async def _store(runtime: Runtime, chat: Chat, setting: str) -> None:
    async with runtime.sessions() as session:
        await set_chat_language(
            session, chat_id=chat.id, chat_type=chat.type, title=chat.title, language=setting
        )
        await session.commit()


def describe(setting: str | None, settings: Settings) -> str:
    """A setting for people: "Detect automatically", "Deutsch (de)", "Detect among: …"."""
    if setting is None:
        return texts.outputs.language_default(
            describe(languages.default_setting(settings), settings)
        )
    wanted = languages.for_engine(setting)
    if wanted.language is not None:
        return languages.name(wanted.language)
    if wanted.allowed:
        return texts.outputs.language_among(
            ", ".join(languages.name(code) for code in wanted.allowed)
        )
    return texts.outputs.language_auto()


def keyboard(current: str) -> InlineKeyboardMarkup:
    """ "Detect automatically" and the most used languages; the current one is ticked."""

    def button(label: str, setting: str) -> InlineKeyboardButton:
        tick = "✓ " if setting == current else ""
        return InlineKeyboardButton(text=tick + label, callback_data=LANGUAGE_PREFIX + setting)

    codes = [button(languages.NAMES[code], code) for code in languages.POPULAR]
    rows = [[button(texts.outputs.language_auto(), languages.AUTO)]]
    rows += [codes[start : start + _PER_ROW] for start in range(0, len(codes), _PER_ROW)]
    return InlineKeyboardMarkup(inline_keyboard=rows)
