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
from voicebot.models import as_utc

if TYPE_CHECKING:
    from voicebot.admin import Stats
    from voicebot.models import User
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


def when(moment: datetime, tz: str) -> str:
    """A date and time for admins, in QUOTA_TIMEZONE (naive values are UTC, as SQLite returns)."""
    local = as_utc(moment).astimezone(ZoneInfo(tz))
    return f"{format_datetime(local, 'yyyy-MM-dd HH:mm', locale=current_locale())} {local.tzname()}"


def minutes(seconds: float) -> str:
    """Seconds as minutes for admins: `30 min`, `0.5 min` (`0,5 мин`)."""
    return _("{minutes} min").format(minutes=number(round(seconds / 60, 1)))


def who(user: User) -> str:
    """A user as admins see them: id and name."""
    return f"{user.id} ({display_name(user.first_name, user.username)})"


def plan_of(user: User, now: datetime, tz: str) -> str:
    """The user's plan with its expiry; an expired plan is shown as such (it counts as free)."""
    plan = str(user.plan)  # the word /grant takes, not translated
    if user.plan_expires_at is None:
        return plan if plan == "free" else _("{plan} with no expiry").format(plan=plan)
    if as_utc(user.plan_expires_at) > now:
        return _("{plan} until {moment}").format(plan=plan, moment=when(user.plan_expires_at, tz))
    return _("{plan} expired {moment}").format(plan=plan, moment=when(user.plan_expires_at, tz))


def granted(user: User, now: datetime, tz: str) -> str:
    """Reply to /grant."""
    return _("User {user} is now on {plan}.").format(user=who(user), plan=plan_of(user, now, tz))


def credited(user: User, seconds: float) -> str:
    """Reply to /credit."""
    return _("Credited {amount} to user {user}; balance now {balance}.").format(
        amount=minutes(seconds), user=who(user), balance=minutes(user.balance_seconds)
    )


def ban_changed(user: User) -> str:
    """Reply to /ban and /unban."""
    if user.banned:
        return _(
            "User {user} is banned: nothing of theirs is transcribed, and their queued jobs "
            "are dropped."
        ).format(user=who(user))
    return _("User {user} is no longer banned.").format(user=who(user))


def admin_stats(stats: Stats, tz: str) -> str:
    """Reply to /stats (and `voicebot stats`)."""
    rate = (
        _("{cached} of {transcribed} ({rate})").format(
            cached=number(stats.cached),
            transcribed=number(stats.transcribed),
            rate=format_percent(stats.cache_hit_rate, locale=current_locale()),
        )
        if stats.cache_hit_rate is not None
        else _("none yet")
    )
    lines = [
        _("Today, since {moment}").format(moment=when(stats.since, tz)),
        _("Jobs: {count}").format(count=number(stats.jobs)),
        _("Transcribed: {count}").format(count=number(stats.transcribed)),
        _("Audio: {length}").format(length=duration(stats.audio_seconds)),
        _("Cache hits: {rate}").format(rate=rate),
        _("Failures: {count}").format(count=number(stats.failures)),
        _("Queue: {count} unfinished").format(count=number(stats.queue)),
        _("Top users:") if stats.top else _("Top users: none yet"),
    ]
    lines += [
        ngettext(
            "{rank}. {name} ({user_id}): {count} job, {length}",
            "{rank}. {name} ({user_id}): {count} jobs, {length}",
            top.jobs,
        ).format(
            rank=rank,
            name=top.name,
            user_id=top.user_id,
            count=number(top.jobs),
            length=duration(top.audio_seconds),
        )
        for rank, top in enumerate(stats.top, 1)
    ]
    return "\n".join(lines)


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


# --- Recognition language, output choices, translation, /format ------------------------------
def language_auto() -> str:
    """The /language button and setting: detect the language of each recording."""
    return _("Detect automatically")


def language_default(current: str) -> str:
    """A chat that has not chosen a language: the bot's default, described."""
    return _("Default of this bot: {setting}").format(setting=current)


def language_among(codes: str) -> str:
    """A setting that restricts detection to some languages ("en, ru")."""
    return _("Detect among: {codes}").format(codes=codes)


def language_menu(current: str, *, group: bool) -> str:
    """/language: the current setting and how to change it."""
    who = (
        _("In groups only administrators can change it.")
        if group
        else _("It applies to recordings you send me here.")
    )
    return _(
        "Recognition language: {current}\n\n"
        "Choose one below, or type any Whisper language code: /language uk\n"
        "To avoid mistakes on short recordings, detect only among a few: /language en ru\n"
        "{who}"
    ).format(current=current, who=who)


def language_set(current: str) -> str:
    """After a change of the recognition language."""
    return _("Recognition language: {current}").format(current=current)


def language_unknown(code: str) -> str:
    """/language with a code Whisper does not know."""
    return _("Unknown language code: {code}. Whisper's codes look like en, de, ru.").format(
        code=code
    )


