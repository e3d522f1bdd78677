"""Shared fixtures: the real corpus and real models, loaded once per test session."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import os
import signal
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest

from voicebot.config import Settings
from voicebot.engine import Engine, build_engine

from . import botproc
from .fakes import FakeBotAPI
from .servers import PostgresServer, RabbitServer, RedisServer, running

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("CORPUS_DIR", ROOT.parent / "shared" / "corpus"))


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The shared real-speech corpus; its absence is a set-up error, not a skip."""
    assert (CORPUS / "manifest.tsv").is_file(), f"corpus not found at {CORPUS}"
    return CORPUS


@pytest.fixture(scope="session")
def references(corpus: Path) -> dict[str, dict[str, str]]:
    """Manifest rows by file name."""
    with (corpus / "manifest.tsv").open(encoding="utf-8") as handle:
        return {row["file"]: row for row in csv.DictReader(handle, delimiter="\t")}


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh model cache, so every run assembles the bundled model for real."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def base_engine(model_cache: Path) -> Iterator[Engine]:
    """The bundled multilingual `base` model."""
    engine = build_engine(Settings(whisper_model="base", model_cache_dir=model_cache))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def tiny_engine(model_cache: Path) -> Iterator[Engine]:
    """The bundled English-only `tiny.en` model: fast."""
    engine = build_engine(Settings(whisper_model="tiny.en", model_cache_dir=model_cache))
    yield engine
    engine.close()


@pytest.fixture(autouse=True)
def no_bot_left() -> Iterator[None]:
    """Kill the bot processes a test left running (it failed before stopping them): a leftover
    would go on polling and taking CPU from the tests after it, for as long as the machine runs."""
    yield
    for process in botproc.STARTED:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
    botproc.STARTED.clear()


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    """A fresh fake Bot API server on 127.0.0.1, stopped after the test."""
    async with FakeBotAPI() as fake:
        yield fake


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session, started when a test first asks for it."""
    with running(PostgresServer()) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh empty database on each backend: a SQLite file in a folder not made yet (as on
    first run), or a new database on the session's PostgreSQL server, dropped after."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'data' / 'voicebot.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    url = await server.create_database()
    yield url
    await server.drop_database(url)


@pytest.fixture
async def postgres_url(postgres: PostgresServer) -> AsyncIterator[str]:
    """A fresh database on the session's PostgreSQL server, dropped after."""
    url = await postgres.create_database()
    yield url
    await postgres.drop_database(url)


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitServer]:
    """One RabbitMQ node for the session, started when a test first asks for it."""
    with running(RabbitServer()) as server:
        yield server


@pytest.fixture
def amqp_url(rabbitmq: RabbitServer) -> Iterator[str]:
    """A fresh virtual host on the session's RabbitMQ node, where `guest` may do anything;
    its AMQP URL. Deleted after, with whatever the test left in it."""
    url = rabbitmq.create_vhost()
    yield url
    rabbitmq.delete_vhost(url)


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisServer]:
    """One Redis server for the session, started when a test first asks for it."""
    with running(RedisServer()) as server:
        yield server


@pytest.fixture
def redis_url(redis: RedisServer) -> Iterator[str]:
    """An empty database (index) of its own on the session's Redis server; its URL.
    Flushed after."""
    url = redis.create_database()
    yield url
    redis.flush_database(url)


# ------------------------------------------------------------- running on two workers
# `make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadgroup`), one test at a
# time each: most of a test's time is one core's (a bot process importing its libraries, Python
# handling updates), so the other core would be idle. A test that measures how fast something
# happens (an upper bound in seconds, or a rate) is marked `exclusive`: it runs alone, the other
# worker waiting until it ends, so that it is timed on a machine no busier than in a serial run.

#: Modules whose tests each run for minutes of several processes: started first, so that the
#: last tests to end are short ones and both workers finish at about the same time.
LONGEST = ("test_chaos.py", "test_scale.py")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "exclusive: the test measures time (a bound in seconds, a rate): under pytest-xdist it "
        "runs alone, the other workers waiting (see tests/conftest.py)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On xdist workers, hand out the longest tests first and the exclusive ones last (each
    worker collects the same order, which `--dist loadgroup` follows); a serial run keeps the
    order of the files."""
    if not hasattr(config, "workerinput"):
        return

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("exclusive"):
            return 3
        if item.path.name in LONGEST:
            return 0
        # Real models or real bot processes: seconds to minutes each; the rest: milliseconds.
        return 1 if "model_cache" in getattr(item, "fixturenames", ()) else 2

    items.sort(key=rank)  # stable: the files' order within each rank


@contextlib.contextmanager
def machine_share(config: pytest.Config, exclusive: bool) -> Iterator[None]:
    """Under xdist, a share of the machine for one test: held by any number of tests at once,
    or by an exclusive one alone. A readers-writer lock of two files in the run's temporary
    folder: a test passes the gate, then shares the machine lock; an exclusive test holds the
    gate (no new test starts) while it waits for the machine lock alone."""
    if not hasattr(config, "workerinput"):
        yield
        return
    folder = Path(config.option.basetemp).parent  # the run's; each worker has a folder in it
    with (folder / "gate.lock").open("a") as gate, (folder / "machine.lock").open("a") as machine:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(machine, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            if not exclusive:
                fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(machine, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None]:
    """Each test (set-up to teardown) holds its share of the machine; the wait for it comes
    before the test's timeout starts."""
    with machine_share(item.config, item.get_closest_marker("exclusive") is not None):
        yield


#: For a test that checks something only SQLite has (pragmas, the file itself).
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
