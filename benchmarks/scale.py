"""Benchmark: scale-out (issue 10, section 6), real processes on one machine.

Three setups, each on its own fake Bot API (tests/fakes.py) and a fresh database:

- a: `voicebot run`, WORKERS=1, WHISPER_CPU_THREADS=2 (one process, embedded broker);
- b: `voicebot run`, WORKERS=2, WHISPER_CPU_THREADS=1 (one process, two batch loops);
- c: `voicebot bot` + 2 x `voicebot worker` (WORKERS=1, WHISPER_CPU_THREADS=1 each) sharing a
  private PostgreSQL and a private RabbitMQ (tests/servers.py) on loopback.

a and b run the default BATCH_SIZE (or `--batch-size`); c's workers run what
deploy/compose.scale.yml gives them.

Each takes the same burst: `--clips` voice notes cut from the English corpus clips (in manifest
order, cycled) from `--chats` chats, sent at once. Every note in the whole run is distinct bytes
(its clip decoded, rolled by a few samples, re-encoded to OGG/Opus), so none is a cache hit.
Throughput: audio seconds of the burst / wall seconds from the first update pushed to the
arrival of the last transcript (the Bot API call carrying it). During the burst the machine's
CPU is sampled from /proc/stat every 0.5 s; each process's CPU seconds come from
/proc/PID/stat (utime + stime) and its memory from /proc/PID/status (VmRSS right after start,
when the model is loaded; VmHWM, the peak, at the end of the burst).

Then each setup times `--repeats` lone voice notes (`--latency-clip`, distinct bytes each), one
at a time: update pushed → arrival of the call carrying the transcript. With `--database
sqlite` (the default of `voicebot run`) setup b is also run on PostgreSQL for this, so that the
broker path (c) is compared with the embedded one on the same database and thread count.

Prints a markdown table and writes it to bench-results/scale.md; exits 1 when a message gets
no transcript or more than one answer.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import itertools
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus"
sys.path.insert(0, str(ROOT))  # the test helpers: fake Bot API, bot process, servers, media

from benchmarks.ingest import LIFTED, percentile  # noqa: E402
from tests.botproc import BotProcess  # noqa: E402
from tests.fakes import FakeBotAPI  # noqa: E402
from tests.media import encode_audio  # noqa: E402
from tests.servers import PostgresServer, RabbitServer  # noqa: E402

from voicebot.audio import decode  # noqa: E402
from voicebot.config import Settings  # noqa: E402

#: A lone note of 5-10 s for the latency runs (LJ Speech, 5.7 s).
LATENCY_CLIP = "en/ljspeech_LJ001-0006.wav"
GOAL_ADDED_MS = 30.0
GOAL_WORKER_MB = 600.0
#: The product's default: BotProcess's own (one piece a batch) is the tests' choice.
BATCH_SIZE = Settings.model_fields["batch_size"].default
#: What deploy/compose.scale.yml gives its worker replicas.
WORKER_BATCH_SIZE = 4
SAMPLE_SECONDS = 0.5
TICK = os.sysconf("SC_CLK_TCK")
FIRST_CHAT = 300_000
LATENCY_CHAT = 399_999
#: Log events that end a job: its transcript (or its failure) was sent.
ENDS = ('"job_delivered"', '"job_failed"')


@dataclass(frozen=True)
class Setup:
    """How the service runs: one `voicebot run`, or a bot and worker processes."""

    key: str
    split: bool
    workers: int  # WORKERS of each process that runs jobs
    threads: int  # WHISPER_CPU_THREADS of each
    consumers: int = 1  # processes that run jobs
    batch_size: int = BATCH_SIZE  # BATCH_SIZE of each (a and b: --batch-size)

    def describe(self) -> str:
        threads = f"{self.threads} thread{'s' if self.threads > 1 else ''}"
        if self.split:
            return (
                f"`voicebot bot` + {self.consumers} x `voicebot worker` "
                f"(WORKERS={self.workers}, {threads}, BATCH_SIZE={self.batch_size} each)"
            )
        each = " each" if self.workers > 1 else ""
        return f"`voicebot run`, WORKERS={self.workers}, {threads}{each}"


SETUPS = {
    "a": Setup("a", split=False, workers=1, threads=2),
    "b": Setup("b", split=False, workers=2, threads=1),
    "c": Setup("c", split=True, workers=1, threads=1, consumers=2, batch_size=WORKER_BATCH_SIZE),
}


@dataclass(frozen=True)
class Clip:
    """A corpus clip decoded once: 16 kHz samples and their length in seconds."""

    name: str
    samples: np.ndarray
    seconds: float


@dataclass
class Proc:
    """One bot, worker or run process of a setup, and what /proc said about it."""

    label: str
    process: BotProcess
    rss_start_kb: int = 0
    cpu_before: float = 0.0  # CPU seconds at the start of the burst
    cpu_after: float = 0.0  # and at its end
    hwm_kb: int = 0  # VmHWM at the end of the burst

    @property
    def pid(self) -> int:
        assert self.process.process is not None
        return self.process.process.pid


@dataclass
class Result:
    """What one setup measured."""

    setup: Setup
    database: str  # "SQLite" or "PostgreSQL"
    load: str  # /proc/loadavg's 1-min value when the burst started
    procs: list[Proc] = field(default_factory=list)
    notes: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    busy: float = 0.0  # mean share of all cores busy during the burst (/proc/stat)
    busy_max: float = 0.0  # the busiest 0.5 s sample
    used: float = 0.0  # CPU seconds of our processes (and servers) during the burst
    ours: float = 0.0  # their share of all cores
    clips: int = 0  # distinct corpus clips in the burst
    servers: dict[str, float] = field(default_factory=dict)  # CPU seconds during the burst
    latencies: list[float] = field(default_factory=list)  # update in → transcript out
    dispatches: list[float] = field(default_factory=list)  # update in → the job's getFile
    cached: int = 0


class IncompleteError(Exception):
    """A message got no transcript (or two answers), or a process died."""


def main() -> None:
    """Run the setups, print the table, write it; exit 1 when a message was not answered once."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=24, help="voice notes in each burst")
    parser.add_argument("--chats", type=int, default=6, help="chats the burst comes from")
    parser.add_argument(
        "--repeats", type=int, default=10, help="lone notes timed one at a time per setup"
    )
    parser.add_argument("--model", default="base", help="WHISPER_MODEL")
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the database of the embedded runs (a, b); c always uses PostgreSQL",
    )
    parser.add_argument("--setups", default="abc", help="which setups to run (letters a, b, c)")
    parser.add_argument(
        "--batch-size", type=int, default=BATCH_SIZE, help="BATCH_SIZE of a and b (c: compose's)"
    )
    parser.add_argument("--latency-clip", default=LATENCY_CLIP)
    parser.add_argument("--pause", type=float, default=0.5, help="idle seconds between lone notes")
    parser.add_argument("--timeout", type=float, default=600.0, help="deadline per burst, seconds")
    parser.add_argument(
        "--corpus", type=Path, default=Path(os.environ.get("CORPUS_DIR", DEFAULT_CORPUS))
    )
    parser.add_argument("--output", type=Path, default=ROOT / "bench-results" / "scale.md")
    args = parser.parse_args()
    unknown = set(args.setups) - set(SETUPS)
    if unknown or not args.setups:
        parser.error(f"--setups takes letters of {''.join(SETUPS)}, got {args.setups!r}")
    started, load, date = time.monotonic(), loadavg(), datetime.now(UTC)
    try:
        results = asyncio.run(run(args))
    except IncompleteError as error:
        print(f"scale benchmark: {error}", file=sys.stderr)
        sys.exit(1)
    table = render(args, results, (date, load), time.monotonic() - started)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table, encoding="utf-8")


