"""Tests for the fake Bot API, driven through a real aiogram Bot over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import (
    BotCommand,
    BufferedInputFile,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LabeledPrice,
    Message,
    ReplyParameters,
)

from .fakes import PRE_CHECKOUT_TIMEOUT, FakeBotAPI


def make_bot(api: FakeBotAPI, token: str | None = None) -> Bot:
    session = AiohttpSession(api=TelegramAPIServer.from_base(api.url))
    return Bot(token or api.token, session=session)


@pytest.fixture
async def bot(api: FakeBotAPI) -> AsyncIterator[Bot]:
    bot = make_bot(api)
    yield bot
    await bot.session.close()


async def test_get_me(api: FakeBotAPI, bot: Bot) -> None:
    me = await bot.get_me()
    assert (me.id, me.username, me.is_bot) == (123456, "voicebot_test_bot", True)
    assert [c.method for c in api.calls] == ["getMe"]


async def test_wrong_token_is_unauthorized(api: FakeBotAPI) -> None:
    bot = make_bot(api, token="654321:WRONG")
    try:
        with pytest.raises(TelegramUnauthorizedError):
            await bot.get_me()
    finally:
        await bot.session.close()


async def test_voice_update_and_offset_confirmation(api: FakeBotAPI, bot: Bot) -> None:
    api.set_user(42, first_name="Ann", language_code="ru")
    message_id = api.send_voice(42, b"OggS-fake", duration=3)
    updates = await bot.get_updates(timeout=1)
    assert len(updates) == 1
    msg = updates[0].message
    assert msg is not None
    assert msg.voice is not None
    assert msg.from_user is not None
    assert (msg.message_id, msg.chat.id, msg.chat.type) == (message_id, 42, "private")
    assert (msg.voice.duration, msg.voice.mime_type, msg.voice.file_size) == (3, "audio/ogg", 9)
    assert msg.from_user.language_code == "ru"
    # Without an offset the update is delivered again; the offset confirms it.
    assert [u.update_id for u in await bot.get_updates()] == [updates[0].update_id]
    assert await bot.get_updates(offset=updates[0].update_id + 1, timeout=0) == []
    assert api.pending_updates == []


async def test_long_poll_returns_early_on_push(api: FakeBotAPI, bot: Bot) -> None:
    started = time.monotonic()
    poll = asyncio.create_task(bot.get_updates(timeout=10))
    await asyncio.sleep(0.2)
    api.send_text(7, "/start")
    updates = await asyncio.wait_for(poll, 3)
    assert time.monotonic() - started < 3
    assert updates[0].message is not None
    assert updates[0].message.text == "/start"
    # With nothing pending, the poll waits out its timeout and answers [].
    started = time.monotonic()
    assert await bot.get_updates(offset=updates[0].update_id + 1, timeout=1) == []
    assert time.monotonic() - started >= 0.9


async def test_stop_releases_pending_long_poll() -> None:
    fake = FakeBotAPI()
    await fake.start()
    bot = make_bot(fake)
    try:
        poll = asyncio.create_task(bot.get_updates(timeout=30))
        await fake.wait_for(lambda: bool(fake.calls_of("getUpdates")), 2)
        started = time.monotonic()
        await fake.stop()
        assert await asyncio.wait_for(poll, 5) == []
        assert time.monotonic() - started < 5
    finally:
        await bot.session.close()


async def test_send_message_limits(api: FakeBotAPI, bot: Bot) -> None:
    await bot.send_message(1, "x" * 4096)
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(1, "x" * 4097)
    with pytest.raises(TelegramBadRequest, match="message text is empty"):
        await bot.send_message(1, " ")
    # HTML is measured after parsing and must be well formed, as on api.telegram.org.
    await bot.send_message(1, "<b>" + "&lt;" * 4096 + "</b>", parse_mode="HTML")
    with pytest.raises(TelegramBadRequest, match="can't parse entities"):
        await bot.send_message(1, "a < b", parse_mode="HTML")
    assert len(api.messages(1)) == 2


async def test_reply_shares_message_id_counter(api: FakeBotAPI, bot: Bot) -> None:
    user_msg = api.send_text(5, "hello")
    sent = await bot.send_message(5, "hi", reply_parameters=ReplyParameters(message_id=user_msg))
    assert sent.message_id == user_msg + 1
    assert sent.reply_to_message is not None
    assert sent.reply_to_message.text == "hello"
    assert api.messages(5)[0].reply_to == user_msg
    with pytest.raises(TelegramBadRequest, match="message to be replied not found"):
        await bot.send_message(5, "x", reply_parameters=ReplyParameters(message_id=999))


async def test_fail_next(api: FakeBotAPI, bot: Bot) -> None:
    api.fail_next("sendMessage", retry_after=7)
    with pytest.raises(TelegramRetryAfter) as exc:
        await bot.send_message(1, "a")
    assert exc.value.retry_after == 7
    api.fail_next("sendmessage", status=502, times=2)
    for _ in range(2):
        with pytest.raises(TelegramServerError):
            await bot.send_message(1, "a")
    await bot.send_message(1, "a")
    assert len(api.calls_of("sendMessage")) == 4
    assert len(api.messages(1)) == 1


async def test_get_file_and_download(api: FakeBotAPI, bot: Bot) -> None:
    data = bytes(range(256)) * 100
    file_id, unique_id = api.add_file(data)
    other_id, other_unique = api.add_file(data)
    assert other_id != file_id
    assert other_unique == unique_id
    file = await bot.get_file(file_id)
    assert (file.file_unique_id, file.file_size) == (unique_id, len(data))
    downloaded = await bot.download(file_id)
    assert downloaded is not None
    assert downloaded.read() == data
    with pytest.raises(TelegramBadRequest, match="invalid file_id"):
        await bot.get_file("nope")


async def test_file_too_big(api: FakeBotAPI, bot: Bot) -> None:
    big = 25 * 1024 * 1024
    api.send_voice_ref(3, file_id="BIG", file_unique_id="BIGU", file_size=big, duration=1500)
    updates = await bot.get_updates()
    voice = updates[0].message.voice if updates[0].message else None
    assert voice is not None
    assert voice.file_size == big
    with pytest.raises(TelegramBadRequest, match="file is too big"):
        await bot.get_file(voice.file_id)


async def test_edit_message_text(api: FakeBotAPI, bot: Bot) -> None:
    sent = await bot.send_message(9, "one")
    edited = await bot.edit_message_text("two", chat_id=9, message_id=sent.message_id)
    assert not isinstance(edited, bool)
    assert edited.text == "two"
    await bot.edit_message_text("three", chat_id=9, message_id=sent.message_id)
    [recorded] = api.messages(9)
    assert (recorded.text, recorded.edits) == ("three", ["one", "two"])
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text("three", chat_id=9, message_id=sent.message_id)
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_text("x", chat_id=9, message_id=999)
    assert await bot.delete_message(9, sent.message_id)
    assert api.messages(9)[0].deleted


async def test_send_document(api: FakeBotAPI, bot: Bot) -> None:
    payload = "transcript ✓\n".encode() * 1000
    msg = await bot.send_document(
        11, BufferedInputFile(payload, filename="transcript.txt"), caption="Full text"
    )
    assert msg.document is not None
    assert msg.document.file_name == "transcript.txt"
    [recorded] = api.messages(11)
    assert recorded.document is not None
    assert recorded.text is None
    assert recorded.document.filename == "transcript.txt"
    assert recorded.document.caption == "Full text"
    assert recorded.document.data == payload
    downloaded = await bot.download(msg.document.file_id)
    assert downloaded is not None
    assert downloaded.read() == payload


async def test_commands_and_raw_http(api: FakeBotAPI, bot: Bot) -> None:
    await bot.set_my_commands([BotCommand(command="start", description="Start")])
    assert [c.command for c in await bot.get_my_commands()] == ["start"]
    assert api.commands() == [{"command": "start", "description": "Start"}]
    async with aiohttp.ClientSession() as http:
        url = f"{api.url}/bot{api.token}"
        async with http.post(f"{url}/sendMessage", json={"chat_id": 2, "text": "j"}) as r:
            assert (await r.json())["result"]["text"] == "j"
        async with http.post(f"{url}/sendMessage", data={"chat_id": "2", "text": "f"}) as r:
            assert (await r.json())["result"]["chat"]["id"] == 2
        async with http.post(f"{url}/noSuchMethod") as r:
            assert r.status == 404
            assert await r.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
        async with http.get(f"{api.url}/file/bot{api.token}/missing") as r:
            assert r.status == 404
    assert [m.text for m in api.messages(2)] == ["j", "f"]


async def test_wait_for_times_out_with_context(api: FakeBotAPI, bot: Bot) -> None:
    await bot.get_me()
    with pytest.raises(AssertionError, match=r"(?s)never.*getMe"):
        await api.wait_for(lambda: False, 0.05, "never")


async def test_button_press_and_callback_answer(api: FakeBotAPI, bot: Bot) -> None:
    markup = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="Go", callback_data="go:1")]]
    )
    sent = await bot.send_message(8, "Pick", reply_markup=markup)
    with pytest.raises(ValueError, match="no button"):
        api.press_button(8, sent.message_id, "other")
    query_id = api.press_button(8, sent.message_id, "go:1")
    [update] = await bot.get_updates()
    query = update.callback_query
    assert query is not None
    assert isinstance(query.message, Message)
    assert (query.id, query.data, query.from_user.id) == (query_id, "go:1", 8)
    assert (query.message.message_id, query.message.text) == (sent.message_id, "Pick")
    assert api.query_answer(query_id) is None
    assert await bot.answer_callback_query(query_id, text="Done", show_alert=True)
    answer = api.query_answer(query_id)
    assert answer is not None
    assert answer.params == {"text": "Done", "show_alert": True}
    # A second answer, or an id Telegram never sent, is refused as on api.telegram.org.
    for bad in (query_id, "nope"):
        with pytest.raises(TelegramBadRequest, match="query ID is invalid"):
            await bot.answer_callback_query(bad)


async def test_invoice(api: FakeBotAPI, bot: Bot) -> None:
    price = [LabeledPrice(label="30 minutes", amount=50)]
    msg = await bot.send_invoice(
        4, title="30 minutes", description="Minutes", payload="p:1", currency="XTR", prices=price
    )
    assert msg.invoice is not None
    assert (msg.invoice.title, msg.invoice.currency, msg.invoice.total_amount) == (
        "30 minutes",
        "XTR",
        50,
    )
    [recorded] = api.messages(4)
    assert recorded.text is None
    assert recorded.invoice == {
        "title": "30 minutes",
        "description": "Minutes",
        "payload": "p:1",
        "currency": "XTR",
        "prices": [{"label": "30 minutes", "amount": 50}],
    }
    with pytest.raises(TelegramBadRequest, match="INVOICE_PAYLOAD_INVALID"):
        await bot.send_invoice(4, "t", "d", payload="x" * 129, currency="XTR", prices=price)
    with pytest.raises(TelegramBadRequest, match="CURRENCY_TOTAL_AMOUNT_INVALID"):
        await bot.send_invoice(4, "t", "d", payload="p", currency="XTR", prices=price * 2)
    assert len(api.messages(4)) == 1


async def test_pre_checkout_query(api: FakeBotAPI, bot: Bot) -> None:
    query_id = api.pre_checkout(6, payload="p:1", total_amount=50)
    [update] = await bot.get_updates()
    query = update.pre_checkout_query
    assert query is not None
    assert (query.id, query.from_user.id, query.invoice_payload) == (query_id, 6, "p:1")
    assert (query.currency, query.total_amount) == ("XTR", 50)
    with pytest.raises(TelegramBadRequest, match="error_message"):
        await bot.answer_pre_checkout_query(query_id, ok=False)
    assert await bot.answer_pre_checkout_query(query_id, ok=False, error_message="Sold out")
    answer = api.query_answer(query_id)
    assert answer is not None
    assert answer.params == {"ok": False, "error_message": "Sold out"}
    assert 0 <= answer.delay < 5
    with pytest.raises(TelegramBadRequest, match="query ID is invalid"):
        await bot.answer_pre_checkout_query(query_id, ok=True)
    # Past Telegram's 10 seconds the answer comes too late.
    late = api.pre_checkout(6, payload="p:1", total_amount=50)
    api._queries[late].pushed_at -= PRE_CHECKOUT_TIMEOUT + 1
    with pytest.raises(TelegramBadRequest, match="query is too old"):
        await bot.answer_pre_checkout_query(late, ok=True)
    assert api.query_answer(late) is None


async def test_payment_redelivery_and_refund(api: FakeBotAPI, bot: Bot) -> None:
    message_id = api.pay(6, payload="p:1", total_amount=50, charge_id="ch_1")
    api.redeliver(6, message_id)
    first, again = await bot.get_updates()
    assert first.update_id != again.update_id
    for update in (first, again):
        assert update.message is not None
        paid = update.message.successful_payment
        assert paid is not None
        assert update.message.message_id == message_id
        assert (paid.currency, paid.total_amount, paid.invoice_payload) == ("XTR", 50, "p:1")
        assert (paid.telegram_payment_charge_id, paid.provider_payment_charge_id) == ("ch_1", "")
    with pytest.raises(TelegramBadRequest, match="CHARGE_NOT_FOUND"):
        await bot.refund_star_payment(7, "ch_1")  # someone else's charge
    with pytest.raises(TelegramBadRequest, match="CHARGE_NOT_FOUND"):
        await bot.refund_star_payment(6, "ch_unknown")
    assert not api.refunded("ch_1")
    assert await bot.refund_star_payment(6, "ch_1")
    assert api.refunded("ch_1")
    with pytest.raises(TelegramBadRequest, match="CHARGE_ALREADY_REFUNDED"):
        await bot.refund_star_payment(6, "ch_1")
