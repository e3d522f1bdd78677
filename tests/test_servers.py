"""The test servers themselves: a missing one fails in CI, a started one is on loopback in a
temporary directory and is gone after `stop`."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from .servers import PostgresServer, server_binary


def test_a_missing_server_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="initdb is not installed"):
        server_binary("initdb", [])
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="initdb is not installed"):
        server_binary("initdb", [])


async def test_postgres_listens_on_loopback_only_and_is_removed_when_closed() -> None:
    server = PostgresServer()
    try:
        server.start()
        url = await server.create_database()
        connection = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            assert await connection.fetchval("SHOW listen_addresses") == "127.0.0.1"
            assert await connection.fetchval("SHOW unix_socket_directories") == str(server.root)
            assert await connection.fetchval("SELECT current_database()") == make_url(url).database
        finally:
            await connection.close()
        await server.drop_database(url)
    finally:
        server.close()
    assert not server.root.exists()
    with pytest.raises(ConnectionRefusedError):  # nothing listens on its port any more
        await asyncpg.connect(server.url("postgres", driver="postgresql"), timeout=5)


async def test_postgres_stopped_and_started_again_keeps_its_port_and_data() -> None:
    server = PostgresServer()
    try:
        server.start()
        url = (await server.create_database()).replace("+asyncpg", "")
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("CREATE TABLE kept (word text)")
            await connection.execute("INSERT INTO kept VALUES ('still here')")
        finally:
            await connection.close()
        port = server.port
        server.stop()
        assert not server.running
        with pytest.raises(ConnectionRefusedError):
            await asyncpg.connect(url, timeout=5)
        server.start()
        assert server.port == port
        connection = await asyncpg.connect(url)
        try:
            assert await connection.fetchval("SELECT word FROM kept") == "still here"
        finally:
            await connection.close()
    finally:
        server.close()
