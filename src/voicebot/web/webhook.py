"""POST /telegram/webhook: an update is acknowledged only once its handling is committed.

Telegram posts each update alone, up to WEBHOOK_MAX_CONNECTIONS at once, and sends it again
until it gets a 2xx. Each request puts its update in the `Inbox` and waits; one task takes
whatever has arrived, handles it as one batch by the same path as long polling
(`polling.record_updates`: jobs committed in one transaction, the update ids noted so a
redelivery is skipped), answers every request of the batch, and only then tells refusals and
starts the jobs. Transcription never runs inside a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from ipaddress import IPv4Network, IPv6Network, ip_address

import structlog
from aiogram import Dispatcher
from aiogram.types import Update
from sqlalchemy.exc import DBAPIError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from voicebot.config import Settings
from voicebot.db import unavailable
from voicebot.errors import NotRecordedError
from voicebot.jobs import Runtime
from voicebot.polling import follow_up, parse_update, record_updates

log = structlog.get_logger(__name__)

PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
#: An update is a few kilobytes; a body past this is not one.
MAX_BODY_BYTES = 1024 * 1024
#: Updates handled in one batch at most (as one getUpdates call returns).
MAX_BATCH = 100
#: Turns of the event loop a batch waits at most for more requests to arrive.
GATHER_TURNS = 20


class Inbox:
    """Webhook updates waiting to be recorded; one task records them in batches."""

    def __init__(self, runtime: Runtime, dispatcher: Dispatcher) -> None:
        self.runtime = runtime
        self.dispatcher = dispatcher
        self._queue: asyncio.Queue[tuple[Update, asyncio.Future[None]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Kept by reference: the loop holds tasks only weakly.
        self._after: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start recording what arrives."""
        self._task = asyncio.create_task(self._run(), name="webhook-inbox")

    async def submit(self, update: Update) -> None:
        """Return once `update`'s batch is recorded; NotRecordedError when it was not (or the
        inbox is closing: a request read before the stop began arrives after it)."""
        if self._closing:
            raise NotRecordedError
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((update, future))
        await future

    async def close(self) -> None:
        """Record what was submitted already, then stop; wait for the batches' follow-ups."""
        self._closing = True
        await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*self._after, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            items = [await self._queue.get()]
            # Requests that arrived together are still being read when the first is queued:
            # give them a few turns of the loop to join this batch (one transaction for all).
            for _ in range(GATHER_TURNS):
                waiting = self._queue.qsize()
                await asyncio.sleep(0)
                if self._queue.qsize() == waiting:
                    break
            while len(items) < MAX_BATCH and not self._queue.empty():
                items.append(self._queue.get_nowait())
            try:
                await self._record([update for update, _ in items], [f for _, f in items])
            finally:
                for _ in items:
                    self._queue.task_done()

    @staticmethod
    def _refuse(futures: list[asyncio.Future[None]]) -> None:
        """Fail each request of a batch not recorded: none is acknowledged, Telegram resends."""
        for future in futures:
            if not future.done():  # done: its request went away (cancelled)
                future.set_exception(NotRecordedError())

    async def _record(self, updates: list[Update], futures: list[asyncio.Future[None]]) -> None:
        try:
            recorded = await record_updates(
                self.runtime,
                self.dispatcher,
                updates,
                update_ids=[update.update_id for update in updates],
            )
        except (DBAPIError, OSError) as error:
            if not unavailable(error):
                log.exception("webhook_batch_failed", updates=len(updates))
            else:
                log.warning("webhook_batch_not_recorded", updates=len(updates), error=repr(error))
            self._refuse(futures)
            return
        except Exception:
            # A fault in handling: logged, and the inbox goes on with the next batch (were
            # this task to end, every later request would wait forever).
            log.exception("webhook_batch_failed", updates=len(updates))
            self._refuse(futures)
            return
        for future in futures:
            if not future.done():
                future.set_result(None)
        after = asyncio.create_task(follow_up(self.runtime, recorded))
        self._after.add(after)
        after.add_done_callback(self._after.discard)


async def receive(request: Request) -> Response:
    """Check the sender and the secret, read and parse the update, and answer once recorded."""
    settings: Settings = request.app.state.settings
    networks = settings.webhook_trusted_networks
    client = request.client.host if request.client else ""
    if networks and not trusted(client, networks):
        log.warning("webhook_untrusted_client", client=client)
        return Response(status_code=403)
    if not secret_matches(request.headers.get(SECRET_HEADER), settings):
        log.warning("webhook_wrong_secret", client=client)
        return Response(status_code=401)
    inbox: Inbox | None = request.app.state.inbox
    if inbox is None:  # starting or stopping: Telegram keeps the update and tries again
        return JSONResponse({"error": "not accepting updates now"}, status_code=503)
    body = await read_body(request)
    if body is None:
        log.warning("webhook_body_too_large", client=client)
        return Response(status_code=413)
    update = _parse(body, inbox)
    if update is None:
        inbox.runtime.metrics.received([], unparseable=1)
        return JSONResponse({"error": "not a Telegram update"}, status_code=400)
    inbox.runtime.metrics.received([update], unparseable=0)
    try:
        await inbox.submit(update)
    except NotRecordedError:  # logged by the inbox
        return JSONResponse({"error": "not recorded, send again"}, status_code=503)
    return Response(status_code=200)


def secret_matches(given: str | None, settings: Settings) -> bool:
    """Whether `given` is WEBHOOK_SECRET, compared in constant time."""
    if given is None or settings.webhook_secret is None:
        return False
    expected = settings.webhook_secret.get_secret_value()
    return hmac.compare_digest(given.encode(), expected.encode())


def trusted(client: str, networks: list[IPv4Network | IPv6Network]) -> bool:
    """Whether the client's address lies in one of `networks`."""
    try:
        address = ip_address(client)
    except ValueError:  # not an address (a unix socket's peer, or nothing)
        return False
    return any(address in network for network in networks)


async def read_body(request: Request) -> bytes | None:
    """The request body, or None once it is past MAX_BODY_BYTES (declared or read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


def _parse(body: bytes, inbox: Inbox) -> Update | None:
    """The update in `body`, or None (logged) when it is not JSON or not an update."""
    try:
        item = json.loads(body)
    except ValueError as error:  # UnicodeDecodeError is one
        log.warning("webhook_malformed_body", error=str(error)[:200])
        return None
    if not isinstance(item, dict) or not isinstance(item.get("update_id"), int):
        log.warning("webhook_not_an_update", kind=type(item).__name__)
        return None
    return parse_update(item, inbox.runtime.bot)