# --------------------------------------------------------------------------- what /proc says


def loadavg() -> str:
    """The 1-, 5- and 15-minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine_cpu() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot (/proc/stat's first line)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return total - fields[3] - fields[4], total


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 when it is gone."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(rest[11]) + int(rest[12])) / TICK


def memory_kb(pid: int, key: str) -> int:
    """A `Vm…` line of /proc/PID/status (VmRSS, VmHWM), in kB; 0 when it is gone."""
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    return 0


def descendants(root: int) -> list[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, IndexError, ValueError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


class Servers:
    """PostgreSQL and RabbitMQ, started when a setup first needs them."""

    def __init__(self) -> None:
        self.postgres: PostgresServer | None = None
        self.rabbit: RabbitServer | None = None

    async def database(self) -> str:
        if self.postgres is None:
            self.postgres = PostgresServer()
            await asyncio.to_thread(self.postgres.start)
        return await self.postgres.create_database()

    async def vhost(self) -> str:
        if self.rabbit is None:
            self.rabbit = RabbitServer()
            await asyncio.to_thread(self.rabbit.start)
        return await asyncio.to_thread(self.rabbit.create_vhost)

    def roots(self) -> dict[str, list[int]]:
        """The servers' top processes now, by name (their children are counted with them)."""
        roots: dict[str, list[int]] = {}
        if self.postgres is not None and self.postgres.running:
            pid = int((self.postgres.data / "postmaster.pid").read_text().split()[0])
            roots["PostgreSQL"] = [pid]
        if self.rabbit is not None and self.rabbit.process is not None:
            roots["RabbitMQ"] = [self.rabbit.process.pid] + (
                [self.rabbit.epmd_process.pid] if self.rabbit.epmd_process is not None else []
            )
        return roots

    def cpu(self) -> dict[str, float]:
        """Each server's CPU seconds so far, its processes together."""
        return {
            name: sum(cpu_seconds(pid) for root in roots for pid in descendants(root))
            for name, roots in self.roots().items()
        }

    def close(self) -> None:
        for server in (self.rabbit, self.postgres):
            if server is not None:
                server.close()


