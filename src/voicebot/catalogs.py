"""The gettext catalogs as aiogram's I18n: the .po files, compiled in memory when loaded."""

from __future__ import annotations

import gettext as stdlib_gettext
import io
from pathlib import Path

from aiogram.utils.i18n import I18n
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from voicebot.i18n import DEFAULT_LOCALE

LOCALES_DIR = Path(__file__).parent / "locales"
DOMAIN = "messages"


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
