"""Groups: each chat's mode and media switch, the bot joining or leaving, moving to a supergroup.

Functions take `session` first and leave the transaction to the caller. A group's settings live
in its `chats` row (defaults when it has none yet); a private chat is always `auto`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from voicebot.models import (
    ACTIVE,
    Chat,
    ChatMode,
    Job,
    JobStatus,
    Plan,
    Sender,
    User,
    _insert_for,
    set_job_if,
    upsert_senders,
    utcnow,
)

if TYPE_CHECKING:
    from voicebot.jobs import Runtime

log = structlog.get_logger(__name__)

GROUP_TYPES = frozenset({"group", "supergroup"})
#: Voice and video notes are transcribed in auto mode whatever the media switch says.
NOTES = frozenset({"voice", "video_note"})


@dataclass(frozen=True, slots=True)
class GroupSettings:
    """What a group decides about transcription."""

    mode: ChatMode = ChatMode.auto
    media_files: bool = True


async def group_settings(session: AsyncSession, *, chat_id: int) -> GroupSettings:
    """The chat's mode and media switch (the defaults for a chat not seen before); one read."""
    found = (
        await session.execute(select(Chat.mode, Chat.media_files).where(Chat.id == chat_id))
    ).first()
    if found is None:
        return GroupSettings()
    mode = found.mode if found.mode in ChatMode.__members__ else ChatMode.auto
    return GroupSettings(ChatMode(mode), bool(found.media_files))


def transcribes_on_its_own(settings: GroupSettings, kind: str) -> bool:
    """Whether a recording of `kind` posted in the group becomes a job without being asked."""
    if settings.mode != ChatMode.auto:
        return False
    return kind in NOTES or settings.media_files


async def ensure_chat(
    session: AsyncSession, *, chat_id: int, chat_type: str, title: str | None
) -> Chat:
    """The chat's row, created with the defaults when missing; the title is refreshed."""
    # An upsert: two updates of the same new group handled at once must not collide.
    await session.execute(
        _insert_for(session)(Chat)
        .values(
            id=chat_id, type=chat_type, title=title[:256] if title else None, created_at=utcnow()
        )
        .on_conflict_do_nothing(index_elements=[Chat.id])
    )
    chat = await session.get(Chat, chat_id, populate_existing=True)
    assert chat is not None
    if title and chat.title != title[:256]:
        chat.title = title[:256]
        await session.flush()
    return chat


async def set_group_settings(
    session: AsyncSession,
    *,
    chat_id: int,
    chat_type: str,
    title: str | None,
    mode: ChatMode | None = None,
    media_files: bool | None = None,
) -> GroupSettings:
    """Change the group's mode and/or media switch; the settings now in force."""
    chat = await ensure_chat(session, chat_id=chat_id, chat_type=chat_type, title=title)
    if mode is not None:
        chat.mode = mode.value
    if media_files is not None:
        chat.media_files = media_files
    await session.flush()
    return GroupSettings(ChatMode(chat.mode), chat.media_files)


async def bot_joined(
    session: AsyncSession, *, chat_id: int, chat_type: str, title: str | None
) -> None:
    """The bot was added to the chat (again): it is a member, its settings are kept."""
    chat = await ensure_chat(session, chat_id=chat_id, chat_type=chat_type, title=title)
    chat.left_at = None
    await session.flush()


async def bot_left(session: AsyncSession, *, chat_id: int, now: datetime) -> None:
    """The bot was removed from the chat (or left it)."""
    await session.execute(update(Chat).where(Chat.id == chat_id).values(left_at=now))


async def migrate(
    session: AsyncSession, *, old_chat_id: int, new_chat_id: int, title: str | None
) -> None:
    """The group `old_chat_id` became the supergroup `new_chat_id`: settings and plan move there.

    Safe to repeat (the old chat's and the new chat's service messages both call it): once the
    move is recorded, a setting changed in the supergroup since is not overwritten.
    """
    old = await ensure_chat(session, chat_id=old_chat_id, chat_type="group", title=title)
    new = await ensure_chat(session, chat_id=new_chat_id, chat_type="supergroup", title=title)
    if old.migrated_to_chat_id is None:
        new.mode, new.media_files, new.language = old.mode, old.media_files, old.language
        new.left_at = None
        old.migrated_to_chat_id = new_chat_id
        await _move_plan(session, old_id=old_chat_id, new_id=new_chat_id)
    await session.flush()