class Sampler:
    """The machine's CPU every SAMPLE_SECONDS while running."""

    def __init__(self) -> None:
        self.samples = [machine_cpu()]
        self.task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_SECONDS)
            self.samples.append(machine_cpu())

    async def stop(self) -> tuple[float, float]:
        """Stop; the mean share of the cores busy since the start, and the busiest sample."""
        self.task.cancel()
        with suppress(asyncio.CancelledError):
            await self.task
        self.samples.append(machine_cpu())
        shares = [
            (busy - busy0) / (total - total0)
            for (busy0, total0), (busy, total) in itertools.pairwise(self.samples)
            if total > total0
        ]
        (busy0, total0), (busy1, total1) = self.samples[0], self.samples[-1]
        return (busy1 - busy0) / max(1, total1 - total0), max(shares, default=0.0)


# --------------------------------------------------------------------------- the notes


def load_clips(corpus: Path, names: list[str]) -> dict[str, Clip]:
    """The named corpus clips, decoded."""
    return {
        name: Clip(name, samples, len(samples) / 16000)
        for name in names
        for samples in [decode(corpus / name, max_seconds=3600)]
    }


def english(corpus: Path) -> list[str]:
    """The English clips of the corpus, in manifest order."""
    with (corpus / "manifest.tsv").open(encoding="utf-8") as handle:
        return [
            row["file"] for row in csv.DictReader(handle, delimiter="\t") if row["language"] == "en"
        ]


class Notes:
    """Encodes clips as voice notes, each distinct: rolled by one more sample than the last."""

    def __init__(self) -> None:
        self.shifts = itertools.count(1)
        self.seen: set[bytes] = set()

    def make(self, clip: Clip) -> bytes:
        data = encode_audio(np.roll(clip.samples, next(self.shifts)))
        digest = hashlib.sha256(data).digest()
        assert digest not in self.seen, "two notes came out the same"
        self.seen.add(digest)
        return data

    def batch(self, clips: list[Clip]) -> Iterator[tuple[Clip, bytes]]:
        for clip in clips:
            yield clip, self.make(clip)


# --------------------------------------------------------------------------- running a setup


