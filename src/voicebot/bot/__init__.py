"""Telegram front: routers for commands and media, one error handler."""

from __future__ import annotations

import structlog
from aiogram import Dispatcher
from aiogram.types import ErrorEvent
from aiogram.utils.i18n import I18n

from voicebot import texts
from voicebot.bot import (
    access,
    admin,
    cancel,
    commands,
    groups,
    language,
    media,
    outputs,
    payments,
    privacy,
    settings,
)
from voicebot.bot.locale import UserLocale
from voicebot.db import unavailable
from voicebot.jobs import Runtime

log = structlog.get_logger(__name__)


def build_dispatcher(runtime: Runtime, *, i18n: I18n) -> Dispatcher:
    """A dispatcher with every router; handlers receive `runtime` from workflow data."""
    dispatcher = Dispatcher(runtime=runtime)
    # Every event type, errors included: handlers and on_error speak the sender's language.
    UserLocale(i18n).setup(dispatcher)
    # admin before commands: the commands router's catch-all would answer an admin's /stats.
    # access first: with an allowlist, outsiders' updates stop there.
    dispatcher.include_routers(
        access.build_router(runtime.settings),
        media.build_router(),
        admin.build_router(),
        payments.build_router(),
        cancel.build_router(),
        # before commands, whose catch-all answers any other text in private chats
        privacy.build_router(),
        groups.build_router(),
        settings.build_router(),
        language.build_router(),
        outputs.build_router(),
        commands.build_router(),
    )
    dispatcher.errors.register(on_error)
    return dispatcher


async def on_error(event: ErrorEvent) -> bool:
    """Log any handler failure and tell the user; the bot keeps serving. A database out of
    reach is not the update's fault: it is raised on, and its batch is not confirmed."""
    if unavailable(event.exception):
        # The handler's own writes (a /forget's mark, a setting) did not happen: the update
        # must come again, so the batch fails whole (`polling.record_updates`).
        raise event.exception
    log.error("handler_failed", error=repr(event.exception), exc_info=event.exception)
    message, query = event.update.message, event.update.callback_query
    try:
        if message is not None:
            await message.answer(texts.FAILED)
        elif query is not None:
            await query.answer(texts.BUTTON_FAILED, show_alert=True)  # every press is answered
    except Exception as error:  # noqa: BLE001 - already failing; log and move on
        log.warning("error_not_told", error=repr(error))
    return True
