"""Buying minutes with Telegram Stars: the functions on a real SQLite file, then the real bot."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from pydantic import SecretStr
from sqlalchemy import update

from voicebot import payments, texts
from voicebot.config import Settings
from voicebot.db import Sessions, build_engine, build_sessions, upgrade
from voicebot.errors import AlreadyRefundedError, BadPayloadError, UnknownChargeError
from voicebot.models import User

from .botproc import BotProcess
from .fakes import FakeBotAPI, SentMessage
from .media import voice_note
from .test_db import fetch

USER = 5005
OTHER = 5006
ADMIN = 5001
TOKEN = "123456:TEST"  # the fake's token: payloads signed here are the bot's own


def settings(packages: str = "30:50,120:150", token: str = TOKEN) -> Settings:
    """Settings with packages on sale and the bot's token (the payload signing key)."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        telegram_bot_token=SecretStr(token),
        stars_packages=packages,  # type: ignore[arg-type]
    )


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one statement, read with the standard library."""
    with closing(sqlite3.connect(path)) as connection:
        return connection.execute(sql).fetchall()


# --- the functions, on a real SQLite file ---------------------------------------------------


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[Sessions]:
    """Sessions on a migrated database (SQLite, PostgreSQL)."""
    await asyncio.to_thread(upgrade, database_url)
    engine = build_engine(database_url)
    yield build_sessions(engine)
    await engine.dispose()


def test_packages_from_settings() -> None:
    on_sale = payments.packages(settings())
    assert on_sale == [payments.Package(30, 50), payments.Package(120, 150)]
    assert payments.packages(settings("")) == []
    assert payments.find_package(settings(), minutes=120, stars=150) == payments.Package(120, 150)
    assert payments.find_package(settings(), minutes=120, stars=50) is None


def test_payload_is_signed_and_checked() -> None:
    config = settings()
    payload = payments.make_payload(config, package=payments.Package(30, 50), user_id=USER)
    assert payload.startswith(f"v1:30:50:{USER}:")
    assert len(payload.encode()) <= 128
    order = payments.read_payload(config, payload)
    assert order == payments.Order(payments.Package(30, 50), USER)
    _, _, _, _, signature = payload.split(":")
    altered = [
        payload.replace("v1:30:", "v1:120:"),  # more minutes
        payload.replace(":50:", ":5:"),  # fewer stars
        payload.replace(f":{USER}:", f":{OTHER}:"),  # someone else
        payload[:-1] + ("0" if payload[-1] != "0" else "1"),  # the signature itself
        f"v2:30:50:{USER}:{signature}",
        "v1:30:50",
        "",
        "anything",
    ]
    for bad in altered:
        with pytest.raises(BadPayloadError):
            payments.read_payload(config, bad)
    # Another bot (another token) cannot make payloads this one accepts.
    foreign = payments.make_payload(
        settings(token="654321:OTHER"), package=payments.Package(30, 50), user_id=USER
    )
    with pytest.raises(BadPayloadError):
        payments.read_payload(config, foreign)


def test_checkout_problems() -> None:
    config = settings()
    ours = payments.make_payload(config, package=payments.Package(30, 50), user_id=USER)
    gone = payments.make_payload(config, package=payments.Package(60, 10), user_id=USER)

    def problem(
        payload: str, *, user_id: int = USER, amount: int = 50, currency: str = "XTR"
    ) -> Any:
        return payments.checkout_problem(
            config, user_id=user_id, payload=payload, currency=currency, total_amount=amount
        )

    assert problem(ours) is None
    assert problem(ours.replace("v1:30:", "v1:120:")) == texts.CHECKOUT_NOT_OURS
    assert problem(ours, user_id=OTHER) == texts.CHECKOUT_OTHER_USER
    assert problem(gone, amount=10) == texts.PACKAGE_GONE
    assert problem(ours, amount=49) == texts.CHECKOUT_WRONG_AMOUNT
    assert problem(ours, currency="USD") == texts.CHECKOUT_WRONG_AMOUNT
    off = payments.checkout_problem(
        settings(""), user_id=USER, payload=ours, currency="XTR", total_amount=50
    )
    assert off == texts.PURCHASES_OFF


async def credit(
    sessions: Sessions, charge_id: str, *, minutes: int = 30, user_id: int = USER
) -> bool:
    """credit_purchase in a transaction of its own."""
    async with sessions() as session:
        done = await payments.credit_purchase(
            session, user_id=user_id, charge_id=charge_id, minutes=minutes, stars=50, payload="p"
        )
        await session.commit()
    return done


async def balance(sessions: Sessions, user_id: int = USER) -> float:
    async with sessions() as session:
        return await payments.balance_of(session, user_id=user_id)


async def set_balance(sessions: Sessions, seconds: float, user_id: int = USER) -> None:
    """Stand-in for spending (or an admin's credit): set the balance directly."""
    async with sessions() as session:
        await session.execute(
            update(User).where(User.id == user_id).values(balance_seconds=seconds)
        )
        await session.commit()


async def refund(sessions: Sessions, charge_id: str) -> payments.Refund:
    async with sessions() as session:
        done = await payments.refund(session, charge_id=charge_id)
        await session.commit()
    return done


async def test_a_purchase_is_credited_once(sessions: Sessions) -> None:
    """A user never seen gets a row; the same charge id twice, even at once, credits once."""
    assert await credit(sessions, "ch_1") is True
    assert await credit(sessions, "ch_1") is False
    results = await asyncio.gather(*(credit(sessions, "ch_2", minutes=120) for _ in range(4)))
    assert sorted(results) == [False, False, False, True]
    assert await balance(sessions) == (30 + 120) * 60
    rows = await fetch(
        sessions,
        "SELECT user_id, kind, seconds, stars, telegram_payment_charge_id FROM transactions "
        "ORDER BY id",
    )
    assert rows == [(USER, "purchase", 1800.0, 50, "ch_1"), (USER, "purchase", 7200.0, 50, "ch_2")]


async def test_refund_takes_back_the_unspent_part(sessions: Sessions) -> None:
    """All of it when unspent, only the rest when part was spent, never below zero, once."""
    await credit(sessions, "ch_1")  # 1800 s
    await credit(sessions, "ch_2")  # 3600 s in all
    await set_balance(sessions, 2000)  # 1600 s spent
    first = await refund(sessions, "ch_1")
    assert (first.user_id, first.stars, first.purchased_seconds) == (USER, 50, 1800)
    assert (first.seconds, first.balance_seconds) == (1800, 200)
    second = await refund(sessions, "ch_2")
    assert (second.seconds, second.balance_seconds) == (200, 0)  # the rest was spent
    assert await balance(sessions) == 0
    with pytest.raises(AlreadyRefundedError):
        await refund(sessions, "ch_1")
    with pytest.raises(UnknownChargeError):
        await refund(sessions, "ch_nope")
    rows = await fetch(
        sessions,
        "SELECT kind, seconds, telegram_payment_charge_id FROM transactions ORDER BY id",
    )
    assert rows == [
        ("purchase", 1800.0, "ch_1"),
        ("purchase", 1800.0, "ch_2"),
        ("refund", -1800.0, "ch_1"),
        ("refund", -200.0, "ch_2"),
    ]


async def test_refund_leaves_other_credit(sessions: Sessions) -> None:
    """Seconds credited besides the purchase stay: only the purchase's seconds go."""
    await credit(sessions, "ch_1")
    await set_balance(sessions, 5000)
    assert (await refund(sessions, "ch_1")).balance_seconds == 3200
    assert await balance(sessions) == 3200


async def test_concurrent_refunds_debit_once(sessions: Sessions) -> None:
    await credit(sessions, "ch_1")
    outcomes = await asyncio.gather(
        *(refund(sessions, "ch_1") for _ in range(3)), return_exceptions=True
    )
    done = [o for o in outcomes if isinstance(o, payments.Refund)]
    refused = [o for o in outcomes if isinstance(o, AlreadyRefundedError)]
    assert (len(done), len(refused)) == (1, 2), outcomes
    assert await balance(sessions) == 0


# --- the real bot against the fake Bot API --------------------------------------------------


@pytest.fixture
async def bot(api: FakeBotAPI, tmp_path: Path, model_cache: Path) -> AsyncIterator[BotProcess]:
    """The bot with two packages on sale and one admin."""
    process = BotProcess(
        api,
        tmp_path,
        model_cache,
        WHISPER_MODEL="tiny.en",
        STARS_PACKAGES="30:50,120:150",
        ADMIN_IDS=str(ADMIN),
    )
    await process.start()
    yield process
    code = await process.stop()
    assert code == 0, process.output()


@pytest.fixture
async def client(api: FakeBotAPI) -> AsyncIterator[Bot]:
    """A second client of the fake, for what happens outside the bot (a refund elsewhere)."""
    bot = Bot(api.token, session=AiohttpSession(api=TelegramAPIServer.from_base(api.url)))
    yield bot
    await bot.session.close()


def database(bot: BotProcess) -> Path:
    return bot.workdir / "data" / "voicebot.db"


async def reply(
    api: FakeBotAPI, chat_id: int, after: int, match: Callable[[SentMessage], bool] | None = None
) -> SentMessage:
    """The bot's first message in `chat_id` after message `after` (that `match` accepts)."""

    def found() -> SentMessage | None:
        return next(
            (
                m
                for m in api.messages(chat_id)
                if m.message_id > after and (match is None or match(m))
            ),
            None,
        )

    await api.wait_for(lambda: found() is not None, 15, f"a reply in {chat_id} after {after}")
    message = found()
    assert message is not None
    return message


async def command(api: FakeBotAPI, chat_id: int, text: str) -> str:
    """Send `text` and return the bot's answer."""
    sent = api.send_text(chat_id, text)
    return (await reply(api, chat_id, sent)).text or ""


async def answered(api: FakeBotAPI, query_id: str) -> dict[str, Any]:
    """The bot's answer to a callback or pre-checkout query."""
    await api.wait_for(lambda: api.query_answer(query_id) is not None, 15, f"answer {query_id}")
    answer = api.query_answer(query_id)
    assert answer is not None
    return answer.params


def balance_in(bot: BotProcess, user_id: int = USER) -> float:
    (row,) = query(database(bot), f"SELECT balance_seconds FROM users WHERE id = {user_id}")
    return float(row[0])


async def test_buy_invoice_and_checkout(api: FakeBotAPI, bot: BotProcess) -> None:
    """/buy shows the packages; a press sends a Stars invoice; pre-checkout is checked."""
    assert [c["command"] for c in api.commands()][-2:] == ["buy", "paysupport"]
    sent = api.send_text(USER, "/buy")
    offer = await reply(api, USER, sent)
    assert offer.text == texts.BUY
    buttons = [row[0] for row in offer.reply_markup["inline_keyboard"]]
    assert [(b["text"], b["callback_data"]) for b in buttons] == [
        ("30 min for 50 ⭐", "buy:30:50"),
        ("120 min for 150 ⭐", "buy:120:150"),
    ]

    pressed = api.press_button(USER, offer.message_id, "buy:120:150")
    invoice = await reply(api, USER, offer.message_id, lambda m: m.invoice is not None)
    assert await answered(api, pressed) == {}  # answered, with nothing to show
    assert invoice.invoice is not None
    payload = invoice.invoice["payload"]
    assert invoice.invoice["currency"] == "XTR"
    assert invoice.invoice["prices"] == [{"label": "120 minutes of transcription", "amount": 150}]
    assert invoice.invoice["title"] == "120 minutes of transcription"
    assert payments.read_payload(settings(), payload).package == payments.Package(120, 150)

    accepted = api.pre_checkout(USER, payload=payload, total_amount=150)
    assert await answered(api, accepted) == {"ok": True}
    answer = api.query_answer(accepted)
    assert answer is not None
    assert answer.delay < 2  # Telegram gives 10 s

    config = settings()
    not_on_sale = payments.make_payload(config, package=payments.Package(60, 10), user_id=USER)
    refusals = {
        texts.CHECKOUT_NOT_OURS: (payload.replace("v1:120:150:", "v1:120:15:"), 15),
        texts.PACKAGE_GONE: (not_on_sale, 10),
        texts.CHECKOUT_WRONG_AMOUNT: (payload, 149),
    }
    for reason, (bad_payload, amount) in refusals.items():
        refused = api.pre_checkout(USER, payload=bad_payload, total_amount=amount)
        assert await answered(api, refused) == {"ok": False, "error_message": reason}
    stolen = api.pre_checkout(OTHER, payload=payload, total_amount=150)
    assert await answered(api, stolen) == {"ok": False, "error_message": texts.CHECKOUT_OTHER_USER}

    # Nothing is credited before a payment arrives.
    assert query(database(bot), "SELECT count(*) FROM transactions") == [(0,)]
    assert await command(api, USER, "/paysupport") == texts.PAYSUPPORT


async def test_payment_is_credited_once(api: FakeBotAPI, bot: BotProcess) -> None:
    """The same payment delivered three times (twice as the same message) credits 30 min once."""
    payload = payments.make_payload(settings(), package=payments.Package(30, 50), user_id=USER)
    paid = api.pay(USER, payload=payload, total_amount=50, charge_id="stxCHARGE1")
    thanks = await reply(api, USER, paid)
    assert thanks.text == texts.payments.purchased(30, 1800, "stxCHARGE1")
    assert balance_in(bot) == 1800

    api.redeliver(USER, paid)
    again = api.pay(USER, payload=payload, total_amount=50, charge_id="stxCHARGE1")
    await reply(api, USER, again)
    await api.wait_for(lambda: len(api.messages(USER)) == 3, 15, "three answers")
    assert [m.text for m in api.messages(USER)[1:]] == [
        texts.payments.already_credited(1800, "stxCHARGE1")
    ] * 2
    assert balance_in(bot) == 1800
    rows = query(
        database(bot),
        "SELECT user_id, kind, seconds, stars, telegram_payment_charge_id, payload "
        "FROM transactions",
    )
    assert rows == [(USER, "purchase", 1800.0, 50, "stxCHARGE1", payload)]


async def test_refund(api: FakeBotAPI, bot: BotProcess, client: Bot) -> None:
    """Admins refund at Telegram and debit the balance, once; others and bad ids are refused."""
    payload = payments.make_payload(settings(), package=payments.Package(30, 50), user_id=USER)
    for charge_id in ("stxA", "stxB"):
        paid = api.pay(USER, payload=payload, total_amount=50, charge_id=charge_id)
        await reply(api, USER, paid)
    assert balance_in(bot) == 3600

    # Someone who is not an admin gets the ordinary help: the command is not revealed.
    assert await command(api, USER, "/refund stxA") == texts.HELP
    assert not api.refunded("stxA")
    assert await command(api, ADMIN, "/refund") == texts.REFUND_USAGE
    assert await command(api, ADMIN, "/refund stxA extra") == texts.REFUND_USAGE
    assert await command(api, ADMIN, "/refund stxNOPE") == str(UnknownChargeError("stxNOPE"))
    assert not api.calls_of("refundStarPayment")

    before = len(api.messages(USER))
    text = await command(api, ADMIN, "/refund stxA")
    assert text == texts.payments.refunded("stxA", USER, 50, 1800, 1800)
    assert api.refunded("stxA")
    assert balance_in(bot) == 1800
    await api.wait_for(lambda: len(api.messages(USER)) > before, 15, "the user told")
    assert api.messages(USER)[-1].text == texts.payments.refund_told(50, 1800, 1800)
    assert await command(api, ADMIN, "/refund stxA") == str(AlreadyRefundedError("stxA"))
    assert len(api.calls_of("refundStarPayment")) == 1

    # Telegram refuses: nothing is recorded or debited.
    api.fail_next("refundStarPayment", status=400, description="Bad Request: CHARGE_NOT_FOUND")
    text = await command(api, ADMIN, "/refund stxB")
    assert text == texts.payments.refund_refused("stxB", "Bad Request: CHARGE_NOT_FOUND")
    assert balance_in(bot) == 1800
    # Refunded at Telegram but not recorded (as when the bot died between the two): /refund
    # again takes Telegram's "already refunded" as done and records it.
    assert await client.refund_star_payment(USER, "stxB")
    assert await command(api, ADMIN, "/refund stxB") == texts.payments.refunded(
        "stxB", USER, 50, 1800, 0
    )
    assert balance_in(bot) == 0
    rows = query(
        database(bot),
        "SELECT kind, seconds, stars, telegram_payment_charge_id FROM transactions ORDER BY id",
    )
    assert rows == [
        ("purchase", 1800.0, 50, "stxA"),
        ("purchase", 1800.0, 50, "stxB"),
        ("refund", -1800.0, 50, "stxA"),
        ("refund", -1800.0, 50, "stxB"),
    ]


async def test_purchases_off(api: FakeBotAPI, tmp_path: Path, model_cache: Path) -> None:
    """Without STARS_PACKAGES: /buy says so, the menu has no /buy, pre-checkout is refused."""
    process = BotProcess(api, tmp_path, model_cache, WHISPER_MODEL="tiny.en", STARS_PACKAGES="")
    await process.start()
    try:
        commands = [c["command"] for c in api.commands()]
        assert "start" in commands
        assert "buy" not in commands
        assert "paysupport" not in commands
        assert await command(api, USER, "/buy") == texts.PURCHASES_OFF
        payload = payments.make_payload(settings(), package=payments.Package(30, 50), user_id=USER)
        refused = api.pre_checkout(USER, payload=payload, total_amount=50)
        assert await answered(api, refused) == {"ok": False, "error_message": texts.PURCHASES_OFF}
    finally:
        assert await process.stop() == 0, process.output()


async def test_refund_after_spending(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, corpus: Path
) -> None:
    """Minutes spent on a transcription stay spent: the refund takes back only the rest."""
    process = BotProcess(
        api,
        tmp_path,
        model_cache,
        WHISPER_MODEL="tiny.en",
        STARS_PACKAGES="1:5",
        ADMIN_IDS=str(ADMIN),
        DAILY_QUOTA_SECONDS="1",
    )
    await process.start()
    try:
        payload = payments.make_payload(
            settings("1:5"), package=payments.Package(1, 5), user_id=USER
        )
        paid = api.pay(USER, payload=payload, total_amount=5, charge_id="stxSPENT")
        await reply(api, USER, paid)
        assert balance_in(process) == 60
        note = voice_note(corpus / "en" / "librispeech_alif_another_door.wav")
        sent = api.send_voice(USER, note, duration=4)

        def transcribed() -> bool:
            return any("another door" in (m.text or "").lower() for m in api.messages(USER))

        await api.wait_for(transcribed, 60, f"the transcript of {sent}")
        ((charged, from_balance),) = query(
            database(process), "SELECT charged_seconds, balance_seconds FROM usage"
        )
        assert charged > 1
        assert from_balance == pytest.approx(charged - 1)
        left = 60 - from_balance
        assert balance_in(process) == pytest.approx(left)
        text = await command(api, ADMIN, "/refund stxSPENT")
        assert text == texts.payments.refunded("stxSPENT", USER, 5, left, 0)
        assert balance_in(process) == 0
        refunds = query(database(process), "SELECT seconds FROM transactions WHERE kind='refund'")
        assert refunds == [(pytest.approx(-left),)]
    finally:
        assert await process.stop() == 0, process.output()