async def run(args: argparse.Namespace) -> list[Result]:
    """Every setup asked for, one after the other, each with its own fake and database."""
    names = english(args.corpus)
    clips = load_clips(args.corpus, sorted({*names, args.latency_clip}))
    burst = [clips[names[index % len(names)]] for index in range(args.clips)]
    notes = Notes()
    servers = Servers()
    plans: list[tuple[Setup, str, bool]] = []  # setup, database, with the burst
    for key in args.setups:
        setup = SETUPS[key]
        database = "postgresql" if setup.split else args.database
        plans.append((setup, database, True))
        if key == "b" and args.database == "sqlite" and "c" in args.setups and args.repeats:
            plans.append((setup, "postgresql", False))  # latency on c's database too
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="voicebot-scale-") as tmp:
            root = Path(tmp)
            for number, (setup, database, with_burst) in enumerate(plans):
                # Encoded before the processes start: the encoding is not part of the burst.
                sent = list(notes.batch(burst)) if with_burst else []
                lone = list(notes.batch([clips[args.latency_clip]] * args.repeats))
                results.append(
                    await run_setup(
                        setup, database, args, servers, root / f"{number}-{setup.key}", sent, lone
                    )
                )
    finally:
        await asyncio.to_thread(servers.close)
    return results


async def run_setup(
    setup: Setup,
    database: str,
    args: argparse.Namespace,
    servers: Servers,
    workdir: Path,
    burst: list[tuple[Clip, bytes]],
    lone: list[tuple[Clip, bytes]],
) -> Result:
    """Start the setup's processes, send the burst, time the lone notes, check every answer."""
    model_cache = workdir.parent / "models"  # shared: the model is assembled once
    env = {
        "WHISPER_MODEL": args.model,
        "SHUTDOWN_GRACE_SECONDS": "5",
        "PROGRESS_INTERVAL_SECONDS": "5",  # the default (the tests' BotProcess says 1)
        **LIFTED,  # every note is accepted: the door's limits are not measured here
        "BATCH_SIZE": str(args.batch_size),
    }
    if database == "postgresql":
        env["DATABASE_URL"] = await servers.database()
    else:
        env["DATABASE_URL"] = f"sqlite+aiosqlite:///{workdir / 'data' / 'voicebot.db'}"
    label = "PostgreSQL" if database == "postgresql" else "SQLite"
    async with FakeBotAPI() as api:
        procs: list[Proc] = []
        if setup.split:
            env["BROKER_URL"] = await servers.vhost()
            procs.append(
                Proc("bot", BotProcess(api, workdir / "bot", model_cache, role="bot", **env))
            )
        for number in range(1, setup.consumers + 1):
            role = "worker" if setup.split else "run"
            procs.append(
                Proc(
                    f"{role} {number}" if setup.consumers > 1 else role,
                    BotProcess(
                        api,
                        workdir / f"{role}{number}",
                        model_cache,
                        role=role,
                        WORKERS=str(setup.workers),
                        WHISPER_CPU_THREADS=str(setup.threads),
                        **env | ({"BATCH_SIZE": str(setup.batch_size)} if setup.split else {}),
                    ),
                )
            )
        try:
            for proc in procs:
                await proc.process.start(timeout=300)
            for proc in procs:
                proc.rss_start_kb = memory_kb(proc.pid, "VmRSS")
            result = Result(setup, label, loadavg().split()[0], procs)
            expected: dict[tuple[int, int], Clip | None] = {}
            if burst:
                await measure_burst(api, result, servers, burst, expected, args)
            for clip, data in lone:
                await asyncio.sleep(args.pause)  # idle again: every process waits
                pushed = time.monotonic()
                message = api.send_voice(LATENCY_CHAT, data, duration=round(clip.seconds))
                file_id = str(api.pending_updates[-1]["message"]["voice"]["file_id"])
                expected[(LATENCY_CHAT, message)] = None
                await wait_ended(procs, ended(procs) + 1, within=120)
                result.latencies.append(answered_at(api, LATENCY_CHAT, message) - pushed)
                result.dispatches.append(fetched_at(api, file_id) - pushed)
            await asyncio.sleep(1)  # a second answer would come now
            check_answers(api, expected)
            failed = sum(p.process.output().count('"job_failed"') for p in procs)
            if failed:
                raise IncompleteError(f"{failed} jobs failed")
            result.cached = sum(p.process.output().count('"job_cached"') for p in procs)
            for proc in procs:
                code = await proc.process.stop()
                if code != 0:
                    raise IncompleteError(f"{proc.label} exited with {code}")
            return result
        except (IncompleteError, AssertionError) as error:
            tails = "\n".join(
                f"--- {proc.label}:\n" + "\n".join(proc.process.output().splitlines()[-8:])
                for proc in procs
            )
            raise IncompleteError(f"setup {setup.key}: {error}\n{tails}") from None
        finally:
            for proc in procs:
                if proc.process.process is not None and not proc.process.exited:
                    await proc.process.stop(signal.SIGKILL)


