"""Buying minutes with Telegram Stars: packages, signed invoice payloads, crediting and refunds.

A purchase is credited exactly once, keyed by Telegram's `telegram_payment_charge_id`: its
`transactions` row (kind purchase) and the balance change are written in one transaction, and
the unique constraint (telegram_payment_charge_id, kind) turns a second delivery of the same
payment into a no-op. A refund is a second row for the same charge (kind refund), so a charge
can be refunded at most once, in the same way.

The balance is one pool (purchases and admin credits, spent after the day's allowance), so a
refund cannot tell which seconds were spent: it takes back the purchased seconds, or all that
is left of the balance when that is less. It never makes the balance negative; seconds already
spent stay spent.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from sqlalchemy import literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from voicebot import texts
from voicebot.config import Settings
from voicebot.errors import AlreadyRefundedError, BadPayloadError, UnknownChargeError
from voicebot.models import Transaction, User, _insert_for

CURRENCY = "XTR"
"""Telegram Stars; invoices in Stars need no payment provider token."""
PURCHASE = "purchase"
REFUND = "refund"
PAYLOAD_VERSION = "v1"
# 32 hex digits (128 bits) of HMAC-SHA256: unguessable, and the payload stays far below
# Telegram's 128-byte limit.
SIGNATURE_CHARS = 32


@dataclass(frozen=True, slots=True)
class Package:
    """What one invoice sells: `minutes` of transcription for `stars` Telegram Stars."""

    minutes: int
    stars: int


@dataclass(frozen=True, slots=True)
class Order:
    """A verified invoice payload: the package, and the user it was made for."""

    package: Package
    user_id: int


@dataclass(frozen=True, slots=True)
class Refund:
    """A recorded refund: `seconds` taken from the balance (at most `purchased_seconds`)."""

    user_id: int
    stars: int
    purchased_seconds: float
    seconds: float
    balance_seconds: float


def packages(settings: Settings) -> list[Package]:
    """The packages on sale (STARS_PACKAGES); empty means purchases are off."""
    return [Package(minutes, stars) for minutes, stars in settings.stars_packages]


def find_package(settings: Settings, *, minutes: int, stars: int) -> Package | None:
    """The package on sale with exactly these minutes and stars, if any."""
    wanted = Package(minutes, stars)
    return wanted if wanted in packages(settings) else None


def _key(settings: Settings) -> bytes:
    """The payload signing key, derived from the bot token: no extra secret to manage."""
    token = settings.telegram_bot_token
    secret = token.get_secret_value() if token is not None else ""
    return hmac.new(secret.encode(), b"voicebot invoice payload", hashlib.sha256).digest()


def _signature(settings: Settings, body: str) -> str:
    digest = hmac.new(_key(settings), body.encode(), hashlib.sha256).hexdigest()
    return digest[:SIGNATURE_CHARS]


def make_payload(settings: Settings, *, package: Package, user_id: int) -> str:
    """The invoice payload `v1:<minutes>:<stars>:<user_id>:<signature>` for `user_id`."""
    body = f"{PAYLOAD_VERSION}:{package.minutes}:{package.stars}:{user_id}"
    return f"{body}:{_signature(settings, body)}"


def read_payload(settings: Settings, payload: str) -> Order:
    """The order in a payload this bot signed; BadPayloadError when it is not ours or altered."""
    body, _, signature = payload.rpartition(":")
    parts = body.split(":")
    if len(parts) != 4 or parts[0] != PAYLOAD_VERSION:
        raise BadPayloadError()
    if not hmac.compare_digest(signature.encode(), _signature(settings, body).encode()):
        raise BadPayloadError()
    try:
        minutes, stars, user_id = (int(part) for part in parts[1:])
    except ValueError:
        raise BadPayloadError() from None
    return Order(Package(minutes, stars), user_id)


def checkout_problem(
    settings: Settings, *, user_id: int, payload: str, currency: str, total_amount: int
) -> str | None:
    """Why a pre-checkout query must be refused (a line for the payer), or None to accept it."""
    if not settings.stars_packages:
        return texts.PURCHASES_OFF
    try:
        order = read_payload(settings, payload)
    except BadPayloadError:
        return texts.CHECKOUT_NOT_OURS
    if order.user_id != user_id:
        return texts.CHECKOUT_OTHER_USER
    if find_package(settings, minutes=order.package.minutes, stars=order.package.stars) is None:
        return texts.PACKAGE_GONE
    if currency != CURRENCY or total_amount != order.package.stars:
        return texts.CHECKOUT_WRONG_AMOUNT
    return None


async def credit_purchase(
    session: AsyncSession, *, user_id: int, charge_id: str, minutes: int, stars: int, payload: str
) -> bool:
    """Add `minutes` to the user's balance once per `charge_id`; False if already credited."""
    insert = _insert_for(session)
    # A payer may never have sent audio, so the user row may not exist yet.
    await session.execute(insert(User).values(id=user_id).on_conflict_do_nothing())
    seconds = minutes * 60.0
    inserted = await session.execute(
        insert(Transaction)
        .values(
            user_id=user_id,
            kind=PURCHASE,
            seconds=seconds,
            stars=stars,
            telegram_payment_charge_id=charge_id,
            payload=payload,
        )
        .on_conflict_do_nothing(
            index_elements=[Transaction.telegram_payment_charge_id, Transaction.kind]
        )
        .returning(Transaction.id)
    )
    if inserted.scalar_one_or_none() is None:
        return False
    await session.execute(
        update(User)
        .where(User.id == user_id)
        .values(balance_seconds=User.balance_seconds + seconds)
    )
    return True


