"""The interface's languages: gettext catalogs (`locales/*/LC_MESSAGES/messages.po`).

Every user-facing string is written as `_("…")` or `ngettext("…", "…", n)` from here (in
`texts/`), translated in the locale of the current context: aiogram's i18n middleware sets it
per update, and a job's work runs under `I18n.use_locale(job.locale)`. The .po files are
compiled in memory when the catalogs load, so there is no build step and no stale .mo file.
"""

from __future__ import annotations

import gettext as stdlib_gettext
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiogram.utils.i18n import I18n
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

LOCALES_DIR = Path(__file__).parent / "locales"
DOMAIN = "messages"
DEFAULT_LOCALE = "en"
#: Interface languages with a complete catalog (a test checks the catalogs match).
SUPPORTED = ("en", "ru")


class Catalogs(I18n):
    """aiogram's I18n reading the .po catalogs themselves.

    aiogram keeps the current instance per class, so the current one is `Catalogs.get_current()`
    (`I18n.get_current()` never sees it).
    """

    def find_locales(self) -> dict[str, stdlib_gettext.GNUTranslations]:
        """Every locale's catalog, compiled in memory (fuzzy and untranslated entries left out)."""
        found: dict[str, stdlib_gettext.GNUTranslations] = {}
        for po in sorted(self.path.glob(f"*/LC_MESSAGES/{self.domain}.po")):
            locale = po.parent.parent.name
            with po.open("rb") as source:
                catalog = read_po(source, locale=locale, domain=self.domain)
            # write_mo drops an empty msgstr but keeps a plural entry with empty forms (its
            # msgstr is a tuple), which would make ngettext answer "": gettext falls back to
            # the English msgid for what is not (fully) translated.
            for message in list(catalog):
                if message.id and isinstance(message.string, tuple) and not all(message.string):
                    catalog.delete(message.id, context=message.context)
            compiled = io.BytesIO()
            write_mo(compiled, catalog)
            compiled.seek(0)
            found[locale] = stdlib_gettext.GNUTranslations(compiled)
        return found


def build_i18n() -> I18n:
    """The catalogs, loaded once at start."""
    return Catalogs(path=LOCALES_DIR, default_locale=DEFAULT_LOCALE, domain=DOMAIN)


def locale_for(ui_language: str | None, language_code: str | None) -> str:
    """The interface language: the one chosen in /settings, else Telegram's, else English."""
    for code in (ui_language, language_code):
        if code:
            base = code.replace("_", "-").split("-")[0].lower()
            if base in SUPPORTED:
                return base
    return DEFAULT_LOCALE


def current_locale() -> str:
    """The locale of the current context (English outside any)."""
    i18n = Catalogs.get_current(no_error=True)
    return i18n.current_locale if i18n is not None else DEFAULT_LOCALE


@contextmanager
def use_locale(locale: str | None) -> Iterator[None]:
    """Texts in `locale` (None: English) within the block, under the current I18n if any."""
    i18n = Catalogs.get_current(no_error=True)
    if i18n is None:
        yield
        return
    with i18n.use_locale(locale or DEFAULT_LOCALE):
        yield


def gettext(message: str) -> str:
    """`message` in the current locale."""
    i18n = Catalogs.get_current(no_error=True)
    return i18n.gettext(message) if i18n is not None else message


_ = gettext


def ngettext(singular: str, plural: str, n: int) -> str:
    """The form of `singular`/`plural` for the count `n` in the current locale."""
    i18n = Catalogs.get_current(no_error=True)
    if i18n is None:
        return singular if n == 1 else plural
    return i18n.gettext(singular, plural, n)


def N_(message: str) -> str:  # noqa: N802 - gettext's name for "mark for extraction only"
    """Mark `message` for the catalogs without translating it here (translate where used)."""
    return message
