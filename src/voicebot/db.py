"""Database engine and sessions; schema changes go through Alembic migrations only."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

Sessions = async_sessionmaker[AsyncSession]


def build_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite files get WAL, foreign keys and a busy timeout."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    # A server that restarted leaves dead connections in the pool: each is tested when taken,
    # so one outage costs the requests made during it, not one more per pooled connection.
    engine = create_async_engine(url, pool_pre_ping=parsed.get_backend_name() != "sqlite")
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def unavailable(error: BaseException) -> bool:
    """Whether `error` says the database is out of reach or busy now, not that the data is
    wrong: whatever it interrupted is left unconfirmed and tried again."""
    # SQLite busy is an OperationalError; a server gone mid-query, a DBAPIError whose
    # connection the pool invalidated; one refusing connections, the driver's OSError.
    if isinstance(error, OperationalError | InterfaceError | OSError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def build_sessions(engine: AsyncEngine) -> Sessions:
    """Session factory; objects stay usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _alembic(url: str) -> Config:
    """Alembic's configuration for our migrations on `url`."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision` (blocking; run it in a thread from async code)."""
    from alembic import command

    command.upgrade(_alembic(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Revert migrations down to `revision` ("base": none left); blocking, as `upgrade`."""
    from alembic import command

    command.downgrade(_alembic(url), revision)


async def upgrade_async(url: str) -> None:
    """Apply all migrations without blocking the event loop."""
    # The migrations' env.py connects through build_engine, which creates the SQLite folder.
    await asyncio.to_thread(upgrade, url)
