"""Output choices under a transcript: its buttons, what each one renders, and who may press them.

The buttons sit on the job's status message, the message that carries the transcript (its first
part, or the line above the .txt or .srt file): that is the one message whose id the job keeps,
so a press is checked against it, and the keyboard is put there by the same idempotent edit as
the text, so a restart cannot send it twice. A press counts only on that very message in that
very chat: Telegram says where the pressed message is, while the callback data is the client's
and may be crafted. Everything is rendered from the stored transcript's segments.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import partial

import structlog
from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.types import (
    BufferedInputFile,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    ReplyParameters,
)
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from voicebot import recording, texts
from voicebot.delivery import split_text, with_retries
from voicebot.formats import Format, render
from voicebot.languages import name
from voicebot.models import Job, JobStatus, Transcript, Usage

log = structlog.get_logger(__name__)

#: callback_data of an output button: "out:{job_id}:{action}".
OUT_PREFIX = "out:"
#: Telegram shows at most this many characters of a callback answer.
ANSWER_LIMIT = 200


class Action(enum.StrEnum):
    """What an output button asks for (the last part of its callback data)."""

    timestamps = "ts"
    srt = "srt"
    vtt = "vtt"
    translation = "tr"
    details = "info"


def callback_data(job_id: int, action: Action) -> str:
    """The callback data of job `job_id`'s button `action`."""
    return f"{OUT_PREFIX}{job_id}:{action.value}"


def parse(data: str | None) -> tuple[int, Action] | None:
    """(job id, action) of an output button's callback data; None for anything else."""
    job_id, separator, action = (data or "").removeprefix(OUT_PREFIX).partition(":")
    if not (data or "").startswith(OUT_PREFIX) or not separator or not job_id.isdigit():
        return None
    try:
        return int(job_id), Action(action)
    except ValueError:
        return None


def translatable(job: Job, transcript: Transcript) -> bool:
    """Whether a transcript gets "Translate to English": a transcription, not in English."""
    return job.task == "transcribe" and transcript.language != "en"


def keyboard(job: Job, transcript: Transcript) -> InlineKeyboardMarkup:
    """The output buttons under job `job`'s transcript."""
    button = InlineKeyboardButton
    formats = [
        button(
            text=texts.outputs.button_timestamps(),
            callback_data=callback_data(job.id, Action.timestamps),
        ),
        button(text="SRT", callback_data=callback_data(job.id, Action.srt)),
        button(text="VTT", callback_data=callback_data(job.id, Action.vtt)),
    ]
    more = [
        button(
            text=texts.outputs.button_details(), callback_data=callback_data(job.id, Action.details)
        )
    ]
    if translatable(job, transcript):
        translate = callback_data(job.id, Action.translation)
        more.insert(0, button(text=texts.outputs.button_translate(), callback_data=translate))
    return InlineKeyboardMarkup(inline_keyboard=[formats, more])


def as_engine(transcript: Transcript) -> recording.Transcript:
    """The stored transcript as the engine's value, for `formats.render`."""
    segments = tuple(
        recording.Segment(float(s["start"]), float(s["end"]), str(s["text"]))
        for s in transcript.segments
    )
    return recording.Transcript(
        text=transcript.text,
        language=transcript.language,
        language_probability=transcript.language_probability,
        duration=transcript.duration,
        segments=segments,
    )


def timestamps(transcript: Transcript) -> str:
    """The text with a [m:ss] mark (past an hour [h:mm:ss]) before each segment, a line each."""
    lines = []
    for segment in transcript.segments:
        text = str(segment["text"]).strip()
        if text:
            lines.append(f"[{_mark(float(segment['start']))}] {text}")
    return "\n".join(lines) or transcript.text


def _mark(seconds: float) -> str:
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def subtitles(transcript: Transcript, fmt: Format, *, stem: str) -> tuple[str, bytes]:
    """(file name, bytes) of the transcript as SRT or WebVTT subtitles."""
    return f"{stem}.{fmt.value}", render(as_engine(transcript), fmt).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Answer:
    """What a transcript is sent as: message texts, then maybe a file."""

    parts: list[str]
    document: tuple[str, bytes] | None


def answer(transcript: Transcript, *, output: str, stem: str, file_chars: int) -> Answer:
    """The transcript as the job's output (text, timestamps or srt) asks; long text as a file."""
    if output == "srt":
        return Answer([texts.outputs.srt_attached()], subtitles(transcript, Format.srt, stem=stem))
    text = timestamps(transcript) if output == "timestamps" else transcript.text
    return long_text(text, stem=stem, file_chars=file_chars)


