"""Buying minutes with Telegram Stars: /buy, invoices, pre-checkout, payments, /refund."""

from __future__ import annotations

import structlog
from aiogram import F, Router
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from aiogram.filters import Command, CommandObject
from aiogram.types import (
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LabeledPrice,
    Message,
    PreCheckoutQuery,
)

from voicebot import payments, texts
from voicebot.bot.admin import from_admin
from voicebot.errors import AlreadyRefundedError, PaymentError, UnknownChargeError
from voicebot.jobs import Runtime

log = structlog.get_logger(__name__)

BUTTON_PREFIX = "buy:"
# Telegram's answer when a charge was refunded before (by us, or by anyone holding the token).
ALREADY_REFUNDED = "CHARGE_ALREADY_REFUNDED"


class RefundRefusedError(PaymentError):
    """Telegram would not refund the charge; nothing was recorded."""


def build_router() -> Router:
    """Payment handlers; with STARS_PACKAGES empty, /buy and pre-checkout say purchases are off."""
    router = Router(name="payments")
    router.message.filter(F.chat.type == "private")
    router.message.register(on_buy, Command("buy"))
    router.message.register(on_paysupport, Command("paysupport"))
    # Like the other admin commands, anyone else's /refund falls through to the ordinary help.
    router.message.register(on_refund, Command("refund"), from_admin)
    router.message.register(on_paid, F.successful_payment)
    router.callback_query.register(on_package, F.data.startswith(BUTTON_PREFIX))
    router.pre_checkout_query.register(on_pre_checkout)
    return router


async def on_buy(message: Message, runtime: Runtime) -> None:
    """Show the packages as buttons."""
    on_sale = payments.packages(runtime.settings)
    if not on_sale:
        await message.answer(texts.PURCHASES_OFF)
        return
    buttons = [
        [
            InlineKeyboardButton(
                text=texts.payments.package_button(package.minutes, package.stars),
                callback_data=f"{BUTTON_PREFIX}{package.minutes}:{package.stars}",
            )
        ]
        for package in on_sale
    ]
    await message.answer(texts.BUY, reply_markup=InlineKeyboardMarkup(inline_keyboard=buttons))


async def on_package(query: CallbackQuery, runtime: Runtime) -> None:
    """Send the invoice for the pressed package; every press is answered."""
    minutes, _, stars = (query.data or "").removeprefix(BUTTON_PREFIX).partition(":")
    package = None
    if minutes.isdigit() and stars.isdigit():
        package = payments.find_package(runtime.settings, minutes=int(minutes), stars=int(stars))
    if package is None:
        await query.answer(texts.PACKAGE_GONE, show_alert=True)
        return
    user_id = query.from_user.id
    chat_id = query.message.chat.id if query.message is not None else user_id
    try:
        await runtime.bot.send_invoice(
            chat_id,
            title=texts.payments.invoice_title(package.minutes),
            description=texts.payments.invoice_description(package.minutes),
            payload=payments.make_payload(runtime.settings, package=package, user_id=user_id),
            currency=payments.CURRENCY,
            prices=[
                LabeledPrice(
                    label=texts.payments.invoice_title(package.minutes), amount=package.stars
                )
            ],
        )
    except TelegramAPIError as error:
        log.warning("invoice_not_sent", user_id=user_id, error=str(error))
        await query.answer(texts.INVOICE_FAILED, show_alert=True)
        return
    await query.answer()


async def on_pre_checkout(query: PreCheckoutQuery, runtime: Runtime) -> None:
    """Accept the payment only for a package on sale, in our unaltered payload, at its price."""
    # No database work here: the answer must reach Telegram within 10 seconds.
    problem = payments.checkout_problem(
        runtime.settings,
        user_id=query.from_user.id,
        payload=query.invoice_payload,
        currency=query.currency,
        total_amount=query.total_amount,
    )
    if problem is None:
        await query.answer(ok=True)
    else:
        log.info("checkout_refused", user_id=query.from_user.id, reason=problem)
        await query.answer(ok=False, error_message=problem)


