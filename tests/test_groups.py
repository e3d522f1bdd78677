"""Groups end to end: modes, /transcribe, admin-only /settings, topics, privacy mode, a move to a
supergroup, anonymous admins, the bot removed, and plans given to groups."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from aiogram.types import Chat, User

from voicebot import texts
from voicebot.chatadmins import ChatAdmins
from voicebot.config import Settings
from voicebot.service import build_bot

from .botproc import bot_database
from .fake_groups import ANONYMOUS_ADMIN_BOT, GroupFakeBotAPI
from .fakes import SentMessage
from .media import encode_audio, long_speech, voice_note
from .test_cancel import answer_to, buttons
from .test_fairness import answered, rows, run_bot, text_of
from .test_polling import log_events

CLIPS = {
    "another door": "librispeech_alif_another_door.wav",
    "not poison": "librispeech_alif_i_tell_you.wav",
    "testing routine": "librispeech_alif_testing_routine.wav",
    "another engineer": "librispeech_alif_another_engineer.wav",
}
ADMIN, MEMBER, OTHER, USER = 8101, 8102, 8103, 8104
BOT = "voicebot_test_bot"


@pytest.fixture
async def api() -> AsyncIterator[GroupFakeBotAPI]:
    """The fake Bot API with groups."""
    async with GroupFakeBotAPI(username=BOT) as fake:
        yield fake


@pytest.fixture(scope="module")
def notes(corpus: Path) -> dict[str, bytes]:
    """Voice notes of short clips (3-4.5 s), by a phrase each transcript contains."""
    return {phrase: voice_note(corpus / "en" / name) for phrase, name in CLIPS.items()}


def said(api: GroupFakeBotAPI, chat_id: int, text: str) -> list[SentMessage]:
    """The bot's messages in the chat that show `text` (as sent, or after edits)."""
    return [m for m in api.messages(chat_id) if m.text is not None and text in m.text]


async def says(api: GroupFakeBotAPI, chat_id: int, text: str) -> SentMessage:
    """Wait for a bot message in the chat showing `text`; the latest such."""
    await api.wait_for(lambda: bool(said(api, chat_id, text)), 30, repr(text))
    return said(api, chat_id, text)[-1]


async def polled_again(api: GroupFakeBotAPI) -> None:
    """Wait until every update pushed so far is confirmed: handled, and its jobs recorded."""
    last = api._next_update_id - 1  # the updates are numbered as they are pushed

    def confirmed() -> bool:
        return any(int(c.params.get("offset") or 0) > last for c in api.calls_of("getUpdates"))

    await api.wait_for(confirmed, 30, f"update {last} confirmed")


def job_of(where: Path | str, chat_id: int, message_id: int) -> list[tuple[object, ...]]:
    """(user_id, status, error_code, thread_id, priority) of the job of a message, if any."""
    return rows(
        where,
        "SELECT user_id, status, error_code, thread_id, priority FROM jobs"
        f" WHERE chat_id = {chat_id} AND message_id = {message_id}",
    )


async def finished(where: Path | str, chat_id: int, message_id: int) -> list[tuple[object, ...]]:
    """Wait until the job of a message is done or failed; then `job_of` it."""

    def final() -> bool:
        found = job_of(where, chat_id, message_id)
        return bool(found) and found[0][1] in ("done", "failed")

    deadline = asyncio.get_running_loop().time() + 30
    while not final():
        assert asyncio.get_running_loop().time() < deadline, (chat_id, message_id)
        await asyncio.sleep(0.05)
    return job_of(where, chat_id, message_id)


def chat_row(where: Path | str, chat_id: int) -> tuple[object, ...]:
    """(mode, media_files, left_at, migrated_to_chat_id) of a chat."""
    (found,) = rows(
        where,
        f"SELECT mode, media_files, left_at, migrated_to_chat_id FROM chats WHERE id = {chat_id}",
    )
    return found


async def press(
    api: GroupFakeBotAPI, user_id: int, chat_id: int, message: SentMessage, data: str
) -> dict[str, object]:
    """Press a button of a bot message (a crafted one too); the bot's answer."""
    query = api.press_button(user_id, message.message_id, data, chat_id=chat_id, stale=True)
    return await answer_to(api, query)  # type: ignore[arg-type]


