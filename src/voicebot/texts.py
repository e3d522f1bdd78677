"""What the bot says to people (English for now; the Russian UI comes with its issue)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from voicebot.models import as_utc

if TYPE_CHECKING:
    from voicebot.admin import Stats
    from voicebot.models import User
    from voicebot.quotas import Report

HELP = (
    "Send me a voice message, a video note, an audio file or a video, and I will reply with "
    "what is said in it.\n\n"
    "I run speech recognition on my owner's own hardware; your audio is not kept after it is "
    "transcribed.\n\n"
    "/help shows this message."
)
START = "Hi! " + HELP
NOT_MEDIA = (
    "This file does not look like audio or video. Send a voice message, an audio file or a video."
)
TRANSCRIBING = "Transcribing…"
FAILED = (
    "Sorry, something went wrong on my side while transcribing this. Please send it again later."
)
GAVE_UP = "Sorry, I could not transcribe this after several tries. Please send it again later."
UNAVAILABLE = "I could not download this file from Telegram. Please send it again."
COMMANDS = {
    "start": "Start the bot",
    "me": "Your plan and what is left today",
    "help": "How to use the bot",
}


def queued(ahead: int, workers: int) -> str:
    """The first reply: transcribing at once, or the honest queue position."""
    if ahead < workers:
        return TRANSCRIBING
    return f"Queued, position {ahead - workers + 1}"


def progress(fraction: float, elapsed: float) -> str:
    """Status while a long recording is being transcribed."""
    minutes, seconds = divmod(int(elapsed), 60)
    return f"Transcribing… {int(fraction * 100)}% ({minutes}:{seconds:02d} elapsed)"


def too_large(limit_bytes: int) -> str:
    """A file over the Bot API's download limit."""
    return (
        f"This file is too large: bots can download files up to {limit_bytes // (1024 * 1024)} MB "
        "from Telegram. Send a shorter recording, or ask the bot's owner to run a local "
        "Bot API server."
    )


def as_file(characters: int) -> str:
    """Status text when the transcript goes out as a .txt file."""
    return f"The transcript is long ({characters} characters), so here it is as a file."


# --- Access, limits and quotas -----------------------------------------------------------------
PRIVATE = "Sorry, this bot is private: only people its owner has allowed can use it."
BANNED = "You have been blocked from using this bot, so I will not transcribe this."
QUEUE_FULL = "I am very busy right now and my queue is full. Please send this again in a minute."


def duration(seconds: float) -> str:
    """`1 min 05 s`, `42 s`, `2 h 03 min`: a length of audio or time for people."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def too_many_active(limit: int) -> str:
    """Refusal: the sender already has the most unfinished jobs allowed."""
    return (
        f"You already have {limit} recordings waiting or being transcribed; that is the most at "
        "a time. Send this again when one of them is done."
    )


def rate_limited(scope: str, per_minute: int, retry_after: int) -> str:
    """Refusal: too many new jobs a minute, for this sender or for everyone."""
    if scope == "user":
        return (
            f"That is a lot at once: I take at most {per_minute} recordings a minute from one "
            f"person. Please send this again in {duration(retry_after)}."
        )
    return (
        f"I am very busy right now (at most {per_minute} new recordings a minute for everyone). "
        f"Please send this again in {duration(retry_after)}."
    )


def resets(at: datetime, timezone: str, now: datetime) -> str:
    """`00:00 UTC (in 5 h 12 min)`: when the daily allowance starts again."""
    local = at.astimezone(ZoneInfo(timezone))
    return f"{local:%H:%M} {local.tzname()} (in {duration((at - now).total_seconds())})"


def quota_refused(
    need: float, left: float, resets_at: datetime, timezone: str, purchases: bool
) -> str:
    """Refusal: the recording needs more than the sender has left today."""
    now = datetime.now(UTC)
    needs = f"This recording is {duration(need)} long" if need else "This file needs some time"
    more = " You can buy more minutes with /buy." if purchases else ""
    return (
        f"{needs}, but you have {duration(max(0.0, left))} left today. Your daily allowance "
        f"starts again at {resets(resets_at, timezone, now)}.{more}"
    )


def quota_after_decoding(seconds: float, left: float, resets_at: datetime, timezone: str) -> str:
    """Refusal after decoding a file that declared no (or a shorter) duration."""
    now = datetime.now(UTC)
    return (
        f"This recording is {duration(seconds)} long, but you have {duration(max(0.0, left))} "
        f"left today. Your daily allowance starts again at {resets(resets_at, timezone, now)}."
    )


# --- Admin commands (chat and CLI) ---
ADMIN_COMMANDS = {
    "stats": "Today: jobs, audio, cache hits, failures, queue",
    "grant": "USER_ID free|premium|unlimited [DAYS]",
    "credit": "USER_ID MINUTES: add to a balance",
    "ban": "USER_ID: stop serving a user",
    "unban": "USER_ID: serve a user again",
}
ADMIN_REFUND_COMMAND = {"refund": "CHARGE_ID: refund a Stars payment"}
GRANT_USAGE = "Usage: /grant USER_ID free|premium|unlimited [DAYS]"
CREDIT_USAGE = "Usage: /credit USER_ID MINUTES"
BAN_USAGE = "Usage: /ban USER_ID"
UNBAN_USAGE = "Usage: /unban USER_ID"


def when(moment: datetime, tz: str) -> str:
    """A date and time for admins, in QUOTA_TIMEZONE (naive values are UTC, as SQLite returns)."""
    return as_utc(moment).astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %Z")


def minutes(seconds: float) -> str:
    """Seconds as minutes for admins: `30 min`, `0.5 min`."""
    return f"{round(seconds / 60, 1):g} min"


def who(user: User) -> str:
    """A user as admins see them: id and name."""
    return f"{user.id} ({display_name(user.first_name, user.username)})"


def plan_of(user: User, now: datetime, tz: str) -> str:
    """The user's plan with its expiry; an expired plan is shown as such (it counts as free)."""
    if user.plan_expires_at is None:
        return str(user.plan) if user.plan == "free" else f"{user.plan} with no expiry"
    verb = "until" if as_utc(user.plan_expires_at) > now else "expired"
    return f"{user.plan} {verb} {when(user.plan_expires_at, tz)}"


