"""Benchmark: how fast updates become durable records (issue 6), real bot against a fake Bot API.

Runs `python -m voicebot run` (WHISPER_MODEL=tiny.en, WORKERS=1, SQLite in a temp dir) against the
in-process fake Bot API of tests/fakes.py, twice, each on a fresh database: once over a backlog of
updates queued before it starts (downtime), once idle and then hit by a burst. Prints a markdown
table and writes it to bench-results/ingest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import random
import signal
import sqlite3
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus"
sys.path.insert(0, str(ROOT))  # the test helpers: fake Bot API, bot process, test media

from tests.botproc import BotProcess  # noqa: E402
from tests.fakes import Call, FakeBotAPI  # noqa: E402
from tests.media import voice_note  # noqa: E402

#: Short English clips (3-4.5 s) sent as voice notes and audio documents.
CLIPS = (
    "en/librispeech_alif_testing_routine.wav",
    "en/librispeech_alif_i_tell_you.wav",
    "en/librispeech_alif_another_door.wav",
    "en/librispeech_alif_another_engineer.wav",
)
TEXTS = ("/start", "/help", "hello", "what do you do?", "thanks!")
FIRST_USER = 100_000
POLL_SECONDS = 0.05
#: Bounds raised out of reach: every message is accepted.
LIFTED = {
    "USER_MAX_ACTIVE_JOBS": "100000",
    "USER_JOBS_PER_MINUTE": "100000",
    "GLOBAL_JOBS_PER_MINUTE": "100000",
    "MAX_QUEUE_SIZE": "100000",
}
RECORDED = (
    "A media message is *recorded* when its row is committed to the `jobs` table (time: the row's "
    "`created_at`, taken at insert); a text is recorded when the bot's answer reaches the Bot API "
    "(the fake's sendMessage arrival); an update is *confirmed* when the bot calls getUpdates with "
    "an offset past it (Telegram then drops it)."
)


@dataclass(frozen=True)
class Pushed:
    """One update put into the fake: whose, which message, what kind, and when (wall clock)."""

    update_id: int
    chat_id: int
    message_id: int
    kind: str  # "voice", "document" or "text"
    at: float


@dataclass(frozen=True)
class Note:
    """An encoded voice note and its duration in whole seconds."""

    data: bytes
    duration: int


@dataclass
class Phase:
    """What one phase measured; all times are wall-clock seconds (`time.time()`)."""

    name: str
    pushed: list[Pushed]
    start: float  # the clock's zero: first getUpdates (backlog) or first push (burst)
    push_seconds: float = 0.0
    startup_seconds: float = 0.0
    recorded: dict[tuple[int, int], float] = field(default_factory=dict)  # media: job created_at
    answered: dict[tuple[int, int], float] = field(default_factory=dict)  # text: reply arrival
    confirmed: dict[int, float] = field(default_factory=dict)  # update_id: confirming getUpdates
    statuses: dict[str, int] = field(default_factory=dict)  # job status counts at the end
    errors: int = 0  # bot log lines at level error or above

    @property
    def media(self) -> list[Pushed]:
        """The pushed media updates."""
        return [p for p in self.pushed if p.kind != "text"]

    @property
    def texts(self) -> list[Pushed]:
        """The pushed text updates."""
        return [p for p in self.pushed if p.kind == "text"]


class IncompleteError(Exception):
    """A phase did not record everything before its deadline (or the bot died)."""


def main() -> None:
    """Run both phases, print the table, write it; exit 1 if a phase did not complete."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backlog", type=int, default=1000, help="updates queued before start")
    parser.add_argument("--burst", type=int, default=500, help="updates pushed to an idle bot")
    parser.add_argument("--users", type=int, default=200, help="distinct users sending them")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="burst push rate, updates/s (0: all at once)"
    )
    parser.add_argument("--timeout", type=float, default=90.0, help="deadline per phase, seconds")
    add_mix_options(parser, seed=6)
    parser.add_argument("--output", type=Path, default=ROOT / "bench-results" / "ingest.md")
    args = parser.parse_args()

    notes = load_notes(args.corpus)
    try:
        phases = asyncio.run(run(args, notes))
    except IncompleteError as error:
        print(f"ingest benchmark: {error}", file=sys.stderr)
        sys.exit(1)
    table = render(phases, args)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table, encoding="utf-8")