async def test_chat_admins_are_asked_once_a_ttl_and_forgotten_after(
    api: GroupFakeBotAPI, tmp_path: Path
) -> None:
    """getChatMember is asked once per sender within the ttl; answers past it are dropped, so a
    long-running process does not keep one for every sender that ever changed a setting."""
    group = Chat.model_validate(api.add_group(-1009, "Club"))
    api.set_member(-1009, ADMIN, "administrator")
    settings = Settings(
        _env_file=None, telegram_bot_token=api.token, telegram_api_url=api.url, data_dir=tmp_path
    )
    bot = build_bot(settings)
    admins = ChatAdmins(ttl=2.0)
    try:

        async def may(user_id: int) -> bool:
            sender = User(id=user_id, is_bot=False, first_name="U")
            return await admins.may_change(bot, chat=group, user=sender)

        for _ in range(2):  # the second time from the cache
            assert await may(ADMIN)
            assert not await may(MEMBER)
        assert len([c for c in api.calls if c.method == "getChatMember"]) == 2
        await asyncio.sleep(2.1)
        assert not await may(OTHER)
        assert list(admins.answers) == [(-1009, OTHER)]  # the two expired ones went
        assert await may(ADMIN)  # asked again
        assert len([c for c in api.calls if c.method == "getChatMember"]) == 4
    finally:
        await bot.session.close()


async def test_modes_settings_topics_and_the_privacy_warning(
    api: GroupFakeBotAPI,
    tmp_path: Path,
    model_cache: Path,
    notes: dict[str, bytes],
    database_url: str,
) -> None:
    """In a forum topic: the privacy-mode warning, auto mode, admin-only settings, command mode
    with /transcribe and a mention, the media-files switch, and off."""
    group, topic = -1001500, 7
    api.add_group(group, "Team", topics=(topic,))
    api.set_member(group, ADMIN, "administrator")
    bot = await run_bot(api, tmp_path, model_cache, **bot_database(database_url))

    # Added as a member with privacy mode on: the intro says how to fix it.
    api.add_bot(group, by=ADMIN)
    intro = await says(api, group, texts.groups.group_intro())
    assert texts.groups.privacy_mode(BOT) in (intro.text or "")
    # Once the bot is an administrator it reads everything: /start no longer warns.
    api.set_member(group, api.bot_id, "administrator")
    api.send_group_text(group, ADMIN, f"/start@{BOT}", thread_id=topic)
    await api.wait_for(
        lambda: [m.text for m in said(api, group, "Hi!")][-1] == texts.groups.group_intro()
    )

    # Auto (the default): a voice note in the topic is answered there, as a reply to it.
    first = api.send_group_voice(group, MEMBER, notes["another door"], duration=4, thread_id=topic)
    await answered(api, group, first, "another door")
    assert await finished(database_url, group, first) == [(MEMBER, "done", None, topic, 0)]
    sent = [
        c
        for c in api.calls_of("sendMessage")
        if c.params["chat_id"] == group
        and c.params.get("reply_parameters", {}).get("message_id") == first
    ]
    assert sent
    assert all(c.params.get("message_thread_id") == topic for c in sent)

    # /settings: anyone may look; only an administrator may change; crafted data does nothing.
    api.send_group_text(group, MEMBER, "/settings", thread_id=topic)
    menu = await says(api, group, "Settings of this chat")
    assert "Mode: Automatic" in (menu.text or "")
    assert buttons(menu) == ["gs:mode:auto", "gs:mode:command", "gs:mode:off", "gs:files:off"]
    refused = await press(api, MEMBER, group, menu, "gs:mode:command")
    assert refused == {"text": texts.groups.settings_admins_only(), "show_alert": True}
    crafted = await press(api, ADMIN, group, menu, "gs:mode:everything")
    assert crafted == {"text": texts.groups.settings_button_unknown(), "show_alert": True}
    assert chat_row(database_url, group)[:2] == ("auto", 1)
    assert await press(api, ADMIN, group, menu, "gs:mode:command") == {
        "text": texts.groups.settings_saved()
    }
    assert chat_row(database_url, group)[:2] == ("command", 1)  # committed before the answer
    await api.wait_for(lambda: "Mode: On /transcribe" in (menu.text or ""), 10, "menu edited")
    labels = [b["text"] for row in menu.reply_markup["inline_keyboard"] for b in row]
    assert "✓ On /transcribe" in labels

    # Command mode: a voice note alone is left alone; /transcribe as a reply makes it a job of
    # whoever asked; asking again adds nothing; a mention in a reply works as well.
    second = api.send_group_voice(group, MEMBER, notes["not poison"], duration=4, thread_id=topic)
    api.send_group_text(group, OTHER, f"/transcribe@{BOT}", reply_to=second, thread_id=topic)
    await answered(api, group, second, "not poison")
    api.send_group_text(group, MEMBER, "/transcribe", reply_to=second, thread_id=topic)
    lonely = api.send_group_text(group, MEMBER, "/transcribe", thread_id=topic)
    await api.wait_for(lambda: text_of(api, group, lonely) == texts.groups.transcribe_usage())
    await polled_again(api)
    assert await finished(database_url, group, second) == [(OTHER, "done", None, topic, 0)]
    third = api.send_group_voice(group, MEMBER, notes["testing routine"], duration=3)
    api.send_group_text(group, OTHER, f"@{BOT} what does it say?", reply_to=third)
    await answered(api, group, third, "testing routine")
    assert await finished(database_url, group, third) == [(OTHER, "done", None, None, 0)]

    # Auto without audio and video files: a file is skipped, a voice note is not.
    assert await press(api, ADMIN, group, menu, "gs:mode:auto") == {
        "text": texts.groups.settings_saved()
    }
    await api.wait_for(lambda: "gs:files:off" in buttons(menu), 10, "menu edited")
    assert await press(api, ADMIN, group, menu, "gs:files:off") == {
        "text": texts.groups.settings_saved()
    }
    assert chat_row(database_url, group)[:2] == ("auto", 0)
    document = api.send_group_audio_file(group, MEMBER, notes["another engineer"])
    fourth = api.send_group_voice(group, MEMBER, notes["another engineer"], duration=4)
    await answered(api, group, fourth, "another engineer")
    await polled_again(api)
    assert job_of(database_url, group, document) == []

    # Off: nothing, and /transcribe says why.
    assert await press(api, ADMIN, group, menu, "gs:mode:off") == {
        "text": texts.groups.settings_saved()
    }
    fifth = api.send_group_voice(group, MEMBER, notes["another door"], duration=4)
    asked = api.send_group_text(group, OTHER, "/transcribe", reply_to=fifth)
    await api.wait_for(lambda: text_of(api, group, asked) == texts.groups.transcription_off())
    await polled_again(api)
    assert job_of(database_url, group, fifth) == []
    assert text_of(api, group, fifth) == ""

    assert await bot.stop() == 0, bot.output()
    assert not log_events(bot, "handler_failed")