def language_usage(most: int) -> str:
    """/language with arguments that are not a language setting."""
    return _(
        "Usage: /language auto, /language de, or /language en ru (at most {most} codes)"
    ).format(most=number(most))


def language_admins_only() -> str:
    """A group member who is not an administrator tried to change the language."""
    return _("Only the group's administrators can change the recognition language.")


def button_timestamps() -> str:
    """Output button: the transcript with [m:ss] marks."""
    return _("Timestamps")


def button_translate() -> str:
    """Output button: Whisper's translation into English."""
    return _("Translate to English")


def button_details() -> str:
    """Output button: language, probability, duration, processing time."""
    return _("Details")


def output_not_here() -> str:
    """A press of an output button that does not belong to this message (crafted, or stale)."""
    return _("This button does not work here.")


def output_gone() -> str:
    """An output button of a transcript that was deleted since (/forget, retention)."""
    return _("This transcript has been deleted, so there is nothing to show.")


def output_already_english() -> str:
    """Translate pressed on an English transcript."""
    return _("This transcript is in English already.")


def output_sent() -> str:
    """The passing note after an output button sent its file or text."""
    return _("Sent.")


def details(
    *,
    language: str,
    probability: float,
    seconds: float,
    processing: float | None,
    cached: bool,
    translated: bool,
) -> str:
    """Details of a transcript (an alert, at most 200 characters)."""
    lines = [
        _("Language: {language}, {probability} sure").format(
            language=language,
            probability=format_percent(round(probability, 2), locale=current_locale()),
        ),
        _("Length: {length}").format(length=duration(seconds)),
    ]
    if translated:
        lines.append(_("Translated into English."))
    if cached:
        lines.append(_("Answered from an earlier transcript of the same recording."))
    elif processing is not None:
        lines.append(_("Processing time: {seconds} s").format(seconds=number(round(processing, 1))))
    return "\n".join(lines)


def translation_started() -> str:
    """The note after Translate was pressed and the translation was accepted."""
    return _("Translating into English: the translation will be a reply to this transcript.")


def translation_pending() -> str:
    """Translate pressed again: a translation of this transcript was asked for already."""
    return _("A translation of this transcript has been asked for already.")


def srt_attached() -> str:
    """The status line above a transcript sent as an .srt file (/format srt)."""
    return _("Here are the subtitles (SRT).")


def format_menu(current: str) -> str:
    """/format: the current default output and the choices."""
    return _(
        "How I send transcripts in this chat: {current}\n\n"
        "Choose below, or type /format text, /format timestamps or /format srt. "
        "The buttons under each transcript give the other forms too."
    ).format(current=current)


def format_name(output: str) -> str:
    """A default output's name (a button label too)."""
    names = {
        "text": _("Text"),
        "timestamps": _("Text with timestamps"),
        "srt": _("SRT subtitles file"),
    }
    return names.get(output, output)


def format_set(output: str) -> str:
    """After /format changed the default output."""
    return _("From now on I send transcripts as: {output}").format(output=format_name(output))


def format_usage() -> str:
    """/format with an argument that is not a format."""
    return _("Usage: /format text, /format timestamps or /format srt")


def format_private_only() -> str:
    """/format in a group."""
    return _("/format works in a private chat with me.")


# --- Privacy: /privacy, /forget ---------------------------------------------------------------
def days(value: float) -> str:
    """A number of days: `1 day`, `30 days`, `0.5 days`."""
    # A fraction takes the form of 2 ("0.5 days", "0,5 дня").
    count = int(value) if value == int(value) else 2
    return ngettext("{n} day", "{n} days", count).format(n=number(value))


def privacy(*, kept_days: float, serving_days: float, retention_days: float) -> str:
    """/privacy: what is stored, for how long, and that audio is not."""
    kept = (
        _("kept for {days}, then deleted").format(days=days(kept_days))
        if kept_days > 0
        else _("kept until you delete them with /forget")
    )
    lines = [
        _("What I store about you:"),
        "",
        _("• The transcripts of your recordings (the text and its timed segments): {kept}.").format(
            kept=kept
        ),
    ]
    if serving_days > 0:
        lines.append(
            _(
                "• A recording sent again or forwarded within {days} is answered from its stored "
                "transcript, whoever sends it."
            ).format(days=days(serving_days))
        )
    if retention_days > 0:
        names = _("the file name and error message are deleted after {days}").format(
            days=days(retention_days)
        )
    else:
        names = _("kept until you delete them with /forget")
    lines += [
        _(
            "• A record of each recording: when it came, its length and status, its file name "
            "and the error message if it failed ({names})."
        ).format(names=names),
        _(
            "• The seconds of audio each transcription used, for the daily limits and /me: "
            "numbers only, no text."
        ),
        _(
            "• Your settings (interface language, transcript format, recognition language), and "
            "your name, username and language as Telegram sends them with each message."
        ),
        "",
        _(
            "Audio is never stored: each file is downloaded, transcribed in memory and dropped. "
            "The messages in this chat are kept by Telegram: delete them there."
        ),
        "",
        _(
            "/forget deletes your transcripts, the file names and error messages of your "
            "recordings, and your settings. Only the seconds used stay, without any text."
        ),
    ]
    return "\n".join(lines)


