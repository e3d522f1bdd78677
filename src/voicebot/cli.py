"""The `voicebot` command: wiring only."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from voicebot import admin, backup, telegramtypes, texts
from voicebot.audio import SAMPLE_RATE, decode
from voicebot.config import Settings
from voicebot.engine import Engine, build_engine
from voicebot.errors import AlreadyRunningError, BackupError, UnknownUserError, VoicebotError
from voicebot.formats import EXTENSIONS, Format, render
from voicebot.logs import setup_logging, start_logging
from voicebot.models import Plan, User, utcnow
from voicebot.quotas import day_start
from voicebot.recording import Transcript

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

app = typer.Typer(
    help="Self-hosted Telegram bot that turns speech into text.", no_args_is_help=True
)
users = typer.Typer(help="See and change users: plans, balances, bans.", no_args_is_help=True)
app.add_typer(users, name="users")
out = Console()
err = Console(stderr=True)
_PROGRESS_FROM_SECONDS = 60.0
_T = TypeVar("_T")


@app.callback()
def main() -> None:
    """voicebot: transcribe voice messages, audio and video on your own hardware."""


def _settings(**overrides: object) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as error:
        first = error.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "settings"
        _fail(f"{name}: {first['msg']}")


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"voicebot: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def run() -> None:
    """Run the bot: long polling, transcription workers and the database in one process."""
    settings = _settings()
    start_logging(settings)  # the token redacted; Sentry when SENTRY_DSN is set
    try:
        # One bot per database: a second one is refused, and so is a restore under it.
        with backup.run_lock(backup.lock_path(settings), holder="one bot per database"):
            _serve(settings, front=True, work=True)
    except AlreadyRunningError as error:
        _fail(str(error), 1)


@app.command()
def bot() -> None:
    """Run the Telegram front only: updates in, jobs recorded and published to BROKER_URL."""
    settings = _settings()
    start_logging(settings)
    _serve(settings, front=True, work=False)


@app.command()
def worker() -> None:
    """Run transcription workers only: WORKERS jobs at a time from BROKER_URL's queues."""
    settings = _settings()
    start_logging(settings)
    _serve(settings, front=False, work=True)


def _serve(settings: Settings, *, front: bool, work: bool) -> None:
    import asyncio

    # Before anything imports aiogram: its types' schemas are then built when first used.
    telegramtypes.import_deferred()
    from voicebot.service import serve

    try:
        asyncio.run(serve(settings, front=front, work=work))
    except VoicebotError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        # Ctrl+C before polling started (loading the model); nothing was accepted yet.
        raise typer.Exit(130) from None


@app.command()
def transcribe(
    files: Annotated[
        list[Path], typer.Argument(help="Audio or video files.", show_default=False, metavar="FILE")
    ],
    language: Annotated[
        str | None,
        typer.Option("--language", "-l", help="Language code, e.g. en; default: detect."),
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.text,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="base, tiny.en, a directory or a hub name.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write FILE.<ext> into this directory.")
    ] = None,
) -> None:
    """Transcribe files; a file that fails gets one line on stderr and the rest go on.

    The files are transcribed together (their pieces share batches), BATCH_SIZE times WORKERS at a
    time; each is printed, in the order given, once it and those before it are done.
    """
    settings = _settings(whisper_model=model)
    setup_logging("WARNING", settings.log_format)
    try:
        engine = build_engine(settings)
    except VoicebotError as error:
        _fail(str(error))
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
    failed = 0
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    hint = language or settings.whisper_language
    allowed = settings.whisper_allowed_languages
    try:
        with bar, ThreadPoolExecutor(max_workers=settings.jobs_at_once) as pool:
            started = [
                pool.submit(_transcribe_one, engine, path, hint, allowed, bar) for path in files
            ]
            for path, future in zip(files, started, strict=True):
                try:
                    transcript = future.result()
                except VoicebotError as error:
                    failed += 1
                    typer.echo(f"voicebot: {path}: {error}", err=True)
                    continue
                rendered = render(transcript, fmt)
                if output is None:
                    if len(files) > 1:
                        sys.stdout.write(f"==> {path} <==\n")
                    sys.stdout.write(rendered)
                    sys.stdout.flush()
                else:
                    (output / f"{path.stem}.{EXTENSIONS[fmt]}").write_text(
                        rendered, encoding="utf-8"
                    )
    finally:
        engine.close()
    if failed:
        raise typer.Exit(1)