async def test_anonymous_admin_migration_and_removal(
    api: GroupFakeBotAPI,
    tmp_path: Path,
    model_cache: Path,
    notes: dict[str, bytes],
    corpus: Path,
    database_url: str,
) -> None:
    """An anonymous admin's recording is the group's; a move to a supergroup takes the settings
    along; jobs waiting in a group that moved or that removed the bot end quietly, uncharged."""
    old, new, club = -4001, -1004001, -1004500
    api.add_group(old, "Family", kind="group")
    api.add_group(club, "Club")
    api.set_member(old, ADMIN, "creator")
    bot = await run_bot(
        api, tmp_path, model_cache, USER_MAX_ACTIVE_JOBS="10", **bot_database(database_url)
    )
    api.can_read_all_group_messages = True
    api.add_bot(old, by=ADMIN)
    api.add_bot(club, by=ADMIN)
    intro = await says(api, club, texts.groups.group_intro())
    assert intro.text == texts.groups.group_intro()  # privacy mode off: no warning

    # An anonymous administrator writes as the group: the group is the sender (and pays).
    anonymous = api.send_group_voice(old, 0, notes["another door"], duration=4, anonymous=True)
    await answered(api, old, anonymous, "another door")
    assert await finished(database_url, old, anonymous) == [(old, "done", None, None, 0)]
    assert rows(database_url, f"SELECT first_name FROM users WHERE id = {old}") == [("Family",)]
    assert rows(database_url, f"SELECT id FROM users WHERE id = {ANONYMOUS_ADMIN_BOT['id']}") == []

    # A long recording holds the one slot while a job waits in each group.
    long = encode_audio(np.concatenate([long_speech(corpus)] * 3))
    holder = api.send_voice(USER, long, duration=150)
    await api.wait_for(lambda: text_of(api, USER, holder) == texts.TRANSCRIBING, 30, "running")
    moved = api.send_group_voice(old, MEMBER, notes["not poison"], duration=4)
    removed = api.send_group_voice(club, MEMBER, notes["testing routine"], duration=3)
    await api.wait_for(lambda: text_of(api, club, removed) == "Queued, position 2", 30, "queued")

    # The creator switches the group to command mode; then it becomes a supergroup.
    api.send_group_text(old, ADMIN, "/settings")
    menu = await says(api, old, "Settings of this chat")
    assert await press(api, ADMIN, old, menu, "gs:mode:command") == {
        "text": texts.groups.settings_saved()
    }
    api.migrate(old, new, by=ADMIN)
    api.remove_bot(club, by=ADMIN)
    await api.wait_for(
        lambda: (
            rows(database_url, f"SELECT migrated_to_chat_id FROM chats WHERE id = {old}")
            == [(new,)]
        ),
        30,
        "migration recorded",
    )
    assert chat_row(database_url, new) == ("command", 1, None, None)
    await api.wait_for(lambda: chat_row(database_url, club)[2] is not None, 30, "removal recorded")

    # The waiting jobs end quietly when their turn comes: nothing downloaded or charged.
    done = f"SELECT status FROM jobs WHERE chat_id = {USER} AND message_id = {holder}"
    await api.wait_for(lambda: rows(database_url, done) == [("done",)], 120, "the long job")
    for chat_id, message_id, reason in (
        (old, moved, "chat_migrated"),
        (club, removed, "chat_left"),
    ):
        await api.wait_for(
            lambda c=chat_id, m=message_id: job_of(database_url, c, m)[0][1] == "failed", 30, reason
        )
        assert job_of(database_url, chat_id, message_id) == [(MEMBER, "failed", reason, None, 0)]
    charged = rows(database_url, "SELECT j.chat_id FROM usage u JOIN jobs j ON j.id = u.job_id")
    assert sorted(chat for (chat,) in charged) == sorted([old, USER])

    # In the supergroup the settings hold: a recording waits for /transcribe.
    there = api.send_group_voice(new, MEMBER, notes["another engineer"], duration=4)
    api.send_group_text(new, OTHER, "/transcribe", reply_to=there)
    await answered(api, new, there, "another engineer")
    assert await finished(database_url, new, there) == [(OTHER, "done", None, None, 0)]

    assert await bot.stop() == 0, bot.output()
    dropped = {(e["chat_id"], e["reason"]) for e in log_events(bot, "job_dropped")}
    assert dropped == {(old, "chat_migrated"), (club, "chat_left")}
    for event in ("handler_failed", "update_failed", "job_crashed", "job_failed"):
        assert not log_events(bot, event), event


