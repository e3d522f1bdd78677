"""Live queue positions: a waiting job's status message follows its place in line.

One loop per process (`show_positions`) reads every waiting job's place each TICK_SECONDS, in
one pass with the key `slots` and `places.count_ahead` use (class, turn, id), and edits the
status messages whose place changed:
- each message at most once per PROGRESS_INTERVAL_SECONDS (its first reply counts), in groups
  once per GROUP_EDIT_INTERVAL_SECONDS (Telegram allows a group about 20 messages a minute);
- at most POSITION_EDITS_PER_SECOND edits in any second for all chats together, counted in a
  moving window in the rate-limit storage, so replies and transcripts keep room under
  Telegram's ~30 messages a second;
- nearest the front first; a message the budget does not reach skips the places it missed and
  shows the one current when its turn comes. A burst of 200 queued jobs costs the budget, no
  more.

An edit re-reads its job under `status.status_lock` and, on PostgreSQL, with its row locked
until Telegram answers, so it never lands after the job's own "Transcribing…", transcript,
failure or "Cancelled" edit, whichever process sends those.

With several bot processes on one database every process would run this loop over every
queued job: the cap holds across them with a shared (`redis://`) rate-limit storage, but the
edits would be repeated. The scale-out issue should run it in one process (a lease row), or keep
the shown place in the jobs table and claim each edit with a conditional UPDATE.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from aiogram.exceptions import TelegramAPIError
from limits import RateLimitItem, RateLimitItemPerSecond
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from voicebot import texts
from voicebot.delivery import edit_text
from voicebot.i18n import use_locale
from voicebot.models import ACTIVE, Job, JobStatus, as_utc, utcnow
from voicebot.status import (
    cancel_keyboard,
    place_in_line,
    remember_place,
    slots_now,
    status_lock,
)

if TYPE_CHECKING:
    from voicebot.jobs import Runtime

log = structlog.get_logger(__name__)

#: How often the places are read again.
TICK_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Waiting:
    """A queued job, how many jobs are ahead of it, and where its status message is."""

    job_id: int
    chat_id: int
    status_message_id: int | None
    ahead: int
    #: False while a failure or a transcript is on its way to the message: keep off it.
    shows_place: bool


async def waiting_jobs(session: AsyncSession, *, max_wait: float, now: datetime) -> list[Waiting]:
    """Every queued job, front first, with what `places.count_ahead` would count ahead of it."""
    since = now - timedelta(seconds=max_wait)
    rows = (
        await session.execute(
            select(
                Job.id,
                Job.user_id,
                Job.chat_id,
                Job.priority,
                Job.created_at,
                Job.status,
                Job.status_message_id,
                Job.error_text,
                Job.transcript_id,
            ).where(Job.status.in_(ACTIVE))
        )
    ).all()
    queued = [row for row in rows if row.status == JobStatus.queued]
    if not queued:
        return []
    holding = len(rows) - len(queued)  # running or transcribed: they hold a slot
    # A job's turn: how many jobs its sender sent since `since` up to it (any status).
    recent = await session.execute(
        select(Job.user_id, Job.id).where(
            Job.user_id.in_({row.user_id for row in queued}), Job.created_at >= since
        )
    )
    sent: dict[int, list[int]] = defaultdict(list)
    for user_id, job_id in recent:
        sent[user_id].append(job_id)
    for ids in sent.values():
        ids.sort()

    def key(row: Any) -> tuple[int, int, int]:
        klass = 0 if row.priority > 0 or as_utc(row.created_at) <= since else 1
        return klass, bisect.bisect_right(sent[row.user_id], row.id), row.id

    return [
        Waiting(
            job_id=row.id,
            chat_id=row.chat_id,
            status_message_id=row.status_message_id,
            ahead=holding + index,
            shows_place=row.error_text is None and row.transcript_id is None,
        )
        for index, row in enumerate(sorted(queued, key=key))
    ]


#: Position edits under way at once: each holds its job's row, and a database connection,
#: until Telegram answers.
EDITS_AT_ONCE = 4


async def show_positions(runtime: Runtime, *, tick: float = TICK_SECONDS) -> None:
    """Keep waiting jobs' status messages showing their place in line, until cancelled."""
    per_second = RateLimitItemPerSecond(runtime.settings.position_edits_per_second)
    while True:
        await asyncio.sleep(tick)
        try:
            await update_positions(runtime, per_second)
        except (SQLAlchemyError, OSError) as error:
            # A busy or unreachable database: the next round reads the places again.
            log.warning("positions_failed", error=repr(error))
        except Exception:  # a display loop: log it, and keep the places moving
            log.exception("positions_crashed")


