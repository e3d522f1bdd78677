"""Long polling that confirms an update to Telegram only after its handling is committed.

aiogram's own polling asks for the next batch (which confirms the previous one) as soon as the
batch's handler tasks exist, so a process killed while they write loses those updates for good.
Here each batch is fetched as plain JSON, parsed update by update (one that does not parse is
logged and skipped, never retried forever), handled concurrently, and its jobs are committed in
one transaction; only then does the next getUpdates carry the offset past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import structlog
from aiogram import Bot, Dispatcher
from aiogram.exceptions import ClientDecodeError, TelegramAPIError
from aiogram.methods import TelegramMethod
from aiogram.types import Chat, Update, User
from aiogram.utils.backoff import Backoff, BackoffConfig
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from voicebot.db import unavailable
from voicebot.groups import ui_languages
from voicebot.intake import Intake, Recorded, Refusal, record
from voicebot.jobs import Runtime, start
from voicebot.models import handled_update_ids, mark_handled
from voicebot.outputs import answer_press
from voicebot.ratelimits import may_notify

log = structlog.get_logger(__name__)
T = TypeVar("T")

POLL_TIMEOUT = 30
"""Seconds Telegram holds a getUpdates call open while there is nothing new."""
BACKOFF = BackoffConfig(min_delay=1.0, max_delay=30.0, factor=1.5, jitter=0.1)


class GetRawUpdates(TelegramMethod[list[dict[str, Any]]]):
    """getUpdates answered as plain JSON, so that one bad update cannot fail its batch."""

    __returning__ = list[dict[str, Any]]
    __api_method__ = "getUpdates"

    offset: int | None = None
    limit: int | None = None
    timeout: int | None = None
    allowed_updates: list[str] | None = None


async def poll(
    runtime: Runtime,
    dispatcher: Dispatcher,
    stop: asyncio.Event,
    *,
    poll_timeout: int = POLL_TIMEOUT,
) -> None:
    """Fetch, handle and record batches until `stop` is set, then confirm the last one."""
    bot = runtime.bot
    allowed = dispatcher.resolve_used_update_types()
    # The HTTP request must outlive Telegram's long-poll hold, or every idle poll is an error.
    request_timeout = int(bot.session.timeout + poll_timeout)
    backoff = Backoff(BACKOFF)
    offset: int | None = None
    while not stop.is_set():
        runtime.health.polling_at = time.monotonic()  # the heartbeat /ready looks at
        fetch = GetRawUpdates(offset=offset, timeout=poll_timeout, allowed_updates=allowed)
        try:
            batch = await _unless_stopped(bot(fetch, request_timeout=request_timeout), stop)
            if batch is None:
                break
            if batch:
                offset = await handle_batch(runtime, dispatcher, batch) or offset
        except (TelegramAPIError, ClientDecodeError, DBAPIError, OSError) as error:
            if isinstance(error, DBAPIError | OSError) and not unavailable(error):
                raise
            # Nothing past `offset` was confirmed: the same updates come again after the pause.
            delay = next(backoff)
            log.warning("polling_failed", error=repr(error), retry_in=round(delay, 1))
            await _unless_stopped(asyncio.sleep(delay), stop)
            continue
        backoff.reset()
    runtime.health.polling_at = None
    if offset is not None:
        await _confirm(bot, offset)


async def handle_batch(runtime: Runtime, dispatcher: Dispatcher, batch: list[Any]) -> int | None:
    """Handle one getUpdates batch and commit its jobs; return the offset that confirms it."""
    update_ids = [
        item["update_id"]
        for item in batch
        if isinstance(item, dict) and isinstance(item.get("update_id"), int)
    ]
    updates = [update for item in batch if (update := parse_update(item, runtime.bot)) is not None]
    runtime.metrics.received(updates, unparseable=len(batch) - len(updates))
    recorded = await record_updates(runtime, dispatcher, updates, update_ids=update_ids)
    await follow_up(runtime, recorded)
    return max(update_ids) + 1 if update_ids else None


async def record_updates(
    runtime: Runtime, dispatcher: Dispatcher, updates: list[Update], *, update_ids: list[int]
) -> Recorded:
    """Handle the updates not handled before, commit their jobs, then note all `update_ids`
    as handled; what their senders are told comes after (`follow_up`).

    A redelivered update (its id noted) is skipped. Not closed: a handler's own effects (a
    reply, a settings change) happen before the ids are committed, so a process killed in
    between repeats them on redelivery; a recording's job is kept once by its own key.
    """
    bot = runtime.bot
    started = time.monotonic()
    # The batch's senders' interface languages in the same read, for the locale middleware.
    speakers = [sender.id for update in updates if (sender := sender_of(update)) is not None]
    async with runtime.sessions() as session:
        handled = await handled_update_ids(session, bot_id=bot.id, update_ids=update_ids)
        languages = await ui_languages(session, user_ids=speakers) if speakers else {}
    if handled:
        log.info("updates_redelivered", update_ids=sorted(handled))
        updates = [update for update in updates if update.update_id not in handled]
    intake = Intake()
    results = await asyncio.gather(
        *(
            feed(dispatcher, bot, update, intake=intake, ui_languages=languages)
            for update in updates
        ),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, DBAPIError | OSError) and unavailable(result):
            raise result  # a handler's writes did not happen: nothing of the batch is confirmed
    for update, result in zip(updates, results, strict=True):
        if isinstance(result, Exception):
            # The error handler already answered; this is a failure inside it. Move on.
            log.error("update_failed", update_id=update.update_id, error=repr(result))
    # First come, first decided: quotas and limits favour the earlier message.
    intake.sort(
        {(u.message.chat.id, u.message.message_id): u.update_id for u in updates if u.message}
    )
    fed = time.monotonic()
    recorded = await record(
        runtime.sessions, intake, settings=runtime.settings, limiters=runtime.limiters
    )
    async with runtime.sessions() as session:
        await mark_handled(session, bot_id=bot.id, update_ids=update_ids)
        await session.commit()
    for reason in recorded.reasons:
        runtime.metrics.refused(reason)
    log.debug(
        "batch_recorded",
        updates=len(update_ids),
        jobs=len(recorded.job_ids),
        refused=len(recorded.refused),
        seconds=round(time.monotonic() - started, 4),
        handlers=round(fed - started, 4),
    )
    return recorded


async def follow_up(runtime: Runtime, recorded: Recorded) -> None:
    """After a batch is recorded: tell refusals, answer presses, and start the new jobs."""
    await asyncio.gather(
        *(tell_refusal(runtime, refusal) for refusal in recorded.refused),
        *(answer_press(press) for press in recorded.answers),  # button presses (Translate)
    )
    start(runtime, recorded.job_ids)


async def feed(dispatcher: Dispatcher, bot: Bot, update: Update, **kwargs: Any) -> Any:
    """Feed one update to the dispatcher, every line its handling logs carrying its ids."""
    # Bound in this coroutine's own task (gather wraps each), and unbound when it returns:
    # nothing leaks into the next update or the batch.
    with structlog.contextvars.bound_contextvars(**ids_of(update)):
        return await dispatcher.feed_update(bot, update, **kwargs)


def ids_of(update: Update) -> dict[str, int]:
    """`update_id`, and the `user_id` and `chat_id` of whoever and wherever it came from."""
    ids = {"update_id": update.update_id}
    try:
        event = update.event
    except LookupError:  # an update type this aiogram does not know
        return ids
    sender = getattr(event, "from_user", None)
    if isinstance(sender, User):
        ids["user_id"] = sender.id
    chat = getattr(event, "chat", None) or getattr(getattr(event, "message", None), "chat", None)
    if isinstance(chat, Chat):
        ids["chat_id"] = chat.id
    return ids


async def tell_refusal(runtime: Runtime, refusal: Refusal) -> None:
    """Reply with the reason a message was refused, at most once a minute per sender."""
    message = refusal.message
    # As the door counts them: an anonymous admin or a channel is its `sender_chat`.
    sender = (message.sender_chat or message.from_user or message.chat).id
    if not await may_notify(runtime.limiters, user_id=sender):
        return
    try:
        await message.reply(refusal.text)
    except TelegramAPIError as error:
        log.warning("refusal_not_told", chat_id=message.chat.id, error=str(error))


def sender_of(update: Update) -> User | None:
    """Who sent a message or pressed a button (the updates whose handlers say something)."""
    if update.message is not None:
        return update.message.from_user
    if update.callback_query is not None:
        return update.callback_query.from_user
    return None


def parse_update(item: Any, bot: Bot) -> Update | None:
    """The update in `item`, or None (logged) when it does not parse."""
    try:
        return Update.model_validate(item, context={"bot": bot})
    except ValidationError as error:
        update_id = item.get("update_id") if isinstance(item, dict) else None
        problems = [
            f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
            for problem in error.errors()[:5]
        ]
        log.error("update_unparseable", update_id=update_id, problems=problems)
        return None


async def _confirm(bot: Bot, offset: int) -> None:
    """Tell Telegram that updates before `offset` are handled, so a restart does not get them."""
    try:
        # getUpdates confirms everything below `offset`; the one update it may return is not.
        await bot(GetRawUpdates(offset=offset, limit=1, timeout=0))
    except (TelegramAPIError, ClientDecodeError) as error:
        log.warning("updates_not_confirmed", offset=offset, error=repr(error))


async def _unless_stopped(call: Awaitable[T], stop: asyncio.Event) -> T | None:
    """The result of `call`, or None if `stop` is set first (then `call` is cancelled)."""
    work = asyncio.ensure_future(call)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    return None if work.cancelled() else work.result()