async def test_a_group_plan_counts_for_recordings_in_that_group(
    api: GroupFakeBotAPI,
    tmp_path: Path,
    model_cache: Path,
    notes: dict[str, bytes],
    database_url: str,
) -> None:
    """/grant with a group's id: a member out of free minutes is served there (premium's
    allowance and priority, charged to them), and still refused in another group."""
    paid, unpaid, owner = -1002700, -1002800, 9000
    api.add_group(paid, "Paid")
    api.add_group(unpaid, "Unpaid")
    env = {"ADMIN_IDS": str(owner), "DAILY_QUOTA_SECONDS": "2", **bot_database(database_url)}
    bot = await run_bot(api, tmp_path, model_cache, PREMIUM_DAILY_QUOTA_SECONDS="600", **env)
    granted = api.send_text(owner, f"/grant {paid} premium 30")
    await api.wait_for(lambda: bool(said(api, owner, "is now on premium")), 30, "granted")
    assert granted
    assert rows(database_url, f"SELECT plan FROM users WHERE id = {paid}") == [("premium",)]

    refused = api.send_group_voice(unpaid, MEMBER, notes["another door"], duration=4)
    await api.wait_for(lambda: "you have 2 s left today" in text_of(api, unpaid, refused), 30)
    served = api.send_group_voice(paid, MEMBER, notes["another door"], duration=4)
    await answered(api, paid, served, "another door")
    assert await finished(database_url, paid, served) == [(MEMBER, "done", None, None, 1)]
    ((user_id, charged),) = rows(database_url, "SELECT user_id, charged_seconds FROM usage")
    assert user_id == MEMBER
    assert 3 < float(charged) < 5  # type: ignore[arg-type]
    assert job_of(database_url, unpaid, refused) == []
    assert await bot.stop() == 0, bot.output()

    # The command line takes a group's negative id as well.
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "voicebot", "users", "grant", str(unpaid), "--plan", "unlimited"],
        capture_output=True,
        text=True,
        env={**os.environ, "DATA_DIR": str(tmp_path / "data"), **bot_database(database_url)},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert rows(database_url, f"SELECT plan FROM users WHERE id = {unpaid}") == [("unlimited",)]