async def measure_burst(
    api: FakeBotAPI,
    result: Result,
    servers: Servers,
    burst: list[tuple[Clip, bytes]],
    expected: dict[tuple[int, int], Clip | None],
    args: argparse.Namespace,
) -> None:
    """Push the whole burst at once and wait until every note's transcript is out."""
    procs = result.procs
    for proc in procs:
        proc.cpu_before = cpu_seconds(proc.pid)
    servers_before, own_before = servers.cpu(), cpu_seconds(os.getpid())
    sampler = Sampler()
    first = time.monotonic()
    for index, (clip, data) in enumerate(burst):
        chat = FIRST_CHAT + index % args.chats
        message = api.send_voice(chat, data, duration=max(1, round(clip.seconds)))
        expected[(chat, message)] = clip
    await wait_ended(procs, len(burst), within=args.timeout)
    result.busy, result.busy_max = await sampler.stop()
    for proc in procs:
        proc.cpu_after = cpu_seconds(proc.pid)
        proc.hwm_kb = memory_kb(proc.pid, "VmHWM")
    servers_after, own_after = servers.cpu(), cpu_seconds(os.getpid())
    result.servers = {
        name: servers_after[name] - servers_before.get(name, 0.0) for name in servers_after
    }
    result.servers["benchmark (fake Bot API)"] = own_after - own_before
    last = max(answered_at(api, chat, message) for chat, message in expected)
    result.notes = len(burst)
    result.audio_seconds = sum(clip.seconds for clip, _ in burst)
    result.wall_seconds = last - first
    used = sum(p.cpu_after - p.cpu_before for p in procs) + sum(result.servers.values())
    cores = os.cpu_count() or 1
    # The sampler ran a little past the last transcript; near enough for a share of the cores.
    result.used, result.ours = used, used / (result.wall_seconds * cores)
    result.clips = len({clip.name for clip, _ in burst})


def ended(procs: list[Proc]) -> int:
    """Jobs that ended (transcript or failure sent) in these processes so far."""
    return sum(p.process.output().count(end) for p in procs for end in ENDS)


async def wait_ended(procs: list[Proc], count: int, *, within: float) -> None:
    """Wait until `count` jobs ended; a process exiting or the deadline fails."""
    deadline = time.monotonic() + within
    while ended(procs) < count:
        dead = [p.label for p in procs if p.process.exited]
        if dead or time.monotonic() > deadline:
            why = f"{', '.join(dead)} exited" if dead else f"not within {within:.0f} s"
            raise IncompleteError(f"{ended(procs)} of {count} jobs ended: {why}")
        await asyncio.sleep(0.05)


def reply_of(api: FakeBotAPI, chat: int, message: int) -> tuple[int, str]:
    """The one answer to a message: its message id and text (more or none fails)."""
    replies = [m for m in api.messages(chat) if m.reply_to == message and not m.deleted]
    if len(replies) != 1:
        raise IncompleteError(f"chat {chat}, message {message}: {len(replies)} answers")
    return replies[0].message_id, replies[0].text or ""


