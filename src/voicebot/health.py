"""Readiness: what `GET /ready` and `voicebot health` report, part by part."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from voicebot.models import Job, JobStatus

if TYPE_CHECKING:
    from voicebot.db import Sessions

#: How long the database may take to answer before it counts as not answering.
DATABASE_TIMEOUT = 2.0
#: A polling loop that has not gone round for this long is stuck: a round waits at most for
#: Telegram's long poll (30 s), the HTTP timeout around it (60 s) and the longest back-off (30 s).
POLLING_STALE_SECONDS = 150.0


@dataclass
class Health:
    """The service's parts as `service.serve` brings them up and takes them down."""

    sessions: Sessions | None = None
    #: The model loaded (None until it is).
    model: str | None = None
    broker: bool = False
    #: When the polling loop last went round (monotonic seconds); None: it is not running.
    polling_at: float | None = None
    stopping: bool = False


@dataclass(frozen=True)
class Check:
    """One fact of readiness: its name, whether it holds, and what it is."""

    name: str
    ok: bool
    detail: str


async def checks(health: Health) -> list[Check]:
    """Each readiness fact now: database, model, broker, polling."""
    now = time.monotonic()
    if health.polling_at is None:
        polling = Check("polling", False, "stopping" if health.stopping else "not running")
    elif now - health.polling_at > POLLING_STALE_SECONDS:
        polling = Check("polling", False, f"stuck for {now - health.polling_at:.0f} s")
    else:
        polling = Check("polling", True, "running")
    return [
        await _database(health.sessions),
        Check("model", health.model is not None, health.model or "not loaded"),
        Check("broker", health.broker, "started" if health.broker else "not started"),
        polling,
    ]


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
