"""The status message: the first reply to a job, its progress edits, and where results go.

Every result (transcript, failure) is an edit of the status message, which is idempotent; the
status message itself is the one new message a job sends for sure. Before sending one, the job
commits `status_requested_at`; if a restart finds that set and no message id, the earlier reply
may or may not have reached Telegram (sendMessage cannot be asked, nor a chat's messages
listed): the job logs `status_reply_in_doubt` and sends a new one. So a crash can leave a stray
status above the answer, never a second transcript.

While the job is queued or transcribing, the status message carries a Cancel button
(`cancel_keyboard`); the transcript, failure and "Cancelled" edits carry none, which removes it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

import structlog
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramRetryAfter,
)
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup, ReplyParameters

from voicebot import recent, texts
from voicebot.delivery import TRANSIENT, edit_text, with_retries
from voicebot.models import ACTIVE, RESERVING, Job, set_job, utcnow
from voicebot.places import count_ahead, running_at_once

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from voicebot.jobs import Runtime
    from voicebot.recording import Segment

log = structlog.get_logger(__name__)

#: callback_data of the Cancel button: the prefix and the job id.
CANCEL_PREFIX = "cancel:"
#: Most characters of recognised text a progress edit shows (its last part): with the
#: percentage line well within Telegram's 4096, whatever the UTF-16 length of the text.
PARTIAL_TEXT_CHARS = 3000


def cancel_keyboard(job_id: int) -> InlineKeyboardMarkup:
    """The Cancel button a status message carries while its job is queued or transcribing."""
    button = InlineKeyboardButton(text=texts.CANCEL, callback_data=f"{CANCEL_PREFIX}{job_id}")
    return InlineKeyboardMarkup(inline_keyboard=[[button]])


def place_in_line(ahead: int, workers: int) -> int:
    """1 for the job that gets the next free slot; 0 when a slot is free for it now."""
    return max(0, ahead - workers + 1)


async def slots_now(runtime: Runtime, session: AsyncSession, *, now: datetime) -> int:
    """Jobs that run at once now: the slots of the workers seen within a lease (see `places`),
    or this process's own while none is (a bot started before its workers)."""
    seen_since = now - timedelta(seconds=runtime.settings.job_lease_seconds)
    return await running_at_once(session, seen_since=seen_since) or runtime.settings.jobs_at_once


def status_lock(runtime: Runtime, job_id: int) -> asyncio.Lock:
    """The lock held around edits of the job's status message that must not be overtaken.

    A position edit re-reads the job under it, so one decided while the job was queued cannot
    land after the job's own "Transcribing…", transcript, failure or "Cancelled" edit.
    """
    lock = runtime.status_locks.get(job_id)
    if lock is None:
        lock = runtime.status_locks[job_id] = asyncio.Lock()
    return lock


#: How long a place shown is remembered (`Runtime.positions`). Only the process holding the
#: position loop forgets the jobs that left the queue; another (a second bot, or one that lost
#: the loop) would keep an entry for every reply it sent. A place forgotten too early costs at
#: most one edit to the place already shown.
PLACE_MEMORY_SECONDS = 6 * 3600.0


def remember_place(runtime: Runtime, job_id: int, place: int) -> None:
    """Note that the job's status message shows `place` now; forget places shown longer ago
    than PLACE_MEMORY_SECONDS (the oldest first: entries are kept in the order they were shown)."""
    recent.remember(
        runtime.positions, job_id, place, now=time.monotonic(), keep_for=PLACE_MEMORY_SECONDS
    )


async def acknowledge(runtime: Runtime, job_id: int) -> None:
    """Reply to the job's message with its place in line, unless it has a status message."""
    async with runtime.replies:
        if not runtime.stopping:  # at shutdown only replies already under way finish
            await ensure_status(runtime, job_id, queued=True)