async def update_positions(runtime: Runtime, per_second: RateLimitItem) -> int:
    """One round: edit the changed places, front first, within both limits; how many it edited."""
    settings = runtime.settings
    async with runtime.sessions() as session:
        moment = utcnow()
        waiting = await waiting_jobs(
            session, max_wait=settings.priority_max_wait_seconds, now=moment
        )
        at_once = await slots_now(runtime, session, now=moment)
    shown = runtime.positions
    for gone in shown.keys() - {job.job_id for job in waiting}:
        del shown[gone]  # started, finished or cancelled
    now = time.monotonic()
    # Telegram allows a group about 20 messages a minute: its messages are edited less often.
    group_interval = max(settings.progress_interval_seconds, settings.group_edit_interval_seconds)
    due: list[tuple[int, Waiting]] = []
    for job in waiting:
        place = place_in_line(job.ahead, at_once)
        last, at = shown.get(job.job_id, (None, -math.inf))
        interval = group_interval if job.chat_id < 0 else settings.progress_interval_seconds
        if (
            job.shows_place
            and job.status_message_id is not None
            and place >= 1  # 0: a slot is free for it, and its own "Transcribing…" comes next
            and place != last
            and now - at >= interval
        ):
            due.append((place, job))
    # The nearest the front first, as many as the budget has room for now; each edit spends
    # its share right before it is sent (see `_edit`), so the limit holds where Telegram counts,
    # at the sends, however long the reads before them take. The rest wait for a later round,
    # and skip the places they missed.
    _, room = await runtime.limiters.limiter.get_window_stats(per_second, "status_edits")
    chosen = [
        (place, job)
        for place, job in sorted(due, key=lambda item: (item[0], item[1].job_id))
        # A job editing its own message right now is left alone.
        if not status_lock(runtime, job.job_id).locked()
    ][: max(room, 0)]
    lanes = asyncio.Semaphore(EDITS_AT_ONCE)
    edited = await asyncio.gather(
        *(_show(runtime, job, place, at_once, per_second, lanes) for place, job in chosen)
    )
    return sum(edited)


async def _show(
    runtime: Runtime,
    waiting: Waiting,
    place: int,
    at_once: int,
    per_second: RateLimitItem,
    lanes: asyncio.Semaphore,
) -> bool:
    """`_edit`, every line it logs carrying the job's ids (in its own task: nothing leaks)."""
    with structlog.contextvars.bound_contextvars(job_id=waiting.job_id, chat_id=waiting.chat_id):
        async with lanes:
            return await _edit(runtime, waiting, place, at_once, per_second)


async def _edit(
    runtime: Runtime, waiting: Waiting, place: int, at_once: int, per_second: RateLimitItem
) -> bool:
    """Edit one status message to `place` (with `at_once` jobs running at once), unless the job
    left the queue meanwhile or the budget has no room left; whether it was sent."""
    assert waiting.status_message_id is not None
    async with status_lock(runtime, waiting.job_id), runtime.sessions() as session:
        # The job's row stays locked until the edit is answered (PostgreSQL; SQLite has one
        # process, where the status lock does it): a worker in another process cannot start
        # the job meanwhile, so its "Transcribing…" and transcript always come after this edit.
        job = await session.get(Job, waiting.job_id, with_for_update=True)
        if (
            job is None
            or job.status != JobStatus.queued
            or job.error_text is not None
            or job.transcript_id is not None
        ):
            return False
        if not await runtime.limiters.limiter.hit(per_second, "status_edits"):
            return False  # spent by another process meanwhile: a later round tries again
        try:
            with use_locale(job.locale):  # each message in its sender's language
                await edit_text(
                    runtime.bot,
                    chat_id=waiting.chat_id,
                    message_id=waiting.status_message_id,
                    text=texts.queued(waiting.ahead, at_once),
                    reply_markup=cancel_keyboard(waiting.job_id),
                )
        except TelegramAPIError as error:
            log.info("position_edit_skipped", job_id=waiting.job_id, error=str(error))
        # Recorded even when the edit failed: a deleted message (or a user who blocked the
        # bot) is not tried again every round, only when the place changes again.
        remember_place(runtime, waiting.job_id, place)
        return True
