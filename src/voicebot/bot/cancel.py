"""The Cancel button on a status message."""

from __future__ import annotations

import structlog
from aiogram import F, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.types import CallbackQuery

from voicebot import cancels, texts
from voicebot.jobs import Runtime
from voicebot.status import CANCEL_PREFIX

log = structlog.get_logger(__name__)


def answer_to(outcome: cancels.Outcome) -> str:
    """What a press is told, in the presser's language (so read when answering, not at import)."""
    if outcome in (cancels.Outcome.cancelled, cancels.Outcome.already_cancelled):
        return texts.CANCEL_DONE
    if outcome == cancels.Outcome.finished:
        return texts.CANCEL_FINISHED
    return texts.CANCEL_NOT_YOURS


def build_router() -> Router:
    """Handles presses of Cancel buttons."""
    router = Router(name="cancel")
    router.callback_query.register(on_cancel, F.data.startswith(CANCEL_PREFIX))
    return router


async def on_cancel(query: CallbackQuery, runtime: Runtime) -> None:
    """Cancel the job if the presser may; every press is answered."""
    job_id = (query.data or "").removeprefix(CANCEL_PREFIX)
    message = query.message
    if not job_id.isdigit() or message is None:
        await query.answer(texts.CANCEL_FINISHED, show_alert=True)
        return
    outcome = await cancels.press(
        runtime,
        job_id=int(job_id),
        user_id=query.from_user.id,
        chat_id=message.chat.id,
        message_id=message.message_id,
    )
    try:
        # A refusal is an alert the presser must dismiss; a cancel is a passing note.
        await query.answer(answer_to(outcome), show_alert=outcome != cancels.Outcome.cancelled)
    except TelegramAPIError as error:
        # A press delivered again after a crash: its query can no longer be answered.
        log.info("cancel_not_answered", job_id=job_id, error=str(error))
