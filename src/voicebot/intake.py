"""The door: media messages accepted while handling a batch of updates become job records.

Handlers only *accept* (`Intake.accept`); `record` then commits the whole batch's jobs in one
transaction. Whoever feeds updates (the polling loop, later the webhook) confirms them to
Telegram only after `record` returned, so an update is never confirmed before its job exists.
The batch's refusals are counted per day and reason in the same transaction (`refusals`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import structlog
from aiogram.types import CallbackQuery, Message
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from voicebot import locks, texts
from voicebot.admission import Admission, admit, count_active
from voicebot.config import Settings
from voicebot.db import Sessions, unavailable
from voicebot.i18n import DEFAULT_LOCALE, locale_for, use_locale
from voicebot.models import (
    Chat,
    Job,
    JobStatus,
    Sender,
    User,
    chats_by_id,
    existing_jobs,
    insert_job,
    upsert_senders,
    utcnow,
)
from voicebot.outputs import PressAnswer
from voicebot.quotas import lock_users
from voicebot.ratelimits import Limiters
from voicebot.refusals import count_refusals

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
    #: Translate presses, by the transcript message they were pressed on (see `Translation`).
    translations: dict[tuple[int, int], Translation] = field(default_factory=dict)
    #: The update id of each message of the batch (see `sort`), and of each user's confirmed
    #: /forget in it (see `forget`).
    update_ids: dict[tuple[int, int], int] = field(default_factory=dict)
    forgotten: dict[int, int] = field(default_factory=dict)

    def accept(self, message: Message, media: Media) -> None:
        """Take `message` for transcription; it becomes a job when the batch is recorded."""
        self.accepted.setdefault((message.chat.id, message.message_id), (message, media))

    def accept_translation(
        self, query: CallbackQuery, *, source: Job, language: str, duration: float
    ) -> None:
        """Take a Translate press on `source`'s transcript message; the press is answered once
        its batch is recorded (`Recorded.answers`)."""
        assert source.status_message_id is not None  # the press was checked against it
        key = (source.chat_id, source.status_message_id)
        self.translations.setdefault(key, Translation(query, source, language, duration))

    def sort(self, arrival: dict[tuple[int, int], int]) -> None:
        """Put the accepted messages in arrival order (handlers finish in any order), given the
        update id of each message of the batch."""
        self.update_ids = arrival
        last = max(arrival.values(), default=0) + 1
        ordered = sorted(self.accepted.items(), key=lambda item: arrival.get(item[0], last))
        self.accepted = dict(ordered)

    def forget(self, user_id: int, *, update_id: int) -> None:
        """Note that `user_id` confirmed /forget in update `update_id` of this batch (committed
        already): their media of the batch sent before it are recorded as cancelled."""
        self.forgotten[user_id] = max(update_id, self.forgotten.get(user_id, update_id))

    def forgot_before(self, user_id: int, key: tuple[int, int]) -> bool:
        """Whether `user_id` confirmed /forget in this batch after sending message `key`."""
        at, sent = self.forgotten.get(user_id), self.update_ids.get(key)
        return at is not None and sent is not None and sent < at


@dataclass(frozen=True, slots=True)
class Refusal:
    """A message that does not become a job, and the line its sender is told."""

    message: Message
    text: str
    #: The sender's interface language, which `text` is in.
    locale: str = DEFAULT_LOCALE


@dataclass(frozen=True, slots=True)
class Translation:
    """A Translate press: a job of its own, keyed (chat, transcript message), so a second press
    adds nothing; it re-downloads the source's file and translates from its detected language."""

    query: CallbackQuery
    source: Job
    language: str
    duration: float


@dataclass(frozen=True, slots=True)
class Recorded:
    """What `record` did: new job ids (oldest first), the messages refused, the presses' answers."""

    job_ids: list[int]
    refused: list[Refusal]
    answers: list[PressAnswer] = field(default_factory=list)
    #: Why each refused message or press was refused (`Admission.reason`, or "failed").
    reasons: list[str] = field(default_factory=list)


ForgotBefore = Callable[[int, tuple[int, int]], bool]
"""Whether a user confirmed /forget in the batch after sending a message (see `Intake`)."""


