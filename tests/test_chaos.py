"""Chaos at the door: SIGKILLs at random moments lose no message and answer none twice.

The real bot (`python -m voicebot run`, tiny.en) runs against the fake Bot API (with groups)
while bursts arrive: voice notes, audio files, audio documents and video notes from three
private chats, and voice notes from two members of a forum supergroup, posted in one of its
topics (the bot is added to the group, in its default automatic mode, before the first burst,
and that update is confirmed before any kill). The process is SIGKILLed again and again: just
after a burst arrives (0-300 ms after it, and just after the bot confirmed it to Telegram, which
then forgets it), during start-up, mid transcription (after a file download), mid delivery
(after a transcript went out) and at uniformly random moments. Then it is started one last time
and left to finish.

Writes that users make are done just before some kills, so each may be handled, half handled
or delivered again after the start:
- the Cancel button of a random waiting or running job is pressed;
- a private chat's user sets the recognition language to English, typing `/language en` or
  pressing English in the `/language` menu (typed when the menu does not show in time);
- once, a user who sends a clip nobody else sends (in the first burst and in that round's
  burst) asks `/forget` and presses its confirmation.

The chats are then read as a user sees them: every media message has exactly one visible reply
that is its transcript (or, for a pressed one, either that or "Cancelled." with its job
`cancelled` and nothing charged), every other job row is `done`, every press was answered, and
the last process exits 0 on SIGTERM. A status reply left behind ("Queued…", "Transcribing…") is
allowed only where the bot logged `status_reply_in_doubt` for that job: a SIGKILL between
Telegram's sendMessage and storing its id cannot be told apart from a lost request, and
sendMessage is not idempotent. Besides:
- group: every bot message replying to a group recording was sent in its topic; the one other
  bot message there is the introduction (with the privacy-mode advice) sent when it was added;
- language: the chat's `chats.language` is "en", each command or press got at least one answer
  (a second answer after a crash is a known window: counted in the summary line), and every job
  of that chat accepted after the user saw the answer has `jobs.language` "en";
- forget: the press was answered and its message says what was deleted; none of the user's jobs
  links a transcript and no transcript holds their words; each of their recordings has one reply,
  its transcript or "Cancelled." (forget cancels unfinished jobs, which is no stray cancel);
  their usage rows are all still there.

Three modes: `polling` and `webhook` run `voicebot run` on SQLite; `scale` runs the bot split
in two, one `voicebot bot` (takes updates, records jobs, sends the first status reply, publishes
them) and one `voicebot worker` (WORKERS=1: runs the jobs under leases of JOB_LEASE_SECONDS=6,
delivers), on the session's PostgreSQL and RabbitMQ. There each kill lands on the bot, the
worker or both: a "confirm" kill always hits the bot (its moment), a "download" or "delivery"
kill always the worker, the others either or both. Killed processes start again for the next
round side by side, in a random order 0-1 s apart (so either may answer first, and a process
that was not killed runs alone while the other starts); a start-up kill starts its victims
(killing one first if it still runs) once the other answers, as far apart, and kills them at a
fraction of their own start-up time.

Every mode decodes in batches (BATCH_SIZE=4, recordings of several people together), so kills
land mid-batch too; `voicebot run` with two batch loops (WORKERS=2, the default), so a long
recording is often decoded on both at once.

The checks read the database through its URL (`query`): the SQLite file, or PostgreSQL.

The schedule comes from a seeded `random.Random`; set CHAOS_SEED to replay one (the timing of
the processes themselves still varies from run to run). Whom each scale-mode kill hits comes
from its own RNG, so a seed replays the same rounds in every mode.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import random
import re
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from voicebot import languages, texts
from voicebot.audio import decode

from .botproc import BotProcess
from .fake_groups import GroupFakeBotAPI
from .fakes import SentMessage
from .media import encode_audio, video_with_sound, voice_note
from .servers import PostgresServer, free_port, postgres_rows

CLIPS = (
    "librispeech_alif_another_door.wav",
    "librispeech_alif_another_engineer.wav",
    "librispeech_alif_i_tell_you.wav",
    "librispeech_alif_testing_routine.wav",
)
#: "group_voice" is a voice note posted in the group's topic by one of its members.
KINDS = ("voice", "audio", "document", "video_note", "group_voice")
PRIVATE_KINDS = KINDS[:4]
#: Private chats (each chat's id is its user's).
CHATS = (6001, 6002, 6003)
#: A forum supergroup, the topic its recordings are posted in, and the members who post them.
GROUP, TOPIC, MEMBERS = -1006100, 5, (6101, 6102)
#: The user who asks /forget; their clip is sent by nobody else (no cache hit joins them to
#: another user's transcript), so its words in a transcript row can only be theirs.
FORGETTER, FORGET_CLIP = 6009, "librispeech_61-70968-0000.flac"
#: Kill moments and how many of each; the order is shuffled by the seed.
MOMENTS = {"burst": 2, "confirm": 2, "startup": 2, "download": 2, "delivery": 2, "random": 2}
#: What each kill waits for before its delay (start-up kills are told apart as they happen).
EVENTS = {
    "burst": "after the burst was pushed",
    "confirm": "after the bot confirmed the burst to Telegram",
    "download": "after a file download",
    "delivery": "after a transcript went out",
    "random": "at a random moment after the burst",
}
#: How long a kill waits for its event before killing anyway.
EVENT_TIMEOUT = 30.0
#: How long a round waits for the /language menu or the /forget question before going on.
ANSWER_TIMEOUT = 20.0
SETTLE_TIMEOUT = 120.0
#: Scale mode: the process whose event a moment waits for; that moment's kill always hits it.
OWNERS = {"confirm": "bot", "download": "worker", "delivery": "worker"}
#: Scale mode: whom a kill may hit.
VICTIMS = (("bot",), ("worker",), ("bot", "worker"))
#: Scale mode: a killed worker's job is published again once its lease expires.
LEASE_SECONDS = "6"

_NUMBERED = re.compile(r"\d+")


def _shape(sample: str) -> re.Pattern[str]:
    """A pattern matching `sample` with any numbers in place of its numbers."""
    return re.compile(_NUMBERED.sub(r"\\d+", re.escape(sample)))


# Built from voicebot.texts itself, so a reworded status still counts as one.
_STATUS_SHAPES = (
    _shape(texts.TRANSCRIBING),
    _shape(texts.queued(17, 1)),
    _shape(texts.progress(0.42, 83)),
    _shape(texts.as_file(12345)),
)
_ERRORS = (texts.FAILED, texts.GAVE_UP, texts.UNAVAILABLE, texts.NOT_MEDIA, texts.HELP)
_FORGET_DONE = (_shape(texts.privacy.forget_done(1)), _shape(texts.privacy.forget_done(2)))
ENGLISH_SET = texts.outputs.language_set(languages.name("en"))
FINAL = ("done", "failed", "cancelled")


def is_status(text: str) -> bool:
    """Whether `text` is one of the bot's interim status texts."""
    return any(shape.fullmatch(text) for shape in _STATUS_SHAPES)


