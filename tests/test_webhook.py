"""Webhook mode: updates recorded before they are acknowledged, a redelivery handled once, the
door shut to wrong secrets, bad bodies and untrusted clients, and the switch back to polling."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from voicebot.config import Settings
from voicebot.web import webhook

from .botproc import BotProcess, bot_database
from .fakes import FakeBotAPI
from .media import voice_note
from .servers import free_port
from .test_fairness import rows
from .test_polling import log_events
from .test_web import failing, get

USER = 7007
SECRET = "s3cret-token_0123456789abcdef"
CLIPS = {
    "another door": "librispeech_alif_another_door.wav",
    "not poison": "librispeech_alif_i_tell_you.wav",
    "testing routine": "librispeech_alif_testing_routine.wav",
}


@pytest.fixture(scope="module")
def notes(corpus: Path) -> dict[str, bytes]:
    """Voice notes of short clips, by a phrase each transcript contains."""
    return {phrase: voice_note(corpus / "en" / name) for phrase, name in CLIPS.items()}


def webhook_bot(
    api: FakeBotAPI, workdir: Path, model_cache: Path, port: int, **env: str
) -> BotProcess:
    """A `voicebot run` in webhook mode on `port`, its WEBHOOK_URL that port on loopback."""
    return BotProcess(
        api,
        workdir,
        model_cache,
        WHISPER_MODEL="tiny.en",
        BOT_MODE="webhook",
        HTTP_PORT=str(port),
        WEBHOOK_URL=f"http://127.0.0.1:{port}{webhook.PATH}",
        WEBHOOK_SECRET=SECRET,
        **env,
    )


def answers(api: FakeBotAPI, message_id: int) -> list[str]:
    """The texts of the bot's visible replies to USER's message `message_id`."""
    return [
        m.text or ""
        for m in api.messages(USER)
        if m.reply_to == message_id and not m.deleted and m.text
    ]


def unreplied(api: FakeBotAPI) -> list[str]:
    """The texts of the bot's messages to USER that reply to nothing (command answers)."""
    return [m.text or "" for m in api.messages(USER) if m.reply_to is None and not m.deleted]


async def said(api: FakeBotAPI, message_id: int, phrase: str, timeout: float = 60) -> None:
    """Wait until a reply to `message_id` contains `phrase`."""

    def found() -> bool:
        return any(phrase in text.lower() for text in answers(api, message_id))

    await api.wait_for(found, timeout, f"{phrase!r} in reply to {message_id}")


