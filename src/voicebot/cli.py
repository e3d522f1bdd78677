"""The `voicebot` command: wiring only."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from voicebot.audio import SAMPLE_RATE, decode
from voicebot.config import Settings
from voicebot.engine import Engine, Transcript, build_engine
from voicebot.errors import VoicebotError
from voicebot.formats import EXTENSIONS, Format, render
from voicebot.logs import setup_logging

app = typer.Typer(
    help="Self-hosted Telegram bot that turns speech into text.", no_args_is_help=True
)
err = Console(stderr=True)
_PROGRESS_FROM_SECONDS = 60.0


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
    import asyncio

    from voicebot.service import serve

    settings = _settings()
    setup_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
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
    """Transcribe files; a file that fails gets one line on stderr and the rest go on."""
    settings = _settings(whisper_model=model)
    setup_logging("WARNING", settings.log_format)
    try:
        engine = build_engine(settings)
    except VoicebotError as error:
        _fail(str(error))
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in files:
        try:
            transcript = _transcribe_one(
                engine,
                path,
                language or settings.whisper_language,
                settings.whisper_allowed_languages,
            )
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
            (output / f"{path.stem}.{EXTENSIONS[fmt]}").write_text(rendered, encoding="utf-8")
    if failed:
        raise typer.Exit(1)


def _transcribe_one(
    engine: Engine, path: Path, language: str | None, allowed: list[str]
) -> Transcript:
    audio = decode(path, max_seconds=engine.options.max_audio_seconds)
    seconds = audio.shape[0] / SAMPLE_RATE
    if seconds < _PROGRESS_FROM_SECONDS or not err.is_terminal:
        return engine.transcribe(audio, language=language, allowed_languages=allowed)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(path.name, total=seconds)
        return engine.transcribe(
            audio,
            language=language,
            allowed_languages=allowed,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