async def record(
    sessions: Sessions, intake: Intake, *, settings: Settings, limiters: Limiters
) -> Recorded:
    """Decide on and commit the batch's jobs, media first, then translations (`_record_media`,
    `record_translations`); a redelivery adds nothing."""
    media = await _record_media(
        sessions,
        list(intake.accepted.values()),
        forgot_before=intake.forgot_before,
        settings=settings,
        limiters=limiters,
    )
    if not intake.translations:
        return media
    asked = await record_translations(
        sessions, list(intake.translations.values()), settings=settings, limiters=limiters
    )
    return Recorded(
        media.job_ids + asked.job_ids, media.refused, asked.answers, media.reasons + asked.reasons
    )


async def _record_media(
    sessions: Sessions,
    items: list[tuple[Message, Media]],
    *,
    forgot_before: ForgotBefore,
    settings: Settings,
    limiters: Limiters,
) -> Recorded:
    """Decide on and commit the media jobs (with users and chats); a redelivery adds nothing.

    A transient database error propagates (nothing was confirmed, so Telegram sends the batch
    again). Data the database refuses fails only its own message: the others are stored one
    by one and the failed ones are refused with the "something went wrong" line.
    """
    if not items:
        return Recorded([], [])
    store = partial(
        _store, sessions, forgot_before=forgot_before, settings=settings, limiters=limiters
    )
    try:
        return await store(items)
    except DBAPIError as error:
        if unavailable(error):
            raise  # the batch is left unconfirmed and fetched again
        log.error("batch_not_recorded", error=repr(error), size=len(items))
    job_ids: list[int] = []
    refused: list[Refusal] = []
    reasons: list[str] = []
    for item in items:
        try:
            one = await store([item])
        except DBAPIError as error:
            if unavailable(error):
                raise
            message = item[0]
            log.error(
                "job_not_recorded",
                chat_id=message.chat.id,
                message_id=message.message_id,
                error=repr(error),
            )
            # The sender's /settings choice is not read here: Telegram's language will do.
            sender = message.from_user.language_code if message.from_user else None
            locale = locale_for(None, sender)
            with use_locale(locale):
                refused.append(Refusal(message, texts.FAILED, locale))
            reasons.append("failed")
        else:
            job_ids += one.job_ids
            refused += one.refused
            reasons += one.reasons
    await _count_failed(sessions, failed=reasons.count("failed"))
    return Recorded(job_ids, refused, reasons=reasons)


async def _count_failed(sessions: Sessions, *, failed: int) -> None:
    """Count today's refusals of messages or presses that could not be recorded, in a
    transaction of their own (theirs was rolled back); a count lost to the database is logged."""
    if not failed:
        return
    try:
        async with sessions() as session:
            await count_refusals(session, day=utcnow().date(), reasons=["failed"] * failed)
            await session.commit()
    except DBAPIError as error:
        # Not worth a redelivery: the batch's answers stand, only the dashboard misses these.
        log.warning("refusals_not_counted", reason="failed", count=failed, error=repr(error))


