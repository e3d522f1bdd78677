"""Voice, audio, video notes, videos and audio/video documents become jobs.

In private chats always; in groups by the chat's mode (`groups.transcribes_on_its_own`).
"""

from __future__ import annotations

import mimetypes

from aiogram import F, Router
from aiogram.types import Message

from voicebot import groups
from voicebot.intake import Intake, Media
from voicebot.jobs import Runtime

MEDIA_EXTENSIONS = {
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".m4a",
    ".aac",
    ".wav",
    ".flac",
    ".wma",
    ".amr",
    ".webm",
    ".mp4",
    ".mov",
    ".mkv",
    ".avi",
    ".3gp",
    ".m4v",
    ".spx",
    ".caf",
    ".aiff",
    ".aif",
}


def build_router() -> Router:
    """Media handlers for private chats and groups."""
    router = Router(name="media")
    router.message.filter(F.chat.type.in_(groups.GROUP_TYPES | {"private"}))
    router.message.register(
        on_media, F.voice | F.audio | F.video_note | F.video | F.document.func(is_media_document)
    )
    return router


async def on_media(message: Message, intake: Intake, runtime: Runtime) -> None:
    """Accept the message as a job (in a group, if its mode says so); it is recorded with the
    rest of its batch."""
    media = media_of(message)
    assert media is not None  # the filter admits only messages that carry media
    if message.chat.type != "private":
        async with runtime.sessions() as session:  # one read: the chat's mode and switch
            found = await groups.group_settings(session, chat_id=message.chat.id)
        if not groups.transcribes_on_its_own(found, media.kind):
            return
    intake.accept(message, media)


def is_media_document(document: object) -> bool:
    """A document whose MIME type or file name says audio or video."""
    mime = getattr(document, "mime_type", None) or ""
    name = (getattr(document, "file_name", None) or "").lower()
    guessed = mimetypes.guess_type(name)[0] or ""
    return (
        mime.startswith(("audio/", "video/"))
        or guessed.startswith(("audio/", "video/"))
        or any(name.endswith(ext) for ext in MEDIA_EXTENSIONS)
    )


def media_of(message: Message) -> Media | None:
    """The transcribable file in `message`, if any."""
    if message.voice:
        v = message.voice
        return Media(
            "voice", v.file_id, v.file_unique_id, v.file_size, v.duration, mime_type=v.mime_type
        )
    if message.audio:
        a = message.audio
        return Media(
            "audio",
            a.file_id,
            a.file_unique_id,
            a.file_size,
            a.duration,
            file_name=a.file_name,
            mime_type=a.mime_type,
        )
    if message.video_note:
        n = message.video_note
        return Media("video_note", n.file_id, n.file_unique_id, n.file_size, n.duration)
    if message.video:
        w = message.video
        return Media(
            "video",
            w.file_id,
            w.file_unique_id,
            w.file_size,
            w.duration,
            file_name=w.file_name,
            mime_type=w.mime_type,
        )
    if message.document and is_media_document(message.document):
        d = message.document
        return Media(
            "document",
            d.file_id,
            d.file_unique_id,
            d.file_size,
            None,
            file_name=d.file_name,
            mime_type=d.mime_type,
        )
    return None