def add_mix_options(parser: argparse.ArgumentParser, *, seed: int) -> None:
    """The options of a benchmark that sends the update mix: limits, media, seed, corpus."""
    parser.add_argument(
        "--default-limits",
        action="store_true",
        help="keep the default rate limits, active-job and queue bounds (many media are refused)",
    )
    parser.add_argument(
        "--no-transcription",
        action="store_true",
        help="media that fail at once (declared over the 20 MB download limit): the door only",
    )
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument(
        "--corpus", type=Path, default=Path(os.environ.get("CORPUS_DIR", DEFAULT_CORPUS))
    )


def load_notes(corpus: Path) -> list[Note]:
    """The clips encoded once as OGG/Opus voice notes (their bytes are reused for every send)."""
    with (corpus / "manifest.tsv").open(encoding="utf-8") as handle:
        rows = csv.DictReader(handle, delimiter="\t")
        durations = {row["file"]: float(row["duration_s"]) for row in rows}
    return [Note(voice_note(corpus / c), max(1, round(durations[c]))) for c in CLIPS]


async def run(args: argparse.Namespace, notes: list[Note]) -> list[Phase]:
    """Both phases, each with its own fake, bot process and database."""
    rng = random.Random(args.seed)
    phases = []
    if args.backlog:
        phases.append(await run_phase("backlog", args, notes, rng, count=args.backlog))
    if args.burst:
        phases.append(await run_phase("burst", args, notes, rng, count=args.burst))
    return phases


async def run_phase(
    name: str, args: argparse.Namespace, notes: list[Note], rng: random.Random, *, count: int
) -> Phase:
    """Start a bot (after pushing for `backlog`, before for `burst`) and wait until all is in."""
    with tempfile.TemporaryDirectory(prefix=f"voicebot-ingest-{name}-") as tmp:
        workdir = Path(tmp)
        database = workdir / "data" / "voicebot.db"
        async with FakeBotAPI() as api:
            bot = BotProcess(
                api,
                workdir,
                workdir / "models",
                WHISPER_MODEL="tiny.en",
                WORKERS="1",
                DATABASE_URL=f"sqlite+aiosqlite:///{database}",
                SHUTDOWN_GRACE_SECONDS="1",
                # Unless asked for the defaults, every message is accepted: no bound bites.
                **({} if args.default_limits else LIFTED),
            )
            try:
                return await _measure(name, api, bot, database, args, notes, rng, count)
            except IncompleteError as error:
                tail = "\n".join(bot.output().splitlines()[-10:])
                raise IncompleteError(f"{name}: {error}\nlast bot log lines:\n{tail}") from None
            finally:
                if bot.process is not None and not bot.exited:
                    await bot.stop(signal.SIGKILL)


async def _measure(
    name: str,
    api: FakeBotAPI,
    bot: BotProcess,
    database: Path,
    args: argparse.Namespace,
    notes: list[Note],
    rng: random.Random,
    count: int,
) -> Phase:
    clock = time.time() - time.monotonic()  # monotonic Call.at + clock = wall clock
    pushed: list[Pushed] = []
    if name == "backlog":
        pushed += push_all(api, notes, rng, count, args.users, args.no_transcription)
    launched = time.monotonic()
    try:
        await bot.start(timeout=120)
    except AssertionError as error:  # BotProcess.start asserts that the bot is polling
        raise IncompleteError(f"the bot did not start polling: {error}") from None
    first_poll = api.calls_of("getUpdates")[0].at
    if name == "backlog":
        phase = Phase(name, pushed, start=first_poll + clock)
    else:
        await asyncio.sleep(1.0)  # idle: start-up calls done, the bot sits in a long poll
        started = time.time()
        if args.rate > 0:
            pushed += await push_paced(
                api, notes, rng, count, args.users, args.rate, args.no_transcription
            )
        else:
            pushed += push_all(api, notes, rng, count, args.users, args.no_transcription)
        phase = Phase(name, pushed, start=started, push_seconds=time.time() - started)
    phase.startup_seconds = first_poll - launched

    deadline = time.monotonic() + args.timeout
    media = {(p.chat_id, p.message_id) for p in phase.media}
    texts = len(phase.texts)
    while True:
        jobs = _count_jobs(database)
        answers = len(text_answers(api, phase))
        recorded = args.default_limits or jobs >= len(media)  # a refusal records no job
        if recorded and answers >= texts and not api.pending_updates:
            break
        if bot.exited or time.monotonic() > deadline:
            why = "the bot exited" if bot.exited else f"not done within {args.timeout:.0f} s"
            raise IncompleteError(
                f"{why}: {jobs}/{len(media)} media recorded as jobs, {answers}/{texts} texts "
                f"answered, {count - len(api.pending_updates)}/{count} updates confirmed"
            )
        await asyncio.sleep(POLL_SECONDS)

    phase.recorded, phase.statuses = read_jobs(database)
    phase.answered = {key: at + clock for key, at in text_answers(api, phase).items()}
    phase.confirmed = confirmations(api.calls_of("getUpdates"), clock)
    phase.errors = count_errors(bot.output())
    return phase


