"""Tables and the small query functions over them (session first, keywords after)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    and_,
    false,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the tables use."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """`moment` in UTC; naive values (SQLite hands stored times back so) are UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so migrations name constraints stably."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: DateTime(timezone=True), int: BigInteger}  # noqa: RUF012


class JobStatus(enum.StrEnum):
    """Where a job is; `done` and `failed` are final and mean the user has been answered."""

    queued = "queued"
    running = "running"
    transcribed = "transcribed"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


ACTIVE = (JobStatus.queued, JobStatus.running, JobStatus.transcribed)
FINAL = (JobStatus.done, JobStatus.failed, JobStatus.cancelled)
#: Jobs whose reservation still counts against the quota (a transcribed job has been charged).
RESERVING = (JobStatus.queued, JobStatus.running)


class Plan(enum.StrEnum):
    """What a user may use: free and premium have daily quotas (settings), unlimited none."""

    free = "free"
    premium = "premium"
    unlimited = "unlimited"


class User(Base):
    """A Telegram user who has written to the bot."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    first_name: Mapped[str] = mapped_column(String(256), default="")
    username: Mapped[str | None] = mapped_column(String(64))
    language_code: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    plan: Mapped[Plan] = mapped_column(
        Enum(Plan, native_enum=False, length=16), default=Plan.free, server_default="free"
    )
    #: When a granted plan falls back to free; None: it does not expire.
    plan_expires_at: Mapped[datetime | None]
    banned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: Purchased or credited seconds, spent after the day's allowance.
    balance_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    #: The interface language chosen in /settings ("en", "ru"); None: Telegram's language_code.
    ui_language: Mapped[str | None] = mapped_column(String(8))
    #: What a transcript in a private chat is sent as by default: text, timestamps or srt.
    output_format: Mapped[str] = mapped_column(String(16), default="text", server_default="text")


class ChatMode(enum.StrEnum):
    """When the bot transcribes in a group: every recording, only when asked, or never."""

    auto = "auto"
    command = "command"
    off = "off"


class Chat(Base):
    """A chat the bot has been used in."""

    __tablename__ = "chats"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(String(32))
    title: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Groups: auto, command or off (see ChatMode); private chats are always auto.
    mode: Mapped[str] = mapped_column(String(16), default="auto", server_default="auto")
    #: In auto mode, whether audio and video files are transcribed too (voice and video notes are).
    media_files: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    #: Recognition language: "auto", a code ("de"), or detection among codes ("auto:en,ru");
    #: None: WHISPER_LANGUAGE and WHISPER_ALLOWED_LANGUAGES. A private chat's is its user's.
    language: Mapped[str | None] = mapped_column(String(64))
    #: When the bot was removed from the chat (None while it is a member).
    left_at: Mapped[datetime | None]
    #: The supergroup this group became (its settings moved there).
    migrated_to_chat_id: Mapped[int | None]


class Transcript(Base):
    """A finished transcription; keyed by file_unique_id so later work can reuse it."""

    __tablename__ = "transcripts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_unique_id: Mapped[str] = mapped_column(String(128), index=True)
    text: Mapped[str] = mapped_column(Text)
    language: Mapped[str] = mapped_column(String(16))
    language_probability: Mapped[float] = mapped_column(Float)
    duration: Mapped[float] = mapped_column(Float)
    segments: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    model: Mapped[str] = mapped_column(String(256))
    #: SHA-256 of the audio file's bytes, for the cache.
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    #: The language setting it was made with ("auto", "en", "auto:en,ru"); the cache matches it.
    language_setting: Mapped[str] = mapped_column(String(64), default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Job(Base):
    """One accepted message and everything that happened to it."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("chat_id", "message_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chat_id: Mapped[int] = mapped_column(ForeignKey("chats.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    message_id: Mapped[int]
    status_message_id: Mapped[int | None]
    #: Set just before the status reply is sent: with no status_message_id, that reply is in doubt.
    status_requested_at: Mapped[datetime | None]
    kind: Mapped[str] = mapped_column(String(16))
    file_id: Mapped[str] = mapped_column(String(256))
    file_unique_id: Mapped[str] = mapped_column(String(128))
    file_size: Mapped[int | None]
    file_name: Mapped[str | None] = mapped_column(String(256))
    mime_type: Mapped[str | None] = mapped_column(String(128))
    duration: Mapped[float | None] = mapped_column(Float)
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, native_enum=False, length=16), default=JobStatus.queued, index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: 1 for premium, unlimited and admin senders, 0 for free: higher runs first.
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: Seconds held against the sender's quota until the job is charged or ends.
    reserved_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    delivered_parts: Mapped[int] = mapped_column(Integer, default=0)
    transcript_id: Mapped[int | None] = mapped_column(ForeignKey("transcripts.id"))
    error_code: Mapped[str | None] = mapped_column(String(64))
    #: What the user is told about the failure; set before telling them, `failed` after.
    error_text: Mapped[str | None] = mapped_column(Text)
    #: Interface language of everything this job says ("en", "ru"), decided when accepted.
    locale: Mapped[str | None] = mapped_column(String(8))
    #: Recognition language setting decided when accepted (as Chat.language); None: defaults.
    language: Mapped[str | None] = mapped_column(String(64))
    #: transcribe, or translate (Whisper's translation to English).
    task: Mapped[str] = mapped_column(String(16), default="transcribe", server_default="transcribe")
    #: How the transcript is sent: text, timestamps or srt.
    output: Mapped[str] = mapped_column(String(16), default="text", server_default="text")
    #: The forum topic of the message (message_thread_id); answers go there.
    thread_id: Mapped[int | None]
    #: For a translation: the job whose transcript's button asked for it.
    source_job_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    #: When a cancelled job's "Cancelled" was shown (or given up on); None: still to be told.
    told_at: Mapped[datetime | None]
    #: The worker running it (see `leases`), kept after it ends; None: no worker has it now.
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    #: Until when `claimed_by` may keep it without a heartbeat; after that another may take it.
    lease_until: Mapped[datetime | None]
    #: The priority a durable broker (RabbitMQ) holds it with (see `broker`); None: not held
    #: there (never published, given back at a shutdown, or the embedded broker's).
    published_priority: Mapped[int | None] = mapped_column(Integer)
    #: When it was last published to a durable broker.
    published_at: Mapped[datetime | None]


class Usage(Base):
    """What one transcribed job cost: one row per job, written with its transcript (the charge)."""

    __tablename__ = "usage"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)
    audio_seconds: Mapped[float] = mapped_column(Float)
    processing_seconds: Mapped[float] = mapped_column(Float)
    #: Seconds charged: from the day's allowance, then `balance_seconds` of it from the balance.
    charged_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    balance_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    #: Answered from the transcript cache: nothing transcribed, nothing charged.
    cached: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: The language of the transcript charged (kept when the transcript is purged or forgotten).
    language: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Transaction(Base):
    """A change to a user's balance: a Stars purchase, a refund, or an admin's credit."""

    __tablename__ = "transactions"
    __table_args__ = (UniqueConstraint("telegram_payment_charge_id", "kind"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    #: purchase, refund or credit
    kind: Mapped[str] = mapped_column(String(16))
    #: Seconds added to (or, negative, taken from) the balance.
    seconds: Mapped[float] = mapped_column(Float)
    stars: Mapped[int | None] = mapped_column(Integer)
    telegram_payment_charge_id: Mapped[str | None] = mapped_column(String(256))
    payload: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class HandledUpdate(Base):
    """A Telegram update whose handling is committed: a redelivery of it is skipped."""

    __tablename__ = "handled_updates"
    #: The bot's id (the token's first part): update ids are counted per bot.
    bot_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    update_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    handled_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class RefusalCount(Base):
    """Messages and presses the door refused on one UTC day for one reason (see `refusals`)."""

    __tablename__ = "refusals"
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    #: `Admission.reason`, or "failed" when the message could not be recorded.
    reason: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)


class WorkerSlots(Base):
    """A process that runs jobs and how many at once (see `places`), kept fresh by its heartbeat."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    slots: Mapped[int] = mapped_column(Integer)
    seen_at: Mapped[datetime] = mapped_column(index=True)


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent a message, and in which chat: what the door records about them."""

    user_id: int
    first_name: str
    username: str | None
    language_code: str | None
    chat_id: int
    chat_type: str
    chat_title: str | None


async def upsert_senders(session: AsyncSession, *, senders: list[Sender]) -> None:
    """Record many users and chats in two statements, refreshing what may have changed."""
    if not senders:
        return
    now = utcnow()
    insert = _insert_for(session)
    # Rows in id order: PostgreSQL locks each existing row as it updates it, and two batches
    # taking the same people in other orders would deadlock (lock_users takes the same order).
    # The sort is stable: the batch's latest profile of each still wins.
    users = {s.user_id: s for s in sorted(senders, key=lambda s: s.user_id)}
    new_users = insert(User).values(
        [
            {
                "id": s.user_id,
                "first_name": s.first_name,
                "username": s.username,
                "language_code": s.language_code,
                "created_at": now,
                "last_seen_at": now,
            }
            for s in users.values()
        ]
    )
    await session.execute(
        new_users.on_conflict_do_update(
            index_elements=[User.id],
            set_={
                "first_name": new_users.excluded.first_name,
                "username": new_users.excluded.username,
                "language_code": new_users.excluded.language_code,
                "last_seen_at": now,
            },
        )
    )
    chats = {s.chat_id: s for s in sorted(senders, key=lambda s: s.chat_id)}
    new_chats = insert(Chat).values(
        [
            {"id": s.chat_id, "type": s.chat_type, "title": s.chat_title, "created_at": now}
            for s in chats.values()
        ]
    )
    await session.execute(
        new_chats.on_conflict_do_update(
            index_elements=[Chat.id], set_={"title": new_chats.excluded.title}
        )
    )


def _insert_for(session: AsyncSession) -> Any:
    """The dialect's INSERT with ON CONFLICT support (PostgreSQL or SQLite)."""
    return postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


async def insert_job(session: AsyncSession, **values: Any) -> int | None:
    """Insert a job; return its id, or None when that (chat_id, message_id) already has one."""
    found = await session.execute(
        _insert_for(session)(Job)
        .values(
            **{
                "status": JobStatus.queued,
                "attempts": 0,
                "delivered_parts": 0,
                "created_at": utcnow(),
                **values,
            }
        )
        .on_conflict_do_nothing(index_elements=[Job.chat_id, Job.message_id])
        .returning(Job.id)
    )
    return found.scalar_one_or_none()


async def handled_update_ids(
    session: AsyncSession, *, bot_id: int, update_ids: list[int]
) -> set[int]:
    """Which of `update_ids` were handled already (see `mark_handled`)."""
    if not update_ids:
        return set()
    found = await session.scalars(
        select(HandledUpdate.update_id).where(
            HandledUpdate.bot_id == bot_id, HandledUpdate.update_id.in_(update_ids)
        )
    )
    return set(found)


async def mark_handled(session: AsyncSession, *, bot_id: int, update_ids: list[int]) -> None:
    """Note `update_ids` as handled; one noted already (a concurrent redelivery) stays as it was."""
    if not update_ids:
        return
    now = utcnow()
    rows = [
        {"bot_id": bot_id, "update_id": update_id, "handled_at": now} for update_id in update_ids
    ]
    await session.execute(
        _insert_for(session)(HandledUpdate)
        .values(rows)
        .on_conflict_do_nothing(index_elements=[HandledUpdate.bot_id, HandledUpdate.update_id])
    )


async def set_chat_language(
    session: AsyncSession, *, chat_id: int, chat_type: str, title: str | None, language: str
) -> None:
    """Set a chat's recognition language setting (see Chat.language), making its row if new."""
    values = {"id": chat_id, "type": chat_type, "title": title[:256] if title else None}
    insert = _insert_for(session)(Chat).values(**values, created_at=utcnow(), language=language)
    await session.execute(
        insert.on_conflict_do_update(index_elements=[Chat.id], set_={"language": language})
    )


async def set_output_format(session: AsyncSession, *, sender: Sender, output_format: str) -> None:
    """Set a user's default output (text, timestamps or srt), recording them first if new."""
    await upsert_senders(session, senders=[sender])
    await session.execute(
        update(User).where(User.id == sender.user_id).values(output_format=output_format)
    )


async def chats_by_id(session: AsyncSession, *, chat_ids: list[int]) -> dict[int, Chat]:
    """The chats with these ids."""
    found = await session.execute(select(Chat).where(Chat.id.in_(chat_ids)))
    return {chat.id: chat for chat in found.scalars()}


async def existing_jobs(
    session: AsyncSession, *, keys: list[tuple[int, int]]
) -> set[tuple[int, int]]:
    """Which of the (chat_id, message_id) pairs already have a job."""
    if not keys:
        return set()
    found = await session.execute(
        select(Job.chat_id, Job.message_id).where(tuple_(Job.chat_id, Job.message_id).in_(keys))
    )
    return {(chat_id, message_id) for chat_id, message_id in found}


def untold() -> ColumnElement[bool]:
    """The jobs whose user has not seen their end: the unfinished ones, and the cancelled ones
    whose "Cancelled" is still to be shown (the process that cancelled them, or the one running
    them, was stopped before it told)."""
    return or_(
        Job.status.in_(ACTIVE),
        and_(Job.status == JobStatus.cancelled, Job.told_at.is_(None)),
    )


async def untold_job_ids(session: AsyncSession, *, unpublished_only: bool = False) -> list[int]:
    """The `untold` jobs, oldest first; `unpublished_only`: of those, the ones no durable
    broker holds."""
    found = await session.execute(
        select(Job.id)
        .where(
            untold(),
            *((Job.published_priority.is_(None),) if unpublished_only else ()),
        )
        .order_by(Job.id)
    )
    return list(found.scalars())


async def set_job(session: AsyncSession, *, job_id: int, **values: Any) -> None:
    """Update columns of one job."""
    await session.execute(update(Job).where(Job.id == job_id).values(**values))


async def set_job_if(
    session: AsyncSession,
    *,
    job_id: int,
    statuses: tuple[JobStatus, ...],
    holder: str | None = None,
    **values: Any,
) -> bool:
    """Update columns of one job only while its status is one of `statuses` (and, with
    `holder`, while that worker holds its lease: see `leases`); whether it did."""
    held = () if holder is None else (Job.claimed_by == holder,)
    done = await session.execute(
        update(Job).where(Job.id == job_id, Job.status.in_(statuses), *held).values(**values)
    )
    return bool(getattr(done, "rowcount", 0))