def long_text(text: str, *, stem: str, file_chars: int) -> Answer:
    """Text in messages of at most 4096 characters, or past `file_chars` a .txt file."""
    if len(text) > file_chars:
        return Answer([texts.as_file(len(text))], (f"{stem}.txt", (text + "\n").encode("utf-8")))
    return Answer(split_text(text), None)


def stem_of(job: Job) -> str:
    """The base name of the job's files: transcript-<message id>, translation-<…>."""
    kind = "translation" if job.task == "translate" else "transcript"
    return f"{kind}-{job.message_id}"


@dataclass(frozen=True, slots=True)
class Pressed:
    """A press that may be served: the job, its transcript, and what its processing cost."""

    job: Job
    transcript: Transcript
    processing_seconds: float | None
    cached: bool


async def find_pressed(
    session: AsyncSession, *, job_id: int, chat_id: int, message_id: int
) -> Pressed | str:
    """The pressed job's transcript if the press is on that job's transcript message in its
    chat; otherwise the one line the presser is told (as an alert)."""
    job = await session.get(Job, job_id)
    if job is None or job.chat_id != chat_id or job.status_message_id != message_id:
        return texts.outputs.output_not_here()
    if job.transcript_id is None:
        # Deleted by /forget or retention (the job keeps its row), or not transcribed yet.
        return (
            texts.outputs.output_gone()
            if job.status == JobStatus.done
            else texts.outputs.output_not_here()
        )
    transcript = await session.get(Transcript, job.transcript_id)
    if transcript is None:
        return texts.outputs.output_gone()
    usage = (
        await session.execute(
            select(Usage.processing_seconds, Usage.cached).where(Usage.job_id == job.id)
        )
    ).first()
    processing, cached = (usage[0], bool(usage[1])) if usage is not None else (None, False)
    return Pressed(job, transcript, processing, cached)


def details(pressed: Pressed) -> str:
    """The Details alert: language and its probability, length, processing time."""
    transcript = pressed.transcript
    return texts.outputs.details(
        language=name(transcript.language),
        probability=transcript.language_probability,
        seconds=transcript.duration,
        processing=pressed.processing_seconds,
        cached=pressed.cached,
        translated=pressed.job.task == "translate",
    )


@dataclass(frozen=True, slots=True)
class PressAnswer:
    """The answer a recorded button press gets once its batch is committed."""

    query: CallbackQuery
    text: str
    alert: bool


async def answer_press(press: PressAnswer) -> None:
    """Answer a press (a refusal is an alert the presser dismisses, the rest a passing note)."""
    try:
        await press.query.answer(clamp(press.text), show_alert=press.alert)
    except TelegramAPIError as error:
        # A press delivered again after a crash: its query can no longer be answered.
        log.info("press_not_answered", error=str(error))


def clamp(text: str) -> str:
    """`text` cut to what Telegram shows of a callback answer."""
    return text if len(text) <= ANSWER_LIMIT else text[: ANSWER_LIMIT - 1] + "…"


async def send(bot: Bot, pressed: Pressed, action: Action, *, file_chars: int) -> None:
    """Send what a format button asks for, replying to the transcript message (in its topic)."""
    job, transcript = pressed.job, pressed.transcript
    assert job.status_message_id is not None  # the press was checked against it
    stem = stem_of(job)
    if action == Action.timestamps:
        sent = long_text(timestamps(transcript), stem=f"{stem}-timestamps", file_chars=file_chars)
    else:
        fmt = Format.srt if action == Action.srt else Format.vtt
        sent = Answer([], subtitles(transcript, fmt, stem=stem))
    reply = ReplyParameters(message_id=job.status_message_id, allow_sending_without_reply=True)
    for part in sent.parts:
        await with_retries(
            partial(
                bot.send_message,
                job.chat_id,
                part,
                reply_parameters=reply,
                message_thread_id=job.thread_id,
            )
        )
    if sent.document is not None:
        upload = BufferedInputFile(sent.document[1], filename=sent.document[0])
        await with_retries(
            partial(
                bot.send_document,
                job.chat_id,
                upload,
                reply_parameters=reply,
                message_thread_id=job.thread_id,
            )
        )