def is_error(text: str) -> bool:
    """Whether `text` is one of the bot's fixed error (or help) texts."""
    return text in _ERRORS or text.startswith(texts.too_large(1)[:25])


def is_forget_done(text: str) -> bool:
    """Whether `text` is the /forget question replaced by what was deleted."""
    return any(shape.fullmatch(text) for shape in _FORGET_DONE)


def words(text: str) -> set[str]:
    """Lower-cased words of `text`, punctuation dropped."""
    return set(re.findall(r"[a-z']+", text.lower()))


def is_transcript_of(text: str, reference: str) -> bool:
    """Whether `text` shares most of the reference transcript's words (a real transcript)."""
    expected = words(reference)
    return len(words(text) & expected) >= max(2, int(0.6 * len(expected)))


def buttons(message: SentMessage) -> list[str]:
    """Callback data of a bot message's inline buttons, as it shows now."""
    rows = (message.reply_markup or {}).get("inline_keyboard", [])
    return [str(button.get("callback_data")) for row in rows for button in row]


@dataclass(frozen=True)
class Item:
    """One media message of a burst: who sends which clip as what, in which chat."""

    chat_id: int
    kind: str
    clip: str
    #: The sender: the chat's own user in a private chat, a member in the group.
    user_id: int

    def __str__(self) -> str:
        where = "group" if self.chat_id == GROUP else "chat"
        return f"{where} {self.user_id}:{self.kind}:{Path(self.clip).stem.split('_')[-1]}"


@dataclass(frozen=True)
class Round:
    """One bot process and the moment it is killed at."""

    moment: str
    delay: float  # seconds after the event; for "startup", a fraction of the start-up time
    burst: tuple[Item, ...]
    #: Whether a Cancel button is pressed after the event, just before the kill.
    press: bool = False
    #: A private chat whose user sets the recognition language to English just before the
    #: kill, and how: "typed" (`/language en`) or "button" (English in the /language menu).
    language: tuple[int, str] | None = None
    #: Whether FORGETTER asks /forget after the burst and confirms it just before the kill.
    forget: bool = False

    def __str__(self) -> str:
        unit = "x start-up" if self.moment == "startup" else "s"
        sent = ", ".join(str(item) for item in self.burst)
        extra = " + a Cancel press" if self.press else ""
        if self.language is not None:
            chat_id, how = self.language
            extra += f" + /language en {how} in chat {chat_id}"
        if self.forget:
            extra += f" + /forget confirmed by {FORGETTER}"
        return f"{self.moment:<8} +{self.delay:.3f}{unit:<10} burst [{sent}]{extra}"


@dataclass(frozen=True)
class Sent:
    """A media message a user sent, and the clip inside it."""

    chat_id: int
    message_id: int
    kind: str
    clip: str
    user_id: int
    #: The recognition language its job must carry (the user saw the setting confirmed before
    #: sending it); None: not checked.
    language: str | None = None


def plan(rng: random.Random) -> tuple[list[Round], tuple[Item, ...]]:
    """The kill rounds, then the burst the last (surviving) process gets."""
    moments = [moment for moment, count in MOMENTS.items() for _ in range(count)]
    rng.shuffle(moments)
    if moments[0] == "startup":  # the first start is waited for: it measures start-up time
        first = next(i for i, m in enumerate(moments) if m != "startup")
        moments[0], moments[first] = moments[first], moments[0]
    delays: dict[str, Callable[[], float]] = {
        "burst": lambda: rng.uniform(0.0, 0.3),
        "confirm": lambda: rng.uniform(0.0, 0.02),
        "startup": lambda: rng.uniform(0.05, 0.95),
        "download": lambda: rng.uniform(0.0, 0.3),
        "delivery": lambda: rng.uniform(0.0, 0.05),
        "random": lambda: rng.uniform(0.0, 4.0),
    }
    drawn = [
        (moment, delays[moment](), burst(rng), moment != "startup" and rng.random() < 0.4)
        for moment in moments
    ]
    last = burst(rng)
    # Settings and /forget are answered by a running process: not in start-up rounds. The
    # forget comes after a few processes, so the user's first recording may be done by then.
    running = [i for i, moment in enumerate(moments) if moment != "startup"]
    forget_at = rng.choice([i for i in running if i >= 3])
    count = rng.randint(1, 2)
    language = {
        index: (chat_id, rng.choice(("typed", "button")))
        for index, chat_id in zip(rng.sample(running, count), rng.sample(CHATS, count), strict=True)
    }
    forgetter = {
        index: Item(FORGETTER, rng.choice(PRIVATE_KINDS), FORGET_CLIP, FORGETTER)
        for index in (0, forget_at)
    }
    rounds = [
        Round(
            moment,
            delay,
            items + ((forgetter[index],) if index in forgetter else ()),
            press,
            language.get(index),
            index == forget_at,
        )
        for index, (moment, delay, items, press) in enumerate(drawn)
    ]
    return rounds, last


def burst(rng: random.Random) -> tuple[Item, ...]:
    """Two to four media messages from random private chats and group members."""
    return tuple(item(rng) for _ in range(rng.randint(2, 4)))


