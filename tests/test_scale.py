"""Scale-out with real processes: `voicebot bot` and `voicebot worker` processes sharing a real
PostgreSQL and a real RabbitMQ, against the fake Bot API. Every message ends with exactly one
answer, whichever process dies."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from voicebot.audio import decode
from voicebot.web import webhook

from .botproc import BotProcess
from .fakes import FakeBotAPI
from .media import encode_audio, long_speech, voice_note
from .servers import PostgresServer, RabbitServer, free_port, running
from .test_db import query
from .test_polling import log_events
from .test_webhook import SECRET

#: Clips of the English corpus and a phrase each transcript must contain.
CLIPS = {
    "another door": "librispeech_alif_another_door.wav",
    "not poison": "librispeech_alif_i_tell_you.wav",
    "testing routine": "librispeech_alif_testing_routine.wav",
    "another engineer": "librispeech_alif_another_engineer.wav",
}
#: A short lease, so that a killed worker's job moves on within a test's patience.
LEASE = "6"


@pytest.fixture
async def made() -> AsyncIterator[list[BotProcess]]:
    """The processes a test made: any still running at its end (a failed test) is killed."""
    processes: list[BotProcess] = []
    yield processes
    for process in processes:
        if process.process is not None and not process.exited:
            await process.stop(signal.SIGKILL)


def processes(
    api: FakeBotAPI,
    tmp_path: Path,
    model_cache: Path,
    made: list[BotProcess],
    *,
    database_url: str,
    broker_url: str,
) -> Callable[..., BotProcess]:
    """Makes `voicebot bot` and `voicebot worker` processes on one database and broker, noted
    in `made`."""

    def make(role: str, **env: str) -> BotProcess:
        process = BotProcess(
            api,
            tmp_path / f"{role}{len(made) + 1}",
            model_cache,
            role=role,
            DATABASE_URL=database_url,
            BROKER_URL=broker_url,
            WHISPER_MODEL="tiny.en",
            USER_MAX_ACTIVE_JOBS="20",
            JOB_LEASE_SECONDS=LEASE,
            # Workers decode in batches: a worker killed mid-job is killed mid-batch.
            **{"BATCH_SIZE": "4", **env},
        )
        made.append(process)
        return process

    return make


@pytest.fixture
def cluster(
    api: FakeBotAPI,
    tmp_path: Path,
    model_cache: Path,
    made: list[BotProcess],
    postgres_url: str,
    amqp_url: str,
) -> Callable[..., BotProcess]:
    """Processes on the session's PostgreSQL and RabbitMQ (see `processes`)."""
    return processes(
        api, tmp_path, model_cache, made, database_url=postgres_url, broker_url=amqp_url
    )


@pytest.fixture
def own_rabbitmq() -> Iterator[RabbitServer]:
    """A RabbitMQ node of the test's own, to stop and start."""
    with running(RabbitServer()) as server:
        yield server


@pytest.fixture
async def own_postgres() -> AsyncIterator[tuple[PostgresServer, str]]:
    """A PostgreSQL server of the test's own, to stop and start, and a database on it."""
    with running(PostgresServer()) as server:
        yield server, await server.create_database()


def answered_once(api: FakeBotAPI, expected: dict[tuple[int, int], str]) -> bool:
    """Whether each (chat, message) has its one reply, and it holds its phrase."""
    for (chat_id, message_id), phrase in expected.items():
        replies = [m for m in api.messages(chat_id) if m.reply_to == message_id]
        if len(replies) != 1 or phrase not in (replies[0].text or "").lower():
            return False
    return True


def answered(api: FakeBotAPI, expected: dict[tuple[int, int], str]) -> int:
    """How many of `expected` have a reply holding their phrase."""
    return sum(
        any(
            m.reply_to == message_id and phrase in (m.text or "").lower()
            for m in api.messages(chat_id)
        )
        for (chat_id, message_id), phrase in expected.items()
    )


def clip_notes(corpus: Path) -> dict[str, bytes]:
    """Each of CLIPS as a voice note, by its phrase (encoding again gives other bytes)."""
    return {phrase: voice_note(corpus / "en" / name) for phrase, name in CLIPS.items()}


