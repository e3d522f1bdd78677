"""The fake Bot API's webhook: setWebhook, deleteWebhook, getWebhookInfo, and delivery.

As Telegram does: while a webhook is set, getUpdates is refused (409) and each pending update
is POSTed to the webhook URL with the secret header, up to ``max_connections`` at once, and
sent again until the answer is a 2xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from .fakes import FakeBotAPI

Params = dict[str, Any]
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
#: Pause after a failed round, as Telegram backs off (much shorter here).
RETRY_DELAY = 0.2


@dataclass
class Delivery:
    """One POST of an update: when, its update id and the answer's status (0: no answer)."""

    at: float
    update_id: int
    status: int


@dataclass
class Webhook:
    """The webhook state of a FakeBotAPI and its delivery task."""

    api: FakeBotAPI
    url: str = ""
    secret: str | None = None
    allowed_updates: list[str] | None = None
    max_connections: int = 40
    deliveries: list[Delivery] = field(default_factory=list)
    last_error: str | None = None
    #: Acknowledgements to lose: the update is delivered, its 200 ignored, and sent again.
    lose_acks: int = 0
    _task: asyncio.Task[None] | None = None

    async def set(self, p: Params) -> bool:
        """setWebhook: remember the URL and options; deliver from now on."""
        self.url = str(p.get("url") or "")
        self.secret = p.get("secret_token")
        self.allowed_updates = p.get("allowed_updates")
        self.max_connections = int(p.get("max_connections") or 40)
        if p.get("drop_pending_updates"):
            self.api._updates.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._deliver())
        return True

    async def delete(self, p: Params) -> bool:
        """deleteWebhook: stop delivering; pending updates wait for getUpdates."""
        self.url = ""
        if p.get("drop_pending_updates"):
            self.api._updates.clear()
        await self.stop()
        return True

    async def info(self, p: Params) -> Params:
        """getWebhookInfo, as Telegram answers it."""
        info: Params = {
            "url": self.url,
            "has_custom_certificate": False,
            "pending_update_count": len(self.api._updates),
            "max_connections": self.max_connections,
        }
        if self.allowed_updates is not None:
            info["allowed_updates"] = self.allowed_updates
        if self.last_error:
            info |= {"last_error_date": int(time.time()), "last_error_message": self.last_error}
        return info

    def forget(self) -> None:
        """Drop the webhook behind the bot's back (as another instance's deleteWebhook would)."""
        self.url = ""

    async def stop(self) -> None:
        """Stop the delivery task."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _deliver(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            while self.url:
                wakeup = self.api._wakeup
                batch = list(self.api._updates[: self.max_connections])
                if not batch:
                    await wakeup.wait()
                    continue
                statuses = await asyncio.gather(*(self._post(session, u) for u in batch))
                done = {
                    update["update_id"]
                    for update, status in zip(batch, statuses, strict=True)
                    if 200 <= status < 300
                }
                if self.lose_acks and done:
                    lost = sorted(done)[: self.lose_acks]
                    self.lose_acks -= len(lost)
                    done -= set(lost)
                self.api._updates = [u for u in self.api._updates if u["update_id"] not in done]
                if len(done) < len(batch):
                    await asyncio.sleep(RETRY_DELAY)

    async def _post(self, session: aiohttp.ClientSession, update: Params) -> int:
        headers = {SECRET_HEADER: self.secret} if self.secret else {}
        status = 0
        try:
            async with session.post(self.url, json=update, headers=headers) as response:
                status = response.status
                if status >= 300:
                    self.last_error = f"Wrong response from the webhook: {status}"
        except aiohttp.ClientError as error:
            self.last_error = f"Connection failed: {error.__class__.__name__}"
        except TimeoutError:
            self.last_error = "Read timeout expired"
        self.deliveries.append(Delivery(time.monotonic(), update["update_id"], status))
        return status