async def test_webhook_mode_records_before_acknowledging_and_switches_back_to_polling(
    api: FakeBotAPI,
    tmp_path: Path,
    model_cache: Path,
    notes: dict[str, bytes],
    database_url: str,
) -> None:
    """setWebhook with the secret and exactly the handled update types; updates come by POST
    and are answered; lost acknowledgements redeliver them, each handled once; /ready follows
    the webhook; after a restart in polling mode, the webhook is deleted and what Telegram
    kept meanwhile comes by getUpdates."""
    port = free_port()
    database = bot_database(database_url)
    bot = webhook_bot(api, tmp_path, model_cache, port, **database)
    await bot.start()
    try:
        (call,) = api.calls_of("setWebhook")
        assert call.params["url"] == f"http://127.0.0.1:{port}/telegram/webhook"
        assert call.params["secret_token"] == SECRET
        assert int(call.params["max_connections"]) == 40
        allowed = call.params["allowed_updates"]
        allowed = json.loads(allowed) if isinstance(allowed, str) else allowed
        assert {"message", "callback_query", "pre_checkout_query", "my_chat_member"} <= set(allowed)

        first = api.send_voice(USER, notes["another door"], duration=4)
        api.send_text(USER, "/start")
        await said(api, first, "another door")
        await api.wait_for(lambda: len(unreplied(api)) == 1, 10, "/start answered")

        # Two acknowledgements lost: Telegram sends those updates again.
        api.webhook.lose_acks = 2
        again = api.send_voice(USER, notes["not poison"], duration=4)
        api.send_text(USER, "/help")
        await said(api, again, "not poison")
        await api.wait_for(lambda: not api.pending_updates, 10, "all acknowledged")
        posted = Counter(d.update_id for d in api.webhook.deliveries if d.status == 200)
        twice = sorted(update_id for update_id, count in posted.items() if count == 2)
        assert len(twice) == 2, posted
        skipped = [i for e in log_events(bot, "updates_redelivered") for i in e["update_ids"]]
        assert sorted(skipped) == twice
        for message_id in (first, again):
            assert len(answers(api, message_id)) == 1, answers(api, message_id)
        assert len(unreplied(api)) == 2, unreplied(api)  # /start and /help, once each
        assert rows(database_url, "SELECT count(*) FROM jobs") == [(2,)]
        assert not api.calls_of("getUpdates")

        ready = await get(port, "/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["webhook"] == {"ok": True, "detail": "set, 0 pending"}
        api.webhook.forget()  # as a polling instance of the same bot would
        gone = await get(port, "/ready")
        assert gone.status_code == 503
        assert failing(gone.json()) == {"webhook": "Telegram has no webhook set"}
    finally:
        assert await bot.stop() == 0, bot.output()
    assert not log_events(bot, "webhook_batch_failed")

    # Back to polling: the bot deletes the webhook before it asks for updates.
    api.webhook.url = f"http://127.0.0.1:{port}/telegram/webhook"  # still set at Telegram
    later = api.send_voice(USER, notes["testing routine"], duration=3)
    polling = BotProcess(api, tmp_path, model_cache, WHISPER_MODEL="tiny.en", **database)
    await polling.start()
    try:
        deleted = api.calls_of("deleteWebhook")[-1]
        assert deleted.at < api.calls_of("getUpdates")[0].at
        assert deleted.params.get("drop_pending_updates") in (None, False, "false")
        await said(api, later, "testing routine")
        (polled,) = api.calls_of("getUpdates")[:1]
        polled_allowed = polled.params["allowed_updates"]
        if isinstance(polled_allowed, str):
            polled_allowed = json.loads(polled_allowed)
        assert sorted(polled_allowed) == sorted(allowed)  # the same types either way
    finally:
        assert await polling.stop() == 0, polling.output()


async def test_the_door_refuses_wrong_secrets_bad_bodies_and_untrusted_clients(
    api: FakeBotAPI,
    tmp_path: Path,
    model_cache: Path,
    notes: dict[str, bytes],
    database_url: str,
) -> None:
    """Only a trusted client (behind the proxy in FORWARDED_ALLOW_IPS) with the secret gets an
    update in; each bad request gets its status, nothing is recorded, and the bot serves on."""
    port = free_port()
    bot = webhook_bot(
        api,
        tmp_path,
        model_cache,
        port,
        WEBHOOK_TRUSTED_NETWORKS="149.154.160.0/20",
        **bot_database(database_url),
    )
    await bot.start()
    url = f"http://127.0.0.1:{port}{webhook.PATH}"
    telegram = {"X-Forwarded-For": "149.154.167.220"}  # as nginx on loopback passes it on
    api.webhook.forget()  # the test posts the updates itself
    voice_id = api.send_voice(USER, notes["another door"], duration=4)
    (update,) = api.pending_updates
    good, update_id = json.dumps(update).encode(), update["update_id"]
    try:
        async with httpx.AsyncClient(timeout=30) as client:

            async def post(body: bytes, headers: dict[str, str]) -> int:
                response = await client.post(url, content=body, headers=headers)
                return response.status_code

            right = telegram | {webhook.SECRET_HEADER: SECRET}
            assert await post(good, telegram) == 401  # no secret
            assert await post(good, telegram | {webhook.SECRET_HEADER: SECRET[:-1] + "x"}) == 401
            assert await post(good, telegram | {webhook.SECRET_HEADER: "short"}) == 401
            assert await post(good, {webhook.SECRET_HEADER: SECRET}) == 403  # loopback itself
            outside = {"X-Forwarded-For": "203.0.113.9", webhook.SECRET_HEADER: SECRET}
            assert await post(good, outside) == 403
            assert await post(b"{not json", right) == 400
            assert await post(b"\xff\xfe", right) == 400
            assert await post(b"[1, 2]", right) == 400
            assert await post(b'{"message": {}}', right) == 400  # no update_id
            poison = json.loads(good) | {"update_id": update_id + 1}
            poison["message"] = poison["message"] | {"voice": None, "video": {"file_id": "v"}}
            assert await post(json.dumps(poison).encode(), right) == 400  # does not parse
            huge = b'{"update_id": 1, "pad": "' + b"x" * (1024 * 1024) + b'"}'
            assert await post(huge, right) == 413

            async def chunks() -> Any:
                for _ in range(20):
                    yield b"x" * 65536

            streamed = await client.post(url, content=chunks(), headers=right)
            assert streamed.status_code == 413  # no Content-Length: counted while read
            assert rows(database_url, "SELECT count(*) FROM jobs") == [(0,)]
            assert api.messages(USER) == []

            assert await post(good, right) == 200
            assert rows(database_url, "SELECT message_id FROM jobs") == [(voice_id,)]  # before 200
            assert await post(good, right) == 200  # the acknowledgement was lost
        await said(api, voice_id, "another door")
        assert len(answers(api, voice_id)) == 1
        assert rows(database_url, "SELECT count(*) FROM jobs") == [(1,)]
        assert [e["update_ids"] for e in log_events(bot, "updates_redelivered")] == [[update_id]]
        assert (await get(port, "/health")).status_code == 200
        unparseable = [e["update_id"] for e in log_events(bot, "update_unparseable")]
        assert unparseable == [update_id + 1]
    finally:
        assert await bot.stop() == 0, bot.output()
    assert SECRET not in bot.output()


def test_the_secret_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every comparison goes through hmac.compare_digest, right or wrong, of any length."""
    seen: list[tuple[bytes, bytes]] = []
    compare: Callable[[bytes, bytes], bool] = hmac.compare_digest

    def spy(given: bytes, expected: bytes) -> bool:
        seen.append((given, expected))
        return compare(given, expected)

    monkeypatch.setattr(webhook.hmac, "compare_digest", spy)
    settings = Settings(_env_file=None, webhook_secret=SECRET)
    assert webhook.secret_matches(SECRET, settings)
    assert not webhook.secret_matches(SECRET[:-1] + "x", settings)
    assert not webhook.secret_matches("x", settings)
    assert not webhook.secret_matches(None, settings)  # no header: nothing to compare
    assert seen == [
        (SECRET.encode(), SECRET.encode()),
        ((SECRET[:-1] + "x").encode(), SECRET.encode()),
        (b"x", SECRET.encode()),
    ]


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"WEBHOOK_SECRET": ""},
            "voicebot: BOT_MODE=webhook needs WEBHOOK_SECRET: the public HTTPS address "
            "Telegram posts updates to, and a secret it sends with them (openssl rand -hex 32)",
        ),
        (
            {"WEBHOOK_SECRET": "too-short"},
            "voicebot: WEBHOOK_SECRET: Value error, must be 16 to 256 characters of A-Z, a-z, "
            "0-9, _ and - (for example: openssl rand -hex 32)",
        ),
        (
            {"HTTP_PORT": "0"},
            "voicebot: BOT_MODE=webhook needs the HTTP app: set HTTP_PORT (not 0)",
        ),
    ],
)
async def test_webhook_settings_missing_are_one_line_at_start(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, env: dict[str, str], line: str
) -> None:
    """Before anything is started or asked of Telegram: one line, exit 2."""
    bot = webhook_bot(api, tmp_path, model_cache, free_port())
    bot.env |= env
    await bot.start(wait=False)
    assert bot.process is not None
    assert await asyncio.wait_for(bot.process.wait(), 60) == 2
    assert bot.output().strip().splitlines() == [line]
    assert api.calls == []


async def test_a_refused_webhook_url_is_one_line(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path
) -> None:
    """Telegram refuses the URL (not HTTPS, say): the bot says so and exits 2."""
    api.fail_next(
        "setWebhook", status=400, description="Bad Request: bad webhook: HTTPS url must be provided"
    )
    bot = webhook_bot(api, tmp_path, model_cache, free_port())
    await bot.start(wait=False)
    assert bot.process is not None
    assert await asyncio.wait_for(bot.process.wait(), 120) == 2
    last = bot.output().strip().splitlines()[-1]
    assert last == (
        f"voicebot: Telegram refused WEBHOOK_URL={bot.env['WEBHOOK_URL']}: "
        "Bad Request: bad webhook: HTTPS url must be provided"
    )