def send_burst(
    api: FakeBotAPI,
    corpus: Path,
    *,
    count: int,
    users: int,
    first_user: int,
    notes: dict[str, bytes] | None = None,
) -> dict[tuple[int, int], str]:
    """`count` voice notes from `users` chats (of `notes`, else encoded anew); what each reply
    must contain, by message."""
    notes = notes or clip_notes(corpus)
    phrases = list(notes)
    expected: dict[tuple[int, int], str] = {}
    for index in range(count):
        user = first_user + index % users
        phrase = phrases[index % len(phrases)]
        expected[(user, api.send_voice(user, notes[phrase], duration=4))] = phrase
    return expected


async def test_a_burst_through_one_bot_and_two_workers(
    api: FakeBotAPI, corpus: Path, postgres_url: str, cluster: Callable[..., BotProcess]
) -> None:
    """The bot records and publishes, both workers take jobs, every message gets exactly one
    answer, and the jobs are charged once each."""
    bot = cluster("bot")
    workers = [cluster("worker", WORKERS="1", WHISPER_CPU_THREADS="1") for _ in range(2)]
    await bot.start()
    for worker in workers:
        await worker.start()
    notes = clip_notes(corpus)
    expected = send_burst(api, corpus, count=12, users=4, first_user=3000, notes=notes)
    await api.wait_for(lambda: answered_once(api, expected), 240, "12 transcripts")
    # The same notes once more, once their transcripts are in: these come from the cache.
    expected |= send_burst(api, corpus, count=4, users=4, first_user=3000, notes=notes)
    await api.wait_for(lambda: answered_once(api, expected), 240, "16 answers")
    for process in (bot, *workers):
        assert await process.stop() == 0, process.output()
    assert answered_once(api, expected)
    assert sum(len(api.messages(3000 + u)) for u in range(4)) == 16
    # Who ran each job (`claimed_by` stays when it ends): both workers, never the bot. Each
    # clip is sent four times: at least the fourth is answered from the cache, by either worker.
    holders = await query(postgres_url, "SELECT claimed_by, count(*) FROM jobs GROUP BY 1")
    pids = {int(str(holder).split(":")[1]): count for holder, count in holders}
    assert set(pids) == {w.process.pid for w in workers if w.process is not None}, pids
    assert sum(pids.values()) == 16
    # (A repeat that arrives while its clip is being transcribed elsewhere is transcribed too:
    # eight of the first twelve run at once.)
    transcribed = sum(len(log_events(worker, "job_transcribed")) for worker in workers)
    assert len(CLIPS) <= transcribed <= 12
    assert await query(postgres_url, "SELECT status, count(*) FROM jobs GROUP BY status") == [
        ("done", 16)
    ]
    assert await query(postgres_url, "SELECT count(DISTINCT job_id) FROM usage") == [(16,)]
    # Each worker counted its slot in the places in line while it ran, and took it back.
    assert await query(postgres_url, "SELECT count(*) FROM workers") == [(0,)]
    first_texts = [c.params["text"] for c in api.calls_of("sendMessage")]
    places = [int(t.rsplit(" ", 1)[1]) for t in first_texts if t.startswith("Queued")]
    assert places, first_texts
    assert max(places) <= 12 - 2  # two jobs run at once: at most ten wait ahead of the last


async def test_a_worker_killed_mid_job_is_replaced(
    api: FakeBotAPI, corpus: Path, postgres_url: str, cluster: Callable[..., BotProcess]
) -> None:
    """SIGKILL the worker transcribing a job: the other one runs it once the lease expires,
    and the user gets exactly one transcript."""
    bot = cluster("bot")
    workers = [cluster("worker", WORKERS="1") for _ in range(2)]
    await bot.start()
    for worker in workers:
        await worker.start()
    speech = long_speech(corpus)
    sent = api.send_voice(4000, encode_audio(speech), duration=int(len(speech) / 16000))
    await api.wait_for(lambda: len(api.calls_of("downloadFile")) == 1, 60, "the download")
    ((holder,),) = await query(postgres_url, "SELECT claimed_by FROM jobs")
    pid = int(str(holder).split(":")[1])
    (victim,) = [w for w in workers if w.process is not None and w.process.pid == pid]
    (survivor,) = [w for w in workers if w is not victim]
    os.kill(pid, signal.SIGKILL)
    assert await victim.stop() == -signal.SIGKILL

    def answered() -> bool:
        return any("painful to myself" in (m.text or "") for m in api.messages(4000))

    await api.wait_for(answered, 180, "the transcript from the other worker")
    for process in (bot, survivor):
        assert await process.stop() == 0, process.output()
    replies = [m for m in api.messages(4000) if m.reply_to == sent]
    assert len(replies) == 1
    assert len(api.messages(4000)) == 1
    assert len(log_events(survivor, "job_transcribed")) == 1
    assert await query(postgres_url, "SELECT status, attempts FROM jobs") == [("done", 2)]
    assert await query(postgres_url, "SELECT count(*) FROM usage") == [(1,)]


