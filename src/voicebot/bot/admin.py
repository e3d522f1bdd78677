"""Admin commands in chat: /stats, /grant, /credit, /ban, /unban (ADMIN_IDS only).

The router sees only admins' private messages; anyone else's /stats falls through to the
commands router and gets the ordinary help, so the commands are not revealed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiogram import Bot, F, Router
from aiogram.exceptions import TelegramBadRequest
from aiogram.filters import Command, CommandObject
from aiogram.types import BotCommand, BotCommandScopeChat, Message
from sqlalchemy.ext.asyncio import AsyncSession

from voicebot import admin, texts
from voicebot.config import Settings
from voicebot.errors import UnknownUserError
from voicebot.jobs import Runtime
from voicebot.models import Plan, User, utcnow
from voicebot.quotas import day_start, is_admin

log = structlog.get_logger(__name__)


def build_router() -> Router:
    """Admin commands; include it before the commands router, whose catch-all would answer."""
    router = Router(name="admin")
    router.message.filter(F.chat.type == "private", from_admin)
    router.message.register(on_stats, Command("stats"))
    router.message.register(on_grant, Command("grant"))
    router.message.register(on_credit, Command("credit"))
    router.message.register(on_ban, Command("ban", "unban"))
    return router


def from_admin(message: Message, runtime: Runtime) -> bool:
    """Whether the sender is in ADMIN_IDS."""
    return message.from_user is not None and is_admin(runtime.settings, message.from_user.id)


def admin_menu(settings: Settings, everyone: list[BotCommand]) -> list[BotCommand]:
    """Everyone's commands plus the admin ones, described in the current locale."""
    extra = texts.ADMIN_COMMANDS | (texts.ADMIN_REFUND_COMMAND if settings.stars_packages else {})
    return everyone + [BotCommand(command=name, description=text) for name, text in extra.items()]


async def set_admin_menus(
    bot: Bot, settings: Settings, menus: dict[str | None, list[BotCommand]]
) -> None:
    """Give each admin, in their own chat only, `admin_menu` in each language (None: any other)."""
    for admin_id in settings.admin_ids:
        for language_code, menu in menus.items():
            try:
                await bot.set_my_commands(
                    menu, scope=BotCommandScopeChat(chat_id=admin_id), language_code=language_code
                )
            except TelegramBadRequest as error:
                # "chat not found" until the admin has opened the bot once; the commands still
                # work. The other languages would fail alike.
                log.warning("admin_menu_not_set", admin_id=admin_id, error=error.message)
                break


async def on_stats(message: Message, runtime: Runtime) -> None:
    """Today's numbers."""
    zone = runtime.settings.quota_timezone
    async with runtime.sessions() as session:
        found = await admin.stats(session, since=day_start(utcnow(), zone))
    await message.answer(texts.admin.admin_stats(found, zone))


async def on_grant(message: Message, command: CommandObject, runtime: Runtime) -> None:
    """/grant USER_ID free|premium|unlimited [DAYS]"""
    words = (command.args or "").split()
    if not 2 <= len(words) <= 3:
        await message.answer(texts.GRANT_USAGE)
        return
    user_id, plan = _user_id(words[0]), words[1].lower()
    days = _whole(words[2], most=admin.MAX_DAYS) if len(words) == 3 else None
    if user_id is None or plan not in Plan.__members__ or (len(words) == 3 and days is None):
        await message.answer(texts.GRANT_USAGE)
        return
    now, zone = utcnow(), runtime.settings.quota_timezone

    async def change(session: AsyncSession) -> User:
        return await admin.grant_plan(session, user_id=user_id, plan=Plan(plan), days=days, now=now)

    await _apply(message, runtime, change, lambda user: texts.admin.granted(user, now, zone))


async def on_credit(message: Message, command: CommandObject, runtime: Runtime) -> None:
    """/credit USER_ID MINUTES"""
    words = (command.args or "").split()
    user_id = _user_id(words[0]) if len(words) == 2 else None
    minutes = _number(words[1], most=admin.MAX_MINUTES) if len(words) == 2 else None
    if user_id is None or minutes is None:
        await message.answer(texts.CREDIT_USAGE)
        return
    seconds = minutes * 60

    async def change(session: AsyncSession) -> User:
        return await admin.credit(session, user_id=user_id, seconds=seconds)

    await _apply(message, runtime, change, lambda user: texts.admin.credited(user, seconds))


async def on_ban(message: Message, command: CommandObject, runtime: Runtime) -> None:
    """/ban USER_ID and /unban USER_ID"""
    words = (command.args or "").split()
    user_id = _user_id(words[0]) if len(words) == 1 else None
    banned = command.command.lower() == "ban"
    if user_id is None:
        await message.answer(texts.BAN_USAGE if banned else texts.UNBAN_USAGE)
        return

    async def change(session: AsyncSession) -> User:
        return await admin.set_banned(session, user_id=user_id, banned=banned)

    await _apply(message, runtime, change, texts.admin.ban_changed)


async def _apply(
    message: Message,
    runtime: Runtime,
    change: Callable[[AsyncSession], Awaitable[User]],
    reply: Callable[[User], str],
) -> None:
    """Run `change` in one transaction and commit it before replying; an unknown user is said."""
    try:
        async with runtime.sessions() as session:
            user = await change(session)
            await session.commit()
    except UnknownUserError as error:
        await message.answer(str(error))
        return
    await message.answer(reply(user))


def _user_id(word: str) -> int | None:
    try:
        return int(word)
    except ValueError:
        return None


def _whole(word: str, *, most: int) -> int | None:
    """A whole number in 1..most, or None."""
    value = _user_id(word)
    return value if value is not None and 0 < value <= most else None


def _number(word: str, *, most: float) -> float | None:
    """A number in (0, most], or None."""
    try:
        value = float(word)
    except ValueError:
        return None
    return value if 0 < value <= most else None