def forget_confirm() -> str:
    """/forget: what will be deleted, before the confirmation button."""
    return _(
        "Delete everything I store about you? Your transcripts, the file names and error "
        "messages of your recordings, and your settings are deleted for good; recordings of yours "
        "still waiting or being transcribed are cancelled. The seconds you used stay, without any "
        "text, for the daily limits."
    )


def forget_yes() -> str:
    """The confirmation button of /forget."""
    return _("Delete my data")


def forget_no() -> str:
    """The button that leaves everything as it is."""
    return _("Keep it")


def forget_done(transcripts: int) -> str:
    """/forget confirmed: the data is deleted (and committed)."""
    return ngettext(
        "Done: I deleted {n} transcript, the texts of your recordings and your settings.",
        "Done: I deleted {n} transcripts, the texts of your recordings and your settings.",
        transcripts,
    ).format(n=number(transcripts))


def forget_deleted() -> str:
    """The short note on pressing the confirmation button."""
    return _("Deleted.")


def forget_kept() -> str:
    """/forget called off."""
    return _("Nothing was deleted.")


def forget_not_yours() -> str:
    """Someone else pressed (or crafted) the confirmation of a /forget."""
    return _("Only the person who asked to be forgotten can confirm this.")


def forget_private_only() -> str:
    """/forget in a group."""
    return _("/forget works in a private chat with me: send it to me there.")


# --- Groups and /settings ----------------------------------------------------------------------
def group_intro() -> str:
    """Said when the bot is added to a group, and to /start and /help there."""
    return _(
        "Hi! I turn voice messages and video notes sent here into text, and audio and video "
        "files too, replying to each with its transcript.\n\n"
        "Administrators choose what I transcribe with /settings: every recording, only when "
        "someone replies /transcribe to one, or nothing. /language sets the language of the "
        "recordings here."
    )


def privacy_mode(username: str) -> str:
    """Added to the group intro when Telegram's privacy mode hides the group's messages."""
    return _(
        "I cannot see the voice messages in this group: my privacy mode is on. To fix it, make "
        "me an administrator of this group, or ask my owner to send /setprivacy to @BotFather, "
        "choose @{username}, select Disable, and then remove me from this group and add me "
        "again. Until then I transcribe a recording only when someone replies to it with "
        "/transcribe@{username}."
    ).format(username=username)


def transcribe_usage() -> str:
    """/transcribe (or a mention of the bot) that is not a reply to a recording."""
    return _(
        "Reply /transcribe to a voice message, video note, audio or video file, and I will "
        "transcribe it."
    )


def transcription_off() -> str:
    """/transcribe in a group whose mode is off."""
    return _("Transcription is off in this chat. An administrator can turn it on in /settings.")


def mode_name(mode: str) -> str:
    """A group mode's name (a button label too)."""
    names = {"auto": _("Automatic"), "command": _("On /transcribe"), "off": _("Off")}
    return names.get(mode, mode)


def group_settings(mode: str, media_files: bool) -> str:
    """/settings in a group: what is in force, and who may change it."""
    if mode == "auto":
        what = (
            _("I transcribe every voice message and video note, and audio and video files.")
            if media_files
            else _(
                "I transcribe every voice message and video note, but not audio and video files."
            )
        )
    elif mode == "command":
        what = _("I transcribe a recording when someone replies /transcribe to it.")
    else:
        what = _("I transcribe nothing in this chat.")
    return _(
        "Settings of this chat\n\n"
        "Mode: {mode}. {what}\n\n"
        "Only administrators can change these. /language sets the language of the recordings."
    ).format(mode=mode_name(mode), what=what)


def media_files_button(on: bool) -> str:
    """The button that switches audio and video files on or off (it shows the current state)."""
    return _("Audio and video files: on") if on else _("Audio and video files: off")


def settings_admins_only() -> str:
    """A non-administrator pressed a group settings button."""
    return _("Only administrators of this chat can change its settings.")


def settings_saved() -> str:
    """A settings button did its change."""
    return _("Saved.")


def settings_button_unknown() -> str:
    """A settings button whose data is not one of ours (old or crafted)."""
    return _("This button does not work any more. Send /settings again.")


def telegram_language() -> str:
    """The interface-language choice that follows Telegram's language (a button label too)."""
    return _("Telegram's language")


#: Interface languages by code, each named in itself (not translated).
UI_LANGUAGE_NAMES = {"en": "English", "ru": "Русский"}


def private_settings(current: str) -> str:
    """/settings in a private chat: the interface language, and where the other settings are."""
    return _(
        "Settings\n\n"
        "Interface language: {current}\n\n"
        "/language sets the language of your recordings, /format how I send transcripts."
    ).format(current=current)