def granted(user: User, now: datetime, tz: str) -> str:
    """Reply to /grant."""
    return f"User {who(user)} is now on {plan_of(user, now, tz)}."


def credited(user: User, seconds: float) -> str:
    """Reply to /credit."""
    balance = minutes(user.balance_seconds)
    return f"Credited {minutes(seconds)} to user {who(user)}; balance now {balance}."


def ban_changed(user: User) -> str:
    """Reply to /ban and /unban."""
    if user.banned:
        return (
            f"User {who(user)} is banned: nothing of theirs is transcribed, and their "
            "queued jobs are dropped."
        )
    return f"User {who(user)} is no longer banned."


def admin_stats(stats: Stats, tz: str) -> str:
    """Reply to /stats (and `voicebot stats`)."""
    rate = (
        f"{stats.cached} of {stats.transcribed} ({stats.cache_hit_rate:.0%})"
        if stats.cache_hit_rate is not None
        else "none yet"
    )
    lines = [
        f"Today, since {when(stats.since, tz)}",
        f"Jobs: {stats.jobs}",
        f"Transcribed: {stats.transcribed}",
        f"Audio: {duration(stats.audio_seconds)}",
        f"Cache hits: {rate}",
        f"Failures: {stats.failures}",
        f"Queue: {stats.queue} unfinished",
        "Top users:" if stats.top else "Top users: none yet",
    ]
    lines += [
        f"{rank}. {top.name} ({top.user_id}): {top.jobs} job{'s' if top.jobs != 1 else ''}, "
        f"{duration(top.audio_seconds)}"
        for rank, top in enumerate(stats.top, 1)
    ]
    return "\n".join(lines)


# --- Stars purchases ---
#: Shown in the command menu only when STARS_PACKAGES is set.
PAYMENT_COMMANDS = {
    "buy": "Buy transcription minutes with Telegram Stars",
    "paysupport": "Help with a payment",
}
PURCHASES_OFF = "Purchases are off on this bot."
BUY = (
    "Buy transcription minutes with Telegram Stars. Bought minutes are used after your daily "
    "allowance and do not expire. Choose a package:"
)
PACKAGE_GONE = "This package is no longer offered. Send /buy to see the current ones."
INVOICE_FAILED = "Sorry, I could not create the invoice. Please try again later."
CHECKOUT_NOT_OURS = "This invoice is not valid. Send /buy for a new one."
CHECKOUT_OTHER_USER = "This invoice was made for another account. Send /buy for your own."
CHECKOUT_WRONG_AMOUNT = "The price does not match the package. Send /buy for a new invoice."
PAYMENT_UNVERIFIED = (
    "Your payment arrived, but I could not match it to a package. Please write to /paysupport "
    "and keep the payment's id from your Telegram Stars history."
)
PAYSUPPORT = (
    "Questions about a payment? Write to the owner of this bot and include the payment id "
    "I sent you after the purchase (also in your Telegram Stars history). The owner can refund "
    "a purchase; minutes already spent are not taken back, the rest of them are."
)
REFUND_USAGE = "Usage: /refund CHARGE_ID"