async def test_a_worker_stopped_gracefully_gives_its_jobs_back(
    api: FakeBotAPI, corpus: Path, postgres_url: str, cluster: Callable[..., BotProcess]
) -> None:
    """A worker on both queues holds one job of each (one running, one waiting for its slot);
    SIGTERM with no grace: both are given back (no broker holds them, no lease), and the next
    worker answers each once."""
    queues = {"LONG_QUEUE": "true", "LONG_AUDIO_SECONDS": "20"}
    bot = cluster("bot", **queues)
    # One job at a time (no batch): the second waits for the slot the first holds.
    worker = cluster("worker", WORKERS="1", BATCH_SIZE="1", SHUTDOWN_GRACE_SECONDS="0", **queues)
    for process in (bot, worker):
        await process.start()
    # Declared 30 s: the long queue (only the declared duration routes), a short clip in fact.
    # Downloads are held: the first job stays running until the stop.
    api.hold("downloadFile")
    phrase, name = next(iter(CLIPS.items()))
    note = voice_note(corpus / "en" / name)
    expected = {(4100, api.send_voice(4100, note, duration=30)): phrase}
    expected |= send_burst(api, corpus, count=1, users=1, first_user=4101)
    await api.wait_for(lambda: len(api.calls_of("downloadFile")) == 1, 60, "one job running")
    # And the second in the worker's hands too (taskiq logs each task it starts), not still in
    # RabbitMQ: the first job can reach its download before the second is even published.
    await api.wait_for(
        lambda: worker.output().count("Executing task transcribe_job") == 2, 60, "both jobs taken"
    )
    assert await worker.stop() == 0, worker.output()
    assert (
        await query(
            postgres_url, "SELECT status, claimed_by, published_priority FROM jobs ORDER BY id"
        )
        == [("queued", None, None)] * 2
    )
    api.release("downloadFile")
    again = cluster("worker", WORKERS="1", **queues)
    await again.start()
    await api.wait_for(lambda: answered_once(api, expected), 180, "both answers")
    for process in (bot, again):
        assert await process.stop() == 0, process.output()
    assert answered_once(api, expected)
    assert await query(postgres_url, "SELECT status, count(*) FROM jobs GROUP BY status") == [
        ("done", 2)
    ]


async def test_a_bot_killed_after_a_burst_loses_nothing(
    api: FakeBotAPI, corpus: Path, postgres_url: str, cluster: Callable[..., BotProcess]
) -> None:
    """SIGKILL the bot right after it took a burst (some jobs recorded, maybe not all
    published): a new bot publishes what no broker holds, and each message gets one answer."""
    bot = cluster("bot")
    worker = cluster("worker", WORKERS="2")
    await bot.start()
    await worker.start()
    expected = send_burst(api, corpus, count=8, users=4, first_user=5000)
    # Every update confirmed means every job recorded; the kill comes before most are published.
    await api.wait_for(lambda: not api.pending_updates, 30, "the burst recorded")
    assert await bot.stop(signal.SIGKILL) == -signal.SIGKILL
    again = cluster("bot")
    await again.start()
    await api.wait_for(lambda: answered_once(api, expected), 240, "8 transcripts")
    for process in (again, worker):
        assert await process.stop() == 0, process.output()
    assert answered_once(api, expected)
    assert sum(len(api.messages(5000 + u)) for u in range(4)) <= 8 + 4  # a status in doubt
    assert await query(postgres_url, "SELECT status, count(*) FROM jobs GROUP BY status") == [
        ("done", 8)
    ]


