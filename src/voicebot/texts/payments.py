"""Telegram Stars purchases: packages, invoices, thanks and refunds."""

from __future__ import annotations

from voicebot.i18n import _, ngettext
from voicebot.texts import duration, number


def package_button(minutes: int, stars: int) -> str:
    """The /buy button for a package."""
    return _("{minutes} min for {stars} ⭐").format(minutes=number(minutes), stars=number(stars))


def invoice_title(minutes: int) -> str:
    """An invoice's title (Telegram allows 32 characters)."""
    return ngettext(
        "{count} minute of transcription", "{count} minutes of transcription", minutes
    ).format(count=number(minutes))


def invoice_description(minutes: int) -> str:
    """An invoice's description (Telegram allows 255 characters)."""
    return ngettext(
        "{count} minute of transcription for voice messages, audio and video, used after your "
        "daily allowance. It does not expire.",
        "{count} minutes of transcription for voice messages, audio and video, used after your "
        "daily allowance. They do not expire.",
        minutes,
    ).format(count=number(minutes))


def _payment_id(charge_id: str) -> str:
    return _("Payment id (for /paysupport): {charge_id}").format(charge_id=charge_id)


def purchased(minutes: int, balance_seconds: float, charge_id: str) -> str:
    """Thanks after a payment was credited."""
    thanks = ngettext(
        "Thank you! {count} minute was added. Your balance: {balance}.",
        "Thank you! {count} minutes were added. Your balance: {balance}.",
        minutes,
    ).format(count=number(minutes), balance=duration(balance_seconds))
    return f"{thanks}\n{_payment_id(charge_id)}"


def already_credited(balance_seconds: float, charge_id: str) -> str:
    """A payment delivered again: it was credited before, and only once."""
    again = _("This payment was already credited. Your balance: {balance}.").format(
        balance=duration(balance_seconds)
    )
    return f"{again}\n{_payment_id(charge_id)}"


def refunded(charge_id: str, user_id: int, stars: int, seconds: float, balance: float) -> str:
    """Reply to an admin's /refund."""
    return _(
        "Refunded {stars} ⭐ of payment {charge_id} to user {user_id}; took back {taken} from "
        "their balance, which is now {balance}."
    ).format(
        stars=number(stars),
        charge_id=charge_id,
        user_id=user_id,
        taken=duration(seconds),
        balance=duration(balance),
    )


def refund_told(stars: int, seconds: float, balance: float) -> str:
    """What a refunded user is told."""
    return _(
        "Your payment of {stars} ⭐ was refunded. {taken} were taken from your balance, which "
        "is now {balance}."
    ).format(stars=number(stars), taken=duration(seconds), balance=duration(balance))


def refund_refused(charge_id: str, reason: str) -> str:
    """Telegram would not refund the payment; nothing was changed."""
    return _("Telegram refused to refund {charge_id} ({reason}); nothing was changed.").format(
        charge_id=charge_id, reason=reason
    )
