"""Recognition language settings: "auto", a code ("de"), or detection among codes ("auto:en,ru").

A chat's setting (`Chat.language`, a private chat's being its user's) is copied into each job
when it is accepted (`Job.language`); None means the global WHISPER_LANGUAGE and
WHISPER_ALLOWED_LANGUAGES. Codes are Whisper's (faster_whisper.tokenizer).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from voicebot.config import Settings
from voicebot.errors import ConfigError

AUTO = "auto"
#: The most used languages, offered as buttons by /language (any Whisper code can be typed).
POPULAR = ("en", "ru", "de", "es", "fr", "it", "pt", "uk", "tr", "pl", "nl", "ar", "zh", "ja")
#: Each language's own name, the same in every interface language (a button label).
NAMES = {
    "en": "English",
    "ru": "Русский",
    "de": "Deutsch",
    "es": "Español",
    "fr": "Français",
    "it": "Italiano",
    "pt": "Português",
    "uk": "Українська",
    "tr": "Türkçe",
    "pl": "Polski",
    "nl": "Nederlands",
    "ar": "العربية",
    "zh": "中文",
    "ja": "日本語",
    "kk": "Қазақ",
    "be": "Беларуская",
    "he": "עברית",
    "hi": "हिन्दी",
    "ko": "한국어",
    "sv": "Svenska",
    "cs": "Čeština",
    "fa": "فارسی",
}
#: Most languages one restriction may list (the setting must fit its 64-character column).
MAX_CHOICES = 10
_SEPARATORS = re.compile(r"[\s,;:]+")


@cache
def whisper_codes() -> frozenset[str]:
    """Every language code Whisper knows."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return frozenset(_LANGUAGE_CODES)


class BadLanguageError(ValueError):
    """Input that is not a language setting; `code` is the unknown code, if one was."""

    def __init__(self, code: str | None = None) -> None:
        super().__init__(code or "")
        self.code = code


def parse(text: str) -> str:
    """The setting typed after /language: "auto", "de", "en ru" or "en,ru" ("auto:en,ru").

    Raises BadLanguageError for an unknown code, too many codes, or nothing at all.
    """
    words = [word.lower() for word in _SEPARATORS.split(text.strip()) if word]
    if words[:1] == [AUTO]:
        words = words[1:]
        if not words:
            return AUTO
    if not words or len(words) > MAX_CHOICES:
        raise BadLanguageError()
    for word in words:
        if word not in whisper_codes():
            raise BadLanguageError(word[:16])
    unique = sorted(set(words))
    return unique[0] if len(unique) == 1 else f"{AUTO}:{','.join(unique)}"


def is_setting(value: str) -> bool:
    """Whether `value` is a stored setting this module would write (callback data is checked)."""
    try:
        return parse(value) == value
    except BadLanguageError:
        return False


@dataclass(frozen=True, slots=True)
class EngineLanguage:
    """What the engine is asked: a fixed language, or detection (among `allowed`, if any)."""

    language: str | None
    allowed: tuple[str, ...]


def default_setting(settings: Settings) -> str:
    """The setting WHISPER_LANGUAGE and WHISPER_ALLOWED_LANGUAGES amount to."""
    if settings.whisper_language:
        # A fixed language wins: the engine then ignores WHISPER_ALLOWED_LANGUAGES.
        return settings.whisper_language.strip().lower()
    allowed = sorted({code.strip().lower() for code in settings.whisper_allowed_languages})
    return f"{AUTO}:{','.join(allowed)}" if allowed else AUTO


def effective(setting: str | None, settings: Settings) -> str:
    """The setting a job with `setting` (None: the defaults) is transcribed with."""
    return setting if setting else default_setting(settings)


def for_engine(setting: str) -> EngineLanguage:
    """The engine's language arguments for a setting."""
    if setting == AUTO:
        return EngineLanguage(None, ())
    if setting.startswith(f"{AUTO}:"):
        codes = tuple(code for code in setting.removeprefix(f"{AUTO}:").split(",") if code)
        return EngineLanguage(None, codes)
    return EngineLanguage(setting, ())


def name(code: str) -> str:
    """A language's own name with its code ("Deutsch (de)"), or the code alone."""
    known = NAMES.get(code)
    return f"{known} ({code})" if known else code


def most_likely(
    detected: Sequence[Sequence[tuple[str, float]]], allowed: Sequence[str]
) -> tuple[str, float]:
    """The likeliest language of a recording, among `allowed` when that is not empty, from
    Whisper's detection on one or more of its windows (their probabilities averaged)."""
    pooled: dict[str, float] = {}
    for probabilities in detected:
        for token, probability in probabilities:
            pooled[token] = pooled.get(token, 0.0) + probability / len(detected)
    for token, probability in sorted(pooled.items(), key=lambda pair: -pair[1]):
        code = token[2:-2]  # "<|en|>" -> "en"
        if not allowed or code in allowed:
            return code, probability
    raise ConfigError(f"none of WHISPER_ALLOWED_LANGUAGES={','.join(allowed)} is a known language")