async def _store(
    sessions: Sessions,
    items: list[tuple[Message, Media]],
    *,
    forgot_before: ForgotBefore,
    settings: Settings,
    limiters: Limiters,
) -> Recorded:
    job_ids: list[int] = []
    refused: list[Refusal] = []
    reasons: list[str] = []
    now = utcnow()
    async with sessions() as session:
        # One batch at a time decides, in all the processes that share the database, so what
        # the decisions below read (the queue's length, each sender's jobs) cannot change
        # under them: on PostgreSQL a lock for the transaction, on SQLite the write lock the
        # upserts take (lock_users also locks the senders' rows on PostgreSQL).
        await locks.hold_for_transaction(session, locks.DOOR)
        senders = await _upsert_senders(session, items)
        # Groups' own rows (a plan granted to the group) come along: see quotas.effective_plan.
        groups = {chat_id for chat_id, _ in senders if chat_id < 0}
        users = await lock_users(session, user_ids=sorted(set(senders.values()) | groups))
        counts = await count_active(session, user_ids=list(users))
        decide = partial(
            admit, session, counts=counts, settings=settings, limiters=limiters, now=now
        )
        seen = await existing_jobs(session, keys=list(senders))
        chats = await chats_by_id(session, chat_ids=list({key[0] for key in senders}))
        for message, media in items:
            key = (message.chat.id, message.message_id)
            if key in seen:
                log.info("duplicate_update", chat_id=key[0], message_id=key[1])
                continue
            user = users[senders[key]]
            if forgot_before(user.id, key):
                # Sent before its sender's /forget of this batch, which cancelled everything of
                # theirs recorded until then: recorded cancelled too (and told so, by its task).
                admission = Admission(priority=0, reserve=0.0)
                forgotten = {"status": JobStatus.cancelled, "finished_at": now}
            else:
                locale = locale_for(user.ui_language, user.language_code)
                with use_locale(locale):  # a refusal is told in the sender's language
                    admission = await decide(
                        user=user, duration=media.duration, group=_group(users, key)
                    )
                if admission.refusal is not None:
                    log.info("job_refused", user_id=user.id, reason=admission.refusal[:60])
                    refused.append(Refusal(message, admission.refusal, locale))
                    reasons.append(admission.reason)
                    continue
                forgotten = {}
            chat = chats[key[0]]
            job_id = await insert_job(
                session,
                **job_settings(message, user=user, chat=chat),
                chat_id=key[0],
                user_id=user.id,
                message_id=key[1],
                kind=media.kind,
                file_id=media.file_id,
                file_unique_id=media.file_unique_id,
                file_size=media.file_size,
                file_name=media.file_name[:256] if media.file_name and not forgotten else None,
                mime_type=media.mime_type[:128] if media.mime_type else None,
                duration=media.duration,
                priority=admission.priority,
                reserved_seconds=admission.reserve,
                **forgotten,
            )
            if job_id is not None:
                job_ids.append(job_id)
                counts.add(user.id)
        await count_refusals(session, day=now.date(), reasons=reasons)
        await session.commit()
    if job_ids:
        log.info("jobs_accepted", job_ids=job_ids)
    return Recorded(job_ids, refused, reasons=reasons)


async def _upsert_senders(
    session: AsyncSession, items: list[tuple[Message, Media]]
) -> dict[tuple[int, int], int]:
    """Record the batch's senders and chats; the sender's id of each message."""
    senders: dict[tuple[int, int], int] = {}
    rows: list[Sender] = []
    for message, _ in items:
        sender, chat = message.from_user, message.chat
        # An anonymous group admin or a channel writes as `sender_chat` (from_user is then a
        # placeholder bot shared by every group): that chat is the sender, with its own quota.
        as_chat = message.sender_chat or chat
        if message.sender_chat is not None:
            sender = None
        user_id = sender.id if sender else as_chat.id
        senders[(chat.id, message.message_id)] = user_id
        rows.append(
            Sender(
                user_id=user_id,
                first_name=(sender.first_name if sender else as_chat.title or "")[:256],
                username=sender.username if sender else as_chat.username,
                language_code=sender.language_code if sender else None,
                chat_id=chat.id,
                chat_type=chat.type,
                chat_title=chat.title[:256] if chat.title else None,
            )
        )
    await upsert_senders(session, senders=rows)
    return senders


def _group(users: dict[int, User], key: tuple[int, int]) -> User | None:
    """The row of the group a job is in (it may carry a plan), if the chat is a group."""
    return users.get(key[0]) if key[0] < 0 else None


def job_settings(message: Message, *, user: User, chat: Chat) -> dict[str, object]:
    """What a job keeps of its sender's and chat's settings when it is accepted."""
    private = chat.type == "private"
    return {
        "locale": locale_for(user.ui_language, user.language_code),
        "language": chat.language,
        "output": user.output_format if private else "text",
        "thread_id": message.message_thread_id if message.is_topic_message else None,
    }