def answered_at(api: FakeBotAPI, chat: int, message: int) -> float:
    """Arrival (monotonic) of the first Bot API call that put the answer's text in place."""
    reply, text = reply_of(api, chat, message)
    for call in api.calls:
        params = call.params
        if str(params.get("chat_id")) != str(chat) or params.get("text") != text:
            continue
        if call.method == "sendMessage" or (
            call.method == "editMessageText" and str(params.get("message_id")) == str(reply)
        ):
            return call.at
    raise IncompleteError(f"chat {chat}, message {message}: no call carried its answer")


def fetched_at(api: FakeBotAPI, file_id: str) -> float:
    """Arrival (monotonic) of the first getFile for `file_id`: the job has started."""
    for call in api.calls_of("getFile"):
        if call.params.get("file_id") == file_id:
            return call.at
    raise IncompleteError(f"no getFile for {file_id}")


def check_answers(api: FakeBotAPI, expected: dict[tuple[int, int], Clip | None]) -> None:
    """Each message has exactly one answer, and it is its transcript (not a failure), and no
    chat has more bot messages than it sent notes."""
    chats: dict[int, int] = {}
    for chat, message in expected:
        chats[chat] = chats.get(chat, 0) + 1
        _, text = reply_of(api, chat, message)
        if not any(character.isalpha() for character in text):
            raise IncompleteError(f"chat {chat}, message {message}: answered {text[:80]!r}")
    for chat, count in chats.items():
        live = [m for m in api.messages(chat) if not m.deleted]
        if len(live) != count:
            raise IncompleteError(f"chat {chat}: {len(live)} bot messages for {count} notes")


# --------------------------------------------------------------------------- the table


def machine() -> str:
    """CPU model, cores and memory of this machine."""
    model = platform.processor() or platform.machine()
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = 0
    with suppress(OSError, ValueError, IndexError):
        memory = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]) // 1024
    return f"{os.cpu_count()} cores ({model}), {memory / 1024:.0f} GiB memory, no GPU"


def mb(kb: int) -> str:
    return f"{kb / 1024:.0f}"