def item(rng: random.Random) -> Item:
    """One media message: a random kind; for a group voice note, a random member sends it."""
    kind = rng.choice(KINDS)
    if kind == "group_voice":
        return Item(GROUP, kind, rng.choice(CLIPS), rng.choice(MEMBERS))
    chat_id = rng.choice(CHATS)
    return Item(chat_id, kind, rng.choice(CLIPS), chat_id)


@dataclass(frozen=True)
class Start:
    """In which order the processes that are down start, and how far apart (seconds)."""

    order: tuple[str, ...]
    stagger: float = 0.0

    def __str__(self) -> str:
        return f"starts {self.order[0]}, then {self.order[1]} +{self.stagger:.2f}s"


@dataclass(frozen=True)
class Kill:
    """Whom a round kills, and how it first starts the processes that are down."""

    victims: tuple[str, ...]
    start: Start

    def __str__(self) -> str:
        return f"[{'+'.join(self.victims)}]"


#: In the modes with one process: it, every time.
ALONE = Kill(("bot",), Start(("bot",)))


def kills(rng: random.Random, rounds: list[Round]) -> tuple[list[Kill], Start]:
    """Scale mode: whom each round kills (a moment's owner always) and how it starts the
    processes that are down; then how the last start goes."""

    def start() -> Start:
        return Start(rng.choice((("bot", "worker"), ("worker", "bot"))), rng.uniform(0.0, 1.0))

    drawn = []
    for round_ in rounds:
        owner = OWNERS.get(round_.moment)
        choices = [v for v in VICTIMS if owner in v] if owner else list(VICTIMS)
        drawn.append(Kill(rng.choice(choices), start()))
    return drawn, start()


@dataclass
class Forget:
    """FORGETTER's /forget: the commands sent, the press, and their usage rows before it."""

    asked: list[int] = field(default_factory=list)
    #: The question pressed, and the press's callback query id.
    pressed: tuple[int, str] | None = None
    usage_before: set[int] = field(default_factory=set)


class Chaos:
    """Sends the bursts through the fake API and watches its calls for kill moments."""

    def __init__(
        self, api: GroupFakeBotAPI, corpus: Path, database: str, references: dict[str, str]
    ) -> None:
        self.api, self.corpus, self.database = api, corpus, database
        #: The reference transcript of each clip.
        self.references = references
        self.sent: list[Sent] = []
        #: Media messages whose Cancel button was pressed, and the press's callback query id.
        self.pressed: dict[tuple[int, int], str] = {}
        #: Commands users typed, by (chat_id, message_id).
        self.commands: dict[tuple[int, int], str] = {}
        #: Presses of English in a /language menu, by chat: callback query ids.
        self.language_presses: dict[int, list[str]] = {}
        #: Chats whose user saw their English setting confirmed (a reply or a press answer).
        self.english: set[int] = set()
        self.forget = Forget()
        self._media: dict[tuple[str, str], bytes] = {}

    async def join_group(self) -> None:
        """Add the bot to the forum group; return once that update was handled and confirmed."""
        self.api.add_group(GROUP, "Chaos team", topics=(TOPIC,))
        update_id = self.api.add_bot(GROUP, by=MEMBERS[0])

        def confirmed() -> bool:
            return all(u["update_id"] != update_id for u in self.api.pending_updates)

        await self.api.wait_for(confirmed, EVENT_TIMEOUT, "the bot added to the group")

    def push(self, items: tuple[Item, ...]) -> set[tuple[int, int]]:
        """Send a burst, all its messages at once; return their (chat_id, message_id)."""
        first = len(self.sent)
        self.english |= {chat_id for chat_id in CHATS if self.language_confirmed(chat_id)}
        for item in items:
            data = self.media(item.kind, item.clip)
            if item.kind == "voice":
                message_id = self.api.send_voice(item.chat_id, data, duration=4)
            elif item.kind == "group_voice":
                message_id = self.api.send_group_voice(
                    item.chat_id, item.user_id, data, duration=4, thread_id=TOPIC
                )
            elif item.kind == "audio":
                message_id = self.api.send_audio(
                    item.chat_id, data, duration=4, file_name="memo.wav", mime_type="audio/wav"
                )
            elif item.kind == "document":
                message_id = self.api.send_document(
                    item.chat_id, data, file_name="memo.opus", mime_type="audio/opus"
                )
            else:
                message_id = self.api.send_video_note(item.chat_id, data, duration=4)
            language = "en" if item.chat_id in self.english else None
            self.sent.append(
                Sent(item.chat_id, message_id, item.kind, item.clip, item.user_id, language)
            )
        return {(s.chat_id, s.message_id) for s in self.sent[first:]}

    def type(self, chat_id: int, text: str) -> int:
        """A user types a command in their private chat; its message id."""
        message_id = self.api.send_text(chat_id, text)
        self.commands[(chat_id, message_id)] = text
        return message_id

    def press(self, rng: random.Random) -> tuple[int, int] | None:
        """Press the Cancel button of a random status message that shows one; which."""
        showing = [
            (s, m, data)
            for s in self.sent
            if (s.chat_id, s.message_id) not in self.pressed
            for m in self.api.messages(s.chat_id)
            if m.reply_to == s.message_id and not m.deleted
            for data in buttons(m)
            if data.startswith("cancel:")
        ]
        if not showing:
            return None
        sent, status, data = rng.choice(showing)
        key = (sent.chat_id, sent.message_id)
        self.pressed[key] = self.api.press_button(
            sent.user_id, status.message_id, data, chat_id=sent.chat_id
        )
        return key

    async def set_english(self, chat_id: int, how: str, asked: int | None) -> str:
        """Set the chat's recognition language to English: press English in the menu `asked`
        for (when it shows in time) or type `/language en`; what was done."""
        if how == "button" and asked is not None:

            def menus() -> list[SentMessage]:
                return [
                    m
                    for m in self.api.messages(chat_id)
                    if m.message_id > asked and "lang:en" in buttons(m)
                ]

            if await until(lambda: bool(menus()), ANSWER_TIMEOUT):
                query_id = self.api.press_button(chat_id, menus()[0].message_id, "lang:en")
                self.language_presses.setdefault(chat_id, []).append(query_id)
                return "pressed English in the /language menu"
        self.type(chat_id, "/language en")
        return "typed /language en" + (" (no menu came)" if how == "button" else "")

    def language_confirmed(self, chat_id: int) -> bool:
        """Whether the user has seen an answer saying their language is English (committed)."""
        replied = any(
            m.reply_to == message_id and m.text == ENGLISH_SET
            for (chat, message_id), text in self.commands.items()
            if chat == chat_id and text == "/language en"
            for m in self.api.messages(chat_id)
        )
        answered = (self.api.query_answer(q) for q in self.language_presses.get(chat_id, []))
        return replied or any(
            a is not None and a.params.get("text") == ENGLISH_SET for a in answered
        )

    def language_settled(self) -> bool:
        """Whether every /language en typed has a reply and every English press an answer."""
        typed = all(
            any(m.reply_to == message_id for m in self.api.messages(chat_id))
            for (chat_id, message_id), text in self.commands.items()
            if text == "/language en"
        )
        return typed and all(
            self.api.query_answer(q) is not None
            for presses in self.language_presses.values()
            for q in presses
        )

    async def confirm_forget(self, timeout: float) -> bool:
        """Press "Delete my data" in the latest /forget question once one shows; whether it did."""

        def questions() -> list[SentMessage]:
            yes = f"forget:yes:{FORGETTER}"
            return [m for m in self.api.messages(FORGETTER) if yes in buttons(m)]

        if self.forget.pressed is not None or not await until(lambda: bool(questions()), timeout):
            return False
        question = questions()[-1]
        self.forget.usage_before = {
            int(row[0])
            for row in await query(
                self.database, f"SELECT id FROM usage WHERE user_id = {FORGETTER}"
            )
        }
        query_id = self.api.press_button(FORGETTER, question.message_id, f"forget:yes:{FORGETTER}")
        self.forget.pressed = (question.message_id, query_id)
        return True

    def media(self, kind: str, clip: str) -> bytes:
        """The file of a `kind` message carrying `clip`, encoded once."""
        key = (kind, clip)
        if key not in self._media:
            path = self.corpus / "en" / clip
            if kind == "video_note":
                self._media[key] = video_with_sound(path)
            elif kind == "audio":
                samples = decode(path, max_seconds=60)
                self._media[key] = encode_audio(
                    samples, container="wav", codec="pcm_s16le", rate=16000
                )
            else:
                self._media[key] = voice_note(path)
        return self._media[key]

    def calls_since(self, mark: int, *methods: str) -> list[tuple[str, str]]:
        """(method, text) of the calls of `methods` after call number `mark`."""
        return [
            (c.method, str(c.params.get("text", "")))
            for c in self.api.calls[mark:]
            if c.method in methods
        ]

    def called_since(self, mark: int, method: str) -> bool:
        """Whether `method` was called after call number `mark`."""
        return bool(self.calls_since(mark, method))

    def confirmed(self, burst: set[tuple[int, int]]) -> bool:
        """Whether Telegram forgot every update of `burst` (a getUpdates offset past them)."""
        return not any(
            (update["message"]["chat"]["id"], update["message"]["message_id"]) in burst
            for update in self.api.pending_updates
            if "message" in update
        )

    def transcript_sent_since(self, mark: int) -> bool:
        """Whether a sendMessage or editMessageText carrying a transcript came after `mark`."""
        return any(
            is_transcript_of(text, reference)
            for _, text in self.calls_since(mark, "sendMessage", "editMessageText")
            for reference in self.references.values()
        )