async def record_translations(
    sessions: Sessions, translations: list[Translation], *, settings: Settings, limiters: Limiters
) -> Recorded:
    """Decide on and commit translation jobs as for media (the presser's quota and limits),
    with the answer each press gets; a press on a transcript already asked for adds nothing.

    A transient database error propagates (the batch is fetched again); any other answers the
    presses with the "something went wrong" line.
    """
    try:
        return await _store_translations(
            sessions, translations, settings=settings, limiters=limiters
        )
    except DBAPIError as error:
        if unavailable(error):
            raise  # the batch is left unconfirmed and fetched again
        log.error("translations_not_recorded", error=repr(error), size=len(translations))
        answers = []
        for asked in translations:
            presser = asked.query.from_user
            with use_locale(locale_for(None, presser.language_code)):
                answers.append(PressAnswer(asked.query, texts.FAILED, alert=True))
        await _count_failed(sessions, failed=len(answers))
        return Recorded([], [], answers, ["failed"] * len(answers))


async def _store_translations(
    sessions: Sessions, translations: list[Translation], *, settings: Settings, limiters: Limiters
) -> Recorded:
    job_ids: list[int] = []
    answers: list[PressAnswer] = []
    reasons: list[str] = []
    now = utcnow()
    async with sessions() as session:
        rows = [_presser(asked) for asked in translations]
        await upsert_senders(session, senders=rows)  # first: it takes SQLite's write lock
        groups = {asked.source.chat_id for asked in translations if asked.source.chat_id < 0}
        users = await lock_users(session, user_ids=sorted({r.user_id for r in rows} | groups))
        counts = await count_active(session, user_ids=list(users))
        decide = partial(
            admit, session, counts=counts, settings=settings, limiters=limiters, now=now
        )
        keys = [
            (asked.source.chat_id, asked.source.status_message_id or 0) for asked in translations
        ]
        seen = await existing_jobs(session, keys=keys)
        for asked, key in zip(translations, keys, strict=True):
            source, user = asked.source, users[asked.query.from_user.id]
            locale = locale_for(user.ui_language, user.language_code)
            with use_locale(locale):  # the presser is answered in their language
                if key in seen:
                    answers.append(
                        PressAnswer(asked.query, texts.outputs.translation_pending(), False)
                    )
                    continue
                admission = await decide(
                    user=user, duration=asked.duration, group=_group(users, key)
                )
                if admission.refusal is not None:
                    log.info("translation_refused", user_id=user.id, reason=admission.refusal[:60])
                    answers.append(PressAnswer(asked.query, admission.refusal, True))
                    reasons.append(admission.reason)
                    continue
                job_id = await insert_job(
                    session,
                    chat_id=key[0],
                    user_id=user.id,
                    message_id=key[1],
                    kind=source.kind,
                    file_id=source.file_id,
                    file_unique_id=source.file_unique_id,
                    file_size=source.file_size,
                    file_name=source.file_name,
                    mime_type=source.mime_type,
                    duration=asked.duration,
                    priority=admission.priority,
                    reserved_seconds=admission.reserve,
                    locale=locale,
                    language=asked.language,
                    task="translate",
                    output="text",
                    thread_id=source.thread_id,
                    source_job_id=source.id,
                )
                if job_id is None:  # asked for by a press recorded meanwhile
                    answers.append(
                        PressAnswer(asked.query, texts.outputs.translation_pending(), False)
                    )
                    continue
                job_ids.append(job_id)
                counts.add(user.id)
                answers.append(PressAnswer(asked.query, texts.outputs.translation_started(), False))
        await count_refusals(session, day=now.date(), reasons=reasons)
        await session.commit()
    if job_ids:
        log.info("translations_accepted", job_ids=job_ids)
    return Recorded(job_ids, [], answers, reasons)


def _presser(asked: Translation) -> Sender:
    """Who pressed Translate, and the chat of the transcript."""
    presser, message = asked.query.from_user, asked.query.message
    chat = message.chat if message is not None else None
    return Sender(
        user_id=presser.id,
        first_name=presser.first_name[:256],
        username=presser.username,
        language_code=presser.language_code,
        chat_id=asked.source.chat_id,
        chat_type=chat.type if chat is not None else "private",
        chat_title=chat.title[:256] if chat is not None and chat.title else None,
    )
