"""/privacy says what is stored; /forget deletes it after a confirmation button."""

from __future__ import annotations

import structlog
from aiogram import F, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import Command
from aiogram.types import (
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    Update,
)

from voicebot import cache, cancels, privacy, texts
from voicebot.delivery import edit_text
from voicebot.intake import Intake
from voicebot.jobs import Runtime
from voicebot.models import utcnow

log = structlog.get_logger(__name__)

#: callback_data of the /forget buttons: the prefix, then "yes:<user id>" or "no:<user id>".
FORGET_PREFIX = "forget:"


def build_router() -> Router:
    """/privacy anywhere; /forget and its buttons in private chats."""
    router = Router(name="privacy")
    router.message.register(on_privacy, Command("privacy"))
    router.message.register(on_forget, Command("forget"), F.chat.type == "private")
    router.message.register(on_forget_in_group, Command("forget"))
    router.callback_query.register(on_forget_button, F.data.startswith(FORGET_PREFIX))
    return router


def forget_keyboard(user_id: int) -> InlineKeyboardMarkup:
    """Confirm or call off the /forget of `user_id`."""
    yes = InlineKeyboardButton(
        text=texts.privacy.forget_yes(), callback_data=f"{FORGET_PREFIX}yes:{user_id}"
    )
    no = InlineKeyboardButton(
        text=texts.privacy.forget_no(), callback_data=f"{FORGET_PREFIX}no:{user_id}"
    )
    return InlineKeyboardMarkup(inline_keyboard=[[yes, no]])


async def on_privacy(message: Message, runtime: Runtime) -> None:
    """What is stored, for how long, and that audio is not."""
    settings = runtime.settings
    await message.answer(
        texts.privacy.summary(
            kept_days=cache.kept_days(settings),
            serving_days=cache.serving_days(settings),
            retention_days=settings.retention_days,
        )
    )


async def on_forget(message: Message) -> None:
    """Ask for confirmation; nothing is deleted yet."""
    user_id = message.from_user.id if message.from_user else message.chat.id
    await message.answer(texts.privacy.forget_confirm(), reply_markup=forget_keyboard(user_id))


async def on_forget_in_group(message: Message) -> None:
    """/forget in a group: it is done in the private chat."""
    await message.reply(texts.privacy.forget_private_only())


async def on_forget_button(
    query: CallbackQuery, runtime: Runtime, intake: Intake, event_update: Update
) -> None:
    """Delete the presser's data if they pressed their own confirmation; every press is answered."""
    choice, _, owner = (query.data or "").removeprefix(FORGET_PREFIX).partition(":")
    if not owner.isdigit() or int(owner) != query.from_user.id or choice not in ("yes", "no"):
        # Someone else's confirmation (a crafted callback): nothing happens.
        log.warning("forget_refused", presser=query.from_user.id, data=query.data)
        await query.answer(texts.privacy.forget_not_yours(), show_alert=True)
        return
    if choice == "no":
        await query.answer()
        await _show(runtime, query, texts.privacy.forget_kept())
        return
    async with runtime.sessions() as session:
        forgotten = await privacy.forget(session, user_id=query.from_user.id, now=utcnow())
        await session.commit()
    # What they sent just before, in this same batch, is recorded after this: cancelled too.
    intake.forget(query.from_user.id, update_id=event_update.update_id)
    for job_id in forgotten.cancelled:
        # Here now; the other processes' `cancels.watch` stops theirs.
        cancels.stop(runtime, job_id)
    try:
        await query.answer(texts.privacy.forget_deleted())
    except TelegramAPIError as error:  # a press delivered again after a crash: too late to answer
        log.info("forget_not_answered", error=str(error))
    await _show(runtime, query, texts.privacy.forget_done(forgotten.transcripts))


async def _show(runtime: Runtime, query: CallbackQuery, text: str) -> None:
    """Put `text` in place of the confirmation question, without its buttons."""
    if query.message is None:
        return
    try:
        await edit_text(
            runtime.bot,
            chat_id=query.message.chat.id,
            message_id=query.message.message_id,
            text=text,
        )
    except TelegramAPIError as error:  # deleted by the user meanwhile
        log.info("forget_not_shown", error=str(error))
