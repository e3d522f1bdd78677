"""Logging setup: structlog for our events, the standard library routed through the same output.

Every line carries the ids bound with `structlog.contextvars` where it was written: `update_id`
(and the sender's `user_id` and `chat_id`) while an update is handled, `job_id`, `user_id` and
`chat_id` while a job runs. Threads started with `asyncio.to_thread` copy them, so the engine's
worker thread logs them too. The bot token is replaced by `<token>` in every line (aiogram and
aiohttp name request URLs, which hold it).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from voicebot.config import Settings

REDACTED = "<token>"


def setup_logging(
    level: str = "INFO", fmt: str = "console", *, secrets: Iterable[str] = ()
) -> None:
    """Send structlog and stdlib logging to stderr, as JSON lines or for a console.

    Every string in `secrets` is replaced by `<token>` wherever it appears in a line.
    """
    redact = Redactor(secrets)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact.values,  # every value, the rendered traceback included
                renderer,
                redact.text,  # what the renderer made of other objects (a repr)
            ],
        )
    )
    handler.addFilter(redact)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # faster-whisper logs every file and Alembic every start at INFO, aiosqlite every query at
    # DEBUG; keep them for debugging those libraries.
    for chatty in ("faster_whisper", "alembic", "aiosqlite"):
        logging.getLogger(chatty).setLevel(max(root.level, logging.WARNING))
    # aiogram says "Update id=… is handled" at INFO for every update: a DEBUG line here.
    events = logging.getLogger("aiogram.event")
    for old in [f for f in events.filters if isinstance(f, InfoToDebug)]:
        events.removeFilter(old)
    events.addFilter(InfoToDebug(events))


def start_logging(settings: Settings) -> None:
    """Logging for the service: LOG_LEVEL, LOG_FORMAT, the bot token redacted, and Sentry
    when SENTRY_DSN is set."""
    setup_logging(settings.log_level, settings.log_format, secrets=secrets_of(settings))
    if settings.sentry_dsn:
        setup_sentry(settings)


def secrets_of(settings: Settings) -> list[str]:
    """What must never be logged: the bot token, and its secret part alone."""
    if settings.telegram_bot_token is None:
        return []
    token = settings.telegram_bot_token.get_secret_value()
    _, _, secret = token.partition(":")
    # The secret alone, when it is long enough not to match ordinary text (BotFather's: 35).
    return [token, *([secret] if len(secret) >= 8 else [])]


def setup_sentry(settings: Settings) -> None:
    """Send errors (and ERROR log lines) to SENTRY_DSN, the token redacted from every event."""
    import sentry_sdk

    redact = Redactor(secrets_of(settings))

    def scrub(event: Any, hint: Any) -> Any:
        return redact.deep(event)

    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        before_send=scrub,
        before_breadcrumb=scrub,
        send_default_pii=False,
    )


class Redactor(logging.Filter):
    """Replaces the secrets in strings, event dicts and stdlib records with `<token>`."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        forms = {
            form
            for secret in secrets
            if secret
            # as written, and as a URL quotes it (the colon)
            for form in (secret, secret.replace(":", "%3A"), secret.replace(":", "%3a"))
        }
        # Longest first, so the whole token goes before its secret part.
        self._pattern = (
            re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)))
            if forms
            else None
        )

    def text(self, _logger: Any, _name: str, rendered: Any) -> Any:
        """structlog processor after the renderer: the rendered line."""
        return self.sub(rendered) if isinstance(rendered, str) else rendered

    def values(self, _logger: Any, _name: str, event: Any) -> Any:
        """structlog processor: every string value of the event dict, nested ones too."""
        return self.deep(event)

    def sub(self, value: str) -> str:
        """`value` with the secrets replaced."""
        return value if self._pattern is None else self._pattern.sub(REDACTED, value)

    def deep(self, value: Any) -> Any:
        """`value` with the secrets replaced in every string it holds (dicts, lists, tuples)."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.sub(value)
        if isinstance(value, dict):
            return {key: self.deep(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.deep(item) for item in value)
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        """A stdlib record's message, arguments and exception text, redacted; always kept."""
        if self._pattern is None or isinstance(record.msg, dict):  # structlog's own: see values
            return True
        record.msg = self.sub(record.getMessage())
        record.args = ()
        if record.exc_text:
            record.exc_text = self.sub(record.exc_text)
        return True


class InfoToDebug(logging.Filter):
    """Lowers a logger's INFO records to DEBUG, shown only where DEBUG is enabled."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self._logger = logger

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep other levels; an INFO record becomes DEBUG, and is dropped below DEBUG."""
        if record.levelno != logging.INFO:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self._logger.isEnabledFor(logging.DEBUG)