async def balance_of(session: AsyncSession, *, user_id: int) -> float:
    """The user's balance in seconds (0 for a user never seen)."""
    found = await session.execute(select(User.balance_seconds).where(User.id == user_id))
    return found.scalar_one_or_none() or 0.0


async def find_purchase(session: AsyncSession, *, charge_id: str) -> Transaction | None:
    """The purchase paid with `charge_id`, if this bot credited one."""
    found = await session.execute(
        select(Transaction).where(
            Transaction.telegram_payment_charge_id == charge_id, Transaction.kind == PURCHASE
        )
    )
    return found.scalar_one_or_none()


async def is_refunded(session: AsyncSession, *, charge_id: str) -> bool:
    """Whether the purchase paid with `charge_id` has been refunded."""
    found = await session.execute(
        select(Transaction.id).where(
            Transaction.telegram_payment_charge_id == charge_id, Transaction.kind == REFUND
        )
    )
    return found.scalar_one_or_none() is not None


async def refund(session: AsyncSession, *, charge_id: str) -> Refund:
    """Record the refund of `charge_id` and take back its unspent seconds, never below zero.

    Debits min(purchased seconds, balance): the balance is one pool, so seconds already spent
    are not taken back and the balance never goes negative. UnknownChargeError when no purchase
    has that charge id, AlreadyRefundedError on a second refund.
    """
    insert = _insert_for(session)
    # The refund row goes in first: it is the statement that takes SQLite's write lock (and
    # PostgreSQL's lock on the unique key), so the balance read below cannot change under us,
    # and of two concurrent refunds only one gets past this point.
    # Its seconds are set once the balance is read.
    purchase = select(
        Transaction.user_id,
        literal(REFUND),
        literal(0.0),
        Transaction.stars,
        Transaction.telegram_payment_charge_id,
        Transaction.payload,
    ).where(Transaction.telegram_payment_charge_id == charge_id, Transaction.kind == PURCHASE)
    inserted = await session.execute(
        insert(Transaction)
        .from_select(
            ["user_id", "kind", "seconds", "stars", "telegram_payment_charge_id", "payload"],
            purchase,
        )
        .on_conflict_do_nothing(
            index_elements=[Transaction.telegram_payment_charge_id, Transaction.kind]
        )
        .returning(Transaction.id)
    )
    refund_id = inserted.scalar_one_or_none()
    bought = await find_purchase(session, charge_id=charge_id)
    if bought is None:
        raise UnknownChargeError(charge_id)
    if refund_id is None:
        raise AlreadyRefundedError(charge_id)
    found = await session.execute(
        select(User.balance_seconds).where(User.id == bought.user_id).with_for_update()
    )
    balance = found.scalar_one()
    seconds = max(0.0, min(bought.seconds, balance))
    await session.execute(
        update(User)
        .where(User.id == bought.user_id)
        .values(balance_seconds=User.balance_seconds - seconds)
    )
    await session.execute(
        update(Transaction).where(Transaction.id == refund_id).values(seconds=-seconds)
    )
    return Refund(
        user_id=bought.user_id,
        stars=bought.stars or 0,
        purchased_seconds=bought.seconds,
        seconds=seconds,
        balance_seconds=balance - seconds,
    )
