"""aiogram's types imported with their schemas deferred: none built at import, each builds right."""

from __future__ import annotations

import gc
import subprocess
import sys

from aiogram.methods import EditMessageText, GetFile, GetMe, SendDocument, SendMessage
from aiogram.methods.base import Response
from aiogram.types import Message, Update

from voicebot.polling import GetRawUpdates
from voicebot.telegramtypes import build_now

# Run in a fresh interpreter: in this one, other tests have built types already.
CHILD = """
import sys
from pydantic import BaseModel, ValidationError
from voicebot.telegramtypes import import_deferred

assert import_deferred() is True
assert import_deferred() is False  # aiogram is imported now: nothing more to do
import aiogram.types as types

models = [
    getattr(types, name) for name in types.__all__
    if isinstance(getattr(types, name), type) and issubclass(getattr(types, name), BaseModel)
]
built = [cls.__name__ for cls in models if cls.__pydantic_complete__]
print("types", len(models), "built at import", len(built), built[:5])
assert len(models) > 300 and not built


def validate_update():
    Message = int  # a caller's local of a type's name must not change the type
    types.Update.model_rebuild()  # pydantic adds this frame's locals to the names
    update = types.Update.model_validate({
        "update_id": 1,
        "message": {
            "message_id": 7, "date": 0, "chat": {"id": 5, "type": "private"},
            "from": {"id": 5, "is_bot": False, "first_name": "A"},
            "voice": {"file_id": "f", "file_unique_id": "u", "duration": 3},
            "reply_to_message": {"message_id": 6, "date": 0, "chat": {"id": 5, "type": "private"}},
        },
    })
    return update, Message


update, _ = validate_update()
assert isinstance(update.message, types.Message), type(update.message)
assert update.message.voice.duration == 3 and update.message.reply_to_message.message_id == 6
try:
    types.Update.model_validate({"update_id": 1, "message": {"message_id": "x", "date": 0,
                                 "chat": {"id": 5, "type": "private"}}})
except ValidationError as error:
    assert "message_id" in str(error)
else:
    raise AssertionError("a bad update was accepted")

import aiogram.methods as methods

def send_message():
    InlineKeyboardButton = int  # as above, for a type inside a deferred method
    assert not methods.SendMessage.__pydantic_complete__
    methods.SendMessage.model_rebuild()  # pydantic adds this frame's locals to the names
    return methods.SendMessage(
        chat_id="@chat", text="hi",
        reply_markup={"inline_keyboard": [[{"text": "Cancel", "callback_data": "c"}]]},
    )


assert send_message().reply_markup.inline_keyboard[0][0].callback_data == "c"
models += [
    getattr(methods, name) for name in methods.__all__
    if isinstance(getattr(methods, name), type) and issubclass(getattr(methods, name), BaseModel)
]

def build_all():
    Chat = str  # as above, for every type and method
    failed = []
    for cls in models:
        if cls.__pydantic_core_schema__["type"] is None or not cls.__pydantic_complete__:
            failed.append(cls.__name__)
    return failed

failed = build_all()
assert not failed, failed
print("all built")
"""


def test_aiogram_types_are_built_on_first_use_each_from_aiograms_own_names() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "built at import 0" in done.stdout
    assert "all built" in done.stdout


def test_the_results_built_at_start_are_those_aiogram_asks_for_on_each_call() -> None:
    """`build_now` returns the `Response[...]` models of the usual calls, the very ones aiogram
    then parametrizes (pydantic caches them weakly: the service holds these)."""
    results = build_now(updates=True)
    gc.collect()
    for method in (SendMessage, EditMessageText, SendDocument, GetFile, GetMe, GetRawUpdates):
        assert Response[method.__returning__] in results, method.__name__
    assert Update.__pydantic_complete__
    assert Message.__pydantic_complete__
