"""Sending results to Telegram: splitting long text, files, idempotent edits and retries."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

import structlog
from aiogram import Bot
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import BufferedInputFile, InlineKeyboardMarkup, ReplyParameters

from voicebot import metrics

MESSAGE_LIMIT = 4096
TRANSIENT = (TelegramNetworkError, TelegramServerError, TelegramRetryAfter)
log = structlog.get_logger(__name__)
T = TypeVar("T")

# Telegram's descriptions when the user deleted the status message (or it is too old to edit).
_STATUS_GONE = ("message to edit not found", "message can't be edited")
_SPACE = re.compile(r"\s")
_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])\s+")  # noqa: RUF001 - CJK sentence ends


def split_text(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Cut `text` into parts of at most `limit` characters, at sentence, then word boundaries."""
    text = text.strip()
    parts: list[str] = []
    while len(text) > limit:
        window = text[: limit + 1]
        cut = _last_boundary(window, limit)
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        parts.append(text)
    return parts


def _last_boundary(window: str, limit: int) -> int:
    sentences = [m.start() for m in _SENTENCE_END.finditer(window) if m.start() <= limit]
    if sentences and sentences[-1] > limit // 2:
        return sentences[-1]
    spaces = [m.start() for m in _SPACE.finditer(window, 0, limit + 1)]
    if spaces and spaces[-1] > 0:
        # The last space, even early in the window: a long word moves whole to the next part.
        return spaces[-1]
    return limit


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (1-based)."""
    return float(min(2 ** (attempt - 1), 30))


async def with_retries(call: Callable[[], Awaitable[T]], *, retries: int = 2) -> T:
    """Run `call`, retrying Telegram's transient failures; 429 waits its retry_after.

    A network error can hide a request Telegram carried out, so retrying a send may show the
    message twice; edits are idempotent. Telegram offers no way to tell the two apart.
    """
    attempt = 0
    while True:
        try:
            return await call()
        except TRANSIENT as error:
            attempt += 1
            if attempt > retries:
                raise
            delay = (
                float(error.retry_after)
                if isinstance(error, TelegramRetryAfter)
                else backoff(attempt)
            )
            log.warning("telegram_retry", error=str(error), attempt=attempt, delay=delay)
            metrics.retried()
            await asyncio.sleep(delay)


async def edit_text(
    bot: Bot,
    *,
    chat_id: int,
    message_id: int,
    text: str,
    reply_markup: InlineKeyboardMarkup | None = None,
) -> None:
    """Edit a message; an edit that changes nothing counts as done (so retries are harmless).

    Without `reply_markup` the message's inline keyboard (a Cancel button) goes away.
    """
    try:
        await bot.edit_message_text(
            text=text, chat_id=chat_id, message_id=message_id, reply_markup=reply_markup
        )
    except TelegramBadRequest as error:
        if "message is not modified" not in error.message:
            raise


async def put_status(
    bot: Bot,
    *,
    chat_id: int,
    status_message_id: int | None,
    reply_to: int,
    text: str,
    retries: int = 2,
    thread_id: int | None = None,
    reply_markup: InlineKeyboardMarkup | None = None,
) -> int:
    """Show `text` (with `reply_markup`'s buttons) in the status message, or in a new reply if
    there is none or it was deleted.

    Returns the id of the message that now shows `text`; a new one goes to forum topic
    `thread_id` (None: the chat itself).
    """
    if status_message_id is not None:
        try:
            await with_retries(
                partial(
                    edit_text,
                    bot,
                    chat_id=chat_id,
                    message_id=status_message_id,
                    text=text,
                    reply_markup=reply_markup,
                ),
                retries=retries,
            )
            return status_message_id
        except TelegramBadRequest as error:
            if not any(gone in error.message for gone in _STATUS_GONE):
                raise
            log.info("status_message_gone", chat_id=chat_id, message_id=status_message_id)
    reply = ReplyParameters(message_id=reply_to, allow_sending_without_reply=True)
    sent = await with_retries(
        partial(
            bot.send_message,
            chat_id,
            text,
            reply_parameters=reply,
            message_thread_id=thread_id,
            reply_markup=reply_markup,
        ),
        retries=retries,
    )
    return sent.message_id


async def try_edit(
    bot: Bot,
    *,
    chat_id: int,
    message_id: int,
    text: str,
    reply_markup: InlineKeyboardMarkup | None = None,
) -> None:
    """Best-effort edit for progress: a busy or flaky API only skips this update."""
    try:
        await edit_text(
            bot, chat_id=chat_id, message_id=message_id, text=text, reply_markup=reply_markup
        )
    except (*TRANSIENT, TelegramBadRequest) as error:
        log.info("progress_edit_skipped", error=str(error))


PartSent = Callable[[int, int], Awaitable[None]]
"""Called after each part with (parts delivered so far, status message id)."""


async def deliver(
    bot: Bot,
    *,
    chat_id: int,
    reply_to: int,
    status_message_id: int | None,
    parts: list[str],
    document: tuple[str, bytes] | None,
    done: int,
    on_part_sent: PartSent,
    retries: int = 2,
    thread_id: int | None = None,
    reply_markup: InlineKeyboardMarkup | None = None,
) -> None:
    """Send `parts` (then `document`) from part number `done` on, recording each one sent.

    New messages go to forum topic `thread_id` (None: the chat itself).

    Part 0 replaces the status message (an idempotent edit) and carries `reply_markup`; the
    rest are new messages.
    The status message id passed to `on_part_sent` may change if the user deleted it.
    """
    # A window that cannot be closed: a new message (a later part, the file, or part 0 when
    # there is no status message) that reached Telegram just before the process died is sent
    # again on the next start, because sendMessage has no idempotency key and the Bot API
    # cannot list a chat's messages. `on_part_sent` commits right after each send to keep the
    # window to one round-trip's answer; edits of the status message are not affected.
    reply = ReplyParameters(message_id=reply_to, allow_sending_without_reply=True)
    total = len(parts) + (1 if document else 0)
    for index in range(done, total):
        if index == 0:
            status_message_id = await put_status(
                bot,
                chat_id=chat_id,
                status_message_id=status_message_id,
                reply_to=reply_to,
                text=parts[0],
                retries=retries,
                thread_id=thread_id,
                reply_markup=reply_markup,
            )
        elif index < len(parts):
            await with_retries(
                partial(
                    bot.send_message,
                    chat_id,
                    parts[index],
                    reply_parameters=reply,
                    message_thread_id=thread_id,
                ),
                retries=retries,
            )
        else:
            assert document is not None
            upload = BufferedInputFile(document[1], filename=document[0])
            await with_retries(
                partial(
                    bot.send_document,
                    chat_id,
                    upload,
                    reply_parameters=reply,
                    message_thread_id=thread_id,
                ),
                retries=retries,
            )
        assert status_message_id is not None
        await on_part_sent(index + 1, status_message_id)
