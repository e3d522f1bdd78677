"""Chaos at the door: SIGKILLs at random moments lose no message and answer none twice.

The real bot (`python -m voicebot run`, tiny.en) runs against the fake Bot API while bursts of
voice notes, audio files, audio documents and video notes arrive from several chats. The
process is SIGKILLed again and again: just after a burst arrives (0-300 ms after it, and
just after the bot confirmed it to Telegram, which then forgets it), during start-up, mid
transcription (after a file download), mid delivery (after a transcript went out) and at
uniformly random moments. Then it is started one last time and left to finish.

In some rounds the user presses the Cancel button of a random waiting or running job just
before the kill, so the press may be handled, half handled or delivered again after the start.

The chat is then read as a user sees it: every media message has exactly one visible reply
that is its transcript (or, for a pressed one, either that or "Cancelled." with its job
`cancelled` and nothing charged), every other job row is `done`, every press was answered, and
the last process exits 0 on SIGTERM. A
status reply left behind ("Queued…", "Transcribing…") is allowed only where the bot logged
`status_reply_in_doubt` for that job: a SIGKILL between Telegram's sendMessage and storing its
id cannot be told apart from a lost request, and sendMessage is not idempotent.

The schedule comes from a seeded `random.Random`; set CHAOS_SEED to replay one (the timing of
the process itself still varies from run to run).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from voicebot import texts
from voicebot.audio import decode

from .botproc import BotProcess
from .fakes import FakeBotAPI, SentMessage
from .media import encode_audio, video_with_sound, voice_note

CLIPS = (
    "librispeech_alif_another_door.wav",
    "librispeech_alif_another_engineer.wav",
    "librispeech_alif_i_tell_you.wav",
    "librispeech_alif_testing_routine.wav",
)
KINDS = ("voice", "audio", "document", "video_note")
CHATS = (6001, 6002, 6003)
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
SETTLE_TIMEOUT = 120.0

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
FINAL = ("done", "failed", "cancelled")


def is_status(text: str) -> bool:
    """Whether `text` is one of the bot's interim status texts."""
    return any(shape.fullmatch(text) for shape in _STATUS_SHAPES)


def is_error(text: str) -> bool:
    """Whether `text` is one of the bot's fixed error (or help) texts."""
    return text in _ERRORS or text.startswith(texts.too_large(1)[:25])


def words(text: str) -> set[str]:
    """Lower-cased words of `text`, punctuation dropped."""
    return set(re.findall(r"[a-z']+", text.lower()))


def is_transcript_of(text: str, reference: str) -> bool:
    """Whether `text` shares most of the reference transcript's words (a real transcript)."""
    expected = words(reference)
    return len(words(text) & expected) >= max(2, int(0.6 * len(expected)))


@dataclass(frozen=True)
class Item:
    """One media message of a burst: which chat sends which clip as what."""

    chat_id: int
    kind: str
    clip: str


@dataclass(frozen=True)
class Round:
    """One bot process and the moment it is killed at."""

    moment: str
    delay: float  # seconds after the event; for "startup", a fraction of the start-up time
    burst: tuple[Item, ...]
    #: Whether a Cancel button is pressed after the event, just before the kill.
    press: bool = False

    def __str__(self) -> str:
        unit = "x start-up" if self.moment == "startup" else "s"
        sent = ", ".join(f"{i.chat_id}:{i.kind}:{i.clip.split('_')[-1][:-4]}" for i in self.burst)
        pressing = " + a Cancel press" if self.press else ""
        return f"{self.moment:<8} +{self.delay:.3f}{unit:<10} burst [{sent}]{pressing}"


@dataclass(frozen=True)
class Sent:
    """A media message a user sent, and the clip inside it."""

    chat_id: int
    message_id: int
    kind: str
    clip: str


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
    rounds = [
        Round(moment, delays[moment](), burst(rng), moment != "startup" and rng.random() < 0.4)
        for moment in moments
    ]
    return rounds, burst(rng)


def burst(rng: random.Random) -> tuple[Item, ...]:
    """Two to four media messages from random chats."""
    return tuple(
        Item(rng.choice(CHATS), rng.choice(KINDS), rng.choice(CLIPS))
        for _ in range(rng.randint(2, 4))
    )


