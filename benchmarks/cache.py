"""Benchmark: update in → transcript out for a transcript-cache hit by file_unique_id (issue 7).

Runs `python -m voicebot run` (WHISPER_MODEL=tiny.en, WORKERS=1, SQLite in a temp dir) against
the in-process fake Bot API of tests/fakes.py. One voice note is sent and transcribed (the miss
that fills the cache); then the same note is forwarded (same file_unique_id, a new file_id) by
`--hits` different users, one at a time, each when the bot is idle again. Each hit is timed from
the push of its update (which wakes the bot's long poll) to the arrival at the fake of the Bot API
call that carries the transcript. Prints a markdown table and writes bench-results/cache.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus"
sys.path.insert(0, str(ROOT))  # the test helpers: fake Bot API, bot process, test media

from tests.botproc import BotProcess  # noqa: E402
from tests.fakes import FakeBotAPI  # noqa: E402
from tests.media import voice_note  # noqa: E402

CLIP = "en/librispeech_alif_another_door.wav"
PHRASE = "another door"
FIRST_USER = 200_000
GOAL_P95_MS = 100.0


class IncompleteError(Exception):
    """A hit was not answered in time, was not served from the cache, or the bot died."""


def main() -> None:
    """Measure, print the table, write it; exit 1 if a hit was not answered from the cache."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hits", type=int, default=100, help="forwarded copies to time (>= 50)")
    parser.add_argument("--pause", type=float, default=0.05, help="idle seconds between hits")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline per hit, seconds")
    parser.add_argument(
        "--corpus", type=Path, default=Path(os.environ.get("CORPUS_DIR", DEFAULT_CORPUS))
    )
    parser.add_argument("--output", type=Path, default=ROOT / "bench-results" / "cache.md")
    args = parser.parse_args()

    note = voice_note(args.corpus / CLIP)
    try:
        latencies, details = asyncio.run(run(args, note))
    except IncompleteError as error:
        print(f"cache benchmark: {error}", file=sys.stderr)
        sys.exit(1)
    table = render(latencies, details, args)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table, encoding="utf-8")


async def run(args: argparse.Namespace, note: bytes) -> tuple[list[float], dict[str, object]]:
    """Start the bot, fill the cache with one transcription, then time `args.hits` hits."""
    with tempfile.TemporaryDirectory(prefix="voicebot-cache-") as tmp:
        workdir = Path(tmp)
        async with FakeBotAPI() as api:
            bot = BotProcess(
                api,
                workdir,
                workdir / "models",
                WHISPER_MODEL="tiny.en",
                WORKERS="1",
                SHUTDOWN_GRACE_SECONDS="1",
                # Every hit is a new job: the door's rate limits are not what is measured here.
                USER_JOBS_PER_MINUTE="100000",
                GLOBAL_JOBS_PER_MINUTE="100000",
            )
            try:
                return await _measure(api, bot, note, args)
            except IncompleteError as error:
                tail = "\n".join(bot.output().splitlines()[-10:])
                raise IncompleteError(f"{error}\nlast bot log lines:\n{tail}") from None
            finally:
                if bot.process is not None and not bot.exited:
                    await bot.stop(signal.SIGKILL)


async def _measure(
    api: FakeBotAPI, bot: BotProcess, note: bytes, args: argparse.Namespace
) -> tuple[list[float], dict[str, object]]:
    await bot.start(timeout=120)
    started = time.monotonic()
    api.send_voice(FIRST_USER, note, duration=4)
    unique_id = str(api.pending_updates[-1]["message"]["voice"]["file_unique_id"])
    text = await _first_transcript(api, bot, within=60)
    miss_ms = 1000 * ((_answered_at(api, FIRST_USER, text) or started) - started)
    latencies = []
    for index in range(1, args.hits + 1):
        await asyncio.sleep(args.pause)  # the bot is idle again, in its long poll
        user = FIRST_USER + index
        pushed = time.monotonic()
        api.send_voice_as(user, note, duration=4, file_unique_id=unique_id, forward_from=FIRST_USER)
        answered = await _answered(api, bot, user, text, within=args.timeout)
        latencies.append(answered - pushed)
    await bot.stop()
    downloads = len(api.calls_of("getFile"))
    cached = sum(1 for event in _events(bot.output()) if event.get("event") == "job_cached")
    if downloads != 1 or cached != args.hits:
        raise IncompleteError(
            f"expected {args.hits} cache hits and 1 getFile, got {cached} hits, {downloads} getFile"
        )
    return latencies, {"miss_ms": miss_ms, "text": text}


