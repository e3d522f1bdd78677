"""The service: the bot (the front: updates in, jobs recorded and published) and its workers
(jobs run), in one process (`voicebot run`) or in processes of their own (`voicebot bot`,
`voicebot worker`) sharing PostgreSQL and RabbitMQ. The same code runs either way; a role
only leaves out the parts it does not do.

Updates come by long polling (BOT_MODE=polling, the default) or to the HTTP app's webhook
(BOT_MODE=webhook); either way each is confirmed to Telegram only after it is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from typing import TYPE_CHECKING

import structlog
from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramNetworkError,
    TelegramUnauthorizedError,
)
from aiogram.types import BotCommand, BotCommandScopeAllGroupChats, User
from aiogram.utils.i18n import I18n
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from voicebot import cancels, leases, locks, places, positions, privacy, telegramtypes, texts
from voicebot.bot import build_dispatcher
from voicebot.bot.admin import admin_menu, set_admin_menus
from voicebot.broker import build_broker
from voicebot.catalogs import build_i18n
from voicebot.chatadmins import ChatAdmins
from voicebot.config import Settings
from voicebot.db import build_engine as build_db_engine
from voicebot.db import build_sessions, upgrade_async
from voicebot.engine import Engine, build_engine
from voicebot.errors import ConfigError
from voicebot.health import Health
from voicebot.i18n import DEFAULT_LOCALE, SUPPORTED
from voicebot.jobs import Runtime, recover, transcribe_job
from voicebot.metrics import Metrics, build_metrics
from voicebot.metrics import set_current as set_current_metrics
from voicebot.models import utcnow
from voicebot.polling import poll
from voicebot.ratelimits import build_limiters, check_storage
from voicebot.slots import Slots

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy.ext.asyncio import AsyncEngine

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


async def serve(settings: Settings, *, front: bool = True, work: bool = True) -> None:
    """Run until SIGINT/SIGTERM; then finish running jobs within the grace period.

    `front`: take updates and record jobs; `work`: run jobs (load the model, consume the broker).
    """
    check_role(settings, front=front, work=work)
    if front:
        check_mode(settings)
    # Held while the service runs (see `build_now`).
    _results = telegramtypes.build_now(updates=front)
    bot = build_bot(settings)
    i18n = build_i18n()
    # Current for the whole service: the tasks created below inherit it, and each update or
    # job picks its own locale within it (English where none is chosen).
    i18n.set_current(i18n)
    metrics, health = build_metrics(), Health(front=front, work=work)
    if front and settings.bot_mode == "webhook":
        health.webhook_url = settings.webhook_url
    set_current_metrics(metrics)  # for `delivery.with_retries`, as i18n above
    bot.session.middleware(metrics.count_telegram_errors)
    try:
        # The HTTP app first: /health answers, and /ready says what is missing, during start-up.
        app = _build_app(settings, health, metrics)
        async with _serving(app, settings):
            me = await _check_token(bot, settings)
            await upgrade_async(settings.sqlalchemy_url)
            database = build_db_engine(settings.sqlalchemy_url)
            health.sessions = sessions = build_sessions(database)
            engine: Engine | None = None
            try:
                if work:
                    engine = await asyncio.to_thread(
                        build_engine, settings, on_batch=metrics.batch_pieces.observe
                    )
                health.model = settings.whisper_model if work else None
                runtime = Runtime(
                    settings=settings,
                    bot=bot,
                    sessions=sessions,
                    engine=engine,
                    slots=Slots(settings.jobs_at_once, max_wait=settings.priority_max_wait_seconds),
                    limiters=build_limiters(settings),
                    chat_admins=ChatAdmins(ttl=settings.chat_admin_cache_seconds),
                    metrics=metrics,
                    health=health,
                    sole_worker=leases.sole_worker(settings),
                )
                metrics.running_jobs.set_function(lambda: len(runtime.running))
                await check_storage(runtime.limiters.limiter, settings=settings)
                await _run(runtime, database, me, i18n, app, front=front, work=work)
            finally:
                health.sessions = None
                if engine is not None:
                    # Its batch threads; what they run is finished or given back by now.
                    await asyncio.to_thread(engine.close)
                await database.dispose()
    finally:
        await bot.session.close()
    log.info("stopped")


def check_role(settings: Settings, *, front: bool, work: bool) -> None:
    """A one-line ConfigError for what `voicebot bot` or `voicebot worker` lacks: the broker
    and the database it shares with the other role."""
    if front and work:
        return  # `voicebot run`: anything goes, embedded by default
    role = "bot" if front else "worker"
    if settings.broker_url is None:
        raise ConfigError(
            f"voicebot {role} needs BROKER_URL=amqp://…: the bot and its workers share jobs "
            "through RabbitMQ (voicebot run does both in one process without one)"
        )
    if make_url(settings.sqlalchemy_url).get_backend_name() == "sqlite":
        raise ConfigError(
            f"voicebot {role} needs DATABASE_URL=postgresql+asyncpg://…: a database the bot and "
            "its workers share (voicebot run keeps SQLite)"
        )


def check_mode(settings: Settings) -> None:
    """A one-line ConfigError for what webhook mode lacks (BOT_MODE=webhook)."""
    if settings.bot_mode != "webhook":
        return
    missing = [
        name
        for name, value in (
            ("WEBHOOK_URL", settings.webhook_url),
            ("WEBHOOK_SECRET", settings.webhook_secret),
        )
        if value is None
    ]
    if missing:
        raise ConfigError(
            f"BOT_MODE=webhook needs {' and '.join(missing)}: the public HTTPS address Telegram "
            "posts updates to, and a secret it sends with them (openssl rand -hex 32)"
        )
    if settings.http_port == 0:
        raise ConfigError("BOT_MODE=webhook needs the HTTP app: set HTTP_PORT (not 0)")


def _build_app(settings: Settings, health: Health, metrics: Metrics) -> FastAPI | None:
    """The HTTP app, or None when HTTP_PORT=0."""
    if settings.http_port == 0:
        return None
    # Imported here: FastAPI takes a second to import, which a start that fails early (a bad
    # token) or runs without the app (tests: HTTP_PORT=0) need not wait for.
    from voicebot.web.app import build_app

    return build_app(settings, health, metrics)


def _serving(
    app: FastAPI | None, settings: Settings
) -> contextlib.AbstractAsyncContextManager[None]:
    """Serve `app` on HTTP_HOST:HTTP_PORT while the block runs (no app: nothing)."""
    if app is None:
        return contextlib.nullcontext()
    from voicebot.web.app import serving

    return serving(app, settings)


async def _run(
    runtime: Runtime,
    database: AsyncEngine,
    me: User,
    i18n: I18n,
    app: FastAPI | None,
    *,
    front: bool,
    work: bool,
) -> None:
    settings, bot = runtime.settings, runtime.bot
    broker = build_broker(runtime, transcribe_job, consume=work)
    dispatcher = build_dispatcher(runtime, i18n=i18n) if front else None
    await broker.start()
    runtime.health.broker = True
    try:
        frozen = _freeze_start_up()
        log.info(
            "bot_started",
            frozen_objects=frozen,
            username=me.username,
            api=settings.telegram_api_url,
            model=settings.whisper_model if work else None,
            workers=settings.workers if work else 0,
            batch_size=settings.batch_size if work else 0,
            mode=settings.bot_mode if front else None,
            broker="rabbitmq" if broker.durable else "embedded",
            role="run" if front and work else "bot" if front else "worker",
        )
        background: list[asyncio.Task[None]] = []
        if front:
            await set_menus(bot, settings, i18n)
            await recover(runtime, durable=broker.durable)
            background += [
                # Transcripts and job texts past CACHE_TTL_DAYS / RETENTION_DAYS are deleted
                # now and every PURGE_INTERVAL_SECONDS; no job waits for it.
                asyncio.create_task(
                    privacy.purge_periodically(runtime.sessions, settings=settings)
                ),
                # One process edits the places in line of all (the lock's holder).
                asyncio.create_task(
                    locks.run_held(
                        database,
                        locks.POSITIONS,
                        lambda: positions.show_positions(runtime),
                        holder=runtime.worker_id,
                    )
                ),
                # Jobs whose worker died (lease expired) or that no broker holds (a lost
                # publish, a job given back) are published again.
                asyncio.create_task(leases.sweep_periodically(runtime)),
            ]
        if work:
            async with runtime.sessions() as session:
                await places.register(
                    session,
                    worker_id=runtime.worker_id,
                    slots=settings.jobs_at_once,
                    now=utcnow(),
                    sole=runtime.sole_worker,
                )
                await session.commit()
            background += [
                # Jobs cancelled by another process stop here too.
                asyncio.create_task(cancels.watch(runtime)),
                # This process's running jobs keep their leases.
                asyncio.create_task(leases.heartbeat(runtime)),
            ]
        try:
            stop = _stop_on_signals()
            if dispatcher is None:
                await stop.wait()
            elif app is not None and settings.bot_mode == "webhook":
                await _take_webhooks(runtime, dispatcher, app, stop)
            else:
                # getUpdates is refused while a webhook is set: going back to polling needs
                # no more than this (updates Telegram holds stay, and come by polling).
                await bot.delete_webhook(drop_pending_updates=False)
                # Telegram has one getUpdates consumer: one bot polls, the others stand by
                # and take over when it stops or dies (see `locks`).
                await locks.run_held(
                    database,
                    locks.POLLING,
                    lambda: poll(runtime, dispatcher, stop),
                    stop=stop,
                    holder=runtime.worker_id,
                    health=runtime.health,
                )
            runtime.health.stopping = True
            await broker.stop_consuming()
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
        if work:
            await _unregister(runtime)
    finally:
        runtime.health.broker = False
        await broker.close()


def _freeze_start_up() -> int:
    """Keep what start-up built out of the collector's full passes; how many objects that is.

    A process with the bot holds about 200,000 objects once started (aiogram's types, the
    model's wrappers, SQLAlchemy's mappers), nearly all for good. A full pass of Python's
    collector walks every one: 90-180 ms with the event loop stopped, once or twice a burst,
    and a lone note that came meanwhile started that much later (157-228 ms instead of
    22-37 ms from update to getFile, in 6 of 8 runs of ten notes). Frozen, they are never
    walked again; garbage among them (a cycle made at start) is kept.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def _unregister(runtime: Runtime) -> None:
    """Take this process's slots out of the places in line (a database out of reach: they
    drop out a lease after its last heartbeat anyway)."""
    try:
        async with runtime.sessions() as session:
            await places.unregister(session, worker_id=runtime.worker_id)
            await session.commit()
    except (SQLAlchemyError, OSError) as error:
        log.warning("worker_not_unregistered", error=repr(error))


