"""Rate-limit storage: REDIS_URL shares the counters between processes, in a real redis-server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from voicebot.config import Settings
from voicebot.errors import ConfigError
from voicebot.ratelimits import build_limiter, build_limiters, check_storage, take_job

from .servers import free_port, server_binary

USER = 7401


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A throwaway redis-server on 127.0.0.1 (no persistence), stopped after the module.

    Private stand-in: replace it with the shared `redis_url` fixture of tests/servers.py and
    conftest.py once that lands.
    """
    binary = server_binary("redis-server", [])
    folder = tempfile.mkdtemp(prefix="voicebot-redis-")
    port = free_port()
    server = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", folder, "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            assert server.poll() is None, "redis-server exited at start"
            assert time.monotonic() < deadline, "redis-server did not answer within 10 s"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


async def test_two_processes_share_one_count(redis_url: str) -> None:
    """Limiters built from the same REDIS_URL settings, as two bot processes build them, count
    in one place: the per-user limit holds across them, and so does the dashboard's limiter."""
    settings = Settings(redis_url=f"{redis_url}/0", user_jobs_per_minute=2)
    first, second = build_limiters(settings), build_limiters(settings)
    await check_storage(first.limiter, settings=settings)
    assert await take_job(first, user_id=USER) is None
    assert await take_job(second, user_id=USER) is None
    refused = await take_job(first, user_id=USER)
    assert refused is not None
    assert (refused.scope, refused.per_minute) == ("user", 2)
    everyone = await build_limiter(settings).get_window_stats(second.everyone, "jobs", "all")
    assert everyone.remaining == settings.global_jobs_per_minute - 2


async def test_an_explicit_storage_url_wins(redis_url: str) -> None:
    """RATE_LIMIT_STORAGE_URL other than memory:// is the storage even with REDIS_URL set; left
    at memory:// without REDIS_URL, each process counts alone."""
    explicit = Settings(redis_url=f"{redis_url}/0", rate_limit_storage_url=f"{redis_url}/1")
    user = USER + 1
    assert await take_job(build_limiters(explicit), user_id=user) is None
    in_db1 = build_limiters(Settings(rate_limit_storage_url=f"{redis_url}/1"))
    in_db0 = build_limiters(Settings(redis_url=f"{redis_url}/0"))
    for limiters, used in ((in_db1, 1), (in_db0, 0)):
        stats = await limiters.limiter.get_window_stats(limiters.per_user, "jobs", str(user))
        assert stats.remaining == limiters.per_user.amount - used
    alone = Settings(user_jobs_per_minute=1)
    assert await take_job(build_limiters(alone), user_id=user) is None
    assert await take_job(build_limiters(alone), user_id=user) is None


async def test_a_redis_that_does_not_answer_stops_the_start() -> None:
    """Nothing listening at REDIS_URL: one line that names the setting, without its password."""
    settings = Settings(redis_url=f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    limiter = build_limiter(settings)
    with pytest.raises(ConfigError) as raised:
        await check_storage(limiter, settings=settings)
    message = str(raised.value)
    assert message.startswith("REDIS_URL=redis://:***@127.0.0.1:")
    assert "does not answer" in message
    assert "hunter2" not in message
    assert "\n" not in message


def test_redis_url_is_a_redis_url() -> None:
    """A blank REDIS_URL is none; another scheme is refused at start without echoing it."""
    assert Settings(redis_url=" ").redis_url is None
    assert Settings(redis_url="unix:///run/redis.sock").redis_url == "unix:///run/redis.sock"
    with pytest.raises(ValidationError) as raised:
        Settings(redis_url="http://:hunter2@cache:6379")
    assert "hunter2" not in raised.value.errors()[0]["msg"]
    assert "redis://" in raised.value.errors()[0]["msg"]
