"""What the bot says to people (English for now; the Russian UI comes with its issue)."""

from __future__ import annotations

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
COMMANDS = {"start": "Start the bot", "help": "How to use the bot"}


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