async def test_rabbitmq_restarted_during_a_burst_loses_nothing(
    api: FakeBotAPI,
    tmp_path: Path,
    model_cache: Path,
    corpus: Path,
    postgres_url: str,
    own_rabbitmq: RabbitServer,
    made: list[BotProcess],
) -> None:
    """RabbitMQ stops mid-burst (jobs in its queue, some running, more recorded while it is
    down) and starts again: every message gets exactly one answer."""
    make = processes(
        api, tmp_path, model_cache, made, database_url=postgres_url, broker_url=own_rabbitmq.url()
    )
    bot, workers = make("bot"), [make("worker", WORKERS="1") for _ in range(2)]
    for process in (bot, *workers):
        await process.start()
    expected = send_burst(api, corpus, count=10, users=5, first_user=6000)
    await api.wait_for(lambda: answered(api, expected) >= 2, 120, "the first answers")
    own_rabbitmq.stop()
    during = send_burst(api, corpus, count=4, users=2, first_user=6100)
    await api.wait_for(lambda: not api.pending_updates, 30, "the jobs recorded while it is down")
    own_rabbitmq.start()
    expected |= during
    await api.wait_for(lambda: answered_once(api, expected), 240, "14 transcripts")
    for process in (bot, *workers):
        assert await process.stop() == 0, process.output()
    assert answered_once(api, expected)
    assert await query(postgres_url, "SELECT status, count(*) FROM jobs GROUP BY status") == [
        ("done", 14)
    ]
    assert await query(postgres_url, "SELECT count(DISTINCT job_id), count(*) FROM usage") == [
        (14, 14)
    ]


async def test_postgresql_stopped_for_ten_seconds_during_a_burst_loses_nothing(
    api: FakeBotAPI,
    tmp_path: Path,
    model_cache: Path,
    corpus: Path,
    amqp_url: str,
    own_postgres: tuple[PostgresServer, str],
    made: list[BotProcess],
) -> None:
    """PostgreSQL stops for 10 s mid-burst: updates that came meanwhile are not confirmed to
    Telegram until they are recorded, workers wait, and every message gets exactly one answer."""
    server, database_url = own_postgres
    make = processes(
        api, tmp_path, model_cache, made, database_url=database_url, broker_url=amqp_url
    )
    bot, workers = make("bot"), [make("worker", WORKERS="1") for _ in range(2)]
    for process in (bot, *workers):
        await process.start()
    expected = send_burst(api, corpus, count=10, users=5, first_user=7000)
    await api.wait_for(lambda: answered(api, expected) >= 2, 120, "the first answers")
    server.stop()
    expected |= send_burst(api, corpus, count=4, users=2, first_user=7100)
    await asyncio.sleep(10)
    assert api.pending_updates, "updates confirmed while the database was down"
    server.start()
    await api.wait_for(lambda: answered_once(api, expected), 240, "14 transcripts")
    for process in (bot, *workers):
        assert await process.stop() == 0, process.output()
    assert answered_once(api, expected)
    assert await query(database_url, "SELECT status, count(*) FROM jobs GROUP BY status") == [
        ("done", 14)
    ]
    assert await query(database_url, "SELECT count(DISTINCT job_id), count(*) FROM usage") == [
        (14, 14)
    ]


def polling_lock(process: BotProcess, event: str) -> bool:
    """Whether `process` logged `event` for the polling lock."""
    return any(line.get("lock") == "polling" for line in log_events(process, event))