class Chaos:
    """Sends the bursts through the fake API and watches its calls for kill moments."""

    def __init__(self, api: FakeBotAPI, corpus: Path) -> None:
        self.api, self.corpus = api, corpus
        self.sent: list[Sent] = []
        #: Media messages whose Cancel button was pressed, and the press's callback query id.
        self.pressed: dict[tuple[int, int], str] = {}
        self._media: dict[tuple[str, str], bytes] = {}

    def push(self, items: tuple[Item, ...]) -> set[tuple[int, int]]:
        """Send a burst, all its messages at once; return their (chat_id, message_id)."""
        first = len(self.sent)
        for item in items:
            data = self.media(item.kind, item.clip)
            if item.kind == "voice":
                message_id = self.api.send_voice(item.chat_id, data, duration=4)
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
            self.sent.append(Sent(item.chat_id, message_id, item.kind, item.clip))
        return {(s.chat_id, s.message_id) for s in self.sent[first:]}

    def press(self, rng: random.Random) -> tuple[int, int] | None:
        """Press the Cancel button of a random status message that shows one; which."""
        showing = [
            (s, m, data)
            for s in self.sent
            if (s.chat_id, s.message_id) not in self.pressed
            for m in self.api.messages(s.chat_id)
            if m.reply_to == s.message_id and not m.deleted
            for row in (m.reply_markup or {}).get("inline_keyboard", [])
            for data in (button.get("callback_data") for button in row)
            if str(data).startswith("cancel:")
        ]
        if not showing:
            return None
        sent, status, data = rng.choice(showing)
        key = (sent.chat_id, sent.message_id)
        self.pressed[key] = self.api.press_button(sent.chat_id, status.message_id, str(data))
        return key

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
            text and not is_status(text) and not is_error(text)
            for _, text in self.calls_since(mark, "sendMessage", "editMessageText")
        )


