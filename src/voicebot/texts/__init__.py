"""What the bot says to people, in the language of the current context (see `i18n`).

Fixed texts are module attributes (`texts.HELP`): each is an English msgid in `_MESSAGES`,
translated every time it is read (PEP 562 `__getattr__`), so a text read while handling a
Russian user's update, or inside a job whose locale is Russian, is Russian. Texts with
parameters are functions: `_("… {name} …").format(name=…)`, `ngettext` for counts, numbers and
dates through Babel in the current locale. Outside any context (the CLI, tests) all is English.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_datetime
from babel.numbers import format_decimal, format_percent

from voicebot.i18n import N_, _, current_locale, ngettext

if TYPE_CHECKING:
    from voicebot.quotas import Report

#: Fixed texts by attribute name: English msgids, translated when read (see `__getattr__`).
_MESSAGES: dict[str, str] = {}
#: Attributes computed when read (menus, texts made of other texts).
_COMPUTED: dict[str, Callable[[], object]] = {}

if TYPE_CHECKING:
    # The attributes `__getattr__` provides, declared so that mypy checks every use.
    HELP: str
    START: str
    NOT_MEDIA: str
    TRANSCRIBING: str
    FAILED: str
    GAVE_UP: str
    UNAVAILABLE: str
    COMMANDS: dict[str, str]
    PRIVATE: str
    BANNED: str
    QUEUE_FULL: str
    ADMIN_COMMANDS: dict[str, str]
    ADMIN_REFUND_COMMAND: dict[str, str]
    GRANT_USAGE: str
    CREDIT_USAGE: str
    BAN_USAGE: str
    UNBAN_USAGE: str
    PAYMENT_COMMANDS: dict[str, str]
    PURCHASES_OFF: str
    BUY: str
    PACKAGE_GONE: str
    INVOICE_FAILED: str
    CHECKOUT_NOT_OURS: str
    CHECKOUT_OTHER_USER: str
    CHECKOUT_WRONG_AMOUNT: str
    PAYMENT_UNVERIFIED: str
    PAYSUPPORT: str
    REFUND_USAGE: str
    CANCEL: str
    CANCELLED: str
    CANCEL_DONE: str
    CANCEL_FINISHED: str
    CANCEL_NOT_YOURS: str
    BUTTON_FAILED: str
    GROUP_COMMANDS: dict[str, str]


def _attribute(name: str) -> object:
    """A fixed text in the current locale, or a computed attribute."""
    if name in _MESSAGES:
        return _(_MESSAGES[name])
    if name in _COMPUTED:
        return _COMPUTED[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if not TYPE_CHECKING:
    __getattr__ = _attribute  # PEP 562; hidden from mypy, which checks the declarations above


def _translated(table: dict[str, str]) -> dict[str, str]:
    """A command menu (command: N_-marked description) in the current locale."""
    return {command: _(description) for command, description in table.items()}


def number(value: float) -> str:
    """A number as people write it in the current locale: `0.5`, `1,234` / `0,5`, `1 234`."""
    return format_decimal(value, locale=current_locale())


_MESSAGES |= {
    "HELP": N_(
        "Send me a voice message, a video note, an audio file or a video, and I will reply with "
        "what is said in it.\n\n"
        "I run speech recognition on my owner's own hardware; your audio is not kept after it "
        "is transcribed.\n\n"
        "/help shows this message."
    ),
    "NOT_MEDIA": N_(
        "This file does not look like audio or video. Send a voice message, an audio file or a "
        "video."
    ),
    "TRANSCRIBING": N_("Transcribing…"),
    "FAILED": N_(
        "Sorry, something went wrong on my side while transcribing this. Please send it again "
        "later."
    ),
    "GAVE_UP": N_(
        "Sorry, I could not transcribe this after several tries. Please send it again later."
    ),
    "UNAVAILABLE": N_("I could not download this file from Telegram. Please send it again."),
}
#: Commands in private chats (the default menu), in the order the menu shows them.
_COMMANDS = {
    "start": N_("Start the bot"),
    "help": N_("How to use the bot"),
    "me": N_("Your plan and what is left today"),
    "settings": N_("Interface language and other settings"),
    "language": N_("The language of your recordings"),
    "format": N_("How transcripts are sent: text, timestamps or SRT"),
    "privacy": N_("What the bot keeps about you, and for how long"),
    "forget": N_("Delete your transcripts and settings"),
}
#: Commands in group chats (the menu of BotCommandScopeAllGroupChats).
_GROUP_COMMANDS = {
    "transcribe": N_("Transcribe the recording you reply to"),
    "settings": N_("How the bot works in this chat"),
    "language": N_("The language of the recordings here"),
    "help": N_("How to use the bot"),
}
_COMPUTED |= {
    "START": lambda: _("Hi! {help}").format(help=_(_MESSAGES["HELP"])),
    "COMMANDS": lambda: _translated(_COMMANDS),
    "GROUP_COMMANDS": lambda: _translated(_GROUP_COMMANDS),
}


def queued(ahead: int, workers: int) -> str:
    """The first reply: transcribing at once, or the honest queue position."""
    if ahead < workers:
        return _(_MESSAGES["TRANSCRIBING"])
    return _("Queued, position {position}").format(position=number(ahead - workers + 1))


def progress(fraction: float, elapsed: float) -> str:
    """Status while a long recording is being transcribed."""
    minutes, seconds = divmod(int(elapsed), 60)
    return _("Transcribing… {percent} ({elapsed} elapsed)").format(
        percent=format_percent(int(fraction * 100) / 100, locale=current_locale()),
        elapsed=f"{minutes}:{seconds:02d}",
    )


def too_large(limit_bytes: int) -> str:
    """A file over the Bot API's download limit."""
    return _(
        "This file is too large: bots can download files up to {megabytes} MB from Telegram. "
        "Send a shorter recording, or ask the bot's owner to run a local Bot API server."
    ).format(megabytes=number(limit_bytes // (1024 * 1024)))


def as_file(characters: int) -> str:
    """Status text when the transcript goes out as a .txt file."""
    return ngettext(
        "The transcript is long ({count} character), so here it is as a file.",
        "The transcript is long ({count} characters), so here it is as a file.",
        characters,
    ).format(count=number(characters))


# --- Access, limits and quotas -----------------------------------------------------------------
_MESSAGES |= {
    "PRIVATE": N_("Sorry, this bot is private: only people its owner has allowed can use it."),
    "BANNED": N_("You have been blocked from using this bot, so I will not transcribe this."),
    "QUEUE_FULL": N_(
        "I am very busy right now and my queue is full. Please send this again in a minute."
    ),
}


def duration(seconds: float) -> str:
    """`1 min 05 s`, `42 s`, `2 h 03 min`: a length of audio or time for people."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return _("{hours} h {minutes} min").format(hours=number(hours), minutes=f"{minutes:02d}")
    if minutes:
        return _("{minutes} min {seconds} s").format(minutes=minutes, seconds=f"{secs:02d}")
    return _("{seconds} s").format(seconds=secs)


def too_many_active(limit: int) -> str:
    """Refusal: the sender already has the most unfinished jobs allowed."""
    return ngettext(
        "You already have {count} recording waiting or being transcribed; that is the most at "
        "a time. Send this again when it is done.",
        "You already have {count} recordings waiting or being transcribed; that is the most at "
        "a time. Send this again when one of them is done.",
        limit,
    ).format(count=number(limit))


def rate_limited(scope: str, per_minute: int, retry_after: int) -> str:
    """Refusal: too many new jobs a minute, for this sender or for everyone."""
    if scope == "user":
        text = ngettext(
            "That is a lot at once: I take at most {count} recording a minute from one person. "
            "Please send this again in {wait}.",
            "That is a lot at once: I take at most {count} recordings a minute from one person. "
            "Please send this again in {wait}.",
            per_minute,
        )
    else:
        text = ngettext(
            "I am very busy right now (at most {count} new recording a minute for everyone). "
            "Please send this again in {wait}.",
            "I am very busy right now (at most {count} new recordings a minute for everyone). "
            "Please send this again in {wait}.",
            per_minute,
        )
    return text.format(count=number(per_minute), wait=duration(retry_after))


def resets(at: datetime, timezone: str, now: datetime) -> str:
    """`00:00 UTC (in 5 h 12 min)`: when the daily allowance starts again."""
    local = at.astimezone(ZoneInfo(timezone))
    return _("{time} {zone} (in {wait})").format(
        time=f"{local:%H:%M}", zone=local.tzname(), wait=duration((at - now).total_seconds())
    )


def _allowance_again(resets_at: datetime, timezone: str, now: datetime) -> str:
    return _("Your daily allowance starts again at {moment}.").format(
        moment=resets(resets_at, timezone, now)
    )


def quota_refused(
    need: float, left: float, resets_at: datetime, timezone: str, purchases: bool
) -> str:
    """Refusal: the recording needs more than the sender has left today."""
    now = datetime.now(UTC)
    left_text = duration(max(0.0, left))
    if need:
        needs = _("This recording is {length} long, but you have {left} left today.").format(
            length=duration(need), left=left_text
        )
    else:
        needs = _("This file needs some time, but you have {left} left today.").format(
            left=left_text
        )
    sentences = [needs, _allowance_again(resets_at, timezone, now)]
    if purchases:
        sentences.append(_("You can buy more minutes with /buy."))
    return " ".join(sentences)


def quota_after_decoding(seconds: float, left: float, resets_at: datetime, timezone: str) -> str:
    """Refusal after decoding a file that declared no (or a shorter) duration."""
    now = datetime.now(UTC)
    needs = _("This recording is {length} long, but you have {left} left today.").format(
        length=duration(seconds), left=duration(max(0.0, left))
    )
    return f"{needs} {_allowance_again(resets_at, timezone, now)}"


# --- Admin commands (chat and CLI) ---
_ADMIN_COMMANDS = {
    "stats": N_("Today: jobs, audio, cache hits, failures, queue"),
    "grant": N_("USER_ID free|premium|unlimited [DAYS]"),
    "credit": N_("USER_ID MINUTES: add to a balance"),
    "ban": N_("USER_ID: stop serving a user"),
    "unban": N_("USER_ID: serve a user again"),
}
_ADMIN_REFUND_COMMAND = {"refund": N_("CHARGE_ID: refund a Stars payment")}
_COMPUTED |= {
    "ADMIN_COMMANDS": lambda: _translated(_ADMIN_COMMANDS),
    "ADMIN_REFUND_COMMAND": lambda: _translated(_ADMIN_REFUND_COMMAND),
}
_MESSAGES |= {
    "GRANT_USAGE": N_("Usage: /grant USER_ID free|premium|unlimited [DAYS]"),
    "CREDIT_USAGE": N_("Usage: /credit USER_ID MINUTES"),
    "BAN_USAGE": N_("Usage: /ban USER_ID"),
    "UNBAN_USAGE": N_("Usage: /unban USER_ID"),
}


# --- Stars purchases ---
#: Shown in the command menu only when STARS_PACKAGES is set.
_PAYMENT_COMMANDS = {
    "buy": N_("Buy transcription minutes with Telegram Stars"),
    "paysupport": N_("Help with a payment"),
}
_COMPUTED |= {"PAYMENT_COMMANDS": lambda: _translated(_PAYMENT_COMMANDS)}
_MESSAGES |= {
    "PURCHASES_OFF": N_("Purchases are off on this bot."),
    "BUY": N_(
        "Buy transcription minutes with Telegram Stars. Bought minutes are used after your "
        "daily allowance and do not expire. Choose a package:"
    ),
    "PACKAGE_GONE": N_("This package is no longer offered. Send /buy to see the current ones."),
    "INVOICE_FAILED": N_("Sorry, I could not create the invoice. Please try again later."),
    "CHECKOUT_NOT_OURS": N_("This invoice is not valid. Send /buy for a new one."),
    "CHECKOUT_OTHER_USER": N_("This invoice was made for another account. Send /buy for your own."),
    "CHECKOUT_WRONG_AMOUNT": N_(
        "The price does not match the package. Send /buy for a new invoice."
    ),
    "PAYMENT_UNVERIFIED": N_(
        "Your payment arrived, but I could not match it to a package. Please write to "
        "/paysupport and keep the payment's id from your Telegram Stars history."
    ),
    "PAYSUPPORT": N_(
        "Questions about a payment? Write to the owner of this bot and include the payment id "
        "I sent you after the purchase (also in your Telegram Stars history). The owner can "
        "refund a purchase; minutes already spent are not taken back, the rest of them are."
    ),
    "REFUND_USAGE": N_("Usage: /refund CHARGE_ID"),
}


def left_today(left: float | None, resets_at: datetime, timezone: str) -> str:
    """One line for /start: what is left today, when a quota applies."""
    if left is None:
        return ""
    now = datetime.now(UTC)
    line = _(
        "You have {left} of audio left today; the allowance starts again at {moment}. /me "
        "shows more."
    ).format(left=duration(max(0.0, left)), moment=resets(resets_at, timezone, now))
    return f"\n\n{line}"


_PLANS = {"free": N_("Free"), "premium": N_("Premium"), "unlimited": N_("Unlimited")}


def _day(day: date) -> str:
    """`Mon 5 Jan` / `пн 5 янв.`: a day of the /me list."""
    return format_date(day, "EEE d MMM", locale=current_locale())


def me(report: Report, timezone: str, purchases: bool) -> str:
    """/me: plan, today's use and what is left, balance, and the last 7 days."""
    where = report.standing
    now = datetime.now(UTC)
    plan = _(_PLANS[where.plan.value]) if where.plan.value in _PLANS else where.plan.value
    if where.plan_expires_at is not None:
        until = where.plan_expires_at.astimezone(ZoneInfo(timezone))
        moment = format_datetime(until, "d MMMM y, HH:mm", locale=current_locale())
        plan = _("{plan} (until {moment} {zone})").format(
            plan=plan, moment=moment, zone=until.tzname()
        )
    lines = [_("Plan: {plan}").format(plan=plan)]
    if where.allowance is None:
        lines.append(
            _("Today: {used} charged; no daily limit.").format(used=duration(where.used_today))
        )
    else:
        lines.append(
            _("Today: {used} of {allowance} used; {left} left.").format(
                used=duration(where.used_today),
                allowance=duration(where.allowance),
                left=duration(max(0.0, where.left or 0.0)),
            )
        )
        lines.append(
            _("The day starts again at {moment}.").format(
                moment=resets(where.resets_at, timezone, now)
            )
        )
    if where.balance > 0 or purchases:
        balance = _("Balance: {balance} (spent after the daily allowance).").format(
            balance=duration(where.balance)
        )
        more = _("/buy adds more.")
        lines.append(f"{balance} {more}" if purchases else balance)
    lines.append("")
    lines.append(_("Last 7 days:"))
    for day, jobs, seconds in reversed(report.days):
        lines.append(
            ngettext(
                "{day}: {count} recording, {length}",
                "{day}: {count} recordings, {length}",
                jobs,
            ).format(day=_day(day), count=number(jobs), length=duration(seconds))
        )
    return "\n".join(lines)


def display_name(first_name: str, username: str | None) -> str:
    """How a user is named to admins: first name and @username when there is one."""
    return f"{first_name} @{username}".strip() if username else first_name or "—"


# --- Cancel ------------------------------------------------------------------------------------
_MESSAGES |= {
    "CANCEL": N_("Cancel"),
    "CANCELLED": N_("Cancelled."),
    "CANCEL_DONE": N_("Cancelled: this recording will not be transcribed, and nothing is charged."),
    "CANCEL_FINISHED": N_("This recording is already finished, so there is nothing to cancel."),
    "CANCEL_NOT_YOURS": N_("Only the person who sent this recording can cancel it."),
    "BUTTON_FAILED": N_("Sorry, something went wrong on my side. Please try again in a moment."),
}


# Texts by feature, as `texts.admin.granted(…)`; imported last: they use the helpers above.
from voicebot.texts import admin, groups, outputs, payments, privacy  # noqa: E402

__all__ = ["admin", "groups", "outputs", "payments", "privacy"]
