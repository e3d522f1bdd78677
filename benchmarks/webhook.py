"""Benchmark: webhook acknowledgement time (issue 9), real bot in webhook mode on loopback.

Runs `python -m voicebot run` with BOT_MODE=webhook (WHISPER_MODEL=tiny.en, WORKERS=1, SQLite
in a temp dir) against the fake Bot API of tests/fakes.py, which the bot answers through. The
updates (the ingest benchmark's mix of voice notes, audio documents and texts from `--users`
users) are made in the fake, then POSTed to the bot's /telegram/webhook by `--connections`
clients at once, as Telegram does (its default is 40). Each POST's time until its 200 is the
acknowledgement time: the update's job is committed by then. Prints a markdown table and writes
it to bench-results/webhook.md; exits 1 when an update is not acknowledged or a job is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test helpers: fake Bot API, bot process, test media

from benchmarks.ingest import (  # noqa: E402
    LIFTED,
    Note,
    Pushed,
    add_mix_options,
    load_notes,
    percentile,
    push_one,
)
from tests.botproc import BotProcess  # noqa: E402
from tests.fakes import FakeBotAPI  # noqa: E402
from tests.test_web import free_port  # noqa: E402

SECRET = "benchmark-secret-0123456789abcdef"


def main() -> None:
    """Run the benchmark, print the table, write it; exit 1 when something was not recorded."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--connections", type=int, default=40, help="POSTs in flight at once")
    add_mix_options(parser, seed=9)
    parser.add_argument("--output", type=Path, default=ROOT / "bench-results" / "webhook.md")
    args = parser.parse_args()
    try:
        table = asyncio.run(run(args, load_notes(args.corpus)))
    except AssertionError as error:
        print(f"webhook benchmark: {error}", file=sys.stderr)
        sys.exit(1)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table, encoding="utf-8")


async def run(args: argparse.Namespace, notes: list[Note]) -> str:
    """Start the bot, post every update, check the records, and render the numbers."""
    with tempfile.TemporaryDirectory(prefix="voicebot-webhook-") as tmp:
        workdir = Path(tmp)
        database = workdir / "data" / "voicebot.db"
        port = free_port()
        async with FakeBotAPI() as api:
            bot = BotProcess(
                api,
                workdir,
                workdir / "models",
                WHISPER_MODEL="tiny.en",
                WORKERS="1",
                DATABASE_URL=f"sqlite+aiosqlite:///{database}",
                SHUTDOWN_GRACE_SECONDS="1",
                BOT_MODE="webhook",
                HTTP_PORT=str(port),
                WEBHOOK_URL=f"http://127.0.0.1:{port}/telegram/webhook",
                WEBHOOK_SECRET=SECRET,
                LOG_LEVEL="WARNING",
                **({} if args.default_limits else LIFTED),
            )
            try:
                await bot.start(timeout=120)
                api.webhook.forget()  # the benchmark's clients post, not the fake
                rng = random.Random(args.seed)
                pushed = [
                    push_one(api, notes, rng, args.users, n + 1, args.no_transcription)
                    for n in range(args.updates)
                ]
                bodies = [json.dumps(update).encode() for update in api.pending_updates]
                url = f"http://127.0.0.1:{port}/telegram/webhook"
                started = time.perf_counter()
                latencies = await post_all(url, bodies, args.connections)
                seconds = time.perf_counter() - started
                jobs = count_jobs(database)
            finally:
                if bot.process is not None and not bot.exited:
                    await bot.stop(signal.SIGKILL)
    media = sum(1 for p in pushed if p.kind != "text")
    assert len(latencies) == len(bodies), "not every update was acknowledged"
    if not args.default_limits:
        assert jobs == media, f"{jobs} jobs recorded for {media} media updates"
    return render(args, pushed, latencies, seconds, jobs)


async def post_all(url: str, bodies: list[bytes], connections: int) -> list[float]:
    """POST every body with `connections` in flight; each one's seconds until its 200."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                sent = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    assert response.status == 200, f"answered {response.status}"
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(client() for _ in range(connections)))
    return latencies


def count_jobs(database: Path) -> int:
    """Jobs in the bot's database now."""
    with closing(sqlite3.connect(database)) as connection:
        return int(connection.execute("SELECT count(*) FROM jobs").fetchone()[0])


def render(
    args: argparse.Namespace,
    pushed: list[Pushed],
    latencies: list[float],
    seconds: float,
    jobs: int,
) -> str:
    """Markdown: the setup, then acknowledgement percentiles and throughput."""
    kinds: dict[str, Any] = {}
    for item in pushed:
        kinds[item.kind] = kinds.get(item.kind, 0) + 1
    mix = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    media = "declared over 20 MB (fail at once)" if args.no_transcription else "transcribed"
    limits = "default limits" if args.default_limits else "limits lifted"
    ms = [value * 1000 for value in latencies]
    return "\n".join(
        [
            f"real bot (`python -m voicebot run`, BOT_MODE=webhook), WHISPER_MODEL=tiny.en, "
            f"WORKERS=1, SQLite in a temp dir, fake Bot API and {args.connections} aiohttp "
            f"clients in one process on 127.0.0.1, {os.cpu_count()} cores; {args.users} users; "
            f"{mix}; media {media}; {limits}",
            "",
            "| updates | connections | jobs | p50 ms | p95 ms | p99 ms | max ms | updates/s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {len(latencies)} | {args.connections} | {jobs} | {percentile(ms, 0.5):.1f} "
            f"| {percentile(ms, 0.95):.1f} | {percentile(ms, 0.99):.1f} | {max(ms):.1f} "
            f"| {len(latencies) / seconds:.0f} |",
            "",
        ]
    )


if __name__ == "__main__":
    main()
