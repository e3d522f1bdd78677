"""Backups of the SQLite database while the bot runs, restores while it is stopped, the run lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from voicebot.config import Settings
from voicebot.db import MIGRATIONS
from voicebot.errors import AlreadyRunningError, BackupError

_SQLITE_MAGIC = b"SQLite format 3\x00"
#: Beside a replaced database after a restore: the database as it was just before.
BEFORE_RESTORE = ".before-restore"


@dataclass(frozen=True)
class Copy:
    """A database file written by `backup` or `restore`, as checked after writing it."""

    path: Path
    size: int
    revision: str
    jobs: int


def sqlite_path(settings: Settings) -> Path | None:
    """The SQLite file of DATABASE_URL (or DATA_DIR), or None for another database."""
    url = make_url(settings.sqlalchemy_url)
    if url.get_backend_name() != "sqlite":
        return None
    if not url.database or url.database == ":memory:":
        raise BackupError("DATABASE_URL is an in-memory SQLite database: there is nothing to copy")
    return Path(url.database)


def lock_path(settings: Settings) -> Path:
    """The lock file a running bot holds: beside its SQLite file, or in DATA_DIR."""
    database = sqlite_path(settings)
    if database is None:
        return settings.data_dir / "voicebot.lock"
    return database.with_name(f"{database.name}.lock")


@contextlib.contextmanager
def run_lock(path: Path, *, holder: str) -> Iterator[None]:
    """Hold `path` exclusively (flock: the OS drops it when the process dies, even on SIGKILL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor, writable = os.open(path, os.O_RDWR | os.O_CREAT, 0o644), True
    except PermissionError:
        # Made by another user (root running `restore`): locking needs no write access.
        descriptor, writable = os.open(path, os.O_RDONLY), False
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(descriptor, 200, 0).decode(errors="replace").strip() or "?"
            raise AlreadyRunningError(
                f"{other} is using this database (it holds {path}); {holder}"
            ) from None
        if writable:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"voicebot (pid {os.getpid()})\n".encode(), 0)
        yield
    finally:
        # Closing the descriptor releases the lock; the file stays (removing it would race).
        os.close(descriptor)


def backup(settings: Settings, target: Path) -> Copy:
    """Copy the SQLite database to `target` consistently, even while the bot writes to it.

    Blocking: run it in a thread from async code. A directory gets a timestamped file name;
    an existing file is replaced only once the new copy is complete and checked.
    """
    source = _require_sqlite(settings, "back up", "pg_dump")
    if target.is_dir():
        target = target / f"voicebot-{datetime.now(UTC):%Y%m%d-%H%M%S}.db"
    if not source.is_file():
        raise BackupError(f"there is no database at {source} (check DATA_DIR or DATABASE_URL)")
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        try:
            # mode=rw: a missing database is an error here, never a new empty file.
            with contextlib.closing(
                sqlite3.connect(f"file:{source}?mode=rw", uri=True, timeout=30)
            ) as live:
                _copy(live, partial)
        except sqlite3.Error as error:
            raise BackupError(f"cannot read the database {source}: {error}") from error
        copy = _check(partial, shown=target)
        os.replace(partial, target)
    except OSError as error:
        raise BackupError(f"cannot write {target}: {error.strerror or error}") from error
    finally:
        partial.unlink(missing_ok=True)
    return Copy(target, copy.size, copy.revision, copy.jobs)


def restore(settings: Settings, source: Path) -> tuple[Copy, Path | None]:
    """Put the backup `source` in place of the database while no bot runs.

    Returns the restored database and where the database it replaced was kept (None if there
    was none). Refuses (BackupError, AlreadyRunningError) without changing anything when
    `source` is not a voicebot database this code can run or a bot holds the lock.
    """
    database = _require_sqlite(settings, "restore", "pg_restore")
    if not source.is_file():
        raise BackupError(f"{source}: no such file")
    checked = _check(source, shown=source)
    with run_lock(lock_path(settings), holder="stop the bot before restoring"):
        database.parent.mkdir(parents=True, exist_ok=True)
        partial = database.with_name(f".{database.name}.{os.getpid()}.restore.tmp")
        try:
            try:
                with contextlib.closing(_open_read_only(source)) as backup_file:
                    _copy(backup_file, partial)
            except sqlite3.Error as error:
                raise BackupError(f"cannot read {source}: {error}") from error
            if os.geteuid() == 0:
                # root restoring for the bot's user: the file must stay the bot's to write.
                owner = database.parent.stat()
                os.chown(partial, owner.st_uid, owner.st_gid)
            kept = _set_aside(database) if database.exists() else None
            os.replace(partial, database)
            _sync_directory(database.parent)
        except OSError as error:
            raise BackupError(f"cannot write {database}: {error.strerror or error}") from error
        finally:
            partial.unlink(missing_ok=True)
    return Copy(database, database.stat().st_size, checked.revision, checked.jobs), kept


