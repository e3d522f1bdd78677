"""ALLOWED_USER_IDS: with a list, everyone else gets one polite line and nothing else."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.types import CallbackQuery, Message

from voicebot import texts
from voicebot.config import Settings
from voicebot.jobs import Runtime
from voicebot.ratelimits import may_notify


def build_router(settings: Settings) -> Router:
    """Catches updates from users the allowlist leaves out (none when the list is empty)."""
    router = Router(name="access")
    if settings.allowed_user_ids:
        allowed = set(settings.allowed_user_ids) | set(settings.admin_ids)
        outsider = ~F.from_user.id.in_(allowed)
        # A payment that still arrives (allowlist changed after the invoice) must be credited.
        router.message.register(on_outsider, outsider, ~F.successful_payment)
        router.callback_query.register(on_outsider_button, outsider)
    return router


async def on_outsider(message: Message, runtime: Runtime) -> None:
    """Say the bot is private, at most once a minute per person; record nothing."""
    runtime.metrics.refused("private")
    if message.chat.type != "private":
        return  # in a group, outsiders' messages are only ignored: no line for every member
    sender = message.from_user.id if message.from_user else message.chat.id
    if await may_notify(runtime.limiters, user_id=sender):
        await message.answer(texts.PRIVATE)


async def on_outsider_button(query: CallbackQuery, runtime: Runtime) -> None:
    """Answer the button press (Telegram expects it) with the same line."""
    runtime.metrics.refused("private")
    await query.answer(texts.PRIVATE, show_alert=True)