def package_button(minutes: int, stars: int) -> str:
    """The /buy button for a package."""
    return f"{minutes} min for {stars} ⭐"


def invoice_title(minutes: int) -> str:
    """An invoice's title (Telegram allows 32 characters)."""
    return f"{minutes} minutes of transcription"


def invoice_description(minutes: int) -> str:
    """An invoice's description (Telegram allows 255 characters)."""
    return (
        f"{minutes} minutes of transcription for voice messages, audio and video, used after "
        "your daily allowance. They do not expire."
    )


def purchased(minutes: int, balance_seconds: float, charge_id: str) -> str:
    """Thanks after a payment was credited."""
    return (
        f"Thank you! {minutes} minutes were added. Your balance: {duration(balance_seconds)}.\n"
        f"Payment id (for /paysupport): {charge_id}"
    )


def already_credited(balance_seconds: float, charge_id: str) -> str:
    """A payment delivered again: it was credited before, and only once."""
    return (
        f"This payment was already credited. Your balance: {duration(balance_seconds)}.\n"
        f"Payment id (for /paysupport): {charge_id}"
    )


def refunded(charge_id: str, user_id: int, stars: int, seconds: float, balance: float) -> str:
    """Reply to an admin's /refund."""
    return (
        f"Refunded {stars} ⭐ of payment {charge_id} to user {user_id}; took back "
        f"{duration(seconds)} from their balance, which is now {duration(balance)}."
    )


def refund_told(stars: int, seconds: float, balance: float) -> str:
    """What a refunded user is told."""
    return (
        f"Your payment of {stars} ⭐ was refunded. {duration(seconds)} were taken from your "
        f"balance, which is now {duration(balance)}."
    )


def refund_refused(charge_id: str, reason: str) -> str:
    """Telegram would not refund the payment; nothing was changed."""
    return f"Telegram refused to refund {charge_id} ({reason}); nothing was changed."


def left_today(left: float | None, resets_at: datetime, timezone: str) -> str:
    """One line for /start: what is left today, when a quota applies."""
    if left is None:
        return ""
    now = datetime.now(UTC)
    return (
        f"\n\nYou have {duration(max(0.0, left))} of audio left today; the allowance starts again "
        f"at {resets(resets_at, timezone, now)}. /me shows more."
    )


def me(report: Report, timezone: str, purchases: bool) -> str:
    """/me: plan, today's use and what is left, balance, and the last 7 days."""
    where = report.standing
    now = datetime.now(UTC)
    plan = where.plan.value.capitalize()
    if where.plan_expires_at is not None:
        until = where.plan_expires_at.astimezone(ZoneInfo(timezone))
        plan += f" (until {until:%Y-%m-%d %H:%M} {until.tzname()})"
    lines = [f"Plan: {plan}"]
    if where.allowance is None:
        lines.append(f"Today: {duration(where.used_today)} charged; no daily limit.")
    else:
        lines.append(
            f"Today: {duration(where.used_today)} of {duration(where.allowance)} used; "
            f"{duration(max(0.0, where.left or 0.0))} left."
        )
        lines.append(f"The day starts again at {resets(where.resets_at, timezone, now)}.")
    if where.balance > 0 or purchases:
        lines.append(
            f"Balance: {duration(where.balance)} (spent after the daily allowance)."
            + (" /buy adds more." if purchases else "")
        )
    lines.append("")
    lines.append("Last 7 days:")
    for day, jobs, seconds in reversed(report.days):
        lines.append(
            f"{day:%a %d %b}: {jobs} recording{'s' if jobs != 1 else ''}, {duration(seconds)}"
        )
    return "\n".join(lines)


def display_name(first_name: str, username: str | None) -> str:
    """How a user is named to admins: first name and @username when there is one."""
    return f"{first_name} @{username}".strip() if username else first_name or "—"


# --- Cancel ------------------------------------------------------------------------------------
CANCEL = "Cancel"
CANCELLED = "Cancelled."
CANCEL_DONE = "Cancelled: this recording will not be transcribed, and nothing is charged."
CANCEL_FINISHED = "This recording is already finished, so there is nothing to cancel."
CANCEL_NOT_YOURS = "Only the person who sent this recording can cancel it."
BUTTON_FAILED = "Sorry, something went wrong on my side. Please try again in a moment."
