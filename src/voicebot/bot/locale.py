"""The interface language of each update: the user's /settings choice, else Telegram's.

Registered on the dispatcher for every event type, the error handler's included, so whatever a
handler or `on_error` says is in the sender's language. The choice (`users.ui_language`) is read
once per batch for all its senders by the polling loop (`ui_languages` in the handler data), else
by one primary-key read; media messages skip it, since their handlers only accept the job (what
the job says later is in `jobs.locale`, decided from the same row at acceptance).
"""

from __future__ import annotations

from typing import Any

import structlog
from aiogram.types import ErrorEvent, Message, TelegramObject
from aiogram.types import User as TelegramUser
from aiogram.utils.i18n import I18nMiddleware
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from voicebot.bot.media import media_of
from voicebot.i18n import locale_for
from voicebot.models import User

log = structlog.get_logger(__name__)


class UserLocale(I18nMiddleware):
    """aiogram's i18n middleware choosing the locale from the users table and Telegram."""

    async def get_locale(self, event: TelegramObject, data: dict[str, Any]) -> str:
        """The sender's interface language (English when there is no sender)."""
        sender: TelegramUser | None = data.get("event_from_user")
        if sender is None:
            return self.i18n.default_locale
        message = event.update.message if isinstance(event, ErrorEvent) else event
        if isinstance(message, Message) and media_of(message) is not None:
            return locale_for(None, sender.language_code)
        return locale_for(await _chosen(data, sender.id), sender.language_code)


async def _chosen(data: dict[str, Any], user_id: int) -> str | None:
    """The language the user chose in /settings (None: none, or the database is unreachable)."""
    known: dict[int, str | None] = data.get("ui_languages") or {}
    if user_id in known:  # read for the whole batch by the polling loop
        return known[user_id]
    runtime = data.get("runtime")
    if runtime is None:
        return None
    try:
        async with runtime.sessions() as session:
            chosen: str | None = await session.scalar(
                select(User.ui_language).where(User.id == user_id)
            )
    except SQLAlchemyError as error:
        # Telegram's language will do: this update is still answered.
        log.warning("locale_not_read", user_id=user_id, error=repr(error))
        return None
    return chosen