def render(
    args: argparse.Namespace, results: list[Result], start: tuple[datetime, str], seconds: float
) -> str:
    """Markdown: throughput, processes, latency, and the goals."""
    date, load = start
    lines = [
        f"{date:%Y-%m-%d %H:%M} UTC, {machine()}; load average at start {load} "
        f"(1/5/15 min), at end {loadavg()}; WHISPER_MODEL={args.model}, "
        f"BATCH_SIZE={args.batch_size} "
        f"(c's workers: {WORKER_BATCH_SIZE}, as deploy/compose.scale.yml); "
        "fake Bot API in the "
        f"benchmark process on 127.0.0.1; private PostgreSQL and RabbitMQ on 127.0.0.1 for c; "
        f"run took {seconds:.0f} s",
        "",
    ]
    bursts = [r for r in results if r.notes]
    if bursts:
        lines += [
            f"Burst: {bursts[0].notes} voice notes ({bursts[0].audio_seconds:.0f} s of English "
            f"speech, {bursts[0].clips} corpus clips, distinct bytes) from {args.chats} chats "
            "at once; wall = first update pushed → last transcript out; machine CPU = /proc/stat "
            "busy share of all cores (mean, busiest 0.5 s); ours = CPU seconds of the bot/worker "
            "processes, the servers and the benchmark / (wall x cores); CPU s / audio s = those "
            "CPU seconds per second of audio (what the setup costs, whatever else runs)",
            "",
            "| setup | database | load 1 min | notes | audio s | wall s | audio s / wall s "
            "| machine CPU % (max) | ours % | CPU s / audio s |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in bursts:
            lines.append(
                f"| {r.setup.key}: {r.setup.describe()} | {r.database} | {r.load} | {r.notes} "
                f"| {r.audio_seconds:.1f} | {r.wall_seconds:.1f} "
                f"| {r.audio_seconds / r.wall_seconds:.2f} | {100 * r.busy:.0f} "
                f"({100 * r.busy_max:.0f}) | {100 * r.ours:.0f} | {r.used / r.audio_seconds:.3f} |"
            )
        lines += [
            "",
            "Processes: CPU seconds during the burst and in all (from start, model load "
            "included); RSS right after start (model loaded) and peak (VmHWM) at the end of the "
            "burst",
            "",
            "| setup | process | CPU s burst | CPU s total | RSS after start MB | peak RSS MB |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in bursts:
            for p in r.procs:
                lines.append(
                    f"| {r.setup.key} | {p.label} | {p.cpu_after - p.cpu_before:.1f} "
                    f"| {p.cpu_after:.1f} | {mb(p.rss_start_kb)} | {mb(p.hwm_kb)} |"
                )
            for name, cpu in r.servers.items():
                lines.append(f"| {r.setup.key} | {name} | {cpu:.1f} | | | |")
        lines.append("")
    timed = [r for r in results if r.latencies]
    if timed:
        lines += [
            f"Lone notes: {args.repeats} x {args.latency_clip} "
            f"({clip_length(args)}), one at a time, distinct bytes; "
            "in → out: update pushed → arrival of the call carrying the transcript; in → start: "
            "update pushed → the job's getFile (the process running it has taken it: intake, "
            "publish and, for c, the broker hop; no transcription)",
            "",
            "| setup | database | n | in → out p50 ms | p95 ms | max ms "
            "| in → start p50 ms | p95 ms | max ms |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in timed:
            out = [1000 * value for value in r.latencies]
            start = [1000 * value for value in r.dispatches]
            lines.append(
                f"| {r.setup.key}: {r.setup.describe()} | {r.database} | {len(out)} "
                f"| {percentile(out, 0.5):.0f} | {percentile(out, 0.95):.0f} | {max(out):.0f} "
                f"| {percentile(start, 0.5):.0f} | {percentile(start, 0.95):.0f} "
                f"| {max(start):.0f} |"
            )
        lines.append("")
    lines += goals(results)
    cached = sum(r.cached for r in results)
    if cached:
        lines.append(f"- {cached} notes were answered from the cache (expected none).")
    lines.append("")
    return "\n".join(lines)


def clip_length(args: argparse.Namespace) -> str:
    """The latency clip's length, as the manifest gives it."""
    with (args.corpus / "manifest.tsv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if row["file"] == args.latency_clip:
                return f"{float(row['duration_s']):.1f} s"
    return "?"


def delta(slower: list[float], faster: list[float], fraction: float) -> float:
    """Milliseconds between two series' percentiles."""
    return 1000 * (percentile(slower, fraction) - percentile(faster, fraction))


def goals(results: list[Result]) -> list[str]:
    """The issue's goals, where this run measured them."""
    lines = []
    split = next((r for r in results if r.setup.split and r.latencies), None)
    embedded = [r for r in results if r.setup.key == "b" and r.latencies]
    for base in embedded:
        if split is None:
            break
        out = [delta(split.latencies, base.latencies, f) for f in (0.5, 0.95)]
        start = [delta(split.dispatches, base.dispatches, f) for f in (0.5, 0.95)]
        verdict = "met" if max(out) <= GOAL_ADDED_MS else "**not met**"
        same = base.database == split.database
        lines.append(
            f"- broker path (c) minus embedded (b, {base.database}): in → out {out[0]:+.0f} ms "
            f"at p50, {out[1]:+.0f} ms at p95; in → start {start[0]:+.0f} ms at p50, "
            f"{start[1]:+.0f} ms at p95"
            + (
                f"; goal in → out ≤ {GOAL_ADDED_MS:.0f} ms more: {verdict}"
                if same
                else " (not the same database: the difference is not the broker's alone)"
            )
            + "."
        )
    workers = [p for r in results if r.setup.split for p in r.procs if p.label.startswith("worker")]
    if workers:
        peak = max(p.hwm_kb for p in workers) / 1024
        after = max(p.rss_start_kb for p in workers) / 1024
        verdict = "met" if peak <= GOAL_WORKER_MB else "**not met**"
        lines.append(
            f"- memory per worker process: RSS after load ≤ {after:.0f} MB, peak ≤ {peak:.0f} MB; "
            f"goal ≤ {GOAL_WORKER_MB:.0f} MB: {verdict}."
        )
    return lines


if __name__ == "__main__":
    main()
