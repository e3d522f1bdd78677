"""The output buttons under a transcript, and /format (the default output in a private chat)."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from voicebot import outputs, texts
from voicebot.delivery import try_edit
from voicebot.intake import Intake
from voicebot.jobs import Runtime
from voicebot.models import Sender, User, set_output_format

#: callback_data of a /format button: the prefix and the output.
FORMAT_PREFIX = "fmt:"
#: Default outputs /format offers (Job.output, User.output_format).
FORMATS = ("text", "timestamps", "srt")


def build_router() -> Router:
    """Output buttons (any chat) and /format."""
    router = Router(name="outputs")
    router.callback_query.register(on_output, F.data.startswith(outputs.OUT_PREFIX))
    router.message.register(on_format, Command("format"))
    router.callback_query.register(on_format_choice, F.data.startswith(FORMAT_PREFIX))
    return router


async def on_output(query: CallbackQuery, runtime: Runtime, intake: Intake) -> None:
    """Serve an output button pressed on its own transcript message; refuse anything else."""
    parsed, message = outputs.parse(query.data), query.message
    if parsed is None or message is None:
        await query.answer(texts.outputs.output_not_here(), show_alert=True)
        return
    job_id, action = parsed
    async with runtime.sessions() as session:
        found = await outputs.find_pressed(
            session, job_id=job_id, chat_id=message.chat.id, message_id=message.message_id
        )
    if isinstance(found, str):
        await query.answer(found, show_alert=True)
        return
    if action == outputs.Action.details:
        await query.answer(outputs.clamp(outputs.details(found)), show_alert=True)
    elif action == outputs.Action.translation:
        if not outputs.translatable(found.job, found.transcript):
            await query.answer(texts.outputs.output_already_english(), show_alert=True)
            return
        transcript = found.transcript
        # A job of its own: recorded with the batch, and the press answered after that.
        intake.accept_translation(
            query, source=found.job, language=transcript.language, duration=transcript.duration
        )
    else:
        assert query.bot is not None
        await outputs.send(
            query.bot, found, action, file_chars=runtime.settings.transcript_file_chars
        )
        await query.answer(texts.outputs.output_sent())


async def on_format(message: Message, command: CommandObject, runtime: Runtime) -> None:
    """/format: show the default output with its buttons, or set the one typed after it."""
    if message.chat.type != "private" or message.from_user is None:
        await message.reply(texts.outputs.format_private_only())
        return
    wanted = (command.args or "").strip().lower()
    if not wanted:
        async with runtime.sessions() as session:
            user = await session.get(User, message.from_user.id)
        current = user.output_format if user is not None else "text"
        await message.answer(
            texts.outputs.format_menu(texts.outputs.format_name(current)),
            reply_markup=keyboard(current),
        )
        return
    if wanted not in FORMATS:
        await message.reply(texts.outputs.format_usage())
        return
    await _store(runtime, message, wanted)
    await message.reply(texts.outputs.format_set(wanted))


async def on_format_choice(query: CallbackQuery, runtime: Runtime) -> None:
    """A /format button: set the presser's default output."""
    wanted = (query.data or "").removeprefix(FORMAT_PREFIX)
    message = query.message
    if wanted not in FORMATS or not isinstance(message, Message) or message.chat.type != "private":
        await query.answer(texts.outputs.format_usage(), show_alert=True)
        return
    await _store(runtime, message, wanted, presser=query)
    if query.bot is not None:
        await try_edit(
            query.bot,
            chat_id=message.chat.id,
            message_id=message.message_id,
            text=texts.outputs.format_menu(texts.outputs.format_name(wanted)),
            reply_markup=keyboard(wanted),
        )
    await query.answer(texts.outputs.format_set(wanted))


async def _store(
    runtime: Runtime, message: Message, output: str, *, presser: CallbackQuery | None = None
) -> None:
    user = presser.from_user if presser is not None else message.from_user
    assert user is not None
    sender = Sender(
        user_id=user.id,
        first_name=user.first_name[:256],
        username=user.username,
        language_code=user.language_code,
        chat_id=message.chat.id,
        chat_type=message.chat.type,
        chat_title=None,
    )
    async with runtime.sessions() as session:
        await set_output_format(session, sender=sender, output_format=output)
        await session.commit()


def keyboard(current: str) -> InlineKeyboardMarkup:
    """The default outputs, the current one ticked."""
    rows = [
        [
            InlineKeyboardButton(
                text=("✓ " if output == current else "") + texts.outputs.format_name(output),
                callback_data=FORMAT_PREFIX + output,
            )
        ]
        for output in FORMATS
    ]
    return InlineKeyboardMarkup(inline_keyboard=rows)