async def test_a_second_polling_bot_stands_by_and_takes_over(
    api: FakeBotAPI, corpus: Path, postgres_url: str, cluster: Callable[..., BotProcess]
) -> None:
    """Two `voicebot bot` in polling mode: one polls, the other stands by (ready, not polling);
    SIGKILL the poller and the standby takes over, and what came meanwhile is answered once."""
    first, second = cluster("bot"), cluster("bot")
    worker = cluster("worker", WORKERS="1")
    for process in (first, worker):
        await process.start()
    await second.start(wait=False)
    await api.wait_for(lambda: polling_lock(second, "lock_standby"), 60, "the standby")
    polls = len(api.calls_of("getUpdates"))
    before = send_burst(api, corpus, count=2, users=2, first_user=4200)
    await api.wait_for(lambda: answered_once(api, before), 120, "answers from the first")
    assert not log_events(second, "jobs_accepted")
    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
    after = send_burst(api, corpus, count=2, users=2, first_user=4300)
    await api.wait_for(lambda: polling_lock(second, "lock_taken"), 60, "the takeover")
    await api.wait_for(lambda: answered_once(api, before | after), 120, "answers from the second")
    for process in (second, worker):
        assert await process.stop() == 0, process.output()
    assert len(api.calls_of("getUpdates")) > polls
    assert log_events(second, "jobs_accepted")
    assert await query(postgres_url, "SELECT status, count(*) FROM jobs GROUP BY status") == [
        ("done", 4)
    ]


@pytest.mark.parametrize("role", ["bot", "worker"])
async def test_a_role_without_a_shared_broker_or_database_says_so(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, role: str, postgres_url: str
) -> None:
    """No BROKER_URL, or SQLite: one line naming the setting, exit 2, before anything starts."""
    for env, named in (
        ({"DATABASE_URL": postgres_url}, "BROKER_URL"),
        ({"BROKER_URL": "amqp://guest:guest@127.0.0.1:1/"}, "DATABASE_URL"),
    ):
        process = BotProcess(api, tmp_path / role, model_cache, role=role, **env)
        await process.start(wait=False)
        assert process.process is not None
        assert await process.process.wait() == 2
        (line,) = process.output().strip().splitlines()[-1:]
        assert line.startswith(f"voicebot: voicebot {role} needs {named}"), line
        process.log.unlink()
    assert not api.calls_of("getUpdates")


# Two workers of one thread each and the bot: the run fills both cores by itself, and another
# test beside it would push it past the suite's 300 s timeout.
@pytest.mark.exclusive
async def test_a_long_run_with_five_worker_kills(
    api: FakeBotAPI, corpus: Path, postgres_url: str, cluster: Callable[..., BotProcess]
) -> None:
    """300 different voice notes from 60 users through one bot and two workers, a random worker
    SIGKILLed (and replaced) five times: none lost, none answered twice, each charged once and
    exactly its length."""
    rng = random.Random(1027)
    roomy = {
        "GLOBAL_JOBS_PER_MINUTE": "1000",
        "USER_JOBS_PER_MINUTE": "100",
        "MAX_QUEUE_SIZE": "1000",
        "DAILY_QUOTA_SECONDS": "36000",
    }
    bot = cluster("bot", **roomy)
    workers = [cluster("worker", WORKERS="1", WHISPER_CPU_THREADS="1", **roomy) for _ in range(2)]
    for process in (bot, *workers):
        await process.start()
    # Each note is a corpus clip shifted by a few samples: different bytes, so every one is
    # transcribed and charged (a repeat would be a free cache hit), with the same words.
    clips = {
        phrase: decode((corpus / "en" / name).read_bytes(), max_seconds=60)
        for phrase, name in CLIPS.items()
    }
    phrases = list(clips)
    expected: dict[tuple[int, int], str] = {}
    lengths: dict[tuple[int, int], float] = {}
    kills = 0
    for wave in range(10):
        for index in range(30):
            number = wave * 30 + index
            user, phrase = 8000 + number % 60, phrases[number % len(phrases)]
            samples = np.roll(clips[phrase], 7 * (number + 1))
            message = api.send_voice(user, encode_audio(samples), duration=4)
            expected[(user, message)] = phrase
            lengths[(user, message)] = len(samples) / 16000
        await api.wait_for(lambda: answered(api, expected) >= len(expected) - 40, 300, "a wave")
        if wave % 2 == 1 and kills < 5:
            await asyncio.sleep(rng.uniform(0, 1.5))
            victim = workers.pop(rng.randrange(len(workers)))
            assert await victim.stop(signal.SIGKILL) == -signal.SIGKILL
            kills += 1
            replacement = cluster("worker", WORKERS="1", WHISPER_CPU_THREADS="1", **roomy)
            await replacement.start()
            workers.append(replacement)
    await api.wait_for(lambda: answered_once(api, expected), 600, "300 transcripts")
    for process in (bot, *workers):
        assert await process.stop() == 0, process.output()
    assert kills == 5
    assert answered_once(api, expected)
    assert sum(len(api.messages(8000 + user)) for user in range(60)) == 300
    assert await query(postgres_url, "SELECT status, count(*) FROM jobs GROUP BY status") == [
        ("done", 300)
    ]
    charges = await query(
        postgres_url,
        "SELECT j.chat_id, j.message_id, u.audio_seconds, u.charged_seconds, u.cached "
        "FROM usage u JOIN jobs j ON j.id = u.job_id",
    )
    assert len(charges) == 300
    for chat_id, message_id, audio, charged, cached in charges:
        assert not cached
        assert charged == audio
        assert abs(float(audio) - lengths[(int(chat_id), int(message_id))]) < 0.1


