"""Groups and /settings."""

from __future__ import annotations

from voicebot.i18n import _


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
