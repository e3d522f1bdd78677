"""Recognition language, the buttons under a transcript, translation and /format."""

from __future__ import annotations

from babel.numbers import format_percent

from voicebot.i18n import _, current_locale
from voicebot.texts import duration, number


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
