"""What admins are told by /stats, /grant, /credit, /ban (and the CLI)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from babel.dates import format_datetime
from babel.numbers import format_percent

from voicebot.i18n import _, current_locale, ngettext
from voicebot.models import as_utc
from voicebot.texts import display_name, duration, number

if TYPE_CHECKING:
    from voicebot.admin import Stats
    from voicebot.models import User


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
