"""Delivery: splitting long text, and sending through a real aiogram Bot to the fake Bot API."""

from __future__ import annotations

import random
import re
import time
from collections.abc import AsyncIterator
from functools import partial

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramBadRequest, TelegramServerError

from voicebot.delivery import MESSAGE_LIMIT, deliver, edit_text, split_text, with_retries

from .fakes import FakeBotAPI

USER = 4242
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "transcription", "a", "of", "voice"]


def sentences(count: int, seed: int = 1) -> str:
    """`count` sentences of 5-25 words each, ending with varied punctuation."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 25))]
        out.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", "…"]))
    return " ".join(out)


def check_parts(parts: list[str], text: str, limit: int) -> None:
    """The invariants every split keeps: bounded, non-empty, trimmed, nothing lost."""
    assert all(0 < len(p) <= limit for p in parts)
    assert all(p == p.strip() for p in parts)
    assert " ".join(parts).split() == text.split()


# ----------------------------------------------------------------------------- split_text
def test_split_short_and_empty_text() -> None:
    """Short text is one part (trimmed); blank text is no parts."""
    assert split_text("") == []
    assert split_text("  \n\t ") == []
    assert split_text("  Hello there.  ") == ["Hello there."]
    exact = "x" * MESSAGE_LIMIT
    assert split_text(exact) == [exact]


def test_split_prefers_sentence_boundaries() -> None:
    """A long text of sentences is cut after sentence punctuation, never mid-sentence."""
    text = sentences(400)
    assert len(text) > 3 * MESSAGE_LIMIT
    parts = split_text(text)
    assert len(parts) >= 4
    check_parts(parts, text, MESSAGE_LIMIT)
    assert all(re.search(r"[.!?…]$", p) for p in parts[:-1])
    # Sentence cuts still fill most of a message rather than leaving tiny parts.
    assert all(len(p) > MESSAGE_LIMIT // 2 for p in parts[:-1])


def test_split_falls_back_to_word_boundaries() -> None:
    """Text without sentence ends is cut between words, no word is broken."""
    rng = random.Random(2)
    text = " ".join(rng.choice(WORDS) for _ in range(3000))
    assert len(text) > 2 * MESSAGE_LIMIT
    parts = split_text(text)
    assert len(parts) >= 3
    check_parts(parts, text, MESSAGE_LIMIT)
    vocabulary = set(WORDS)
    assert all(set(p.split()) <= vocabulary for p in parts)


def test_split_hard_cuts_a_single_huge_word() -> None:
    """A 10000-character word is cut at exactly the limit."""
    word = "".join(random.Random(3).choice("abcdefgh") for _ in range(10000))
    parts = split_text(word)
    assert [len(p) for p in parts] == [MESSAGE_LIMIT, MESSAGE_LIMIT, 10000 - 2 * MESSAGE_LIMIT]
    assert "".join(parts) == word


@pytest.mark.parametrize("limit", [40, 57, 100, 500])
def test_split_invariants_on_random_text(limit: int) -> None:
    """Mixed sentences, bare words and long tokens keep every invariant for small limits.

    Tokens stay under half the limit: longer ones may be hard-cut by design (no tiny parts).
    """
    rng = random.Random(limit)
    pieces = []
    for _ in range(300):
        roll = rng.random()
        if roll < 0.1:
            pieces.append("z" * rng.randint(limit // 4, limit // 2 - 1))
        elif roll < 0.3:
            pieces.append(rng.choice(WORDS) + rng.choice(".!?"))
        else:
            pieces.append(rng.choice(WORDS))
    text = " ".join(pieces)
    parts = split_text(text, limit)
    check_parts(parts, text, limit)


# ----------------------------------------------------------------------------- deliver
@pytest.fixture
async def bot(api: FakeBotAPI) -> AsyncIterator[Bot]:
    session = AiohttpSession(api=TelegramAPIServer.from_base(api.url))
    real = Bot(api.token, session=session)
    yield real
    await real.session.close()


class Recorder:
    """Collects `on_part_sent` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    async def __call__(self, count: int, message_id: int) -> None:
        self.calls.append((count, message_id))


async def status_for(api: FakeBotAPI, bot: Bot) -> tuple[int, int]:
    """A user's message and the bot's status message replying to it."""
    user_message = api.send_text(USER, "voice goes here")
    status = await bot.send_message(USER, "Transcribing…")
    return user_message, status.message_id


async def test_deliver_edits_status_then_replies_with_the_rest(api: FakeBotAPI, bot: Bot) -> None:
    """Part 0 replaces the status message; later parts reply to the user's message."""
    user_message, status_id = await status_for(api, bot)
    parts = ["First part.", "Second part.", "Third part."]
    sent = Recorder()
    await deliver(
        bot,
        chat_id=USER,
        reply_to=user_message,
        status_message_id=status_id,
        parts=parts,
        document=None,
        done=0,
        on_part_sent=sent,
    )
    messages = api.messages(USER)
    assert [m.text for m in messages] == parts
    assert messages[0].message_id == status_id
    assert messages[0].edits == ["Transcribing…"]
    assert [m.reply_to for m in messages[1:]] == [user_message, user_message]
    assert sent.calls == [(1, status_id), (2, status_id), (3, status_id)]


