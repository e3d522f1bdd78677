"""The door: media messages accepted while handling a batch of updates become job records.

Handlers only *accept* (`Intake.accept`); `record` then commits the whole batch's jobs in one
transaction. Whoever feeds updates (the polling loop, later the webhook) confirms them to
Telegram only after `record` returned, so an update is never confirmed before its job exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog
from aiogram.types import Message
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from voicebot.db import Sessions
from voicebot.models import insert_job, upsert_user_and_chat

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Media:
    """The file part of a message the bot will transcribe."""

    kind: str
    file_id: str
    file_unique_id: str
    file_size: int | None
    duration: float | None
    file_name: str | None = None
    mime_type: str | None = None


@dataclass
class Intake:
    """The media messages accepted from one batch of updates, in arrival order."""

    accepted: dict[tuple[int, int], tuple[Message, Media]] = field(default_factory=dict)

    def accept(self, message: Message, media: Media) -> None:
        """Take `message` for transcription; it becomes a job when the batch is recorded."""
        self.accepted.setdefault((message.chat.id, message.message_id), (message, media))


@dataclass(frozen=True, slots=True)
class Recorded:
    """What `record` did: new job ids (oldest first) and messages that could not be stored."""

    job_ids: list[int]
    refused: list[Message]


# Errors that say the database is unreachable or busy, not that this data is wrong: the batch
# is left unconfirmed and fetched again.
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)


async def record(sessions: Sessions, intake: Intake) -> Recorded:
    """Commit the batch's jobs (with their users and chats); a redelivered message adds nothing.

    A transient database error propagates (nothing was confirmed, so Telegram sends the batch
    again). Data the database refuses fails only its own message: the others are stored one
    by one and the refused ones are returned, for the caller to tell their senders.
    """
    items = list(intake.accepted.values())
    if not items:
        return Recorded([], [])
    try:
        return Recorded(await _store(sessions, items), [])
    except TRANSIENT_DB_ERRORS:
        raise
    except DBAPIError as error:
        log.error("batch_not_recorded", error=repr(error), size=len(items))
    job_ids: list[int] = []
    refused: list[Message] = []
    for item in items:
        try:
            job_ids += await _store(sessions, [item])
        except TRANSIENT_DB_ERRORS:
            raise
        except DBAPIError as error:
            message = item[0]
            log.error(
                "job_not_recorded",
                chat_id=message.chat.id,
                message_id=message.message_id,
                error=repr(error),
            )
            refused.append(message)
    return Recorded(job_ids, refused)


async def _store(sessions: Sessions, items: list[tuple[Message, Media]]) -> list[int]:
    job_ids: list[int] = []
    async with sessions() as session:
        for message, media in items:
            user, chat = message.from_user, message.chat
            # Anonymous group admins and channels have no from_user; the chat stands in.
            user_id = user.id if user is not None else chat.id
            await upsert_user_and_chat(
                session,
                user_id=user_id,
                first_name=(user.first_name if user else chat.title or "")[:256],
                username=user.username if user else chat.username,
                language_code=user.language_code if user else None,
                chat_id=chat.id,
                chat_type=chat.type,
                chat_title=chat.title[:256] if chat.title else None,
            )
            job_id = await insert_job(
                session,
                chat_id=chat.id,
                user_id=user_id,
                message_id=message.message_id,
                kind=media.kind,
                file_id=media.file_id,
                file_unique_id=media.file_unique_id,
                file_size=media.file_size,
                file_name=media.file_name[:256] if media.file_name else None,
                mime_type=media.mime_type[:128] if media.mime_type else None,
                duration=media.duration,
            )
            if job_id is None:
                log.info("duplicate_update", chat_id=chat.id, message_id=message.message_id)
            else:
                job_ids.append(job_id)
        await session.commit()
    if job_ids:
        log.info("jobs_accepted", job_ids=job_ids)
    return job_ids
