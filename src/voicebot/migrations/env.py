"""Alembic environment: runs migrations over the async engine voicebot uses."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from voicebot.db import build_engine
from voicebot.locks import hold_for_transaction
from voicebot.models import Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _migrate(url: str) -> None:
    engine = build_engine(url)
    async with engine.begin() as connection:
        # Processes started together on a new database (a bot and its workers) all migrate at
        # start: one at a time, each in one transaction, so the later ones find it at head.
        await hold_for_transaction(connection, "migrations")
        await connection.run_sync(_run)
    await engine.dispose()


url = context.config.attributes.get("url") or context.config.get_main_option("sqlalchemy.url")
if not url:
    raise RuntimeError("no database URL given to the migrations")
asyncio.run(_migrate(url))