async def test_deliver_without_status_message_sends_part_zero(api: FakeBotAPI, bot: Bot) -> None:
    """With no status message, part 0 is a new reply and becomes the recorded status."""
    user_message = api.send_text(USER, "voice goes here")
    sent = Recorder()
    await deliver(
        bot,
        chat_id=USER,
        reply_to=user_message,
        status_message_id=None,
        parts=["Only part."],
        document=None,
        done=0,
        on_part_sent=sent,
    )
    (message,) = api.messages(USER)
    assert (message.text, message.reply_to) == ("Only part.", user_message)
    assert sent.calls == [(1, message.message_id)]


async def test_deliver_resumes_without_duplicates(api: FakeBotAPI, bot: Bot) -> None:
    """A delivery broken after part 1 resumes from the recorded count; nothing is sent twice."""
    user_message, status_id = await status_for(api, bot)
    parts = ["One.", "Two.", "Three."]
    sent = Recorder()
    api.fail_next("sendMessage", status=400)  # permanent: not retried
    with pytest.raises(TelegramBadRequest):
        await deliver(
            bot,
            chat_id=USER,
            reply_to=user_message,
            status_message_id=status_id,
            parts=parts,
            document=None,
            done=0,
            on_part_sent=sent,
        )
    assert sent.calls == [(1, status_id)]
    done, recorded_status = sent.calls[-1]
    await deliver(
        bot,
        chat_id=USER,
        reply_to=user_message,
        status_message_id=recorded_status,
        parts=parts,
        document=None,
        done=done,
        on_part_sent=sent,
    )
    assert [m.text for m in api.messages(USER)] == parts
    assert len(api.calls_of("editMessageText")) == 1
    assert sent.calls == [(1, status_id), (2, status_id), (3, status_id)]


async def test_deliver_sends_the_document_with_exact_bytes(api: FakeBotAPI, bot: Bot) -> None:
    """A document goes after the text parts, as a reply, byte for byte."""
    user_message, status_id = await status_for(api, bot)
    data = "Long transcript — with ünïcode.\n".encode() * 500
    sent = Recorder()
    await deliver(
        bot,
        chat_id=USER,
        reply_to=user_message,
        status_message_id=status_id,
        parts=["Here it is as a file."],
        document=("t.txt", data),
        done=0,
        on_part_sent=sent,
    )
    status, doc = api.messages(USER)
    assert status.text == "Here it is as a file."
    assert doc.document is not None
    assert (doc.document.filename, doc.document.data) == ("t.txt", data)
    assert doc.reply_to == user_message
    assert sent.calls == [(1, status_id), (2, status_id)]


async def test_repeated_edit_counts_as_delivered(api: FakeBotAPI, bot: Bot) -> None:
    """Delivering part 0 again (after a crash before it was recorded) is harmless."""
    user_message, status_id = await status_for(api, bot)
    for _ in range(2):
        await deliver(
            bot,
            chat_id=USER,
            reply_to=user_message,
            status_message_id=status_id,
            parts=["The transcript."],
            document=None,
            done=0,
            on_part_sent=Recorder(),
        )
    (message,) = api.messages(USER)
    assert message.text == "The transcript."
    assert len(api.calls_of("editMessageText")) == 2  # the second got "not modified"


async def test_edit_text_raises_other_bad_requests(api: FakeBotAPI, bot: Bot) -> None:
    """Only "message is not modified" is swallowed."""
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await edit_text(bot, chat_id=USER, message_id=999, text="x")


# ----------------------------------------------------------------------------- with_retries
async def test_retry_after_is_honoured(api: FakeBotAPI, bot: Bot) -> None:
    """A 429 waits its retry_after, then the call goes through."""
    api.fail_next("sendMessage", status=429, retry_after=1)
    started = time.monotonic()
    message = await with_retries(partial(bot.send_message, USER, "hello"))
    assert time.monotonic() - started >= 1.0
    first, second = api.calls_of("sendMessage")
    assert second.at - first.at >= 1.0
    assert [m.message_id for m in api.messages(USER)] == [message.message_id]


async def test_retries_give_up_after_the_limit(api: FakeBotAPI, bot: Bot) -> None:
    """`retries` transient failures are retried; one more is raised."""
    api.fail_next("sendMessage", status=502, times=3)
    with pytest.raises(TelegramServerError):
        await with_retries(partial(bot.send_message, USER, "hello"), retries=2)
    assert len(api.calls_of("sendMessage")) == 3
    assert api.messages(USER) == []


async def test_permanent_errors_are_not_retried(api: FakeBotAPI, bot: Bot) -> None:
    """A 400 is raised at once."""
    api.fail_next("sendMessage", status=400)
    with pytest.raises(TelegramBadRequest):
        await with_retries(partial(bot.send_message, USER, "hello"), retries=5)
    assert len(api.calls_of("sendMessage")) == 1


async def test_deleted_status_message_gets_a_new_reply(api: FakeBotAPI, bot: Bot) -> None:
    """If the user deleted "Transcribing…", the transcript still arrives, as a new reply."""
    user_message, status_id = await status_for(api, bot)
    await bot.delete_message(USER, status_id)
    sent = Recorder()
    await deliver(
        bot,
        chat_id=USER,
        reply_to=user_message,
        status_message_id=status_id,
        parts=["The transcript."],
        document=None,
        done=0,
        on_part_sent=sent,
    )
    (fresh,) = [m for m in api.messages(USER) if not m.deleted]
    assert (fresh.text, fresh.reply_to) == ("The transcript.", user_message)
    assert sent.calls == [(1, fresh.message_id)]
