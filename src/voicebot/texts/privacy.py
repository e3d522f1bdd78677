"""/privacy and /forget."""

from __future__ import annotations

from voicebot.i18n import _, ngettext
from voicebot.texts import number


def days(value: float) -> str:
    """A number of days: `1 day`, `30 days`, `0.5 days`."""
    # A fraction takes the form of 2 ("0.5 days", "0,5 дня").
    count = int(value) if value == int(value) else 2
    return ngettext("{n} day", "{n} days", count).format(n=number(value))


def summary(*, kept_days: float, serving_days: float, retention_days: float) -> str:
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
            "• The seconds of audio each transcription used and the language detected in it, for "
            "the daily limits, /me and usage statistics: no text."
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
            "recordings, and your settings. Only the seconds used and their languages stay, "
            "without any text."
        ),
    ]
    return "\n".join(lines)


def forget_confirm() -> str:
    """/forget: what will be deleted, before the confirmation button."""
    return _(
        "Delete everything I store about you? Your transcripts, the file names and error "
        "messages of your recordings, and your settings are deleted for good; recordings of yours "
        "still waiting or being transcribed are cancelled. The seconds you used and their "
        "languages stay, without any text, for the daily limits."
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
