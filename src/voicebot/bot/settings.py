"""/settings: a group's mode and media switch (administrators change them), a user's interface
language in a private chat.

Each press is answered after its change is committed, then the message is edited to show the
state now in force. Button data is checked against the few values the keyboards carry: anything
else (an old keyboard, a crafted press) changes nothing and is answered.
"""

from __future__ import annotations

import structlog
from aiogram import Bot, F, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import Command
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from voicebot import groups, texts
from voicebot.delivery import edit_text
from voicebot.i18n import SUPPORTED, locale_for, use_locale
from voicebot.jobs import Runtime
from voicebot.models import ChatMode, Sender

log = structlog.get_logger(__name__)

#: callback_data prefixes: a group's settings, a user's interface language.
GROUP_PREFIX = "gs:"
UI_PREFIX = "ui:"
#: The interface-language choice that follows Telegram's language_code.
TELEGRAM_LANGUAGE = "tg"
CHOSEN = "✓ "


def build_router() -> Router:
    """/settings in any chat, and its buttons; include it before the commands router."""
    router = Router(name="settings")
    router.message.register(on_settings, Command("settings"))
    router.callback_query.register(on_group_button, F.data.startswith(GROUP_PREFIX))
    router.callback_query.register(on_ui_button, F.data.startswith(UI_PREFIX))
    return router


async def on_settings(message: Message, runtime: Runtime) -> None:
    """Show the chat's settings with buttons to change them (anyone may look)."""
    chat, sender = message.chat, message.from_user
    if chat.type in groups.GROUP_TYPES:
        async with runtime.sessions() as session:
            found = await groups.group_settings(session, chat_id=chat.id)
        text = texts.groups.group_settings(found.mode, found.media_files)
        await message.answer(text, reply_markup=group_keyboard(found))
    elif chat.type == "private" and sender is not None:
        async with runtime.sessions() as session:
            chosen = await groups.ui_language(session, user_id=sender.id)
        await message.answer(_private_text(chosen), reply_markup=ui_keyboard(chosen))


def group_keyboard(found: groups.GroupSettings) -> InlineKeyboardMarkup:
    """The mode buttons (the current one ticked) and the media-files switch."""
    modes = [
        InlineKeyboardButton(
            text=(CHOSEN if mode == found.mode else "") + texts.groups.mode_name(mode),
            callback_data=f"{GROUP_PREFIX}mode:{mode}",
        )
        for mode in ChatMode
    ]
    switch = InlineKeyboardButton(
        text=texts.groups.media_files_button(found.media_files),
        callback_data=f"{GROUP_PREFIX}files:{'off' if found.media_files else 'on'}",
    )
    return InlineKeyboardMarkup(inline_keyboard=[modes, [switch]])


def parse_group_button(data: str) -> tuple[ChatMode | None, bool | None] | None:
    """(mode, media files) a group button asks for; None when the data is not ours."""
    field, _, value = data.removeprefix(GROUP_PREFIX).partition(":")
    if field == "mode" and value in ChatMode.__members__:
        return ChatMode(value), None
    if field == "files" and value in ("on", "off"):
        return None, value == "on"
    return None


async def on_group_button(query: CallbackQuery, runtime: Runtime, bot: Bot) -> None:
    """Change the group's settings if the presser is one of its administrators."""
    message, change = query.message, parse_group_button(query.data or "")
    if change is None or message is None or message.chat.type not in groups.GROUP_TYPES:
        await query.answer(texts.groups.settings_button_unknown(), show_alert=True)
        return
    chat = message.chat
    if not await runtime.chat_admins.may_change(bot, chat=chat, user=query.from_user):
        await query.answer(texts.groups.settings_admins_only(), show_alert=True)
        return
    mode, media_files = change
    async with runtime.sessions() as session:
        now = await groups.set_group_settings(
            session,
            chat_id=chat.id,
            chat_type=chat.type,
            title=chat.title,
            mode=mode,
            media_files=media_files,
        )
        await session.commit()
    log.info("group_settings_changed", chat_id=chat.id, mode=now.mode, media_files=now.media_files)
    await query.answer(texts.groups.settings_saved())
    await _show(
        bot,
        message.chat.id,
        message.message_id,
        texts.groups.group_settings(now.mode, now.media_files),
        group_keyboard(now),
    )


def ui_keyboard(chosen: str | None) -> InlineKeyboardMarkup:
    """Telegram's language, then each interface language (the current choice ticked)."""
    choices = [(TELEGRAM_LANGUAGE, texts.groups.telegram_language())]
    choices += [(code, texts.groups.UI_LANGUAGE_NAMES.get(code, code)) for code in SUPPORTED]
    current = chosen or TELEGRAM_LANGUAGE
    buttons = [
        InlineKeyboardButton(
            text=(CHOSEN if code == current else "") + label, callback_data=f"{UI_PREFIX}{code}"
        )
        for code, label in choices
    ]
    return InlineKeyboardMarkup(inline_keyboard=[buttons])


def _private_text(chosen: str | None) -> str:
    current = texts.groups.UI_LANGUAGE_NAMES.get(chosen, chosen) if chosen else None
    return texts.groups.private_settings(current or texts.groups.telegram_language())


async def on_ui_button(query: CallbackQuery, runtime: Runtime, bot: Bot) -> None:
    """Store the interface language chosen in a private chat, and answer in it."""
    code = (query.data or "").removeprefix(UI_PREFIX)
    message = query.message
    if (
        code not in (TELEGRAM_LANGUAGE, *SUPPORTED)
        or message is None
        or message.chat.type != "private"
    ):
        await query.answer(texts.groups.settings_button_unknown(), show_alert=True)
        return
    chosen = None if code == TELEGRAM_LANGUAGE else code
    sender = query.from_user
    row = Sender(
        user_id=sender.id,
        first_name=sender.first_name[:256],
        username=sender.username,
        language_code=sender.language_code,
        chat_id=message.chat.id,
        chat_type="private",
        chat_title=None,
    )
    async with runtime.sessions() as session:
        await groups.set_ui_language(session, sender=row, ui_language=chosen)
        await session.commit()
    log.info("ui_language_changed", user_id=sender.id, ui_language=chosen)
    with use_locale(locale_for(chosen, sender.language_code)):
        await query.answer(texts.groups.settings_saved())
        await _show(
            bot, message.chat.id, message.message_id, _private_text(chosen), ui_keyboard(chosen)
        )


async def _show(
    bot: Bot, chat_id: int, message_id: int, text: str, keyboard: InlineKeyboardMarkup
) -> None:
    """Edit the settings message to the state now in force (it may be too old to edit)."""
    try:
        await edit_text(
            bot, chat_id=chat_id, message_id=message_id, text=text, reply_markup=keyboard
        )
    except TelegramAPIError as error:
        log.info("settings_not_shown", chat_id=chat_id, error=str(error))