async def _move_plan(session: AsyncSession, *, old_id: int, new_id: int) -> None:
    """A plan granted to the old group (its `users` row) now belongs to the supergroup."""
    old = await session.get(User, old_id)
    if old is None or (old.plan == Plan.free and not old.balance_seconds):
        return
    new = await session.get(User, new_id)
    if new is None:
        new = User(id=new_id, first_name=old.first_name, balance_seconds=0.0)
        session.add(new)
    new.plan, new.plan_expires_at = old.plan, old.plan_expires_at
    new.balance_seconds = (new.balance_seconds or 0.0) + old.balance_seconds
    old.plan, old.plan_expires_at, old.balance_seconds = Plan.free, None, 0.0


async def gone_reason(session: AsyncSession, *, chat_id: int) -> str | None:
    """Why nothing can be sent to the chat any more ("chat_left", "chat_migrated"), or None."""
    found = (
        await session.execute(
            select(Chat.left_at, Chat.migrated_to_chat_id).where(Chat.id == chat_id)
        )
    ).first()
    if found is None:
        return None
    if found.migrated_to_chat_id is not None:
        return "chat_migrated"
    if found.left_at is not None:
        return "chat_left"
    return None


async def drop_job(session: AsyncSession, *, job_id: int, reason: str, now: datetime) -> bool:
    """End an unfinished job whose chat the bot can no longer write to, telling no one.

    Its quota reservation stops counting with it; nothing is charged.
    """
    return await set_job_if(
        session,
        job_id=job_id,
        statuses=ACTIVE,
        status=JobStatus.failed,
        error_code=reason,
        finished_at=now,
    )


async def chat_gone(runtime: Runtime, job: Job) -> bool:
    """Whether the job's chat is closed to the bot (removed, or moved to a supergroup); if so
    the job is ended quietly: nothing is downloaded, transcribed or charged."""
    if job.chat_id > 0:
        return False
    async with runtime.sessions() as session:
        reason = await gone_reason(session, chat_id=job.chat_id)
        if reason is None:
            return False
        await drop_job(session, job_id=job.id, reason=reason, now=utcnow())
        await session.commit()
    log.info("job_dropped", job_id=job.id, chat_id=job.chat_id, reason=reason)
    return True


async def drop_unreachable(
    runtime: Runtime, job: Job, *, migrated_to: int | None, error: str
) -> None:
    """Telegram refused a send (the bot was removed, or the group moved to `migrated_to`): end
    the job quietly."""
    reason = "chat_migrated" if migrated_to is not None else "chat_forbidden"
    async with runtime.sessions() as session:
        if migrated_to is not None:
            await migrate(session, old_chat_id=job.chat_id, new_chat_id=migrated_to, title=None)
        await drop_job(session, job_id=job.id, reason=reason, now=utcnow())
        await session.commit()
    log.info("job_dropped", job_id=job.id, chat_id=job.chat_id, reason=reason, error=error)


async def group_plan_row(session: AsyncSession, *, chat_id: int) -> User:
    """The `users` row that carries a group's plan (its id is the chat's), created if missing."""
    user = await session.get(User, chat_id)
    if user is None:
        chat = await session.get(Chat, chat_id)
        name = (chat.title if chat is not None else None) or str(chat_id)
        user = User(id=chat_id, first_name=name[:256], balance_seconds=0.0)
        session.add(user)
        await session.flush()
    return user


# A private chat's settings: the interface language of its user (`users.ui_language`).
async def ui_language(session: AsyncSession, *, user_id: int) -> str | None:
    """The interface language the user chose in /settings; None: Telegram's."""
    found: str | None = await session.scalar(select(User.ui_language).where(User.id == user_id))
    return found


async def ui_languages(session: AsyncSession, *, user_ids: list[int]) -> dict[int, str | None]:
    """The interface language each of these users chose (None: none, or not a user yet)."""
    found = await session.execute(
        select(User.id, User.ui_language).where(
            User.id.in_(user_ids), User.ui_language.is_not(None)
        )
    )
    chosen: dict[int, str | None] = dict.fromkeys(user_ids)
    chosen.update({user_id: ui_language for user_id, ui_language in found})
    return chosen


async def set_ui_language(
    session: AsyncSession, *, sender: Sender, ui_language: str | None
) -> None:
    """Store the user's interface language (None: Telegram's), recording the user if new."""
    await upsert_senders(session, senders=[sender])
    await session.execute(
        update(User).where(User.id == sender.user_id).values(ui_language=ui_language)
    )
