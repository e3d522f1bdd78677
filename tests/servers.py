"""Real servers for the tests, from Debian's packages: each started on loopback on a free port
in a temporary directory and stopped after. A missing one fails in CI (`make test` installs it)
and skips elsewhere, as tests/test_deploy.py's tools do."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, unquote, urlsplit

import asyncpg
import pytest
from sqlalchemy.engine import make_url

#: Where Debian's postgresql package keeps its programs (not on PATH), newest version first.
POSTGRES_FOLDERS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
#: The server's own time zone, far from UTC and not a whole hour off it: code that lets the
#: database turn times into dates or hours in its session time zone shows up as wrong numbers.
POSTGRES_TIMEZONE = "Asia/Kathmandu"
#: Where Debian's rabbitmq-server package keeps its real scripts: /usr/sbin has wrappers of them
#: that switch to the `rabbitmq` user (see RabbitServer).
RABBITMQ_FOLDERS = [Path("/usr/lib/rabbitmq/bin")]
#: How long a server may take to start or stop before the test fails.
SERVER_TIMEOUT = 90.0


def server_binary(name: str, folders: list[Path], *, folders_first: bool = False) -> str:
    """The program's path (PATH first, then `folders`, or the other way round); missing, it
    fails in CI and skips else."""
    in_folders = next((str(folder / name) for folder in folders if (folder / name).is_file()), None)
    found = (in_folders or shutil.which(name)) if folders_first else shutil.which(name)
    found = found or in_folders
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


async def postgres_rows(url: str, sql: str, *, timeout: float | None = None) -> list[Any]:
    """Rows (tuples) of `sql` on the PostgreSQL database at `url` (SQLAlchemy's URL, any
    driver), on a connection of its own; asyncpg commits a statement on its own."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn, timeout=timeout)
    try:
        return [tuple(row) for row in await connection.fetch(sql, timeout=timeout)]
    finally:
        await connection.close()


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll `ready` until it holds; the server's exit or a timeout fails with its log."""
    deadline = time.monotonic() + SERVER_TIMEOUT
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            output = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise AssertionError(f"{process.args!r} exited or not ready in time:\n{output}")
        time.sleep(0.05)


def group_alive(group: int) -> bool:
    """Whether a process of the process group still runs. A zombie does not count (PID 1 in a
    container may never reap it) once all its threads are gone too: a process's leading
    thread turns zombie first, and its files and ports close only with the last thread."""
    for stat in Path("/proc").glob("[0-9]*/task/[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            state, _parent, process_group = stat.read_text().rsplit(")", 1)[1].split()[:3]
            if int(process_group) == group and state not in "ZX":
                return True
    return False


def end(process: subprocess.Popen[bytes] | None, sig: signal.Signals, group: bool = True) -> None:
    """Send `sig` to the process, or to its whole group (it was started in a session of its
    own: its children too), and wait until none of the group runs: a killed process's
    children are not ours to wait for, and they die a moment after it."""
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError):
        if group and (process.poll() is None or group_alive(process.pid)):
            os.killpg(process.pid, sig)  # its children too, even when it is gone
        elif process.poll() is None:
            process.send_signal(sig)
    process.wait(SERVER_TIMEOUT)
    deadline = time.monotonic() + SERVER_TIMEOUT
    while group_alive(process.pid):
        assert time.monotonic() < deadline, f"{process.args!r}: its children outlived it"
        time.sleep(0.02)


class Server(Protocol):
    """What the test servers below have in common."""

    def start(self) -> None: ...
    def close(self) -> None: ...


ServerT = TypeVar("ServerT", bound=Server)


@contextlib.contextmanager
def running(server: ServerT) -> Iterator[ServerT]:
    """`server` started for the block, then stopped and its folder removed."""
    try:
        server.start()
        yield server
    finally:
        server.close()


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


