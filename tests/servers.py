"""Real servers for the tests, from Debian's packages: each started on loopback on a free port
in a temporary directory and stopped after. A missing one fails in CI (`make test` installs it)
and skips elsewhere, as tests/test_deploy.py's tools do."""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

#: Where Debian's postgresql package keeps its programs (not on PATH), newest version first.
POSTGRES_FOLDERS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
#: The server's own time zone, far from UTC and not a whole hour off it: code that lets the
#: database turn times into dates or hours in its session time zone shows up as wrong numbers.
POSTGRES_TIMEZONE = "Asia/Kathmandu"


def server_binary(name: str, folders: list[Path]) -> str:
    """The program's path (PATH first, then `folders`); missing, it fails in CI and skips else."""
    found = shutil.which(name) or next(
        (str(folder / name) for folder in folders if (folder / name).is_file()), None
    )
    if found is None:
        message = f"{name} is not installed (`make test` installs it with apt-get)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust authentication, no durability);
    `create_database` gives each test a fresh empty database on it."""

    #: The cluster's superuser, which the bot and the tests connect as.
    USER = "voicebot"

    def __init__(self) -> None:
        self.initdb = server_binary("initdb", POSTGRES_FOLDERS)
        self.pg_ctl = server_binary("pg_ctl", POSTGRES_FOLDERS)
        # initdb refuses to run as root: as root, the cluster belongs to the package's user.
        self.owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="voicebot-postgres-"))
        if self.owner is not None:
            os.chown(self.root, self.owner.pw_uid, self.owner.pw_gid)
        self.data = self.root / "data"
        self.port = 0
        self.numbers = itertools.count(1)

    def _run(self, *command: str) -> None:
        """Run one server command as the cluster's owner; its output is in the failure."""
        user = None if self.owner is None else self.owner.pw_uid
        group = None if self.owner is None else self.owner.pw_gid
        done = subprocess.run(
            command, user=user, group=group, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}"

    @property
    def running(self) -> bool:
        """Whether the server is up (its data folder holds a pid file)."""
        return (self.data / "postmaster.pid").exists()

    def start(self) -> None:
        """Start the server, waiting until it accepts connections: the first time on a new
        cluster and a free port, after `stop` on the same data and port."""
        if not (self.data / "PG_VERSION").exists():
            self._run(
                *(self.initdb, "--pgdata", str(self.data), "--username", self.USER),
                *("--auth", "trust", "--encoding", "UTF8", "--locale", "C", "--no-sync"),
            )
        self.port = self.port or free_port()
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "timezone": POSTGRES_TIMEZONE,
            # A test cluster: losing it in a crash costs nothing, waiting for the disk does.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
        }
        options = " ".join(f"-c {name}={value}" for name, value in settings.items())
        log = self.root / "server.log"
        self._run(
            *(self.pg_ctl, "start", "--pgdata", str(self.data), "--log", str(log)),
            *("--wait", "--timeout", "60", "--options", options),
        )

    def stop(self) -> None:
        """Stop the server (no waiting for clients), keeping its data (a fast stop still ends
        with a checkpoint): `start` brings it back."""
        if self.running:
            self._run(self.pg_ctl, "stop", "--pgdata", str(self.data), "--mode", "fast", "--wait")

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str, driver: str = "postgresql+asyncpg") -> str:
        """The URL of one database on this server."""
        return f"{driver}://{self.USER}@127.0.0.1:{self.port}/{database}"

    async def _admin(self, statement: str) -> None:
        connection = await asyncpg.connect(self.url("postgres", driver="postgresql"))
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    async def create_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        name = f"test_{next(self.numbers)}"
        await self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    async def drop_database(self, url: str) -> None:
        """Drop the database of `url`, closing what is still connected to it."""
        await self._admin(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