def head_revision() -> str:
    """The newest migration this code has."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def dump_command(settings: Settings, file: Path, *, restore: bool = False) -> str:
    """The pg_dump (or pg_restore) command for a PostgreSQL DATABASE_URL and a backup file."""
    url = make_url(settings.sqlalchemy_url)
    bare = URL.create(
        "postgresql",
        username=url.username,
        host=url.host,
        port=url.port,
        database=url.database,
        query=url.query,
    )
    dsn = shlex.quote(bare.render_as_string(hide_password=False))
    if restore:
        return f"pg_restore --clean --if-exists --no-owner --dbname={dsn} {shlex.quote(str(file))}"
    return f"pg_dump --format=custom --file={shlex.quote(str(file))} --dbname={dsn}"


def _require_sqlite(settings: Settings, action: str, tool: str) -> Path:
    database = sqlite_path(settings)
    if database is None:
        raise BackupError(
            f"DATABASE_URL is {make_url(settings.sqlalchemy_url).get_backend_name()}, not SQLite: "
            f"{action} it with {tool} (the password goes in PGPASSWORD or ~/.pgpass)"
        )
    return database


def _copy(source: sqlite3.Connection, target: Path) -> None:
    """SQLite's online backup in one step: one read transaction, so one consistent state.

    In WAL mode the bot keeps writing meanwhile; the copy is switched to a rollback journal so
    that it is a single self-contained file.
    """
    target.unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(target)) as copy:
        source.backup(copy)
        copy.execute("PRAGMA journal_mode=DELETE")
    with target.open("rb") as handle:
        os.fsync(handle.fileno())


def _open_read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _check(path: Path, *, shown: Path) -> Copy:
    """The file is a sound voicebot database at a revision this code knows, or BackupError."""
    with path.open("rb") as handle:
        if handle.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
            raise BackupError(f"{shown} is not a voicebot database (not an SQLite file)")
    try:
        with contextlib.closing(_open_read_only(path)) as connection:
            (integrity,) = connection.execute("PRAGMA integrity_check(1)").fetchone()
            if integrity != "ok":
                raise BackupError(f"{shown} is damaged: integrity check says {integrity}")
            tables = {
                name
                for (name,) in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type='table'"
                )
            }
            if not {"alembic_version", "jobs"} <= tables:
                raise BackupError(
                    f"{shown} is not a voicebot database (no jobs or alembic_version)"
                )
            revisions = [
                row[0] for row in connection.execute("SELECT version_num FROM alembic_version")
            ]
            (jobs,) = connection.execute("SELECT count(*) FROM jobs").fetchone()
    except sqlite3.Error as error:
        raise BackupError(f"{shown} is not a voicebot database ({error})") from error
    if len(revisions) != 1:
        raise BackupError(
            f"{shown} is not a voicebot database (alembic_version has {len(revisions)} rows)"
        )
    (revision,) = revisions
    if revision not in _known_revisions():
        raise BackupError(
            f"{shown} is at schema revision {revision}, which this voicebot does not have "
            f"(its newest is {head_revision()}): install the version that wrote it"
        )
    return Copy(shown, path.stat().st_size, revision, int(jobs))


def _known_revisions() -> set[str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}


def _set_aside(database: Path) -> Path:
    """Keep the database about to be replaced as `<name>.before-restore`, folded into one file.

    Its write-ahead log is checkpointed into it first; what cannot be folded in (a damaged
    file) moves along beside it, so no old log is ever replayed into the restored database.
    """
    kept = database.with_name(database.name + BEFORE_RESTORE)
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(database)) as old:
        old.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{kept}{suffix}").unlink(missing_ok=True)
        leftover = Path(f"{database}{suffix}")
        if leftover.exists():
            os.replace(leftover, f"{kept}{suffix}")
    linked = kept.with_name(f".{kept.name}.{os.getpid()}.tmp")
    linked.unlink(missing_ok=True)
    try:
        os.link(database, linked)
    except OSError:
        # No hard links here (some mounted file systems): a copy does the same.
        import shutil

        shutil.copy2(database, linked)
    os.replace(linked, kept)
    return kept


def _sync_directory(directory: Path) -> None:
    """Make the renames in `directory` durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
