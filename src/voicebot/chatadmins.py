"""Who may change a group's settings: its administrators, asked of Telegram and kept briefly."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiogram import Bot
from aiogram.types import Chat, User

from voicebot import recent

ADMIN_STATUSES = frozenset({"creator", "administrator"})


@dataclass
class ChatAdmins:
    """getChatMember answers, kept `ttl` seconds per (chat, user).

    A cache of a Telegram fact, per process: a member made or unmade admin is seen within `ttl`.
    """

    ttl: float
    answers: dict[tuple[int, int], tuple[bool, float]] = field(default_factory=dict)

    async def may_change(
        self, bot: Bot, *, chat: Chat, user: User | None, sender_chat: Chat | None = None
    ) -> bool:
        """Whether this sender may change `chat`'s settings (always, in a private chat)."""
        if chat.type == "private":
            return True
        if sender_chat is not None:
            # An anonymous administrator writes as the group itself; a channel cannot change it.
            return sender_chat.id == chat.id
        if user is None:
            return False
        key, now = (chat.id, user.id), time.monotonic()
        known = self.answers.get(key)
        if known is not None and now - known[1] < self.ttl:
            return known[0]
        member = await bot.get_chat_member(chat.id, user.id)
        allowed = member.status in ADMIN_STATUSES
        # Expired answers are dropped as new ones come: a long-running process would otherwise
        # keep one for every sender that ever changed a group's settings.
        recent.remember(self.answers, key, allowed, now=now, keep_for=self.ttl)
        return allowed