async def until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float, every: float = 0.005
) -> bool:
    """Poll `predicate` (plain or async) every `every` s; whether it came true within
    `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        held = predicate()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(every)


def all_hold(predicates: tuple[Callable[[], bool], ...]) -> bool:
    """Whether every one of `predicates` holds now."""
    return all(predicate() for predicate in predicates)


#: How long one read of the database may take.
QUERY_TIMEOUT = 10.0


async def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a read-only statement on the bot's database at `url` (SQLAlchemy's URL), committed
    data only: a SQLite file opened read-only (in a thread: the fake API shares this loop), or
    PostgreSQL on a connection of its own."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return await asyncio.to_thread(_sqlite_rows, str(parsed.database), sql)
    return await postgres_rows(url, sql, timeout=QUERY_TIMEOUT)


def _sqlite_rows(database: str, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as connection:
        return connection.execute(sql).fetchall()


async def job_rows(url: str) -> list[tuple[int, int, int, str]] | None:
    """(id, chat_id, message_id, status) of every job; None while the database is unreadable."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not await asyncio.to_thread(
        Path(str(parsed.database)).exists
    ):
        return []
    try:
        rows = await query(url, "SELECT id, chat_id, message_id, status FROM jobs")
    # SQLite locked, or either without the schema yet; PostgreSQL out of reach or slow.
    except (sqlite3.OperationalError, asyncpg.PostgresError, OSError, TimeoutError):
        return None
    return [(int(a), int(b), int(c), str(d)) for a, b, c, d in rows]


def in_doubt_job_ids(log: str) -> set[int]:
    """Jobs whose status reply the bot logged as maybe sent (JSON log lines)."""
    found: set[int] = set()
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "status_reply_in_doubt":
            found.add(int(entry["job_id"]))
    return found


@pytest.fixture
async def api() -> AsyncIterator[GroupFakeBotAPI]:
    """The fake Bot API with groups, stopped after the test."""
    async with GroupFakeBotAPI() as fake:
        yield fake


