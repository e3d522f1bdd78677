"""Readiness: what `GET /ready` and `voicebot health` report, part by part."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiogram.exceptions import ClientDecodeError, TelegramAPIError
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from voicebot.locks import POLLING
from voicebot.models import Job, JobStatus

if TYPE_CHECKING:
    from aiogram import Bot

    from voicebot.db import Sessions

#: How long the database may take to answer before it counts as not answering.
DATABASE_TIMEOUT = 2.0
#: A polling loop that has not gone round for this long is stuck: a round waits at most for
#: Telegram's long poll (30 s), the HTTP timeout around it (60 s) and the longest back-off (30 s).
POLLING_STALE_SECONDS = 150.0
#: How long getWebhookInfo may take before the webhook counts as not known to be set.
TELEGRAM_TIMEOUT = 5.0


@dataclass
class Health:
    """The service's parts as `service.serve` brings them up and takes them down."""

    sessions: Sessions | None = None
    #: What this process does (`voicebot run`: both): take updates, and run jobs.
    front: bool = True
    work: bool = True
    #: The model loaded (None until it is).
    model: str | None = None
    broker: bool = False
    #: When the polling loop last went round (monotonic seconds); None: it is not running.
    polling_at: float | None = None
    stopping: bool = False
    #: Webhook mode: the WEBHOOK_URL Telegram must have set (None: polling mode), and the bot
    #: that asks it, once setWebhook succeeded (None until then).
    webhook_url: str | None = None
    webhook_bot: Bot | None = None
    #: The locks this process stands by for (see `locks.hold`), each with who holds it.
    standby: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """One fact of readiness: its name, whether it holds, and what it is."""

    name: str
    ok: bool
    detail: str


async def checks(health: Health) -> list[Check]:
    """Each readiness fact now: database, model (a worker), broker, and polling or the webhook
    (a bot)."""
    found = [await _database(health.sessions)]
    if health.work:
        found.append(Check("model", health.model is not None, health.model or "not loaded"))
    found.append(Check("broker", health.broker, "started" if health.broker else "not started"))
    if health.front:
        found.append(await _receiving(health))
    return found


async def _receiving(health: Health) -> Check:
    """Whether updates come in: the polling loop goes round, or Telegram has the webhook."""
    now = time.monotonic()
    if health.webhook_url is not None:
        return await _webhook(health)
    if health.polling_at is None and POLLING in health.standby:
        # Ready: it takes over when the poller stops. Were a standby not ready, a deploy that
        # starts the new instance and waits for it to be ready before stopping the old one
        # would never finish (the new one polls only once the old one is gone).
        return Check("polling", True, f"standby: {health.standby[POLLING]} polls")
    if health.polling_at is None:
        return Check("polling", False, "stopping" if health.stopping else "not running")
    if now - health.polling_at > POLLING_STALE_SECONDS:
        return Check("polling", False, f"stuck for {now - health.polling_at:.0f} s")
    return Check("polling", True, "running")


async def _webhook(health: Health) -> Check:
    """Whether Telegram has WEBHOOK_URL set now (getWebhookInfo), with its last delivery error."""
    bot = health.webhook_bot
    if bot is None:
        return Check("webhook", False, "stopping" if health.stopping else "not set yet")
    try:
        async with asyncio.timeout(TELEGRAM_TIMEOUT):
            info = await bot.get_webhook_info()
    except (TimeoutError, TelegramAPIError, ClientDecodeError) as error:
        return Check("webhook", False, f"getWebhookInfo failed: {str(error)[:200]}")
    if info.url != health.webhook_url:
        # Someone set another, or a polling instance of this bot deleted it.
        return Check("webhook", False, f"Telegram has {info.url or 'no webhook'} set")
    detail = f"set, {info.pending_update_count} pending"
    if info.last_error_message:
        detail += f"; last delivery error: {info.last_error_message[:200]}"
    return Check("webhook", True, detail)


async def _database(sessions: Sessions | None) -> Check:
    """Whether the database answers a read of the jobs table within DATABASE_TIMEOUT."""
    if sessions is None:
        return Check("database", False, "not connected")
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT), sessions() as session:
            # A read of a table, not a bare SELECT 1: SQLite answers that without its file.
            await session.execute(select(Job.id).limit(1))
    except TimeoutError:
        return Check("database", False, f"no answer within {DATABASE_TIMEOUT:g} s")
    except (SQLAlchemyError, OSError) as error:
        return Check("database", False, f"{error.__class__.__name__}: {str(error)[:200]}")
    return Check("database", True, "answers")


async def queue_length(sessions: Sessions) -> int:
    """Jobs waiting for a slot, in the database (all processes together)."""
    async with asyncio.timeout(DATABASE_TIMEOUT), sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(Job).where(Job.status == JobStatus.queued)
        )
    return int(count or 0)


def ready_url(host: str, port: int) -> str:
    """The /ready address of a bot serving on HTTP_HOST:HTTP_PORT, as seen from this machine."""
    # A wildcard address is where the bot listens, not where to ask: ask the loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}/ready" if ":" in host else f"http://{host}:{port}/ready"


def ask_ready(url: str, *, timeout: float = 5.0) -> tuple[bool, list[Check]]:
    """Ask a running bot's /ready: whether it is ready, and its checks (blocking).

    Raises OSError (a URLError among them) when nothing answers in time, ValueError when
    what answers is not a voicebot.
    """
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:  # 503 carries the checks too
        status, raw = error.code, error.read()
    try:
        body = json.loads(raw)
        found = [
            Check(name, bool(check["ok"]), str(check["detail"]))
            for name, check in body["checks"].items()
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"HTTP {status} without readiness checks from {url}") from error
    return status == 200, found