class RedisServer:
    """A throwaway Redis on 127.0.0.1 with no background snapshots and no append-only file:
    `stop` saves a snapshot that `start` loads again, `kill` loses what changed since; each
    test gets a database index of its own (`create_database`), flushed after."""

    #: Database indexes on the server; each test takes the next one (0 stays unused).
    DATABASES = 64

    def __init__(self) -> None:
        self.binary = server_binary("redis-server", [])
        self.root = Path(tempfile.mkdtemp(prefix="voicebot-redis-"))
        self.log = self.root / "server.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.numbers = (n % (self.DATABASES - 1) + 1 for n in itertools.count())

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the server, waiting until it answers PING: the first time on a free port,
        after `stop` or `kill` on the same port and folder."""
        self.port = self.port or free_port()
        command = [
            *(self.binary, "--bind", "127.0.0.1", "--port", str(self.port)),
            *("--dir", str(self.root), "--dbfilename", "dump.rdb", "--logfile", str(self.log)),
            *("--save", "", "--appendonly", "no", "--daemonize", "no"),
            *("--databases", str(self.DATABASES)),
        ]
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                cwd=self.root, start_new_session=True,
            )  # fmt: skip
        wait_until(self._answers, self.process, self.log)

    def _answers(self) -> bool:
        try:
            return self.call(("PING",)) == ["PONG"]
        except OSError:
            return False

    def call(self, *commands: tuple[str, ...]) -> list[str]:
        """Send `commands` in one connection; their replies (status or integer replies only),
        an error reply as its text with its leading "-"."""
        payload = b"".join(
            f"*{len(command)}\r\n".encode()
            + b"".join(f"${len(part.encode())}\r\n{part}\r\n".encode() for part in command)
            for command in commands
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as connection:
            connection.sendall(payload)
            replies = connection.makefile("rb")
            lines = [replies.readline().decode().rstrip("\r\n") for _ in commands]
        return [line[1:] if line[:1] in "+:" else line for line in lines]

    def stop(self) -> None:
        """Stop the server after it saves a snapshot to its folder (SHUTDOWN SAVE)."""
        if not self.running:
            return
        assert self.process is not None
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as connection:
            connection.sendall(b"*2\r\n$8\r\nSHUTDOWN\r\n$4\r\nSAVE\r\n")
            reply = connection.makefile("rb").read()  # nothing: the server closes at exit
        assert not reply, f"SHUTDOWN SAVE refused: {reply!r}"
        self.process.wait(SERVER_TIMEOUT)

    def kill(self) -> None:
        """Kill the server (SIGKILL): what changed since the last `stop` is lost."""
        end(self.process, signal.SIGKILL)

    def close(self) -> None:
        """Stop the server and remove its folder."""
        try:
            end(self.process, signal.SIGTERM)
        finally:
            end(self.process, signal.SIGKILL)
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: int = 0) -> str:
        """The URL of one database (index) on this server."""
        return f"redis://127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """The URL of a database index no running test uses, empty."""
        database = next(self.numbers)
        self.flush_database(self.url(database))
        return self.url(database)

    def flush_database(self, url: str) -> None:
        """Empty the database of `url`."""
        database = urlsplit(url).path.lstrip("/")
        replies = self.call(("SELECT", database), ("FLUSHDB",))
        assert replies == ["OK", "OK"], replies


class RabbitServer:
    """A throwaway RabbitMQ node on 127.0.0.1, no plugins, with everything of its own in a
    temporary folder: node name, Erlang cookie, epmd on a free port (not the system's 4369),
    distribution port, data and logs. `stop` and `kill` keep the data (durable queues and
    persistent messages) and `start` brings the node back on the same port and data;
    `create_vhost` gives each test a fresh virtual host on it.

    Debian's /usr/sbin/rabbitmq-server and rabbitmqctl are wrappers that, run as root (as in
    CI), switch with `su` to the `rabbitmq` user, its home and cookie and its own folders under
    /var: the scripts they wrap, in /usr/lib/rabbitmq/bin, run the node and the CLI as
    whoever calls them, with everything taken from the environment set here. So those are
    called directly, by whoever runs the tests: root in CI (Erlang and RabbitMQ do not mind)."""

    #: The only user of a new node, allowed in from loopback only.
    USER = "guest"
    #: Erlang options for the node and the CLI: they use our epmd and never start one (the
    #: node's boot still runs a throwaway `erl` that tries, and finds ours on the port), and
    #: their distribution listens on loopback only.
    ERL_ARGS = "-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}"

    def __init__(self) -> None:
        self.server = server_binary("rabbitmq-server", RABBITMQ_FOLDERS, folders_first=True)
        self.ctl = server_binary("rabbitmqctl", RABBITMQ_FOLDERS, folders_first=True)
        self.epmd = server_binary("epmd", [])
        self.root = Path(tempfile.mkdtemp(prefix="voicebot-rabbitmq-"))
        self.log = self.root / "server.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.epmd_process: subprocess.Popen[bytes] | None = None
        self.numbers = itertools.count(1)
        self.env: dict[str, str] = {}

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _prepare(self) -> None:
        """The node's folders, files and ports, once."""
        home = self.root / "home"
        home.mkdir()
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq.conf").write_text("")  # rather than /etc/rabbitmq's
        self.port = free_port()
        inherited = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("RABBITMQ_", "ERL_"))
        }
        self.env = inherited | {
            "HOME": str(home),
            # None, rather than /etc/rabbitmq's: this path is never made.
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_NODENAME": f"voicebot-test-{os.getpid()}-{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(free_port()),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": self.ERL_ARGS,
            # The CLI is an Erlang node too: any free port for it, on loopback.
            "RABBITMQ_CTL_ERL_ARGS": self.ERL_ARGS,
            "RABBITMQ_CTL_DIST_PORT_MIN": "0",
            "RABBITMQ_CTL_DIST_PORT_MAX": "0",
            "ERL_CRASH_DUMP": str(self.root / "erl_crash.dump"),
        }

    def start(self) -> None:
        """Start the node, waiting until it accepts AMQP connections and has finished
        booting: the first time on free ports, after `stop` or `kill` on the same ones."""
        if not self.env:
            self._prepare()
        epmd_port = int(self.env["ERL_EPMD_PORT"])
        if self.epmd_process is None:
            self.epmd_process = subprocess.Popen(
                (self.epmd, "-address", "127.0.0.1", "-port", str(epmd_port)),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                cwd=self.root, env=self.env, start_new_session=True,
            )  # fmt: skip
            wait_until(lambda: accepts(epmd_port), self.epmd_process, self.log)
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                (self.server,), stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT, cwd=self.root, env=self.env, start_new_session=True,
            )  # fmt: skip
        wait_until(lambda: accepts(self.port), self.process, self.log)
        self.rabbitmqctl("await_startup", "--timeout", str(int(SERVER_TIMEOUT)))

    def rabbitmqctl(self, *arguments: str, stdin: str | None = None) -> str:
        """Run `rabbitmqctl` on this node; its output (a failure shows it)."""
        done = subprocess.run(
            (self.ctl, "--quiet", *arguments), input=stdin, env=self.env, cwd=self.root,
            capture_output=True, text=True, check=False, timeout=SERVER_TIMEOUT,
        )  # fmt: skip
        assert done.returncode == 0, (
            f"rabbitmqctl {' '.join(arguments)} failed:\n{done.stdout}{done.stderr}"
        )
        return done.stdout

    def stop(self) -> None:
        """Stop the node cleanly, keeping its data: SIGTERM to the script, which passes it on
        to the node and waits for it to exit (a second SIGTERM from us to the node would be
        one too many)."""
        end(self.process, signal.SIGTERM, group=False)

    def kill(self) -> None:
        """Kill the node and its script (SIGKILL), keeping its data: durable queues and
        persistent messages it confirmed are back after `start`."""
        end(self.process, signal.SIGKILL)

    def close(self) -> None:
        """Stop the node and its epmd and remove its folder."""
        try:
            self.stop()
        finally:
            self.kill()
            end(self.epmd_process, signal.SIGKILL)
            self.epmd_process = None
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, vhost: str = "/") -> str:
        """The AMQP URL of one virtual host on this node."""
        return f"amqp://{self.USER}:{self.USER}@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    def create_vhost(self) -> str:
        """A new empty virtual host that the user may do everything in; its URL. One CLI
        call (import_definitions), not two (add_vhost, set_permissions)."""
        vhost = f"test_{next(self.numbers)}"
        permissions = {"configure": ".*", "write": ".*", "read": ".*"}
        definitions = {
            "vhosts": [{"name": vhost}],
            "permissions": [{"user": self.USER, "vhost": vhost, **permissions}],
        }
        self.rabbitmqctl("import_definitions", "--format", "json", stdin=json.dumps(definitions))
        return self.url(vhost)

    def delete_vhost(self, url: str) -> None:
        """Delete the virtual host of `url` with everything in it."""
        self.rabbitmqctl("delete_vhost", unquote(urlsplit(url).path[1:]))