class Processes:
    """A mode's processes by name: "bot" (`voicebot run`, or `voicebot bot` in scale mode) and,
    in scale mode, "worker"; each one BotProcess, started again (its log appended) after a kill."""

    def __init__(self, processes: dict[str, BotProcess], asks: str) -> None:
        self.processes = processes
        #: What the bot asks for once it takes updates: getUpdates, or setWebhook.
        self.asks = asks
        #: Each process's first start-up time, from spawn until it answered.
        self.startup: dict[str, float] = {}

    def running(self, name: str) -> bool:
        """Whether `name` was started and has not ended."""
        process = self.processes[name]
        return process.process is not None and not process.exited

    async def start(self, start: Start) -> None:
        """Start those of `start.order` that are down, each `start.stagger` s after the one
        before it; return once all answer (the first start of each measures its start-up time)."""

        async def one(name: str, delay: float) -> None:
            await asyncio.sleep(delay)
            began = time.monotonic()
            await self.processes[name].start()
            self.startup.setdefault(name, time.monotonic() - began)

        down = [name for name in start.order if not self.running(name)]
        await asyncio.gather(*(one(name, start.stagger * i) for i, name in enumerate(down)))

    def readiness(self, name: str) -> Callable[[], bool]:
        """Whether `name`, started after this call, answers yet: the bot asked for updates, the
        worker logged bot_started."""
        process = self.processes[name]
        if process.role == "worker":
            offset = process.log.stat().st_size if process.log.exists() else 0

            def started() -> bool:
                if not process.log.exists():
                    return False
                with process.log.open("rb") as log:
                    log.seek(offset)
                    return b'"bot_started"' in log.read()

            return started
        asked = len(process.api.calls_of(self.asks))
        return lambda: len(process.api.calls_of(self.asks)) > asked

    def event(self, name: str) -> str:
        """What `readiness` waits for, in words."""
        return (
            "its bot_started" if self.processes[name].role == "worker" else f"its first {self.asks}"
        )

    async def kill(self, names: tuple[str, ...]) -> None:
        """SIGKILL `names` at once; each must have been running."""
        codes = await asyncio.gather(*(self.processes[n].stop(signal.SIGKILL) for n in names))
        for name, code in zip(names, codes, strict=True):
            assert code == -signal.SIGKILL, (
                f"the {name} exited by itself ({code}):\n{self.output()}"
            )

    async def stop(self) -> None:
        """SIGTERM each (the bot first): each must exit 0."""
        for name, process in self.processes.items():
            code = await process.stop()
            assert code == 0, f"the last {name} did not exit 0 on SIGTERM:\n{self.output()}"

    def abandon(self) -> None:
        """SIGKILL whatever still runs (a failed test)."""
        for name, process in self.processes.items():
            if self.running(name) and process.process is not None:
                process.process.kill()

    def output(self) -> str:
        """What the processes logged so far, each process's log after the other's."""
        return "".join(process.output() for process in self.processes.values())


@pytest.fixture
async def backend(
    request: pytest.FixtureRequest, mode: str, tmp_path: Path
) -> AsyncIterator[tuple[str, str | None]]:
    """The mode's database URL and broker URL: the bot's own SQLite file and no broker, or in
    scale mode a fresh database on the session's PostgreSQL (dropped after) and a fresh RabbitMQ
    virtual host (the servers start only when this mode asks for them)."""
    if mode != "scale":
        yield f"sqlite+aiosqlite:///{tmp_path / 'data' / 'voicebot.db'}", None
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    broker: str = request.getfixturevalue("amqp_url")
    url = await server.create_database()
    yield url, broker
    await server.drop_database(url)


@pytest.fixture
def cluster(
    api: GroupFakeBotAPI,
    tmp_path: Path,
    model_cache: Path,
    mode: str,
    backend: tuple[str, str | None],
) -> Iterator[Processes]:
    """The mode's processes, not started yet; whatever still runs after the test is killed."""
    common = {
        "WHISPER_MODEL": "tiny.en",
        "JOB_MAX_ATTEMPTS": "30",
        "USER_MAX_ACTIVE_JOBS": "100",
        # Batches of recordings from different people: a kill lands mid-batch as often as not.
        "BATCH_SIZE": "4",
    }
    database, broker = backend
    if mode == "scale":
        assert broker is not None
        shared = {
            "DATABASE_URL": database,
            "BROKER_URL": broker,
            "JOB_LEASE_SECONDS": LEASE_SECONDS,
        }
        made = Processes(
            {
                "bot": BotProcess(
                    api, tmp_path / "bot", model_cache, role="bot", **common, **shared
                ),
                "worker": BotProcess(
                    api,
                    tmp_path / "worker",
                    model_cache,
                    role="worker",
                    WORKERS="1",
                    **common,
                    **shared,
                ),
            },
            "getUpdates",
        )
    elif mode == "webhook":
        port = free_port()  # the same on every start: Telegram posts to one URL
        receiving = {
            "BOT_MODE": "webhook",
            "HTTP_PORT": str(port),
            "WEBHOOK_URL": f"http://127.0.0.1:{port}/telegram/webhook",
            "WEBHOOK_SECRET": "chaos-secret-0123456789",
        }
        made = Processes(
            {"bot": BotProcess(api, tmp_path, model_cache, **common, **receiving, WORKERS="2")},
            "setWebhook",
        )
    else:
        made = Processes(
            {"bot": BotProcess(api, tmp_path, model_cache, **common, WORKERS="2")}, "getUpdates"
        )
    try:
        yield made
    finally:
        made.abandon()