def push_all(
    api: FakeBotAPI,
    notes: Sequence[Note],
    rng: random.Random,
    count: int,
    users: int,
    light: bool = False,
) -> list[Pushed]:
    """Push `count` updates in one go (no yield to the event loop in between)."""
    return [push_one(api, notes, rng, users, n + 1, light) for n in range(count)]


async def push_paced(
    api: FakeBotAPI,
    notes: Sequence[Note],
    rng: random.Random,
    count: int,
    users: int,
    rate: float,
    light: bool = False,
) -> list[Pushed]:
    """Push `count` updates at `rate` per second."""
    start, pushed = time.monotonic(), []
    for index in range(count):
        await asyncio.sleep(max(0.0, start + index / rate - time.monotonic()))
        pushed.append(push_one(api, notes, rng, users, index + 1, light))
    return pushed


def push_one(
    api: FakeBotAPI,
    notes: Sequence[Note],
    rng: random.Random,
    users: int,
    update_id: int,
    light: bool = False,
) -> Pushed:
    """One update of the mix (60% voice notes, 10% audio documents, 30% texts) as `update_id`.

    A fresh fake numbers updates 1, 2, 3…, so the caller knows the id the fake assigns.
    """
    user, roll = FIRST_USER + rng.randrange(users), rng.random()
    note = rng.choice(notes)
    if roll < 0.6 and light:
        kind = "voice"
        message_id = api.send_voice_ref(
            user,
            file_id=f"big-{update_id}",
            file_unique_id=f"big-u-{update_id}",
            file_size=25 * 1024 * 1024,
            duration=note.duration,
        )
    elif roll < 0.6:
        kind, message_id = "voice", api.send_voice(user, note.data, duration=note.duration)
    elif roll < 0.7:
        kind = "document"
        message_id = api.send_document(
            user, note.data, file_name="voice-memo.ogg", mime_type="audio/ogg"
        )
    else:
        kind, message_id = "text", api.send_text(user, rng.choice(TEXTS))
    return Pushed(update_id, user, message_id, kind, time.time())


