"""The service on one machine: bot, workers and database in one process."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramNetworkError, TelegramUnauthorizedError
from aiogram.types import BotCommand, User

from voicebot import cancels, positions, texts
from voicebot.bot import build_dispatcher
from voicebot.bot.admin import set_admin_menus
from voicebot.cache import purge_periodically
from voicebot.chatadmins import ChatAdmins
from voicebot.config import Settings
from voicebot.db import build_engine as build_db_engine
from voicebot.db import build_sessions, upgrade_async
from voicebot.engine import build_engine
from voicebot.errors import ConfigError
from voicebot.jobs import Runtime, build_broker, recover
from voicebot.polling import poll
from voicebot.ratelimits import build_limiters
from voicebot.slots import Slots

log = structlog.get_logger(__name__)


def build_bot(settings: Settings) -> Bot:
    """The aiogram bot, pointed at TELEGRAM_API_URL."""
    if settings.telegram_bot_token is None or not settings.telegram_bot_token.get_secret_value():
        raise ConfigError(
            "TELEGRAM_BOT_TOKEN is not set: create a bot with @BotFather in Telegram and put "
            "TELEGRAM_BOT_TOKEN=<token> in .env or the environment"
        )
    from aiogram.utils.token import TokenValidationError

    api = TelegramAPIServer.from_base(
        settings.telegram_api_url.rstrip("/"), is_local=settings.telegram_local_mode
    )
    try:
        return Bot(settings.telegram_bot_token.get_secret_value(), session=AiohttpSession(api=api))
    except TokenValidationError as error:
        raise ConfigError(
            "TELEGRAM_BOT_TOKEN does not look like a bot token (digits:letters, from @BotFather)"
        ) from error


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM; then finish running jobs within the grace period."""
    bot = build_bot(settings)
    try:
        me = await _check_token(bot, settings)
        await upgrade_async(settings.sqlalchemy_url)
        database = build_db_engine(settings.sqlalchemy_url)
        try:
            engine = await asyncio.to_thread(build_engine, settings)
            runtime = Runtime(
                settings=settings,
                bot=bot,
                sessions=build_sessions(database),
                engine=engine,
                slots=Slots(settings.workers, max_wait=settings.priority_max_wait_seconds),
                limiters=build_limiters(settings),
                chat_admins=ChatAdmins(ttl=settings.chat_admin_cache_seconds),
            )
            await _poll(runtime, me)
        finally:
            await database.dispose()
    finally:
        await bot.session.close()
    log.info("stopped")


async def _poll(runtime: Runtime, me: User) -> None:
    settings, bot = runtime.settings, runtime.bot
    broker = build_broker(runtime)
    dispatcher = build_dispatcher(runtime)
    await broker.startup()
    try:
        log.info(
            "bot_started",
            username=me.username,
            api=settings.telegram_api_url,
            model=settings.whisper_model,
            workers=settings.workers,
        )
        # /buy and /paysupport only while purchases are on (STARS_PACKAGES).
        public = texts.COMMANDS | (texts.PAYMENT_COMMANDS if settings.stars_packages else {})
        menu = [BotCommand(command=name, description=text) for name, text in public.items()]
        await bot.set_my_commands(menu)
        await set_admin_menus(bot, settings, menu)
        await recover(runtime)
        background = [
            # Expired cached transcripts are purged now and hourly; no job waits for it.
            asyncio.create_task(
                purge_periodically(runtime.sessions, ttl_days=settings.cache_ttl_days)
            ),
            # Jobs cancelled by another process stop here too; queue positions stay current.
            asyncio.create_task(cancels.watch(runtime)),
            asyncio.create_task(positions.show_positions(runtime)),
        ]
        try:
            await poll(runtime, dispatcher, _stop_on_signals())
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        log.info(
            "shutting_down",
            running=len(runtime.running),
            waiting=len(runtime.waiting),
            grace=settings.shutdown_grace_seconds,
        )
        await _drain(runtime, settings.shutdown_grace_seconds)
    finally:
        await broker.shutdown()


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _check_token(bot: Bot, settings: Settings) -> User:
    """getMe, with the two ways it fails at start turned into one clear line."""
    try:
        return await bot.get_me()
    except TelegramUnauthorizedError as error:
        raise ConfigError(
            "TELEGRAM_BOT_TOKEN was refused by the Bot API: check the token from @BotFather"
        ) from error
    except TelegramNetworkError as error:
        raise ConfigError(
            f"cannot reach the Bot API at TELEGRAM_API_URL={settings.telegram_api_url}: {error}"
        ) from error


async def _drain(runtime: Runtime, grace: float) -> None:
    """Let running jobs and status replies finish for `grace` seconds; the rest stay recorded."""
    runtime.stopping = True
    waiting = set(runtime.waiting)
    for task in waiting:
        task.cancel()
    pending = runtime.running | runtime.acknowledging
    if pending:
        _, pending = await asyncio.wait(pending, timeout=grace)
    for task in pending:
        task.cancel()
    for task in pending | waiting:
        with contextlib.suppress(asyncio.CancelledError):
            await task