@pytest.mark.timeout(360)
@pytest.mark.parametrize("mode", ["polling", "webhook", "scale"])
async def test_sigkills_at_random_moments_lose_nothing_and_repeat_nothing(
    api: GroupFakeBotAPI,
    corpus: Path,
    references: dict[str, dict[str, str]],
    mode: str,
    backend: tuple[str, str | None],
    cluster: Processes,
) -> None:
    """After SIGKILLs at any moment and a last start, each media message has one transcript.

    In webhook mode the fake posts each update to the bot as Telegram does, and sends it again
    until a 200 comes; "confirmed" is that 200, and a start-up kill lands before or at the
    bot's setWebhook. In scale mode each kill hits the bot, the worker or both."""
    began = time.monotonic()
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    rounds, last_burst = plan(random.Random(seed))
    if mode == "scale":
        victims, last_start = kills(random.Random(seed + 2), rounds)
    else:
        victims, last_start = [ALONE] * len(rounds), ALONE.start
    print(f"\nCHAOS_SEED={seed}; kill schedule:")
    for number, (round_, kill) in enumerate(zip(rounds, victims, strict=True), 1):
        if mode == "scale":
            print(f"  {number:>2}. {kill!s:<12} {round_}; {kill.start}")
        else:
            print(f"  {number:>2}. {round_}")
    last = f"; {last_start}" if mode == "scale" else ""
    print(f"  last start, burst [{len(last_burst)} messages], left to finish{last}")

    database = backend[0]
    clips = (*CLIPS, FORGET_CLIP)
    references_by_clip = {clip: references[f"en/{clip}"]["reference_transcript"] for clip in clips}
    chaos = Chaos(api, corpus, database, references_by_clip)
    presses = random.Random(seed + 1)
    for number, (round_, kill) in enumerate(zip(rounds, victims, strict=True), 1):
        mark, spawned = len(api.calls), time.monotonic()
        # Victims are named in scale mode only, where a kill may hit either process.
        named = mode == "scale"
        who = f"{' and '.join(kill.victims)} " if named else ""
        if round_.moment == "startup":
            # A start-up kill needs a fresh start: a victim still running dies now.
            if alive := tuple(name for name in kill.victims if cluster.running(name)):
                await cluster.kill(alive)
                print(f"      killed {' and '.join(alive)} first, for a fresh start")
            others = tuple(name for name in kill.start.order if name not in kill.victims)
            await cluster.start(Start(others))
            # Updates wait at the door while the process starts and dies.
            chaos.push(round_.burst)
            ready = {}
            for name in (name for name in kill.start.order if name in kill.victims):
                if ready:
                    await asyncio.sleep(kill.start.stagger)
                ready[name] = cluster.readiness(name)
                await cluster.processes[name].start(wait=False)
            patience = round_.delay * max(cluster.startup[name] for name in kill.victims)
            await until(partial(all_hold, tuple(ready.values())), patience)
            who, what = (
                "",
                ", ".join(
                    f"{name + ' ' if named else ''}"
                    f"{'at' if ready[name]() else 'before'} {cluster.event(name)}"
                    for name in kill.victims
                ),
            )
        else:
            first = not cluster.startup
            await cluster.start(kill.start)
            if first:
                await chaos.join_group()
            mark = len(api.calls)
            burst = chaos.push(round_.burst)
            menu = None
            if round_.language is not None and round_.language[1] == "button":
                menu = chaos.type(round_.language[0], "/language")
            if round_.forget:
                chaos.forget.asked.append(chaos.type(FORGETTER, "/forget"))
            seen = True
            if round_.moment == "confirm":
                seen = await until(partial(chaos.confirmed, burst), EVENT_TIMEOUT)
            elif round_.moment == "download":
                seen = await until(partial(chaos.called_since, mark, "downloadFile"), EVENT_TIMEOUT)
            elif round_.moment == "delivery":
                seen = await until(partial(chaos.transcript_sent_since, mark), EVENT_TIMEOUT)
            if round_.language is not None:
                done = await chaos.set_english(*round_.language, menu)
                print(f"      chat {round_.language[0]} {done}")
            if chaos.forget.asked and await chaos.confirm_forget(ANSWER_TIMEOUT):
                print(f"      {FORGETTER} confirmed /forget")
            if round_.press and (pressed := chaos.press(presses)) is not None:
                print(f"      pressed Cancel for chat {pressed[0]} message {pressed[1]}")
            await asyncio.sleep(round_.delay)
            what = EVENTS[round_.moment] if seen else f"with no event in {EVENT_TIMEOUT:.0f}s"
        await cluster.kill(kill.victims)
        print(
            f"  kill {number:>2} ({round_.moment}) {who}{what}, "
            f"{time.monotonic() - spawned:.2f}s after spawn; {len(chaos.sent)} messages sent"
        )

    await cluster.start(last_start)
    chaos.push(last_burst)
    if chaos.forget.pressed is None:  # the question never showed before a kill: press it now
        assert await chaos.confirm_forget(SETTLE_TIMEOUT), "no /forget question ever showed"
        print(f"  {FORGETTER} confirmed /forget after the last start")

    def answered(sent: Sent) -> bool:
        return any(
            m.reply_to == sent.message_id
            and not m.deleted
            and is_transcript_of(m.text or "", references_by_clip[sent.clip])
            for m in api.messages(sent.chat_id)
        )

    async def settled() -> bool:
        rows = await job_rows(database)
        cancelled = {(row[1], row[2]) for row in rows or [] if row[3] == "cancelled"}
        return (
            rows is not None
            and len(rows) == len(chaos.sent)
            and all(row[3] in ("done", "cancelled") for row in rows)
            and all(
                answered(sent) or (sent.chat_id, sent.message_id) in cancelled
                for sent in chaos.sent
            )
            and all(api.query_answer(query) for query in chaos.pressed.values())
            and chaos.language_settled()
            and forget_settled(api, chaos)
        )

    async def idle() -> bool:
        """No job active and nothing but long polls for a while: nothing more will come."""
        rows = await job_rows(database)
        active = rows is None or any(row[3] not in FINAL for row in rows)
        last = max((c.at for c in api.calls if c.method != "getUpdates"), default=0.0)
        return not active and time.monotonic() - last > 10

    async def finished() -> bool:
        return await settled() or await idle()

    # Polled slowly: the processes share the machine's two cores with this test.
    await until(finished, SETTLE_TIMEOUT, every=0.25)
    await cluster.stop()

    rows = await job_rows(database) or []
    problems = check_chat(api, chaos, rows, cluster.output(), references_by_clip)
    problems.lines += await check_presses(api, chaos, rows, database)
    language = await check_language(api, chaos, database)
    forget = await check_forget(api, chaos, database, references_by_clip[FORGET_CLIP])
    problems.lines += language.lines + forget.lines
    elapsed = time.monotonic() - began
    cancelled = sum(1 for row in rows if row[3] == "cancelled")
    forgetters = {(s.chat_id, s.message_id) for s in chaos.sent if s.user_id == FORGETTER}
    forgotten = sum(1 for row in rows if row[3] == "cancelled" and row[1:3] in forgetters)
    in_group = sum(1 for s in chaos.sent if s.chat_id == GROUP)
    print(
        f"{len(chaos.sent)} media messages ({in_group} in the group), {len(rounds)} kills, "
        f"{problems.orphans} orphan status replies (logged in doubt), "
        f"{len(chaos.pressed)} Cancel presses ({cancelled} cancelled, {forgotten} by /forget), "
        f"{language.actions} language changes ({language.orphans} answered twice, "
        f"{language.jobs} later jobs in English), "
        f"/forget {'pressed' if chaos.forget.pressed else 'never pressed'} "
        f"({forget.orphans} questions asked twice), {elapsed:.0f}s"
    )
    if problems.lines:
        pytest.fail(
            f"CHAOS_SEED={seed}: {len(problems.lines)} problems in {len(chaos.sent)} messages:\n"
            + "\n".join(problems.lines[:40]),
            pytrace=False,
        )