async def on_paid(message: Message, runtime: Runtime) -> None:
    """Credit the payment once (by its charge id) and thank the payer with the new balance."""
    paid = message.successful_payment
    assert paid is not None  # the filter admits only payments
    user_id = message.from_user.id if message.from_user is not None else message.chat.id
    charge_id = paid.telegram_payment_charge_id
    try:
        # Credited even when purchases have been turned off since: the Stars are paid.
        order = payments.read_payload(runtime.settings, paid.invoice_payload)
    except PaymentError:
        log.error("payment_unverified", user_id=user_id, charge_id=charge_id)
        await message.answer(texts.PAYMENT_UNVERIFIED)
        return
    async with runtime.sessions() as session:
        credited = await payments.credit_purchase(
            session,
            user_id=user_id,
            charge_id=charge_id,
            minutes=order.package.minutes,
            stars=paid.total_amount,
            payload=paid.invoice_payload,
        )
        balance = await payments.balance_of(session, user_id=user_id)
        await session.commit()
    log.info("payment_credited", user_id=user_id, charge_id=charge_id, new=credited)
    if credited:
        await message.answer(texts.payments.purchased(order.package.minutes, balance, charge_id))
    else:
        await message.answer(texts.payments.already_credited(balance, charge_id))


async def on_paysupport(message: Message) -> None:
    """How to get help with a payment (Telegram requires bots that take payments to answer)."""
    await message.answer(texts.PAYSUPPORT)


async def on_refund(message: Message, command: CommandObject, runtime: Runtime) -> None:
    """Admins: /refund CHARGE_ID refunds the Stars and takes back the unspent minutes."""
    args = (command.args or "").split()
    if len(args) != 1:
        await message.answer(texts.REFUND_USAGE)
        return
    charge_id = args[0]
    try:
        done = await refund_charge(runtime, charge_id=charge_id)
    except PaymentError as error:
        await message.answer(str(error))
        return
    await message.answer(
        texts.payments.refunded(
            charge_id, done.user_id, done.stars, done.seconds, done.balance_seconds
        )
    )
    try:
        await runtime.bot.send_message(
            done.user_id, texts.payments.refund_told(done.stars, done.seconds, done.balance_seconds)
        )
    except TelegramAPIError as error:
        log.warning("refund_not_told", user_id=done.user_id, error=str(error))


async def refund_charge(runtime: Runtime, *, charge_id: str) -> payments.Refund:
    """Refund `charge_id` at Telegram, then record it; PaymentError says why it cannot be.

    Telegram goes first and our row second. Each step refuses to happen twice on its own:
    Telegram answers CHARGE_ALREADY_REFUNDED to a second refund, and the unique (charge id,
    kind) key admits one refund row. So a /refund interrupted between the two (the Stars went
    back, the process died before the row was committed) is completed by running it again:
    Telegram's "already refunded" is taken as done and the row is written then. The other
    order would debit the balance first and leave the user without minutes and without Stars
    whenever Telegram then refused or the process died before asking it.
    """
    async with runtime.sessions() as session:
        purchase = await payments.find_purchase(session, charge_id=charge_id)
        if purchase is None:
            raise UnknownChargeError(charge_id)
        if await payments.is_refunded(session, charge_id=charge_id):
            raise AlreadyRefundedError(charge_id)
    try:
        await runtime.bot.refund_star_payment(purchase.user_id, charge_id)
    except TelegramBadRequest as error:
        if ALREADY_REFUNDED not in error.message:
            raise RefundRefusedError(
                texts.payments.refund_refused(charge_id, error.message)
            ) from error
        log.warning("refund_completed_late", charge_id=charge_id)
    async with runtime.sessions() as session:
        done = await payments.refund(session, charge_id=charge_id)
        await session.commit()
    log.info("refunded", charge_id=charge_id, user_id=done.user_id, seconds=done.seconds)
    return done
