"""A job's answers in its status message: the transcript, a failure, "Cancelled"."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog
from aiogram.exceptions import TelegramAPIError, TelegramNetworkError

from voicebot import leases, outputs, texts
from voicebot.delivery import deliver, put_status, try_edit
from voicebot.errors import LeaseLostError
from voicebot.models import ACTIVE, Job, JobStatus, Transcript, set_job, set_job_if, utcnow
from voicebot.status import ensure_status, status_lock

if TYPE_CHECKING:
    from voicebot.jobs import Runtime

log = structlog.get_logger(__name__)


async def deliver_transcript(runtime: Runtime, job: Job) -> None:
    """Put the stored transcript into the status message (and more parts), then mark it done."""
    # A worker that lost the job stops here, and one that holds it has a whole lease to send it.
    await leases.ensure_held(runtime, job.id)
    async with runtime.sessions() as session:
        stored = await session.get(Transcript, job.transcript_id)
        assert stored is not None
        fresh = await session.get(Job, job.id)
        assert fresh is not None
        done, status_message_id = fresh.delivered_parts, fresh.status_message_id
    if done == 0 and status_message_id is None:
        # The transcript goes into a status message by an (idempotent) edit, never as a new
        # message that a crash could send twice.
        status_message_id = await ensure_status(runtime, job.id)
    # The job's output (text, timestamps, srt); the buttons go on the status message, the one
    # message the job keeps the id of (see `outputs`).
    answer = outputs.answer(
        stored,
        output=job.output,
        stem=outputs.stem_of(job),
        file_chars=runtime.settings.transcript_file_chars,
    )
    parts, document = answer.parts, answer.document

    async def on_part_sent(count: int, message_id: int) -> None:
        async with runtime.sessions() as session:
            recorded = await leases.set_if_held(
                session,
                job_id=job.id,
                holder=runtime.worker_id,
                delivered_parts=count,
                status_message_id=message_id,
            )
            await session.commit()
        if not recorded:  # another worker took the job: it sends the parts not recorded here
            raise LeaseLostError(f"job {job.id} was taken by another worker")

    sending = time.monotonic()
    async with status_lock(runtime, job.id):
        await deliver(
            runtime.bot,
            chat_id=job.chat_id,
            reply_to=job.message_id,
            status_message_id=status_message_id,
            parts=parts,
            document=document,
            done=done,
            on_part_sent=on_part_sent,
            thread_id=job.thread_id,
            reply_markup=outputs.keyboard(job, stored),
        )
    runtime.metrics.delivery.observe(time.monotonic() - sending)
    async with runtime.sessions() as session:
        # Not over a cancel that /forget made meanwhile (its transcript is gone): it stays so.
        delivered = await set_job_if(
            session,
            job_id=job.id,
            statuses=ACTIVE,
            holder=runtime.worker_id,
            status=JobStatus.done,
            finished_at=utcnow(),
        )
        await session.commit()
    if delivered:
        runtime.metrics.job_done()
    log.info("job_delivered", job_id=job.id, parts=len(parts) + (1 if document else 0))


async def tell_failure(runtime: Runtime, job: Job, message: str) -> None:
    """Show `message` in the status message (an idempotent edit), then mark the job failed."""
    status_message_id = job.status_message_id or await ensure_status(runtime, job.id)
    try:
        async with status_lock(runtime, job.id):
            await put_status(
                runtime.bot,
                chat_id=job.chat_id,
                status_message_id=status_message_id,
                reply_to=job.message_id,
                text=message,
                thread_id=job.thread_id,
            )
    except TelegramAPIError as notify_error:
        log.warning("failure_not_told", job_id=job.id, error=str(notify_error))
    async with runtime.sessions() as session:
        failed = await set_job_if(
            session,
            job_id=job.id,
            statuses=ACTIVE,
            holder=runtime.worker_id,
            status=JobStatus.failed,
            finished_at=utcnow(),
        )
        await session.commit()
    if failed:
        runtime.metrics.job_failed(job.error_code or "")


async def tell_cancelled(runtime: Runtime, job_id: int, *, running: bool) -> None:
    """Log the stop and show "Cancelled" again (a progress edit may have overtaken the first),
    in a reply of its own when the job had no status message yet; then note it told."""
    log.info("job_cancelled", job_id=job_id, running=running)
    runtime.metrics.job_cancelled()
    async with runtime.sessions() as session:
        job = await session.get(Job, job_id)
    if job is None:
        return
    told: dict[str, object] = {}
    try:
        async with status_lock(runtime, job_id):
            if job.status_message_id is not None:
                await try_edit(
                    runtime.bot,
                    chat_id=job.chat_id,
                    message_id=job.status_message_id,
                    text=texts.CANCELLED,
                )
            else:
                # /forget cancels recordings not acknowledged yet: without this reply the
                # recording would get no answer at all (a cancelled job never runs again).
                if job.status_requested_at is not None:
                    log.warning("status_reply_in_doubt", job_id=job_id, chat_id=job.chat_id)
                async with runtime.sessions() as session:  # as for any status reply: `status`
                    await set_job(session, job_id=job_id, status_requested_at=utcnow())
                    await session.commit()
                told["status_message_id"] = await put_status(
                    runtime.bot,
                    chat_id=job.chat_id,
                    status_message_id=None,
                    reply_to=job.message_id,
                    text=texts.CANCELLED,
                    thread_id=job.thread_id,
                )
    except TelegramNetworkError as error:  # not told: the next start tries again
        log.warning("cancel_not_told", job_id=job_id, error=str(error))
        return
    except TelegramAPIError as error:  # for one, the user blocked the bot since: not retold
        log.warning("cancel_not_told", job_id=job_id, error=str(error))
    # Until this commit a restart tells it again (`untold_job_ids`): told again later, it
    # edits this reply.
    async with runtime.sessions() as session:
        await set_job(session, job_id=job_id, told_at=utcnow(), **told)
        await session.commit()
