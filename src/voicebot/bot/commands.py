"""/start, /help, and a short help for anything that is not media."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command, CommandStart
from aiogram.types import Message

from voicebot import texts
from voicebot.jobs import Runtime
from voicebot.models import utcnow
from voicebot.quotas import Report, report


def build_router() -> Router:
    """Commands for private chats."""
    router = Router(name="commands")
    router.message.filter(F.chat.type == "private")
    router.message.register(on_start, CommandStart())
    router.message.register(on_help, Command("help"))
    router.message.register(on_me, Command("me"))
    router.message.register(on_other)
    return router


async def on_start(message: Message, runtime: Runtime) -> None:
    """Greet, explain, and say what is left today."""
    mine = await _report(message, runtime)
    where, timezone = mine.standing, runtime.settings.quota_timezone
    await message.answer(texts.START + texts.left_today(where.left, where.resets_at, timezone))


async def on_me(message: Message, runtime: Runtime) -> None:
    """Plan, today's use and what is left, balance, the last 7 days."""
    mine = await _report(message, runtime)
    settings = runtime.settings
    await message.answer(texts.me(mine, settings.quota_timezone, bool(settings.stars_packages)))


async def _report(message: Message, runtime: Runtime) -> Report:
    sender = message.from_user.id if message.from_user else message.chat.id
    async with runtime.sessions() as session:
        return await report(session, user_id=sender, settings=runtime.settings, now=utcnow())


async def on_help(message: Message) -> None:
    """Explain what the bot does."""
    await message.answer(texts.HELP)


async def on_other(message: Message) -> None:
    """Text, stickers, photos…: say what the bot takes."""
    if message.document is not None:
        await message.reply(texts.NOT_MEDIA)
    else:
        await message.answer(texts.HELP)