def forget_settled(api: GroupFakeBotAPI, chaos: Chaos) -> bool:
    """Whether the /forget press was answered and its question replaced by what was deleted."""
    if chaos.forget.pressed is None:
        return True
    message_id, query_id = chaos.forget.pressed
    shown = [m for m in api.messages(FORGETTER) if m.message_id == message_id]
    return api.query_answer(query_id) is not None and is_forget_done(shown[0].text or "")


@dataclass
class Findings:
    """What is wrong, one line each, and how many allowed leftovers (orphans, repeats) there are;
    `actions` counts the user actions a check covered, where it says so."""

    lines: list[str]
    orphans: int
    actions: int = 0
    #: Jobs a check looked at beyond the chats' media (the language: those accepted after it).
    jobs: int = 0


def explained(chaos: Chaos, chat_id: int, message: SentMessage) -> str | None:
    """What a bot message replying to no recording is, where a flow explains it; else None."""
    text = message.text or ""
    if message.reply_to is not None:
        return "command reply" if (chat_id, message.reply_to) in chaos.commands else None
    if chat_id == GROUP and text.startswith(texts.groups.group_intro()):
        return "intro"
    if chat_id in CHATS and any(data.startswith("lang:") for data in buttons(message)):
        return "language menu"
    if chat_id == FORGETTER and (
        (text == texts.privacy.forget_confirm() and buttons(message)) or is_forget_done(text)
    ):
        return "forget question"
    return None


def check_chat(
    api: GroupFakeBotAPI,
    chaos: Chaos,
    rows: list[tuple[int, int, int, str]],
    log: str,
    references: dict[str, str],
) -> Findings:
    """Read every chat as its user sees it and list what breaks the contract."""
    lines: list[str] = []
    orphans = 0
    sent = chaos.sent
    jobs = {(chat_id, message_id): (job_id, status) for job_id, chat_id, message_id, status in rows}
    in_doubt = in_doubt_job_ids(log)
    media = {(s.chat_id, s.message_id): s for s in sent}
    if len(rows) != len(jobs):
        lines.append(f"{len(rows) - len(jobs)} duplicate job rows")
    for key in sorted(set(jobs) - set(media)):
        lines.append(f"job row {jobs[key]} for chat {key[0]} message {key[1]}: no such media")
    visible: dict[int, list[SentMessage]] = {
        chat_id: [m for m in api.messages(chat_id) if not m.deleted]
        for chat_id in (*CHATS, GROUP, FORGETTER)
    }
    intros = 0
    for chat_id, messages in visible.items():
        for m in messages:
            if (chat_id, m.reply_to) in media:
                continue
            what = explained(chaos, chat_id, m)
            if what == "intro":
                intros += 1
            elif what is None:
                lines.append(
                    f"chat {chat_id}: bot message {m.message_id} {m.text!r} replies to no media"
                )
    if intros != 1:
        lines.append(f"group: {intros} introductions of the bot (added once: one expected)")
    for m in api.messages(GROUP):
        thread = api.threads.get((GROUP, m.message_id), "none recorded")
        if (GROUP, m.reply_to) in media and thread != TOPIC:
            lines.append(
                f"group: bot message {m.message_id} replies in thread {thread}, not {TOPIC}"
            )
    for s in sent:
        label = f"chat {s.chat_id} message {s.message_id} ({s.kind}, {s.clip})"
        job_id, status = jobs.get((s.chat_id, s.message_id), (None, "no job row"))
        replies = [m for m in visible[s.chat_id] if m.reply_to == s.message_id]
        if job_id is None and not replies:
            lines.append(f"{label}: lost (no job row, no reply)")
            continue
        if status == "cancelled":
            # Checked against the presses in `check_presses`; here: it says so. (A stray
            # status reply in doubt has a Cancel button too: pressed, it says so as well.)
            transcripts = [m for m in replies if m.text == texts.CANCELLED][:1]
            if not transcripts:
                shown = [m.text for m in replies] or "no reply"
                lines.append(f"{label}: cancelled, but no reply says so; replies: {shown}")
        else:
            if status != "done":
                lines.append(f"{label}: job {job_id} is {status}")
            transcripts = [m for m in replies if is_transcript_of(m.text or "", references[s.clip])]
            if len(transcripts) != 1:
                shown = [m.text for m in replies] or "no reply"
                lines.append(f"{label}: {len(transcripts)} transcripts; replies: {shown}")
        for m in replies:
            if m in transcripts:
                continue
            text = m.text or f"<document {m.document and m.document.filename}>"
            stray = is_status(text) or (status == "cancelled" and text == texts.CANCELLED)
            if stray and job_id is not None and job_id in in_doubt:
                orphans += 1
            elif is_status(text):
                lines.append(f"{label}: orphan status reply {text!r}, job {job_id} not in doubt")
            elif m.document is None and not is_error(text):
                lines.append(f"{label}: reply {text!r} is no transcript of this clip")
            else:
                lines.append(f"{label}: extra reply {text!r}")
    return Findings(lines, orphans)