async def ensure_status(runtime: Runtime, job_id: int, *, queued: bool = False) -> int | None:
    """The job's status message id, sending one first when it has none (None if that fails).

    `queued`: the text is the place in line; otherwise "Transcribing…".
    """
    async with runtime.sessions() as session:
        job = await session.get(Job, job_id)
        if job is None or job.status not in ACTIVE:
            return None
        if job.status_message_id is not None:
            return job.status_message_id
        if job.status_requested_at is not None:
            log.warning("status_reply_in_doubt", job_id=job_id, chat_id=job.chat_id)
        text, place = texts.TRANSCRIBING, None
        if queued:
            now = utcnow()
            ahead = await count_ahead(
                session,
                job_id=job_id,
                max_wait=runtime.settings.priority_max_wait_seconds,
                now=now,
            )
            at_once = await slots_now(runtime, session, now=now)
            text = texts.queued(ahead, at_once)
            place = place_in_line(ahead, at_once)
        await set_job(session, job_id=job_id, status_requested_at=utcnow())
        await session.commit()
    reply = ReplyParameters(message_id=job.message_id, allow_sending_without_reply=True)
    # A job already transcribed gets this message only to carry its transcript: no button.
    keyboard = cancel_keyboard(job_id) if job.status in RESERVING else None
    try:
        status = await with_retries(
            partial(
                runtime.bot.send_message,
                job.chat_id,
                text,
                reply_parameters=reply,
                reply_markup=keyboard,
                message_thread_id=job.thread_id,  # the media's forum topic
            )
        )
    except TelegramAPIError as error:
        # The job is recorded: it still runs, and its result gets a status message later.
        log.warning("status_not_sent", job_id=job_id, error=str(error))
        return None
    if place is not None:
        # The position loop edits it only when it changes (and not within the interval).
        remember_place(runtime, job_id, place)
    async with runtime.sessions() as session:
        await set_job(session, job_id=job_id, status_message_id=status.message_id)
        await session.commit()
    return status.message_id


class Progress:
    """Relays engine progress and text (from its thread) into throttled status-message edits.

    Recordings longer than PARTIAL_TEXT_MIN_SECONDS show the end of the text recognised so far
    under the percentage. In groups (Telegram allows about 20 messages a minute there),
    recordings shorter than GROUP_PROGRESS_MIN_SECONDS get no progress edits and longer ones at
    most one per GROUP_EDIT_INTERVAL_SECONDS.
    """

    def __init__(self, runtime: Runtime, job: Job, *, seconds: float) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.job = job
        self.started = time.monotonic()
        self.fraction = 0.0
        self.shown = 0.0
        self.partial = seconds > settings.partial_text_min_seconds
        self._texts: list[str] = []
        self._lock = threading.Lock()  # the engine's thread appends, the ticker reads
        group = job.chat_id < 0
        self.interval = settings.progress_interval_seconds
        if group:
            self.interval = max(self.interval, settings.group_edit_interval_seconds)
        edits = job.status_message_id is not None and not (
            group and seconds < settings.group_progress_min_seconds
        )
        self.ticker = asyncio.create_task(self._tick()) if edits else None

    def report(self, done: float, total: float) -> None:
        """Engine progress callback (worker thread)."""
        self.fraction = done / total if total else 1.0

    def segment(self, segment: Segment) -> None:
        """Engine segment callback (worker thread): keeps the text for the next edit."""
        if self.partial and (text := segment.text.strip()):
            with self._lock:
                self._texts.append(text)

    def text_so_far(self) -> str:
        """The last PARTIAL_TEXT_CHARS of the text recognised so far, from a word on."""
        with self._lock:
            text = " ".join(self._texts)  # as the engine joins the final transcript
        if len(text) <= PARTIAL_TEXT_CHARS:
            return text
        tail = text[-PARTIAL_TEXT_CHARS:]
        space = tail.find(" ")
        return "…" + (tail[space + 1 :] if 0 <= space < PARTIAL_TEXT_CHARS // 10 else tail)

    async def _tick(self) -> None:
        message_id = self.job.status_message_id
        assert message_id is not None
        bound = log.bind(job_id=self.job.id, chat_id=self.job.chat_id)
        while True:
            await asyncio.sleep(self.interval)
            if not self.shown < self.fraction < 1.0:
                continue
            self.shown = self.fraction
            text = texts.progress(self.fraction, time.monotonic() - self.started)
            if partial := self.text_so_far():
                text += "\n\n" + partial
            try:
                await edit_text(
                    self.runtime.bot,
                    chat_id=self.job.chat_id,
                    message_id=message_id,
                    text=text,
                    reply_markup=cancel_keyboard(self.job.id),
                )
            except TelegramRetryAfter as error:
                bound.info("progress_edit_skipped", error=str(error))
                await asyncio.sleep(error.retry_after)  # no edit before Telegram allows one
            except (*TRANSIENT, TelegramBadRequest) as error:
                bound.info("progress_edit_skipped", error=str(error))
            except TelegramForbiddenError as error:
                # Blocked by the user, or removed from the group: no more edits; the job
                # goes on, and its answer meets the same error where it is handled.
                bound.warning("progress_stopped", error=str(error))
                return

    async def stop(self) -> None:
        """Stop editing; called when the transcription ends either way."""
        if self.ticker is not None:
            self.ticker.cancel()
            await asyncio.gather(self.ticker, return_exceptions=True)