def _transcribe_one(
    engine: Engine, path: Path, language: str | None, allowed: list[str], bar: Progress
) -> Transcript:
    """One file (a pool thread); a bar on stderr for a long one."""
    audio = decode(path, max_seconds=engine.options.max_audio_seconds)
    seconds = audio.shape[0] / SAMPLE_RATE
    if seconds < _PROGRESS_FROM_SECONDS or bar.disable:
        return engine.transcribe(audio, language=language, allowed_languages=allowed)
    task = bar.add_task(path.name, total=seconds)
    try:
        return engine.transcribe(
            audio,
            language=language,
            allowed_languages=allowed,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    finally:
        bar.remove_task(task)


def _in_session(settings: Settings, work: Callable[[AsyncSession], Awaitable[_T]]) -> _T:
    """Run `work` in one committed transaction on the configured database, migrated first."""
    import asyncio

    from voicebot.db import build_engine as build_db_engine
    from voicebot.db import build_sessions, upgrade_async

    async def go() -> _T:
        await upgrade_async(settings.sqlalchemy_url)
        database = build_db_engine(settings.sqlalchemy_url)
        try:
            async with build_sessions(database)() as session:
                result = await work(session)
                await session.commit()
                return result
        finally:
            await database.dispose()

    try:
        return asyncio.run(go())
    except UnknownUserError as error:
        _fail(str(error), 1)


def _say(text: str) -> None:
    """One reply on stdout, as in chat: not wrapped (it may be piped), no markup read in names."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def _positive(value: float) -> float:
    if value <= 0:
        raise typer.BadParameter("must be more than 0")
    return value


UserId = Annotated[
    int, typer.Argument(help="Telegram user id.", show_default=False, metavar="USER_ID")
]


@users.command("list")
def users_list(
    limit: Annotated[int, typer.Option(help="Show at most this many.", min=1)] = 100,
) -> None:
    """Users, most recently seen first: plan, balance, ban."""
    settings = _settings()
    found = _in_session(settings, lambda session: admin.list_users(session, limit=limit))
    now, zone = utcnow(), settings.quota_timezone
    table = Table("ID", "Name", "Plan", "Balance", "Banned", "Last seen")
    for user in found:
        table.add_row(
            str(user.id),
            Text(texts.display_name(user.first_name, user.username)),  # names are not markup
            texts.admin.plan_of(user, now, zone),
            texts.admin.minutes(user.balance_seconds),
            "yes" if user.banned else "",
            texts.admin.when(user.last_seen_at, zone),
        )
    out.print(table)


# A group's id is negative: taken as the argument, not as an unknown option.
@users.command("grant", context_settings={"ignore_unknown_options": True})
def users_grant(
    user_id: Annotated[
        int,
        typer.Argument(
            help="Telegram user id, or a group's chat id (negative).",
            show_default=False,
            metavar="USER_ID",
        ),
    ],
    plan: Annotated[Plan, typer.Option(help="The plan to put the user on.", show_default=False)],
    days: Annotated[
        int | None,
        typer.Option(
            help="Days until it falls back to free; default: no expiry.", min=1, max=admin.MAX_DAYS
        ),
    ] = None,
) -> None:
    """Put a user on a plan, for DAYS or with no expiry (free clears the expiry)."""
    settings, now = _settings(), utcnow()

    def work(session: AsyncSession) -> Awaitable[User]:
        return admin.grant_plan(session, user_id=user_id, plan=plan, days=days, now=now)

    user = _in_session(settings, work)
    _say(texts.admin.granted(user, now, settings.quota_timezone))


@users.command("credit")
def users_credit(
    user_id: UserId,
    minutes: Annotated[
        float,
        typer.Option(
            help="Minutes to add to the balance.",
            show_default=False,
            max=admin.MAX_MINUTES,
            callback=_positive,
        ),
    ],
) -> None:
    """Add minutes to a user's balance (recorded as a credit transaction)."""
    seconds = minutes * 60
    user = _in_session(
        _settings(), lambda session: admin.credit(session, user_id=user_id, seconds=seconds)
    )
    _say(texts.admin.credited(user, seconds))


@users.command("ban")
def users_ban(user_id: UserId) -> None:
    """Stop serving a user: nothing more is transcribed, queued jobs are dropped."""
    user = _in_session(
        _settings(), lambda session: admin.set_banned(session, user_id=user_id, banned=True)
    )
    _say(texts.admin.ban_changed(user))


@users.command("unban")
def users_unban(user_id: UserId) -> None:
    """Serve a banned user again."""
    user = _in_session(
        _settings(), lambda session: admin.set_banned(session, user_id=user_id, banned=False)
    )
    _say(texts.admin.ban_changed(user))


@app.command()
def stats() -> None:
    """Today (since midnight in QUOTA_TIMEZONE): jobs, audio, cache hits, failures, queue."""
    settings = _settings()
    since = day_start(utcnow(), settings.quota_timezone)
    found = _in_session(settings, lambda session: admin.stats(session, since=since))
    _say(texts.admin.admin_stats(found, settings.quota_timezone))


@app.command()
def health(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.", min=0.1)] = 5.0,
) -> None:
    """Ask the running bot's /ready (HTTP_HOST:HTTP_PORT): one line a check; exit 0 if ready."""
    from voicebot.health import ask_ready, ready_url

    settings = _settings()
    if settings.http_port == 0:
        _fail("HTTP_PORT=0: the bot serves no HTTP app to ask", 1)
    url = ready_url(settings.http_host, settings.http_port)
    try:
        ready, checks = ask_ready(url, timeout=timeout)
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        _fail(f"not ready: no answer from {url} ({reason})", 1)
    for check in checks:
        _say(f"{check.name}: {'ok' if check.ok else 'NOT READY'} ({check.detail})")
    if not ready:
        raise typer.Exit(1)


@app.command("backup")
def backup_command(
    path: Annotated[
        Path,
        typer.Argument(
            help="File to write (replaced once complete), or a directory for a dated file.",
            show_default=False,
        ),
    ],
) -> None:
    """Copy the SQLite database consistently, also while the bot runs (PostgreSQL: pg_dump)."""
    settings = _settings()
    if backup.sqlite_path(settings) is None:
        typer.echo("voicebot: DATABASE_URL is PostgreSQL: back it up with pg_dump:", err=True)
        typer.echo(backup.dump_command(settings, path))
        raise typer.Exit(1)
    try:
        copy = backup.backup(settings, path)
    except BackupError as error:
        _fail(f"backup failed: {error}", 1)
    _say(
        f"Backed up {backup.sqlite_path(settings)} to {copy.path}: {_size(copy.size)}, "
        f"{copy.jobs} jobs, schema {copy.revision}."
    )


@app.command("restore")
def restore_command(
    path: Annotated[Path, typer.Argument(help="A file written by `voicebot backup`.")],
) -> None:
    """Put a backup in place of the SQLite database; the bot must be stopped."""
    settings = _settings()
    if backup.sqlite_path(settings) is None:
        typer.echo("voicebot: DATABASE_URL is PostgreSQL: restore it with pg_restore:", err=True)
        typer.echo(backup.dump_command(settings, path, restore=True))
        raise typer.Exit(1)
    try:
        copy, kept = backup.restore(settings, path)
    except (BackupError, AlreadyRunningError) as error:
        _fail(f"restore refused: {error}", 1)
    head = backup.head_revision()
    _say(
        f"Restored {path} to {copy.path}: {_size(copy.size)}, {copy.jobs} jobs, "
        f"schema {copy.revision}"
        + (f" (`voicebot run` migrates it to {head})" if copy.revision != head else "")
        + (f"; the replaced database is {kept}." if kept else ".")
    )


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.0f} kB"
