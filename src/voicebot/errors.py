"""The few named errors voicebot raises; each carries a message a person understands."""

from __future__ import annotations


class VoicebotError(Exception):
    """Base of every expected failure; `str(error)` is safe to show to a user."""

    #: Whether retrying the same work might succeed (network, server hiccups).
    transient: bool = False


class ConfigError(VoicebotError):
    """A setting is missing or wrong; the message names the setting."""


class ModelUnavailableError(VoicebotError):
    """The Whisper model cannot be found, assembled or loaded."""


class BadAudioError(VoicebotError):
    """The input cannot be transcribed; retrying will not help."""


class EmptyAudioError(BadAudioError):
    """The file has no bytes at all."""


class NotAudioError(BadAudioError):
    """The file is not audio or video, or the video has no sound track."""


class CorruptAudioError(BadAudioError):
    """The file looks like media but no audio could be decoded from it."""


class AudioTooLongError(BadAudioError):
    """The audio is longer than MAX_AUDIO_SECONDS."""


class NoSpeechError(BadAudioError):
    """Decoding worked but there is no speech in the audio."""


class FileTooLargeError(BadAudioError):
    """The file is larger than the Bot API lets the bot download."""


class FileUnavailableError(BadAudioError):
    """Telegram would not hand over the file (expired or invalid file_id)."""


class TranscriptionCancelledError(VoicebotError):
    """The transcription was cancelled before it finished."""


class TranscriptionTimeoutError(VoicebotError):
    """The transcription ran past its time limit."""
