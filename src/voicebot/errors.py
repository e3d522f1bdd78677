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


class JobCancelledError(VoicebotError):
    """The job's sender (or an admin) cancelled it: it stops, nothing is charged or delivered."""


class LeaseLostError(VoicebotError):
    """Another worker took the job (this one's lease expired): it stops, telling nothing."""


class TranscriptionTimeoutError(VoicebotError):
    """The transcription ran past its time limit."""


class UnknownUserError(VoicebotError):
    """An admin named a user id the bot has never seen."""

    def __init__(self, user_id: int) -> None:
        super().__init__(f"Unknown user {user_id}: they have not used this bot yet.")
        self.user_id = user_id


class QuotaExceededError(VoicebotError):
    """The recording turned out longer than what the sender has left; nothing is charged."""


class BannedError(VoicebotError):
    """The sender was banned while the job waited; it is dropped."""


class PaymentError(VoicebotError):
    """A Stars payment or refund cannot go ahead; the message says why."""


class BadPayloadError(PaymentError):
    """An invoice payload that this bot did not sign, or that was altered."""

    def __init__(self) -> None:
        super().__init__("This invoice was not made by this bot or was altered.")


class UnknownChargeError(PaymentError):
    """No purchase was credited with this telegram_payment_charge_id."""

    def __init__(self, charge_id: str) -> None:
        super().__init__(f"No purchase has the charge id {charge_id}.")
        self.charge_id = charge_id


class AlreadyRefundedError(PaymentError):
    """The purchase with this charge id has been refunded before."""

    def __init__(self, charge_id: str) -> None:
        super().__init__(f"The purchase {charge_id} has already been refunded.")
        self.charge_id = charge_id


class AlreadyRunningError(VoicebotError):
    """Another `voicebot run` holds the database's lock file."""


class BackupError(VoicebotError):
    """A backup or restore cannot go ahead; the message says why and changes nothing."""


class NotRecordedError(VoicebotError):
    """A webhook update's batch could not be recorded; it is not acknowledged (Telegram resends)."""
