"""Run the real bot (`python -m voicebot run`, or its `bot` and `worker` roles) as a child
process against the fake Bot API."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from .fakes import FakeBotAPI

#: Every bot process started in the current test; `tests/conftest.py` kills those still running
#: when the test ends (a test that failed before it stopped them), so none outlives its test.
STARTED: list[asyncio.subprocess.Process] = []


def bot_database(database_url: str) -> dict[str, str]:
    """The bot's environment for the `database_url` fixture's database: nothing for SQLite
    (the bot's default file under DATA_DIR is that file), DATABASE_URL for PostgreSQL."""
    return {"DATABASE_URL": database_url} if database_url.startswith("postgresql") else {}


class BotProcess:
    """One `voicebot run` process (or `role`); `start` returns once it is polling (a worker:
    once it has started)."""

    def __init__(
        self, api: FakeBotAPI, workdir: Path, model_cache: Path, *, role: str = "run", **env: str
    ) -> None:
        self.api = api
        self.workdir = workdir
        self.role = role
        self.env = {
            **os.environ,
            "TELEGRAM_BOT_TOKEN": api.token,
            "TELEGRAM_API_URL": api.url,
            "DATA_DIR": str(workdir / "data"),
            "MODEL_CACHE_DIR": str(model_cache),
            "LOG_FORMAT": "json",
            "PROGRESS_INTERVAL_SECONDS": "1",
            # No HTTP app unless a test asks for one on a port of its own: bots run side by side.
            "HTTP_PORT": "0",
            # One job at a time, so places in line, cancels and progress edits come in an order
            # a test can wait for; the chaos, scale-out and batching tests run batches (and the
            # chaos test two batch loops, the default).
            "WORKERS": "1",
            "BATCH_SIZE": "1",
            **env,
        }
        self.process: asyncio.subprocess.Process | None = None
        self.log = workdir / "bot.log"

    async def start(self, timeout: float = 120, *, wait: bool = True) -> None:
        """Start the process, appending to `log`; with `wait`, return once it asks for updates
        (getUpdates, or setWebhook when BOT_MODE=webhook)."""
        asks = "setWebhook" if self.env.get("BOT_MODE") == "webhook" else "getUpdates"
        polls = len(self.api.calls_of(asks))
        started = self.output().count('"bot_started"')
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "voicebot",
                self.role,
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=log,
            )
        STARTED.append(self.process)
        if not wait:
            return
        if self.role == "worker":
            ready = lambda: self.output().count('"bot_started"') > started  # noqa: E731
        else:
            ready = lambda: len(self.api.calls_of(asks)) > polls  # noqa: E731
        await self.api.wait_for(lambda: ready() or self.exited, timeout)
        assert not self.exited, f"{self.role} exited at start:\n{self.output()}"

    @property
    def exited(self) -> bool:
        """Whether the process has ended."""
        return self.process is not None and self.process.returncode is not None

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60) -> int:
        """Send `sig` and wait for the exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), timeout)

    def output(self) -> str:
        """What the process logged so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""
