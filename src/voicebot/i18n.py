"""The interface's languages: gettext catalogs (`locales/*/LC_MESSAGES/messages.po`).

Every user-facing string is written as `_("…")` or `ngettext("…", "…", n)` from here (in
`texts/`), translated in the locale of the current context: aiogram's i18n middleware sets it
per update, and a job's work runs under `use_locale(job.locale)`. The catalogs themselves
(aiogram's I18n over the .po files) are in `catalogs`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiogram.utils.i18n import I18n

DEFAULT_LOCALE = "en"
#: Interface languages with a complete catalog (a test checks the catalogs match).
SUPPORTED = ("en", "ru")


def locale_for(ui_language: str | None, language_code: str | None) -> str:
    """The interface language: the one chosen in /settings, else Telegram's, else English."""
    for code in (ui_language, language_code):
        if code:
            base = code.replace("_", "-").split("-")[0].lower()
            if base in SUPPORTED:
                return base
    return DEFAULT_LOCALE


def _current() -> I18n | None:
    """The catalogs of the current context, if any were built (`catalogs.build_i18n`).

    Looked up through `sys.modules` so that this module (and `texts`) does not import aiogram:
    the CLI never builds catalogs, speaks English, and starts 2 s sooner without it.
    """
    catalogs = sys.modules.get("voicebot.catalogs")
    return None if catalogs is None else catalogs.Catalogs.get_current(no_error=True)


def current_locale() -> str:
    """The locale of the current context (English outside any)."""
    i18n = _current()
    return i18n.current_locale if i18n is not None else DEFAULT_LOCALE


@contextmanager
def use_locale(locale: str | None) -> Iterator[None]:
    """Texts in `locale` (None: English) within the block, under the current I18n if any."""
    i18n = _current()
    if i18n is None:
        yield
        return
    with i18n.use_locale(locale or DEFAULT_LOCALE):
        yield


def gettext(message: str) -> str:
    """`message` in the current locale."""
    i18n = _current()
    return i18n.gettext(message) if i18n is not None else message


_ = gettext


def ngettext(singular: str, plural: str, n: int) -> str:
    """The form of `singular`/`plural` for the count `n` in the current locale."""
    i18n = _current()
    if i18n is None:
        return singular if n == 1 else plural
    return i18n.gettext(singular, plural, n)


def N_(message: str) -> str:  # noqa: N802 - gettext's name for "mark for extraction only"
    """Mark `message` for the catalogs without translating it here (translate where used)."""
    return message