def _count_jobs(database: Path) -> int:
    """Rows in `jobs`, read through a read-only connection (0 before the schema exists)."""
    if not database.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
            return int(connection.execute("SELECT count(*) FROM jobs").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # no table yet, or the file is being created


def read_jobs(database: Path) -> tuple[dict[tuple[int, int], float], dict[str, int]]:
    """Each job's (chat_id, message_id) → created_at as wall-clock seconds; status counts."""
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        rows = connection.execute("SELECT chat_id, message_id, created_at, status FROM jobs")
        recorded, statuses = {}, defaultdict(int)
        for chat_id, message_id, created_at, status in rows:
            recorded[(chat_id, message_id)] = _utc_seconds(created_at)
            statuses[status] += 1
    return recorded, dict(statuses)


def _utc_seconds(text: str) -> float:
    """SQLite's datetime text (UTC, with or without an offset) as a POSIX timestamp."""
    parsed = datetime.fromisoformat(text)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def text_answers(api: FakeBotAPI, phase: Phase) -> dict[tuple[int, int], float]:
    """Each text update's (chat_id, message_id) → monotonic arrival of the bot's answer.

    An answer is a sendMessage that replies to nothing or to a text; media replies (queue status,
    transcripts) reply to the media message. Answers in a chat pair with its texts in order.
    """
    texts: dict[int, list[int]] = defaultdict(list)
    for p in phase.texts:
        texts[p.chat_id].append(p.message_id)
    answers: dict[int, list[float]] = defaultdict(list)
    for call in api.calls_of("sendMessage"):
        chat_id, target = int(call.params["chat_id"]), _reply_target(call.params)
        if chat_id in texts and (target is None or target in texts[chat_id]):
            answers[chat_id].append(call.at)
    return {
        (chat_id, message_id): at
        for chat_id, ids in texts.items()
        for message_id, at in zip(ids, answers[chat_id], strict=False)
    }


def _reply_target(params: dict[str, Any]) -> int | None:
    reply = params.get("reply_parameters")
    target = reply.get("message_id") if isinstance(reply, dict) else None
    target = target if target is not None else params.get("reply_to_message_id")
    return int(target) if target is not None else None


def confirmations(polls: list[Call], clock: float) -> dict[int, float]:
    """update_id → wall-clock arrival of the first getUpdates whose offset is past it."""
    confirmed: dict[int, float] = {}
    highest = 0
    for call in polls:
        offset = int(call.params.get("offset") or 0)
        for update_id in range(highest, offset):
            confirmed[update_id] = call.at + clock
        highest = max(highest, offset)
    return confirmed


def count_errors(log: str) -> int:
    """JSON log lines at level error or critical."""
    count = 0
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        count += isinstance(entry, dict) and entry.get("level") in ("error", "critical")
    return count


def early(phase: Phase) -> tuple[int, int]:
    """Media confirmed before their job row, texts confirmed before their answer: lost if killed."""
    media = sum(
        phase.confirmed[m.update_id] < phase.recorded[(m.chat_id, m.message_id)]
        for m in phase.media
        if (m.chat_id, m.message_id) in phase.recorded
    )
    texts = sum(
        phase.confirmed[t.update_id] < phase.answered[(t.chat_id, t.message_id)]
        for t in phase.texts
    )
    return media, texts


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def render(phases: list[Phase], args: argparse.Namespace) -> str:
    """Markdown: when each phase had everything in, and latency percentiles per kind."""
    lines = [
        f"real bot (`python -m voicebot run`), WHISPER_MODEL=tiny.en, WORKERS=1, SQLite in a temp "
        f"dir, fake Bot API on 127.0.0.1, {os.cpu_count()} cores; {args.users} users; mix: 60% "
        f"voice notes ({len(CLIPS)} clips, 3-4.5 s), 10% audio documents, 30% texts",
        "",
        "| phase | updates | media | texts | clock starts at | media recorded s | confirmed s "
        "| texts answered s | all in s | updates/s |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for p in phases:
        last = {
            "media": max(p.recorded.values(), default=p.start) - p.start,
            "confirmed": max(p.confirmed[u.update_id] for u in p.pushed) - p.start,
            "texts": max((p.answered[(t.chat_id, t.message_id)] for t in p.texts), default=p.start)
            - p.start,
        }
        done = max(last.values())
        zero = "first getUpdates" if p.name == "backlog" else "first push"
        lines.append(
            f"| {p.name} | {len(p.pushed)} | {len(p.media)} | {len(p.texts)} | {zero} "
            f"| {last['media']:.2f} | {last['confirmed']:.2f} | {last['texts']:.2f} | {done:.2f} "
            f"| {len(p.pushed) / done:.0f} |"
        )
    lines += [
        "",
        "| phase | latency | n | p50 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for p in phases:
        since = "first getUpdates" if p.name == "backlog" else "push"
        rows = {
            "media → job row": [
                p.recorded[(m.chat_id, m.message_id)] - _zero(p, m)
                for m in p.media
                if (m.chat_id, m.message_id) in p.recorded
            ],
            "text → answer": [p.answered[(t.chat_id, t.message_id)] - _zero(p, t) for t in p.texts],
            "update → confirmed": [p.confirmed[u.update_id] - _zero(p, u) for u in p.pushed],
        }
        for label, values in rows.items():
            if values:
                p50, p99 = (1000 * percentile(values, f) for f in (0.5, 0.99))
                lines.append(
                    f"| {p.name} | {label} (from {since}) | {len(values)} | {p50:.0f} "
                    f"| {p99:.0f} | {1000 * max(values):.0f} |"
                )
    lines += ["", RECORDED, ""]
    for p in phases:
        worked = ", ".join(f"{n} {s}" for s, n in sorted(p.statuses.items()))
        pushing = (
            f"; pushed {'all at once' if args.rate <= 0 else f'at {args.rate:g}/s'} "
            f"in {p.push_seconds:.3f} s"
            if p.name == "burst"
            else "; pushed before the bot started"
        )
        media, texts = early(p)
        lines.append(
            f"- {p.name}: bot start-up to first getUpdates {p.startup_seconds:.1f} s{pushing}; "
            f"job statuses when all was in: {worked}; media refused at the door: "
            f"{len(p.media) - len(p.recorded)}; bot log errors: {p.errors}; confirmed "
            f"before recorded (lost if the bot is killed in between): {media}/{len(p.media)} "
            f"media, {texts}/{len(p.texts)} texts."
        )
    lines.append(
        "- The transcription worker runs throughout (as in production), competing for the same "
        "cores; each phase starts a fresh bot on a fresh database, so the burst hits an idle bot."
    )
    return "\n".join(lines) + "\n"


def _zero(phase: Phase, pushed: Pushed) -> float:
    """Latency origin: the push for a burst, the first getUpdates for a backlog."""
    return phase.start if phase.name == "backlog" else pushed.at


if __name__ == "__main__":
    main()
