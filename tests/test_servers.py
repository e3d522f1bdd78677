"""The test servers themselves: a missing one fails in CI, a started one is on loopback in a
temporary directory, comes back after `stop` (and `kill`) with its data, and is gone after
`close`; the per-test fixtures keep tests apart."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import asyncpg
import coredis
import pytest
from aio_pika.exceptions import ChannelNotFoundEntity
from sqlalchemy.engine import make_url

from .servers import PostgresServer, RabbitServer, RedisServer, accepts, server_binary


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


def test_a_server_binary_is_looked_for_in_its_folders_first_when_asked(tmp_path: Path) -> None:
    (tmp_path / "sh").write_text("#!/bin/sh\n")
    assert server_binary("sh", [tmp_path]) != str(tmp_path / "sh")  # PATH's
    assert server_binary("sh", [tmp_path], folders_first=True) == str(tmp_path / "sh")


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


@contextlib.asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[coredis.Redis[str]]:
    """A coredis client on `url` for the block (coredis 5, which limits needs, has no `async
    with` of its own)."""
    client: coredis.Redis[str] = coredis.Redis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        client.connection_pool.disconnect()


async def test_redis_answers_on_loopback_and_keeps_what_a_clean_stop_saved() -> None:
    server = RedisServer()
    try:
        server.start()
        async with redis_client(server.url(1)) as client:
            assert await client.config_get(["bind"]) == {"bind": "127.0.0.1"}
            await client.set("kept", "yes")
        server.stop()
        assert not accepts(server.port)
        server.start()
        async with redis_client(server.url(1)) as client:
            assert await client.get("kept") == "yes"
            await client.set("lost", "yes")
        server.kill()  # no snapshot since the last stop: the later write is gone
        server.start()
        async with redis_client(server.url(1)) as client:
            assert await client.get("kept") == "yes"
            assert await client.get("lost") is None
    finally:
        server.close()
    assert not server.root.exists()
    assert not accepts(server.port)


@pytest.mark.parametrize("run", [1, 2])
async def test_each_test_gets_an_empty_redis_database(redis_url: str, run: int) -> None:
    async with redis_client(redis_url) as client:
        assert await client.dbsize() == 0  # nothing from the other run
        await client.set("left behind", str(run))


async def _publish(url: str, queue_name: str, body: bytes) -> None:
    """Publish one persistent message to a durable queue, confirmed by the broker."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue_name, durable=True)
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(message, routing_key=queue_name)


async def _get(url: str, queue_name: str) -> bytes:
    """Take one message from the queue (it must be there)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        message = await queue.get(timeout=10)
        assert message is not None
        await message.ack()
        return message.body


async def test_rabbitmq_listens_on_loopback_and_keeps_durable_messages_over_stop_and_kill() -> None:
    server = RabbitServer()
    try:
        server.start()
        status = json.loads(server.rabbitmqctl("--formatter", "json", "status"))
        listeners = {(item["protocol"], item["interface"]) for item in status["listeners"]}
        assert listeners == {("amqp", "127.0.0.1"), ("clustering", "127.0.0.1")}
        await _publish(server.url(), "jobs", b"before the stop")
        port = server.port
        server.stop()
        assert not accepts(port)
        server.start()
        assert server.port == port
        await _publish(server.url(), "jobs", b"before the kill")
        server.kill()
        assert not accepts(port)
        server.start()
        assert await _get(server.url(), "jobs") == b"before the stop"
        assert await _get(server.url(), "jobs") == b"before the kill"
    finally:
        server.close()
    assert not server.root.exists()
    assert not accepts(server.port)


async def test_rabbitmq_passes_a_message_from_publisher_to_consumer(amqp_url: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("", exclusive=True)
        await channel.default_exchange.publish(aio_pika.Message(b"hello"), queue.name)
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():
                    assert message.body == b"hello"
                break


@pytest.mark.parametrize("run", [1, 2])
async def test_each_test_gets_an_empty_rabbitmq_virtual_host(amqp_url: str, run: int) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        with pytest.raises(ChannelNotFoundEntity):  # nothing from the other run
            await (await connection.channel()).declare_queue("left behind", passive=True)
        await (await connection.channel()).declare_queue("left behind", durable=True)


async def test_a_queue_in_one_virtual_host_is_not_in_another(rabbitmq: RabbitServer) -> None:
    first, second = rabbitmq.create_vhost(), rabbitmq.create_vhost()
    try:
        await _publish(first, "mine", b"first's")
        connection = await aio_pika.connect(second)
        async with connection:
            with pytest.raises(ChannelNotFoundEntity):
                await (await connection.channel()).declare_queue("mine", passive=True)
        assert await _get(first, "mine") == b"first's"
    finally:
        rabbitmq.delete_vhost(first)
        rabbitmq.delete_vhost(second)