@dataclass(frozen=True)
class Post:
    """One update the balancer passed on: to which instance, and the status it answered."""

    instance: int
    update_id: int
    status: int


@dataclass
class Balancer:
    """The load balancer in front of the webhook instances, on a port of its own on loopback.

    It passes each POST on to one instance and returns that instance's status and body. The
    n-th delivery of update u goes to instance (u + n) mod the number of instances: consecutive
    updates alternate, and an update sent again goes to the other instance than last time (as
    a balancer that retries elsewhere would), whatever order concurrent requests arrive in.
    """

    ports: list[int]
    posts: list[Post] = field(default_factory=list)
    url: str = ""
    _arrivals: Counter[int] = field(default_factory=Counter)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Balancer:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        app = web.Application()
        app.router.add_post(webhook.PATH, self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        # Port 0: the system picks a free one, no window for another process to take it.
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}{webhook.PATH}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def answered(self, instance: int) -> list[int]:
        """The update ids `instance` acknowledged (2xx), in the order it answered."""
        return [p.update_id for p in self.posts if p.instance == instance and p.status < 300]

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        update_id = int(json.loads(body)["update_id"])
        instance = (update_id + self._arrivals[update_id]) % len(self.ports)
        self._arrivals[update_id] += 1
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() in ("content-type", webhook.SECRET_HEADER.lower())
        }
        url = f"http://127.0.0.1:{self.ports[instance]}{request.path}"
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                status, answer = response.status, await response.read()
                kind = response.headers.get("Content-Type")
        except aiohttp.ClientError:
            status, answer, kind = 502, b"", None  # the instance is down: Telegram retries
        self.posts.append(Post(instance, update_id, status))
        return web.Response(
            status=status, body=answer, headers={"Content-Type": kind} if kind else {}
        )


def two_ports() -> list[int]:
    """Two different free ports on loopback."""
    ports = [free_port()]
    while len(ports) < 2:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