async def _first_transcript(api: FakeBotAPI, bot: BotProcess, *, within: float) -> str:
    """Wait for the transcript of the first note (it says PHRASE); return its text."""
    deadline = time.monotonic() + within
    while True:
        for message in api.messages(FIRST_USER):
            if PHRASE in (message.text or "").lower():
                return str(message.text)
        if bot.exited or time.monotonic() > deadline:
            why = "the bot exited" if bot.exited else f"no transcript within {within:.0f} s"
            raise IncompleteError(f"the first note: {why}")
        await asyncio.sleep(0.01)


async def _answered(
    api: FakeBotAPI, bot: BotProcess, chat_id: int, text: str, *, within: float
) -> float:
    """Wait until `text` reaches `chat_id`; the arrival (monotonic) of the call that sent it."""
    deadline = time.monotonic() + within
    while (at := _answered_at(api, chat_id, text)) is None:
        if bot.exited or time.monotonic() > deadline:
            why = "the bot exited" if bot.exited else f"no transcript within {within:.0f} s"
            raise IncompleteError(f"chat {chat_id}: {why}")
        await asyncio.sleep(0.005)
    return at


def _answered_at(api: FakeBotAPI, chat_id: int, text: str) -> float | None:
    """Arrival (monotonic) of the first Bot API call that put `text` into `chat_id`."""
    for call in reversed(api.calls):
        if (
            call.method in ("sendMessage", "editMessageText")
            and str(call.params.get("chat_id")) == str(chat_id)
            and call.params.get("text") == text
        ):
            return call.at
    return None


def _events(log: str) -> list[dict[str, object]]:
    """The bot's JSON log lines."""
    found = []
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def render(latencies: list[float], details: dict[str, object], args: argparse.Namespace) -> str:
    """Markdown: hit latency percentiles, the goal, and the miss that filled the cache."""
    p50, p95 = (1000 * percentile(latencies, f) for f in (0.5, 0.95))
    verdict = "met" if p95 <= GOAL_P95_MS else "**not met**"
    return "\n".join(
        [
            f"real bot (`python -m voicebot run`), WHISPER_MODEL=tiny.en, WORKERS=1, SQLite in a "
            f"temp dir, fake Bot API on 127.0.0.1, {os.cpu_count()} cores; one voice note "
            f"transcribed, then forwarded {args.hits} times (same file_unique_id, new file_id, "
            f"a different user each time), one at a time, {args.pause * 1000:.0f} ms apart",
            "",
            "| update in → transcript out | n | p50 ms | p95 ms | max ms |",
            "|---|---:|---:|---:|---:|",
            f"| cache hit by file_unique_id | {len(latencies)} | {p50:.1f} | {p95:.1f} "
            f"| {1000 * max(latencies):.1f} |",
            "",
            f"- goal p95 ≤ {GOAL_P95_MS:.0f} ms: {verdict}.",
            f"- for comparison, the miss that filled the cache (download and transcription of a "
            f"4 s note) took {float(str(details['miss_ms'])):.0f} ms.",
            "- every hit was served from the cache: one getFile in all, one `job_cached` log "
            "event per hit. The time includes the bot's status reply (sendMessage) that the "
            "transcript then replaces (editMessageText).",
            "",
        ]
    )


if __name__ == "__main__":
    main()
