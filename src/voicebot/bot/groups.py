"""Groups: the bot added or removed, /start and /help there, /transcribe, moving to a supergroup.

Recordings posted in groups are handled by the media router (`bot.media`), by the chat's mode.
"""

from __future__ import annotations

import structlog
from aiogram import Bot, F, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import Command, CommandStart
from aiogram.types import ChatMemberUpdated, Message

from voicebot import groups, texts
from voicebot.bot.media import media_of
from voicebot.chatadmins import ADMIN_STATUSES
from voicebot.intake import Intake
from voicebot.jobs import Runtime
from voicebot.models import ChatMode, utcnow

log = structlog.get_logger(__name__)

#: The bot's statuses in a chat it is in, and in one it is not.
PRESENT = frozenset({"member", "administrator", "creator", "restricted"})
ABSENT = frozenset({"left", "kicked"})


def build_router() -> Router:
    """Handlers for group and supergroup chats; include it before the commands router."""
    router = Router(name="groups")
    in_group = F.chat.type.in_(groups.GROUP_TYPES)
    router.my_chat_member.filter(in_group)
    router.my_chat_member.register(on_membership)
    router.message.filter(in_group)
    router.message.register(on_migrated, F.migrate_to_chat_id | F.migrate_from_chat_id)
    router.message.register(on_start, CommandStart())
    router.message.register(on_help, Command("help"))
    router.message.register(on_transcribe, Command("transcribe"))
    router.message.register(on_mention, F.reply_to_message, mentions_me)
    return router


async def on_membership(event: ChatMemberUpdated, runtime: Runtime, bot: Bot) -> None:
    """Added: record it and introduce the bot (with the privacy-mode fix when needed).
    Removed: record it; the chat's unfinished jobs end quietly when they next run."""
    chat, before, now = event.chat, event.old_chat_member.status, event.new_chat_member.status
    if now in ABSENT:
        async with runtime.sessions() as session:
            await groups.bot_left(session, chat_id=chat.id, now=utcnow())
            await session.commit()
        log.info("bot_removed", chat_id=chat.id, status=now)
        return
    if before not in ABSENT or now not in PRESENT:
        return  # promoted, demoted or restricted while staying in the chat
    async with runtime.sessions() as session:
        await groups.bot_joined(session, chat_id=chat.id, chat_type=chat.type, title=chat.title)
        await session.commit()
    log.info("bot_added", chat_id=chat.id, status=now)
    text = await _intro(bot, chat_id=chat.id, status=now)
    try:
        await bot.send_message(chat.id, text)
    except TelegramAPIError as error:  # for one, members may not be allowed to write there
        log.warning("intro_not_sent", chat_id=chat.id, error=str(error))


async def on_start(message: Message, bot: Bot) -> None:
    """Introduce the bot, and say how to fix privacy mode when it hides the group's messages."""
    await message.answer(await _intro(bot, chat_id=message.chat.id))


async def on_help(message: Message) -> None:
    """Explain what the bot does in a group."""
    await message.answer(texts.groups.group_intro())


async def _intro(bot: Bot, *, chat_id: int, status: str | None = None) -> str:
    """The group intro, with the privacy-mode fix when the bot cannot read the group."""
    if status is None:
        status = (await bot.get_chat_member(chat_id, bot.id)).status
    # An administrator gets every message; otherwise privacy mode (getMe, asked afresh each
    # time: the owner may have changed it in @BotFather) decides.
    if status in ADMIN_STATUSES:
        return texts.groups.group_intro()
    me = await bot.get_me()
    if me.can_read_all_group_messages:
        return texts.groups.group_intro()
    return texts.groups.group_intro() + "\n\n" + texts.groups.privacy_mode(me.username or "")


async def on_transcribe(message: Message, intake: Intake, runtime: Runtime) -> None:
    """/transcribe as a reply to a recording: that recording becomes a job, charged to whoever
    asked. Asking again for the same recording adds nothing."""
    await _request(message, intake, runtime, explain=True)


async def on_mention(message: Message, intake: Intake, runtime: Runtime) -> None:
    """A reply that mentions the bot: as /transcribe, but silent when it is not about media."""
    await _request(message, intake, runtime, explain=False)


async def _request(message: Message, intake: Intake, runtime: Runtime, *, explain: bool) -> None:
    replied = message.reply_to_message
    media = media_of(replied) if replied is not None else None
    if replied is None or media is None:
        if explain:
            await message.reply(texts.groups.transcribe_usage())
        return
    async with runtime.sessions() as session:
        found = await groups.group_settings(session, chat_id=message.chat.id)
    if found.mode == ChatMode.off:
        if explain:
            await message.reply(texts.groups.transcription_off())
        return
    intake.accept(as_requested(replied, by=message), media)


def as_requested(replied: Message, *, by: Message) -> Message:
    """The replied-to recording as the door records it: its chat and message id (the job's
    key, so asking twice adds nothing), sent by whoever asked, in the topic they asked in."""
    requested = replied.model_copy(
        update={
            "from_user": by.from_user,
            "sender_chat": by.sender_chat,
            "message_thread_id": by.message_thread_id,
            "is_topic_message": by.is_topic_message,
        }
    )
    return requested.as_(by.bot) if by.bot is not None else requested


async def mentions_me(message: Message, bot: Bot) -> bool:
    """Whether the message's text or caption mentions the bot by its @username."""
    text = message.text or message.caption
    entities = message.entities or message.caption_entities or []
    if not text or not any(entity.type == "mention" for entity in entities):
        return False
    me = await bot.me()  # cached by aiogram after the first call
    mine = f"@{me.username}".lower()
    return any(
        entity.type == "mention" and entity.extract_from(text).lower() == mine
        for entity in entities
    )


async def on_migrated(message: Message, runtime: Runtime) -> None:
    """The group became a supergroup: its settings (and plan) move to the new chat id."""
    if message.migrate_to_chat_id is not None:
        old, new = message.chat.id, message.migrate_to_chat_id
    else:
        assert message.migrate_from_chat_id is not None
        old, new = message.migrate_from_chat_id, message.chat.id
    async with runtime.sessions() as session:
        await groups.migrate(session, old_chat_id=old, new_chat_id=new, title=message.chat.title)
        await session.commit()
    log.info("chat_migrated", old_chat_id=old, new_chat_id=new)
