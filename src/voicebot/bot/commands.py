"""/start, /help, and a short help for anything that is not media."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command, CommandStart
from aiogram.types import Message

from voicebot import texts


def build_router() -> Router:
    """Commands for private chats."""
    router = Router(name="commands")
    router.message.filter(F.chat.type == "private")
    router.message.register(on_start, CommandStart())
    router.message.register(on_help, Command("help"))
    router.message.register(on_other)
    return router


async def on_start(message: Message) -> None:
    """Greet and explain."""
    await message.answer(texts.START)


async def on_help(message: Message) -> None:
    """Explain what the bot does."""
    await message.answer(texts.HELP)


async def on_other(message: Message) -> None:
    """Text, stickers, photos…: say what the bot takes."""
    if message.document is not None:
        await message.reply(texts.NOT_MEDIA)
    else:
        await message.answer(texts.HELP)
