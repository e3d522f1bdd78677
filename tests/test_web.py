"""The HTTP app of `voicebot run`: /health, /ready in start-up and shutdown, `voicebot health`."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from voicebot.db import build_engine, build_sessions, upgrade_async
from voicebot.health import Health, checks

from .botproc import BotProcess
from .fakes import FakeBotAPI
from .media import encode_audio, long_speech
from .servers import free_port
from .test_fairness import rows

USER = 9101


async def get(port: int, path: str) -> httpx.Response:
    """GET http://127.0.0.1:port/path."""
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}")


async def answering(port: int, bot: BotProcess, timeout: float = 60) -> None:
    """Wait until the bot's HTTP app answers /health."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        assert not bot.exited, bot.output()
        try:
            if (await get(port, "/health")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert asyncio.get_running_loop().time() < deadline, "the HTTP app never answered"
        await asyncio.sleep(0.05)


async def health_cli(port: int, workdir: Path) -> tuple[int, list[str], str]:
    """`voicebot health` for HTTP_PORT=port: exit code, stdout lines, stderr."""
    env = {**os.environ, "HTTP_PORT": str(port), "HTTP_HOST": "127.0.0.1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voicebot",
        "health",
        "--timeout",
        "5",
        cwd=workdir,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode().splitlines(), err.decode()


def failing(body: dict[str, Any]) -> dict[str, str]:
    """The checks a /ready body says are not ready, with their details."""
    return {name: check["detail"] for name, check in body["checks"].items() if not check["ok"]}


async def test_ready_follows_start_up_and_the_cli_says_the_same(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path
) -> None:
    """Before getMe nothing is ready; before polling only polling is missing; then all is."""
    port = free_port()
    api.hold("getMe")
    api.hold("setMyCommands")  # sent after the broker started, before the polling loop
    bot = BotProcess(api, tmp_path, model_cache, WHISPER_MODEL="tiny.en", HTTP_PORT=str(port))
    await bot.start(wait=False)
    try:
        await answering(port, bot)
        alive = await get(port, "/health")
        assert alive.json() == {"status": "ok"}
        early = await get(port, "/ready")
        assert early.status_code == 503
        assert early.json()["status"] == "not ready"
        assert failing(early.json()) == {
            "database": "not connected",
            "model": "not loaded",
            "broker": "not started",
            "polling": "not running",
        }
        assert early.json()["not_ready"] == ["database", "model", "broker", "polling"]

        api.release("getMe")
        await api.wait_for(lambda: bool(api.calls_of("setMyCommands")), 120, "setMyCommands")
        starting = await get(port, "/ready")
        assert starting.status_code == 503
        assert failing(starting.json()) == {"polling": "not running"}
        assert starting.json()["checks"]["model"] == {"ok": True, "detail": "tiny.en"}
        code, lines, _ = await health_cli(port, tmp_path)
        assert code == 1
        assert "polling: NOT READY (not running)" in lines
        assert "database: ok (answers)" in lines

        api.release("setMyCommands")
        await api.wait_for(lambda: bool(api.calls_of("getUpdates")), 30, "polling")
        up = await get(port, "/ready")
        assert up.status_code == 200, up.text
        assert up.json()["status"] == "ready"
        assert up.json()["not_ready"] == []
        code, lines, _ = await health_cli(port, tmp_path)
        assert code == 0
        assert lines == [
            "database: ok (answers)",
            "model: ok (tiny.en)",
            "broker: ok (started)",
            "polling: ok (running)",
        ]
    finally:
        api.release("getMe")
        api.release("setMyCommands")
        assert await bot.stop() == 0, bot.output()

    code, lines, err = await health_cli(port, tmp_path)
    assert code == 1
    assert lines == []
    (line,) = err.splitlines()
    assert line.startswith(f"voicebot: not ready: no answer from http://127.0.0.1:{port}/ready")


@pytest.fixture(scope="module")
def long_note(corpus: Path) -> bytes:
    """A voice note of about 150 s: tiny.en takes seconds over it, so it is running at SIGTERM."""
    return encode_audio(np.concatenate([long_speech(corpus)] * 3))


async def test_not_ready_while_draining_then_the_port_is_freed(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, long_note: bytes
) -> None:
    """After SIGTERM the polling loop stops at once: /ready says so while the running job
    finishes, /health still answers; then the process exits 0 and the port is free."""
    port = free_port()
    bot = BotProcess(
        api,
        tmp_path,
        model_cache,
        WHISPER_MODEL="tiny.en",
        HTTP_PORT=str(port),
        SHUTDOWN_GRACE_SECONDS="60",
    )
    await bot.start()
    api.send_voice(USER, long_note, duration=150)
    await api.wait_for(
        lambda: rows(tmp_path, "SELECT status FROM jobs") == [("running",)], 60, "job running"
    )
    assert bot.process is not None
    bot.process.send_signal(signal.SIGTERM)
    seen: dict[str, Any] = {}
    while not seen and not bot.exited:
        ready = await get(port, "/ready")
        if ready.status_code == 503:
            seen = ready.json()
            assert (await get(port, "/health")).status_code == 200
        else:
            await asyncio.sleep(0.02)
    assert failing(seen) == {"polling": "stopping"}, seen
    assert await bot.stop() == 0, bot.output()
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))  # the server closed its socket
    assert "http_failed" not in bot.output()


async def test_a_busy_port_is_one_line_at_start(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path
) -> None:
    """HTTP_PORT taken by another program: the bot exits 2 naming the setting, before loading."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bot = BotProcess(api, tmp_path, model_cache, WHISPER_MODEL="tiny.en", HTTP_PORT=str(port))
        await bot.start(wait=False)
        assert bot.process is not None
        assert await asyncio.wait_for(bot.process.wait(), 60) == 2
    last = bot.output().strip().splitlines()[-1]
    assert last.startswith(f"voicebot: cannot listen on HTTP_HOST=127.0.0.1 HTTP_PORT={port}:")
    assert not api.calls_of("getUpdates")


async def test_ready_names_a_database_that_does_not_answer(tmp_path: Path) -> None:
    """A database whose file went away (its directory removed) fails the database check with
    the error's class; a migrated one passes; the other checks are told apart."""
    path = tmp_path / "gone" / "voicebot.db"
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade_async(url)
    engine = build_engine(url)
    try:
        health = Health(sessions=build_sessions(engine), model="tiny.en", broker=True)
        health.polling_at = time.monotonic()
        assert [(c.name, c.ok) for c in await checks(health)] == [
            ("database", True),
            ("model", True),
            ("broker", True),
            ("polling", True),
        ]
        await engine.dispose()  # the next session opens the file anew
        shutil.rmtree(path.parent)
        found = {c.name: c for c in await checks(health)}
        assert not found["database"].ok
        assert found["database"].detail.startswith("OperationalError: ")
        assert [name for name, check in found.items() if not check.ok] == ["database"]
    finally:
        await engine.dispose()
