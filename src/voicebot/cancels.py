"""Cancel: the sender (or an admin) stops a queued or transcribing job with its status button.

The decision is one conditional UPDATE (`status IN ('queued', 'running')` becomes `cancelled`),
so it holds with several processes on one database. The job's own transcript transaction and a
cache hit change the status under the same condition, so whichever commits first wins: a job
cancelled in time is never stored, delivered or charged, and a press that comes too late is
told the recording is already finished. A cancelled job's reservation stops counting at once
(`quotas` counts queued and running jobs only), and a cancelled job is final: a restart never
runs it again.

The job's task is stopped at once when the press is handled by the process that runs it
(`stop`), otherwise when `watch` finds the cancellation in the database (it polls every
CANCEL_POLL_SECONDS for the jobs this process is waiting for or running). A waiting job leaves
the slot queue; a transcription stops at the engine's next segment and frees its slot.
"""

from __future__ import annotations

import asyncio
import enum
from datetime import datetime
from typing import TYPE_CHECKING

import structlog
from aiogram.exceptions import TelegramAPIError
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from voicebot import texts
from voicebot.delivery import try_edit
from voicebot.i18n import use_locale
from voicebot.models import RESERVING, Job, JobStatus, utcnow
from voicebot.quotas import is_admin
from voicebot.status import status_lock

if TYPE_CHECKING:
    from voicebot.jobs import Runtime

log = structlog.get_logger(__name__)

#: How often a process looks for jobs of its own that were cancelled elsewhere.
CANCEL_POLL_SECONDS = 0.5


class Outcome(enum.StrEnum):
    """What a press of the Cancel button did."""

    cancelled = "cancelled"
    #: Cancelled before (a second press, or the same press delivered again after a crash).
    already_cancelled = "already_cancelled"
    #: Transcribed, delivered or failed already: nothing left to cancel.
    finished = "finished"
    #: Neither the job's sender nor an admin: nothing changed.
    not_allowed = "not_allowed"


async def decide(
    session: AsyncSession, *, job_id: int, user_id: int, admin: bool, now: datetime
) -> Outcome:
    """Cancel job `job_id` for `user_id` if they may and it is still queued or running."""
    job = await session.get(Job, job_id)
    if job is None:
        return Outcome.finished
    if job.user_id != user_id and not admin:
        return Outcome.not_allowed
    changed = await session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status.in_(RESERVING),
            # A failure being told, or a transcript being delivered, is not undone.
            Job.error_text.is_(None),
            Job.transcript_id.is_(None),
        )
        .values(status=JobStatus.cancelled, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(changed, "rowcount", 0):
        return Outcome.cancelled
    status = await session.scalar(select(Job.status).where(Job.id == job_id))
    return Outcome.already_cancelled if status == JobStatus.cancelled else Outcome.finished


async def cancelled_among(session: AsyncSession, *, job_ids: list[int]) -> list[int]:
    """Which of `job_ids` are cancelled."""
    found = await session.scalars(
        select(Job.id).where(Job.id.in_(job_ids), Job.status == JobStatus.cancelled)
    )
    return list(found)


async def press(
    runtime: Runtime, *, job_id: int, user_id: int, chat_id: int, message_id: int
) -> Outcome:
    """Handle a press of job `job_id`'s Cancel button on message `message_id` in `chat_id`.

    Decides and commits, stops the job's task when this process has it, and shows "Cancelled"
    in the message (again, for a press delivered twice: the first may have died before).
    """
    async with runtime.sessions() as session:
        outcome = await decide(
            session,
            job_id=job_id,
            user_id=user_id,
            admin=is_admin(runtime.settings, user_id),
            now=utcnow(),
        )
        await session.commit()
        # "Cancelled" is in the language of the job's sender, who may not be the presser.
        # (The job `decide` read, from the session: no second query.)
        job = await session.get(Job, job_id)
        locale = job.locale if job is not None else None
    log.info("cancel_pressed", job_id=job_id, user_id=user_id, outcome=outcome.value)
    if outcome in (Outcome.cancelled, Outcome.already_cancelled):
        stop(runtime, job_id)
        try:
            async with status_lock(runtime, job_id):
                with use_locale(locale):
                    await try_edit(
                        runtime.bot, chat_id=chat_id, message_id=message_id, text=texts.CANCELLED
                    )
        except TelegramAPIError as error:  # the job's task shows it again when it stops
            log.warning("cancel_not_shown", job_id=job_id, error=str(error))
    return outcome


def stop(runtime: Runtime, job_id: int) -> bool:
    """Stop the task of the cancelled job `job_id` if this process has one; whether it did."""
    return stop_task(runtime, job_id, reason=runtime.cancelling)


def stop_task(runtime: Runtime, job_id: int, *, reason: set[int]) -> bool:
    """Cancel job `job_id`'s task in this process, marking why in `reason` (`Runtime.cancelling`
    or `Runtime.lost`); whether there was one not being stopped already."""
    task = runtime.tasks.get(job_id)
    # A task being stopped already keeps its first reason: a lost lease says nothing, a cancel
    # says "Cancelled" (see `jobs._job`).
    if task is None or job_id in runtime.cancelling or job_id in runtime.lost:
        return False
    # Marked first: the task tells this stop from a shutdown by it.
    reason.add(job_id)
    task.cancel()
    return True


async def watch(runtime: Runtime, *, interval: float = CANCEL_POLL_SECONDS) -> None:
    """Stop this process's jobs that were cancelled elsewhere, checking every `interval` s."""
    while True:
        await asyncio.sleep(interval)
        mine = [job_id for job_id in runtime.tasks if job_id not in runtime.cancelling]
        if not mine:
            continue
        try:
            async with runtime.sessions() as session:
                found = await cancelled_among(session, job_ids=mine)
        except (SQLAlchemyError, OSError) as error:
            # A busy or unreachable database: the next round looks again (the jobs' own
            # conditional updates still refuse).
            log.warning("cancel_watch_failed", error=repr(error))
            continue
        except Exception:  # the loop must outlive any one round: log it, go on
            log.exception("cancel_watch_crashed")
            continue
        for job_id in found:
            with structlog.contextvars.bound_contextvars(job_id=job_id):
                if stop(runtime, job_id):
                    log.info("cancel_noticed")