async def test_two_webhook_bots_behind_one_url_handle_each_update_once(
    api: FakeBotAPI,
    corpus: Path,
    postgres_url: str,
    redis_url: str,
    cluster: Callable[..., BotProcess],
) -> None:
    """Two `voicebot bot` in webhook mode behind one URL (a round-robin balancer) and one
    worker, on one database and one Redis. Some acknowledgements are lost, so those updates
    come again, to the other instance: it sees them handled already and skips them. Each
    message gets exactly one answer, each recording one job charged once, each command one
    reply; both instances take updates, and the per-user limit counts across them."""
    ports = two_ports()
    async with Balancer(ports) as balancer:
        # Limits in Redis: 2 recordings a minute per user, whichever instance takes each.
        shared = {"REDIS_URL": redis_url, "USER_JOBS_PER_MINUTE": "2", "DAILY_QUOTA_SECONDS": "600"}
        front = {"BOT_MODE": "webhook", "WEBHOOK_URL": balancer.url, "WEBHOOK_SECRET": SECRET}
        bots = [cluster("bot", HTTP_PORT=str(port), **front, **shared) for port in ports]
        worker = cluster("worker", WORKERS="1", **shared)
        for process in (*bots, worker):
            await process.start()
        assert {c.params["url"] for c in api.calls_of("setWebhook")} == {balancer.url}
        # The lowest update ids of the first round are delivered, answered 200, and sent again
        # as if the 200 never came: the four /help commands (a second handling would be a
        # second reply: no job key absorbs it) and two voice notes.
        api.webhook.lose_acks = 6
        users = range(9000, 9004)
        helps = {user: api.send_text(user, "/help") for user in users}
        expected = send_burst(api, corpus, count=8, users=len(users), first_user=users[0])
        # Three in a row from one sender, so alternating between the instances (2 and 1):
        # each instance alone would let all three in; the shared limit lets in two.
        limited = 9010
        phrase, name = next(iter(CLIPS.items()))
        note = voice_note(corpus / "en" / name)
        flood = [api.send_voice(limited, note, duration=4) for _ in range(3)]
        flood_updates = [update["update_id"] for update in api.pending_updates[-3:]]

        def flood_answered() -> bool:
            replies = [m for m in api.messages(limited) if not m.deleted]
            return sorted(m.reply_to or 0 for m in replies) == flood and (
                sum(phrase in (m.text or "").lower() for m in replies) == 2
            )

        await api.wait_for(lambda: answered_once(api, expected), 120, "8 transcripts")
        await api.wait_for(flood_answered, 60, "the flood: two transcripts, one refusal")
        await api.wait_for(lambda: not api.pending_updates, 30, "every update acknowledged")
        for process in (*bots, worker):
            assert await process.stop() == 0, process.output()

    assert answered_once(api, expected)
    for user in users:
        commands = [m for m in api.messages(user) if m.reply_to is None and not m.deleted]
        assert len(commands) == 1, (user, helps[user], [m.text for m in commands])
    assert sum(len(api.messages(user)) for user in users) == len(expected) + len(users)
    # The flood did reach both instances: neither saw more than two of it.
    flood_takers = Counter(
        p.instance for p in balancer.posts if p.update_id in flood_updates and p.status < 300
    )
    assert sorted(flood_takers.values()) == [1, 2], balancer.posts
    (refusal,) = [m for m in api.messages(limited) if phrase not in (m.text or "").lower()]
    assert "at most 2 recordings a minute" in (refusal.text or ""), refusal.text

    # The balancer: every update acknowledged, both instances took some; the six sent again
    # went once to each instance, and the one that had it second skipped it (logged so).
    updates = len(helps) + len(expected) + len(flood)
    acknowledged = Counter(p.update_id for p in balancer.posts if p.status < 300)
    assert len(acknowledged) == updates, acknowledged
    twice = {update_id for update_id, count in acknowledged.items() if count == 2}
    assert len(twice) == 6, acknowledged
    assert set(acknowledged.values()) == {1, 2}, acknowledged
    takers = {
        u: [p.instance for p in balancer.posts if p.update_id == u and p.status < 300]
        for u in twice
    }
    assert all(first != second for first, second in takers.values()), takers
    for instance, bot in enumerate(bots):
        assert len(balancer.answered(instance)) >= updates // 2, balancer.posts
        skipped = [u for e in log_events(bot, "updates_redelivered") for u in e["update_ids"]]
        assert sorted(skipped) == sorted(
            u for u, (_, second) in takers.items() if second == instance
        )

    # The database: one job per recording let in, one handled mark per update, one charge per
    # job (a cache hit charges nothing, a transcription its length).
    jobs = len(expected) + 2
    assert await query(postgres_url, "SELECT status, count(*) FROM jobs GROUP BY status") == [
        ("done", jobs)
    ]
    flood_jobs = f"SELECT count(*) FROM jobs WHERE chat_id = {limited}"
    assert await query(postgres_url, flood_jobs) == [(2,)]
    assert await query(postgres_url, "SELECT count(*) FROM handled_updates") == [(updates,)]
    charges = await query(
        postgres_url, "SELECT job_id, audio_seconds, charged_seconds, cached FROM usage"
    )
    assert len(charges) == len({job_id for job_id, *_ in charges}) == jobs
    for _, audio, charged, cached in charges:
        assert charged == (0 if cached else audio), charges
    # Each clip transcribed (and charged) at least once; a repeat may come from the cache, or be
    # transcribed too when it arrives while its clip is being transcribed (so no upper bound).
    assert sum(charged > 0 for _, _, charged, _ in charges) >= len(CLIPS), charges