async def check_presses(
    api: GroupFakeBotAPI, chaos: Chaos, rows: list[tuple[int, int, int, str]], database: str
) -> list[str]:
    """Every press answered; only pressed jobs (or those of a forgotten user) cancelled, and a
    pressed one neither charged nor stored."""
    lines: list[str] = []
    pressed = chaos.pressed
    jobs = {(chat_id, message_id): (job_id, status) for job_id, chat_id, message_id, status in rows}
    charged = {int(job_id) for (job_id,) in await query(database, "SELECT job_id FROM usage")}
    linked = {
        int(job_id)
        for (job_id,) in await query(
            database, "SELECT id FROM jobs WHERE transcript_id IS NOT NULL"
        )
    }
    # /forget cancels its user's unfinished jobs (a transcribed one was charged already).
    forgotten = (
        {(s.chat_id, s.message_id) for s in chaos.sent if s.user_id == FORGETTER}
        if chaos.forget.pressed is not None
        else set()
    )
    for key, (job_id, status) in sorted(jobs.items()):
        label = f"chat {key[0]} message {key[1]} (job {job_id})"
        if key in pressed and api.query_answer(pressed[key]) is None:
            lines.append(f"{label}: its Cancel press was never answered")
        if status == "cancelled" and key not in pressed and key not in forgotten:
            lines.append(f"{label}: cancelled, but nobody pressed Cancel")
        if status == "cancelled" and job_id in (linked if key in forgotten else charged | linked):
            lines.append(f"{label}: cancelled, yet charged or given a transcript")
    return lines


async def check_language(api: GroupFakeBotAPI, chaos: Chaos, database: str) -> Findings:
    """Each chat that chose English has it, every choice was answered, and the jobs accepted
    after the user saw it carry it; `orphans` counts answers given twice (after a crash)."""
    lines: list[str] = []
    repeats = 0
    chats = {chat_id for chat_id, _ in chaos.commands if chat_id in CHATS}
    stored = dict(await query(database, "SELECT id, language FROM chats"))
    for chat_id in sorted(chats):
        if stored.get(chat_id) != "en":
            lines.append(f"chat {chat_id}: language {stored.get(chat_id)!r} after /language en")
        bot = api.messages(chat_id)
        asked = [mid for (chat, mid), text in chaos.commands.items() if chat == chat_id]
        for message_id in asked:
            if chaos.commands[(chat_id, message_id)] != "/language en":
                continue
            replies = [m for m in bot if m.reply_to == message_id]
            if not any(m.text == ENGLISH_SET for m in replies):
                lines.append(f"chat {chat_id}: /language en got {[m.text for m in replies]}")
            repeats += max(0, len(replies) - 1)
        menus = [
            m for m in bot if m.reply_to is None and any(d.startswith("lang:") for d in buttons(m))
        ]
        wanted = sum(1 for mid in asked if chaos.commands[(chat_id, mid)] == "/language")
        if len(menus) < wanted:
            lines.append(f"chat {chat_id}: {wanted} /language, {len(menus)} menus")
        repeats += max(0, len(menus) - wanted)
        for query_id in chaos.language_presses.get(chat_id, []):
            answer = api.query_answer(query_id)
            if answer is None or answer.params.get("text") != ENGLISH_SET:
                lines.append(f"chat {chat_id}: English pressed, answered {answer}")
    languages_of = {
        (int(chat_id), int(message_id)): language
        for chat_id, message_id, language in await query(
            database, "SELECT chat_id, message_id, language FROM jobs"
        )
    }
    for s in chaos.sent:
        found = languages_of.get((s.chat_id, s.message_id), "no job")
        if s.language is not None and found != s.language:
            lines.append(
                f"chat {s.chat_id} message {s.message_id}: sent after English was confirmed, "
                f"its job's language is {found!r}"
            )
    actions = sum(1 for text in chaos.commands.values() if text == "/language en")
    actions += sum(len(presses) for presses in chaos.language_presses.values())
    later = sum(1 for s in chaos.sent if s.language is not None)
    return Findings(lines, repeats, actions, later)


async def check_forget(
    api: GroupFakeBotAPI, chaos: Chaos, database: str, reference: str
) -> Findings:
    """The /forget press was answered and shown done; nothing of FORGETTER's texts is linked or
    stored; their usage rows stayed. `orphans` counts questions asked twice (after a crash)."""
    lines: list[str] = []
    if chaos.forget.pressed is None:
        return Findings(["/forget: the question was never pressed"], 0)
    message_id, query_id = chaos.forget.pressed
    answer = api.query_answer(query_id)
    if answer is None or answer.params.get("text") != texts.privacy.forget_deleted():
        lines.append(f"/forget: the press was answered {answer}")
    (question,) = [m for m in api.messages(FORGETTER) if m.message_id == message_id]
    if not is_forget_done(question.text or ""):
        lines.append(f"/forget: the pressed question shows {question.text!r}")
    questions = [m for m in api.messages(FORGETTER) if explained(chaos, FORGETTER, m)]
    for job_id, message, status, transcript_id in await query(
        database,
        "SELECT id, message_id, status, transcript_id FROM jobs"
        f" WHERE user_id = {FORGETTER} ORDER BY id",
    ):
        if transcript_id is not None or status not in ("done", "cancelled"):
            lines.append(
                f"/forget: job {job_id} (message {message}) is {status} and links transcript "
                f"{transcript_id}"
            )
    for transcript_id, text in await query(database, "SELECT id, text FROM transcripts"):
        if is_transcript_of(str(text), reference):
            lines.append(f"/forget: transcript {transcript_id} still holds {text!r}")
    left = {
        int(row[0])
        for row in await query(database, f"SELECT id FROM usage WHERE user_id = {FORGETTER}")
    }
    if not chaos.forget.usage_before <= left:
        lines.append(f"/forget: usage rows {sorted(chaos.forget.usage_before - left)} are gone")
    return Findings(lines, max(0, len(questions) - len(chaos.forget.asked)))
