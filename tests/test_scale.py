"""Scale-out with real processes: `voicebot bot` and `voicebot worker` processes sharing a real
PostgreSQL and a real RabbitMQ, against the fake Bot API. Every message ends with exactly one
answer, whichever process dies."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from .botproc import BotProcess
from .fakes import FakeBotAPI
from .media import encode_audio, long_speech, voice_note
from .servers import PostgresServer
from .test_db import query
from .test_polling import log_events

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
async def postgres_url(postgres: PostgresServer) -> AsyncIterator[str]:
    """A fresh database on the session's PostgreSQL server, dropped after."""
    url = await postgres.create_database()
    yield url
    await postgres.drop_database(url)


@pytest.fixture
def cluster(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, postgres_url: str, amqp_url: str
) -> Callable[..., BotProcess]:
    """Makes `voicebot bot` and `voicebot worker` processes on one database and broker."""
    made = 0

    def make(role: str, **env: str) -> BotProcess:
        nonlocal made
        made += 1
        return BotProcess(
            api,
            tmp_path / f"{role}{made}",
            model_cache,
            role=role,
            DATABASE_URL=postgres_url,
            BROKER_URL=amqp_url,
            WHISPER_MODEL="tiny.en",
            USER_MAX_ACTIVE_JOBS="20",
            JOB_LEASE_SECONDS=LEASE,
            **env,
        )

    return make


def answered_once(api: FakeBotAPI, expected: dict[tuple[int, int], str]) -> bool:
    """Whether each (chat, message) has its one reply, and it holds its phrase."""
    for (chat_id, message_id), phrase in expected.items():
        replies = [m for m in api.messages(chat_id) if m.reply_to == message_id]
        if len(replies) != 1 or phrase not in (replies[0].text or "").lower():
            return False
    return True


def send_burst(api: FakeBotAPI, corpus: Path, *, count: int, users: int, first_user: int) -> dict:
    """`count` voice notes from `users` chats; what each reply must contain, by message."""
    notes = {phrase: voice_note(corpus / "en" / name) for phrase, name in CLIPS.items()}
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
    expected = send_burst(api, corpus, count=12, users=4, first_user=3000)
    await api.wait_for(lambda: answered_once(api, expected), 240, "12 transcripts")
    for process in (bot, *workers):
        assert await process.stop() == 0, process.output()
    assert answered_once(api, expected)
    assert sum(len(api.messages(3000 + u)) for u in range(4)) == 12
    # Who ran each job (`claimed_by` stays when it ends): both workers, never the bot. Each
    # clip is sent three times: the repeats are answered from the cache, by either worker.
    holders = await query(postgres_url, "SELECT claimed_by, count(*) FROM jobs GROUP BY 1")
    pids = {int(str(holder).split(":")[1]): count for holder, count in holders}
    assert set(pids) == {w.process.pid for w in workers if w.process is not None}, pids
    assert sum(pids.values()) == 12
    assert len(log_events(workers[0], "job_transcribed")) + len(
        log_events(workers[1], "job_transcribed")
    ) == len(CLIPS)
    assert await query(postgres_url, "SELECT status, count(*) FROM jobs GROUP BY status") == [
        ("done", 12)
    ]
    assert await query(postgres_url, "SELECT count(DISTINCT job_id) FROM usage") == [(12,)]


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