async def _take_webhooks(
    runtime: Runtime, dispatcher: Dispatcher, app: FastAPI, stop: asyncio.Event
) -> None:
    """Take updates at POST /telegram/webhook until `stop`; then record what came already."""
    from voicebot.web.webhook import Inbox

    settings, bot = runtime.settings, runtime.bot
    assert settings.webhook_url is not None  # check_mode made sure of both
    assert settings.webhook_secret is not None
    inbox = Inbox(runtime, dispatcher)
    inbox.start()
    app.state.inbox = inbox  # before setWebhook: the first update may follow it at once
    try:
        allowed = dispatcher.resolve_used_update_types()
        try:
            await bot.set_webhook(
                settings.webhook_url,
                secret_token=settings.webhook_secret.get_secret_value(),
                allowed_updates=allowed,
                max_connections=settings.webhook_max_connections,
                drop_pending_updates=False,
            )
        except TelegramBadRequest as error:
            raise ConfigError(
                f"Telegram refused WEBHOOK_URL={settings.webhook_url}: {error.message}"
            ) from error
        runtime.health.webhook_bot = bot
        log.info("webhook_set", url=settings.webhook_url, allowed_updates=allowed)
        await stop.wait()
    finally:
        # New requests get 503 (Telegram keeps those updates and sends them again); the webhook
        # stays set, so a restart, or another instance behind the same URL, takes them.
        app.state.inbox = None
        runtime.health.webhook_bot = None
        await inbox.close()


async def set_menus(bot: Bot, settings: Settings, i18n: I18n) -> None:
    """The command menus in every interface language, and in English for any other language."""
    admins: dict[str | None, list[BotCommand]] = {}
    for language_code in (None, *SUPPORTED):
        with i18n.use_locale(language_code or DEFAULT_LOCALE):
            # /buy and /paysupport only while purchases are on (STARS_PACKAGES).
            public = texts.COMMANDS | (texts.PAYMENT_COMMANDS if settings.stars_packages else {})
            menu = [BotCommand(command=name, description=text) for name, text in public.items()]
            groups = [
                BotCommand(command=name, description=text)
                for name, text in texts.GROUP_COMMANDS.items()
            ]
            admins[language_code] = admin_menu(settings, menu)
        await bot.set_my_commands(menu, language_code=language_code)
        await bot.set_my_commands(
            groups, scope=BotCommandScopeAllGroupChats(), language_code=language_code
        )
    await set_admin_menus(bot, settings, admins)


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