async def until(predicate: Callable[[], bool], timeout: float, every: float = 0.005) -> bool:
    """Poll `predicate` every `every` s; whether it came true within `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(every)
    return True


def job_rows(database: Path) -> list[tuple[int, int, int, str]] | None:
    """(id, chat_id, message_id, status) of every job; None while the file is unreadable."""
    if not database.exists():
        return []
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as connection:
            rows = connection.execute("SELECT id, chat_id, message_id, status FROM jobs")
            return [(int(a), int(b), int(c), str(d)) for a, b, c, d in rows]
    except sqlite3.OperationalError:  # locked, or the schema not created yet
        return None


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


@pytest.mark.timeout(240)
async def test_sigkills_at_random_moments_lose_nothing_and_repeat_nothing(
    api: FakeBotAPI,
    tmp_path: Path,
    model_cache: Path,
    corpus: Path,
    references: dict[str, dict[str, str]],
) -> None:
    """After SIGKILLs at any moment and a last start, each media message has one transcript."""
    began = time.monotonic()
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    rounds, last_burst = plan(random.Random(seed))
    print(f"\nCHAOS_SEED={seed}; kill schedule:")
    for number, round_ in enumerate(rounds, 1):
        print(f"  {number:>2}. {round_}")
    print(f"  last start, burst [{len(last_burst)} messages], left to finish")

    bot = BotProcess(
        api,
        tmp_path,
        model_cache,
        WHISPER_MODEL="tiny.en",
        JOB_MAX_ATTEMPTS="30",
        USER_MAX_ACTIVE_JOBS="100",
    )
    chaos = Chaos(api, corpus)
    presses = random.Random(seed + 1)
    startup = 0.0
    for number, round_ in enumerate(rounds, 1):
        mark, spawned = len(api.calls), time.monotonic()
        if round_.moment == "startup":
            # Updates wait at the door while the process starts and dies.
            chaos.push(round_.burst)
            await bot.start(wait=False)
            polled = await until(
                partial(chaos.called_since, mark, "getUpdates"), round_.delay * startup
            )
            what = "at its first getUpdates" if polled else "before its first getUpdates"
        else:
            await bot.start()
            if startup == 0.0:
                startup = time.monotonic() - spawned
            mark = len(api.calls)
            burst = chaos.push(round_.burst)
            seen = True
            if round_.moment == "confirm":
                seen = await until(partial(chaos.confirmed, burst), EVENT_TIMEOUT)
            elif round_.moment == "download":
                seen = await until(partial(chaos.called_since, mark, "downloadFile"), EVENT_TIMEOUT)
            elif round_.moment == "delivery":
                seen = await until(partial(chaos.transcript_sent_since, mark), EVENT_TIMEOUT)
            if round_.press and (pressed := chaos.press(presses)) is not None:
                print(f"      pressed Cancel for chat {pressed[0]} message {pressed[1]}")
            await asyncio.sleep(round_.delay)
            what = EVENTS[round_.moment] if seen else f"with no event in {EVENT_TIMEOUT:.0f}s"
        code = await bot.stop(signal.SIGKILL)
        assert code == -signal.SIGKILL, f"the bot exited by itself ({code}):\n{bot.output()}"
        print(
            f"  kill {number:>2} ({round_.moment}) {what}, "
            f"{time.monotonic() - spawned:.2f}s after spawn; {len(chaos.sent)} messages sent"
        )

    await bot.start()
    chaos.push(last_burst)
    database = tmp_path / "data" / "voicebot.db"
    references_by_clip = {clip: references[f"en/{clip}"]["reference_transcript"] for clip in CLIPS}

    def answered(sent: Sent) -> bool:
        return any(
            m.reply_to == sent.message_id
            and not m.deleted
            and is_transcript_of(m.text or "", references_by_clip[sent.clip])
            for m in api.messages(sent.chat_id)
        )

    def settled() -> bool:
        rows = job_rows(database)
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
        )

    def idle() -> bool:
        """No job active and nothing but long polls for a while: nothing more will come."""
        rows = job_rows(database)
        active = rows is None or any(row[3] not in FINAL for row in rows)
        last = max((c.at for c in api.calls if c.method != "getUpdates"), default=0.0)
        return not active and time.monotonic() - last > 10

    # Polled slowly: the bot shares the machine's two cores with this test.
    await until(lambda: settled() or idle(), SETTLE_TIMEOUT, every=0.25)
    assert await bot.stop() == 0, f"the last bot did not exit 0 on SIGTERM:\n{bot.output()}"

    rows = job_rows(database) or []
    problems = check_chat(api, chaos.sent, rows, bot.output(), references_by_clip)
    problems.lines += check_presses(api, chaos.pressed, rows, database)
    elapsed = time.monotonic() - began
    cancelled = sum(1 for row in rows if row[3] == "cancelled")
    print(
        f"{len(chaos.sent)} media messages, {len(rounds)} kills, "
        f"{problems.orphans} orphan status replies (logged in doubt), "
        f"{len(chaos.pressed)} Cancel presses ({cancelled} cancelled), {elapsed:.0f}s"
    )
    if problems.lines:
        pytest.fail(
            f"CHAOS_SEED={seed}: {len(problems.lines)} problems in {len(chaos.sent)} messages:\n"
            + "\n".join(problems.lines[:40]),
            pytrace=False,
        )


@dataclass
class Findings:
    """What is wrong in the chats, one line each, and how many allowed orphans were seen."""

    lines: list[str]
    orphans: int


def check_chat(
    api: FakeBotAPI,
    sent: list[Sent],
    rows: list[tuple[int, int, int, str]],
    log: str,
    references: dict[str, str],
) -> Findings:
    """Read every chat as its user sees it and list what breaks the contract."""
    lines: list[str] = []
    orphans = 0
    jobs = {(chat_id, message_id): (job_id, status) for job_id, chat_id, message_id, status in rows}
    in_doubt = in_doubt_job_ids(log)
    media = {(s.chat_id, s.message_id): s for s in sent}
    if len(rows) != len(jobs):
        lines.append(f"{len(rows) - len(jobs)} duplicate job rows")
    for key in sorted(set(jobs) - set(media)):
        lines.append(f"job row {jobs[key]} for chat {key[0]} message {key[1]}: no such media")
    visible: dict[int, list[SentMessage]] = {
        chat_id: [m for m in api.messages(chat_id) if not m.deleted] for chat_id in CHATS
    }
    for chat_id, messages in visible.items():
        for m in messages:
            if (chat_id, m.reply_to) not in media:
                lines.append(f"chat {chat_id}: bot message {m.message_id} replies to no media")
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


def check_presses(
    api: FakeBotAPI,
    pressed: dict[tuple[int, int], str],
    rows: list[tuple[int, int, int, str]],
    database: Path,
) -> list[str]:
    """Every press answered; only pressed jobs cancelled, and those neither charged nor stored."""
    lines: list[str] = []
    jobs = {(chat_id, message_id): (job_id, status) for job_id, chat_id, message_id, status in rows}
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as connection:
        charged = {int(job_id) for (job_id,) in connection.execute("SELECT job_id FROM usage")}
        linked = {
            int(job_id)
            for (job_id,) in connection.execute(
                "SELECT id FROM jobs WHERE transcript_id IS NOT NULL"
            )
        }
    for key, (job_id, status) in sorted(jobs.items()):
        label = f"chat {key[0]} message {key[1]} (job {job_id})"
        if key in pressed and api.query_answer(pressed[key]) is None:
            lines.append(f"{label}: its Cancel press was never answered")
        if status == "cancelled" and key not in pressed:
            lines.append(f"{label}: cancelled, but nobody pressed Cancel")
        if status == "cancelled" and job_id in charged | linked:
            lines.append(f"{label}: cancelled, yet charged or given a transcript")
    return lines
