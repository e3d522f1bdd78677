"""Job leases: one worker at a time runs a job, decided in a real SQLite database.

Several workers are simulated by worker ids over one database (several processes cannot share
a SQLite file: `voicebot run` holds its run lock); the last test runs the real bot process and
plays the other worker in the database, as `test_cancel` plays another process's cancel.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from aiogram import Bot
from sqlalchemy import func, select

from voicebot import leases, texts
from voicebot.answers import deliver_transcript
from voicebot.config import Settings
from voicebot.db import Sessions, build_engine, build_sessions, upgrade_async
from voicebot.engine import Engine
from voicebot.errors import JobCancelledError, LeaseLostError
from voicebot.jobs import Runtime, transcribe_job
from voicebot.models import Job, JobStatus, Transcript, as_utc, set_job, set_job_if, utcnow
from voicebot.ratelimits import build_limiters
from voicebot.service import build_bot
from voicebot.slots import Slots

from .fakes import FakeBotAPI
from .media import encode_audio, long_speech, voice_note
from .test_cancel import downloads_of, file_id_of, shows, status, transcribing
from .test_db import add_user
from .test_fairness import answered, job_ids, rows, run_bot, text_of
from .test_polling import log_events

USER = 7301
A, B = "host-a:101:aaaaaaaa", "host-b:202:bbbbbbbb"
LEASE = 60.0


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[Sessions]:
    """Sessions over a migrated database (SQLite and PostgreSQL), with one user who sends jobs."""
    await upgrade_async(database_url)
    engine = build_engine(database_url)
    made = build_sessions(engine)
    await add_user(made, USER)
    yield made
    await engine.dispose()


async def add_job(
    sessions: Sessions,
    *,
    status: JobStatus = JobStatus.queued,
    age: float = 0.0,
    claimed_by: str | None = None,
    lease_until: datetime | None = None,
    **values: object,
) -> int:
    """A voice job of USER recorded `age` seconds ago; its id."""
    async with sessions() as session:
        count = await session.scalar(select(func.count()).select_from(Job)) or 0
        job = Job(
            chat_id=USER,
            user_id=USER,
            message_id=count + 1,
            kind="voice",
            file_id=f"file-{count}",
            file_unique_id=f"unique-{count}",
            status=status,
            attempts=0,
            delivered_parts=0,
            created_at=utcnow() - timedelta(seconds=age),
            claimed_by=claimed_by,
            lease_until=lease_until,
            **values,
        )
        session.add(job)
        await session.commit()
        return job.id


async def lease_of(sessions: Sessions, job_id: int) -> tuple[str | None, datetime | None]:
    """(claimed_by, lease_until) of a job, the time in UTC."""
    async with sessions() as session:
        job = await session.get(Job, job_id)
        assert job is not None
        until = None if job.lease_until is None else as_utc(job.lease_until)
        return job.claimed_by, until


async def until_of(sessions: Sessions, job_id: int) -> datetime:
    """The job's lease_until (it has one)."""
    _, until = await lease_of(sessions, job_id)
    assert until is not None
    return until


async def claim(sessions: Sessions, job_id: int, holder: str, now: datetime) -> bool:
    """`leases.claim` in a transaction of its own."""
    async with sessions() as session:
        taken = await leases.claim(session, job_id=job_id, holder=holder, now=now, seconds=LEASE)
        await session.commit()
        return taken


async def test_one_claim_wins_and_its_holder_may_claim_again(sessions: Sessions) -> None:
    """A claims a queued job; B is refused while A's lease runs; A claims again (a redelivery
    to the same worker) and its lease starts over."""
    job_id = await add_job(sessions)
    now = utcnow()
    assert await claim(sessions, job_id, A, now)
    assert await lease_of(sessions, job_id) == (A, now + timedelta(seconds=LEASE))
    assert not await claim(sessions, job_id, B, now + timedelta(seconds=LEASE - 1))
    later = now + timedelta(seconds=30)
    assert await claim(sessions, job_id, A, later)
    assert await lease_of(sessions, job_id) == (A, later + timedelta(seconds=LEASE))


async def test_of_many_concurrent_claims_exactly_one_wins(sessions: Sessions) -> None:
    """Twelve workers claim the same job at once, each in its own connection: one wins."""
    job_id = await add_job(sessions)
    workers = [f"host:{n}:cafe" for n in range(12)]
    now = utcnow()
    won = await asyncio.gather(*(claim(sessions, job_id, worker, now) for worker in workers))
    assert sum(won) == 1
    claimed_by, _ = await lease_of(sessions, job_id)
    assert claimed_by == workers[won.index(True)]


async def test_finished_jobs_are_not_claimed(sessions: Sessions) -> None:
    """A done, failed or cancelled job is nobody's to run, even with its lease long expired."""
    past = utcnow() - timedelta(hours=1)
    for ended in (JobStatus.done, JobStatus.failed, JobStatus.cancelled):
        job_id = await add_job(sessions, status=ended, claimed_by=A, lease_until=past)
        assert not await claim(sessions, job_id, B, utcnow())
        assert await lease_of(sessions, job_id) == (A, past)


async def test_the_heartbeat_renews_only_the_holders_leases(sessions: Sessions) -> None:
    """Renewing A's leases over A's and B's jobs extends A's and tells B's is not A's."""
    now = utcnow()
    mine, theirs = await add_job(sessions), await add_job(sessions)
    assert await claim(sessions, mine, A, now)
    assert await claim(sessions, theirs, B, now)
    later = now + timedelta(seconds=20)
    async with sessions() as session:
        kept = await leases.renew(
            session, job_ids=[mine, theirs], holder=A, now=later, seconds=LEASE
        )
        await session.commit()
    assert kept == {mine}
    assert await lease_of(sessions, mine) == (A, later + timedelta(seconds=LEASE))
    assert await lease_of(sessions, theirs) == (B, now + timedelta(seconds=LEASE))


async def test_an_expired_lease_is_taken_and_its_old_holder_refused(sessions: Sessions) -> None:
    """A stalls past its lease; B takes the job. From then on A's heartbeat keeps nothing, and
    each of A's writes conditional on the lease (running, transcript, a delivered part) changes
    nothing and is told apart from a cancel; B's go through."""
    job_id = await add_job(sessions)
    start = utcnow()
    assert await claim(sessions, job_id, A, start)
    assert not await claim(sessions, job_id, B, start + timedelta(seconds=LEASE - 1))
    assert await claim(sessions, job_id, B, start + timedelta(seconds=LEASE + 1))
    async with sessions() as session:
        renewed = await leases.renew(session, job_ids=[job_id], holder=A, now=utcnow(), seconds=1)
        assert renewed == set()
        assert not await set_job_if(
            session, job_id=job_id, statuses=(JobStatus.queued,), holder=A, attempts=1
        )
        assert not await leases.set_if_held(session, job_id=job_id, holder=A, delivered_parts=1)
        refusal = await leases.why_refused(session, job_id=job_id, holder=A)
        assert isinstance(refusal, LeaseLostError)
        assert await set_job_if(
            session,
            job_id=job_id,
            statuses=(JobStatus.queued,),
            holder=B,
            status=JobStatus.running,
        )
        await session.commit()
    async with sessions() as session:
        job = await session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.delivered_parts, job.claimed_by) == (JobStatus.running, 0, B)
        # B's job cancelled by its sender: B's refused write is a cancel, not a lost lease.
        await set_job(session, job_id=job_id, status=JobStatus.cancelled)
        assert not await set_job_if(
            session, job_id=job_id, statuses=(JobStatus.running,), holder=B, attempts=2
        )
        assert isinstance(
            await leases.why_refused(session, job_id=job_id, holder=B), JobCancelledError
        )


async def test_release_all_frees_unfinished_jobs_only(sessions: Sessions) -> None:
    """The only process on the database takes back every unfinished job's lease at start;
    finished jobs keep the name of the worker that ran them."""
    future = utcnow() + timedelta(hours=1)
    active = [
        await add_job(sessions, status=status, claimed_by=A, lease_until=future)
        for status in (JobStatus.queued, JobStatus.running, JobStatus.transcribed)
    ]
    done = await add_job(sessions, status=JobStatus.done, claimed_by=A, lease_until=future)
    async with sessions() as session:
        assert await leases.release_all(session) == 3
        await session.commit()
    for job_id in active:
        assert await lease_of(sessions, job_id) == (None, None)
        assert await claim(sessions, job_id, B, utcnow())
    assert await lease_of(sessions, done) == (A, future)


async def test_stale_jobs_are_expired_leases_and_old_unclaimed_jobs(sessions: Sessions) -> None:
    """The sweeper's query: unfinished jobs whose lease expired, those recorded over a lease ago
    that no worker claimed and no broker holds, and those a broker has held unclaimed for ten
    leases, and a cancelled job whose worker died before it showed "Cancelled"; not live
    leases, new jobs, jobs waiting in a broker, or finished ones (cancelled ones told)."""
    now = utcnow()
    past, future = now - timedelta(seconds=1), now + timedelta(seconds=30)
    expired = await add_job(sessions, status=JobStatus.running, claimed_by=A, lease_until=past)
    expired_transcribed = await add_job(
        sessions, status=JobStatus.transcribed, claimed_by=A, lease_until=past
    )
    lost_publish = await add_job(sessions, age=LEASE + 5)
    await add_job(sessions, age=5)  # just recorded: its publish is on its way
    await add_job(sessions, age=LEASE + 5, claimed_by=A, lease_until=future)  # live
    await add_job(sessions, status=JobStatus.done, claimed_by=A, lease_until=past)
    await add_job(sessions, status=JobStatus.cancelled, age=LEASE + 5, told_at=now)
    # Cancelled while its worker died: nobody has shown "Cancelled" yet.
    cancelled_untold = await add_job(
        sessions, status=JobStatus.cancelled, claimed_by=A, lease_until=past
    )
    await add_job(sessions, status=JobStatus.cancelled, claimed_by=A, lease_until=past, told_at=now)
    await add_job(sessions, status=JobStatus.cancelled, claimed_by=A, lease_until=future)
    # In RabbitMQ: waiting its turn there, however old; or held unclaimed for too long.
    long_ago = now - timedelta(seconds=LEASE * 11)
    await add_job(sessions, age=LEASE * 20, published_priority=5, published_at=now)
    lost_message = await add_job(
        sessions, age=LEASE * 20, published_priority=5, published_at=long_ago
    )
    async with sessions() as session:
        found = await leases.stale_jobs(
            session,
            now=now,
            unclaimed_before=now - timedelta(seconds=LEASE),
            published_before=now - timedelta(seconds=LEASE * 10),
        )
    assert found == [
        (expired, True),
        (expired_transcribed, True),
        (lost_publish, False),
        (cancelled_untold, True),
        (lost_message, False),
    ]


class KickRecorder(Runtime):
    """A runtime whose broker is a list: what `kick` queued."""

    kicked: list[int]

    async def kick(self, *job_ids: int) -> None:
        """Note `job_ids` as queued."""
        self.kicked.extend(job_ids)


@pytest.fixture
async def bot(api: FakeBotAPI) -> AsyncIterator[Bot]:
    """The aiogram bot pointed at the fake Bot API."""
    made = build_bot(
        Settings(_env_file=None, telegram_bot_token=api.token, telegram_api_url=api.url)
    )
    yield made
    await made.session.close()


def runtime_for(
    bot: Bot, sessions: Sessions, engine: Engine, tmp_path: Path, **settings: object
) -> KickRecorder:
    """A runtime over the fake Bot API and `sessions`, with one slot."""
    config = Settings(_env_file=None, data_dir=tmp_path, **settings)  # type: ignore[arg-type]
    runtime = KickRecorder(
        settings=config,
        bot=bot,
        sessions=sessions,
        engine=engine,
        slots=Slots(1, max_wait=300),
        limiters=build_limiters(config),
    )
    runtime.kicked = []
    return runtime


async def test_the_sweeper_queues_again_what_no_worker_holds(
    api: FakeBotAPI, bot: Bot, sessions: Sessions, tiny_engine: Engine, tmp_path: Path
) -> None:
    """Expired leases (freed first) and lost publishes are queued again and counted, except the
    jobs this process has in hand; a second sweep queues the lost publish again (harmless: the
    claim decides)."""
    runtime = runtime_for(bot, sessions, tiny_engine, tmp_path, job_lease_seconds=LEASE)
    past = utcnow() - timedelta(seconds=1)
    expired = await add_job(sessions, status=JobStatus.running, claimed_by=A, lease_until=past)
    lost_publish = await add_job(sessions, age=LEASE + 5)
    here = await add_job(sessions, age=LEASE + 5)
    await add_job(sessions, age=1)
    runtime.handling.add(here)
    assert await leases.sweep(runtime) == 2
    assert runtime.kicked == [expired, lost_publish]
    for event in ("expired_requeued", "unclaimed_requeued"):
        counted = runtime.metrics.registry.get_sample_value(
            "voicebot_leases_total", {"event": event}
        )
        assert counted == 1
    # The expired lease was freed: a later sweep publishes it again only once it is unclaimed
    # for a whole lease since recorded (as a lost publish), which this recent one is not.
    assert await leases.sweep(runtime) == 1
    assert runtime.kicked == [expired, lost_publish, lost_publish]
    assert await lease_of(sessions, expired) == (None, None)


async def test_a_job_cancelled_while_its_worker_died_is_told_once(
    api: FakeBotAPI, bot: Bot, sessions: Sessions, tiny_engine: Engine, tmp_path: Path
) -> None:
    """A /forget (or a press in another process) cancelled A's running job, and A died before
    it showed "Cancelled": once A's lease expires the sweeper queues the job again, and run
    again it only shows "Cancelled", once; a later sweep leaves it alone."""
    runtime = runtime_for(bot, sessions, tiny_engine, tmp_path, job_lease_seconds=LEASE)
    status_message = await bot.send_message(USER, texts.TRANSCRIBING)
    job_id = await add_job(
        sessions,
        status=JobStatus.cancelled,
        claimed_by=A,
        lease_until=utcnow() + timedelta(hours=1),
        status_message_id=status_message.message_id,
    )
    assert await leases.sweep(runtime) == 0  # A may be alive: its lease decides
    async with sessions() as session:
        await set_job(session, job_id=job_id, lease_until=utcnow() - timedelta(seconds=1))
        await session.commit()
    assert await leases.sweep(runtime) == 1
    assert runtime.kicked == [job_id]
    mark = len(api.calls)
    await transcribe_job(job_id, runtime)
    edits = [c for c in api.calls[mark:] if c.method == "editMessageText"]
    assert [(e.params["message_id"], e.params["text"]) for e in edits] == [
        (status_message.message_id, texts.CANCELLED)
    ]
    assert not [c for c in api.calls[mark:] if c.method in ("sendMessage", "getFile")]
    async with sessions() as session:
        job = await session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.told_at is not None) == (JobStatus.cancelled, True)
    assert await leases.sweep(runtime) == 0
    assert runtime.kicked == [job_id]


async def transcribed_job(sessions: Sessions, bot: Bot, **values: object) -> int:
    """A job transcribed and not yet delivered, with its status message sent; its id."""
    status_message = await bot.send_message(USER, texts.TRANSCRIBING)
    async with sessions() as session:
        stored = Transcript(
            file_unique_id="unique-t",
            text="Ask not what your country can do for you.",
            language="en",
            language_probability=1.0,
            duration=4.0,
            segments=[{"start": 0.0, "end": 4.0, "text": "Ask not what your country can do."}],
            model="tiny.en",
        )
        session.add(stored)
        await session.commit()
    return await add_job(
        sessions,
        status=JobStatus.transcribed,
        transcript_id=stored.id,
        status_message_id=status_message.message_id,
        **values,
    )


async def test_a_job_another_worker_holds_is_not_delivered_until_its_lease_expires(
    api: FakeBotAPI, bot: Bot, sessions: Sessions, tiny_engine: Engine, tmp_path: Path
) -> None:
    """A transcribed job held by B: this worker's task ends without a word to Telegram. B dies
    (its lease expires): the next run takes the job over and delivers it, once."""
    runtime = runtime_for(bot, sessions, tiny_engine, tmp_path)
    job_id = await transcribed_job(
        sessions, bot, claimed_by=B, lease_until=utcnow() + timedelta(hours=1)
    )
    mark = len(api.calls)
    await transcribe_job(job_id, runtime)
    assert api.calls[mark:] == []
    assert (await lease_of(sessions, job_id))[0] == B
    async with sessions() as session:
        await set_job(session, job_id=job_id, lease_until=utcnow() - timedelta(seconds=1))
        await session.commit()
    await transcribe_job(job_id, runtime)
    edits = [c for c in api.calls[mark:] if c.method == "editMessageText"]
    assert len(edits) == 1
    assert "your country" in str(edits[0].params["text"])
    async with sessions() as session:
        job = await session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.claimed_by) == (JobStatus.done, runtime.worker_id)
    assert runtime.handling == set()
    assert runtime.leased == set()


async def test_a_worker_that_lost_its_lease_does_not_deliver(
    api: FakeBotAPI, bot: Bot, sessions: Sessions, tiny_engine: Engine, tmp_path: Path
) -> None:
    """This worker claimed the job, stalled, and B took it: its delivery stops before it sends."""
    runtime = runtime_for(bot, sessions, tiny_engine, tmp_path)
    job_id = await transcribed_job(sessions, bot)
    assert await leases.take(runtime, job_id)
    async with sessions() as session:
        await set_job(session, job_id=job_id, claimed_by=B, lease_until=utcnow())
        await session.commit()
        job = await session.get(Job, job_id)
        assert job is not None
    mark = len(api.calls)
    with pytest.raises(LeaseLostError):
        await deliver_transcript(runtime, job)
    assert api.calls[mark:] == []
    async with sessions() as session:
        assert await session.scalar(select(Job.status).where(Job.id == job_id)) == "transcribed"


async def test_the_heartbeat_keeps_leases_and_stops_a_job_whose_lease_was_taken(
    api: FakeBotAPI, bot: Bot, sessions: Sessions, tiny_engine: Engine, tmp_path: Path
) -> None:
    """Two running jobs: the heartbeat extends both leases; once B takes one, the next beat
    stops that job's task (marked lost, not cancelled) and keeps renewing the other."""
    runtime = runtime_for(bot, sessions, tiny_engine, tmp_path, job_lease_seconds=3)
    kept, taken = await add_job(sessions), await add_job(sessions)
    tasks = {}
    for job_id in (kept, taken):
        assert await leases.take(runtime, job_id)
        tasks[job_id] = runtime.tasks[job_id] = asyncio.create_task(asyncio.sleep(3600))
    first = await until_of(sessions, kept)
    beating = asyncio.create_task(leases.heartbeat(runtime, interval=0.1))
    try:
        await asyncio.sleep(0.3)
        renewed = await until_of(sessions, kept)
        assert renewed > first
        async with sessions() as session:
            await set_job(session, job_id=taken, claimed_by=B)
            await session.commit()
        await asyncio.wait([tasks[taken]], timeout=5)
        assert tasks[taken].cancelled()
        assert runtime.lost == {taken}
        assert runtime.cancelling == set()
        assert not tasks[kept].done()
        await asyncio.sleep(0.3)
        assert await until_of(sessions, kept) > renewed
    finally:
        beating.cancel()
        tasks[kept].cancel()
        await asyncio.gather(beating, *tasks.values(), return_exceptions=True)


@pytest.fixture(scope="module")
def long_note(corpus: Path) -> bytes:
    """A voice note of about 150 s (JFK's words three times): tiny.en takes a while over it."""
    return encode_audio(np.concatenate([long_speech(corpus)] * 3))


def take_elsewhere(workdir: Path, job_id: int, until: datetime) -> None:
    """What another worker's claim (or its lease running out) does: the row, in the database."""
    with closing(sqlite3.connect(workdir / "data" / "voicebot.db", timeout=10)) as db, db:
        db.execute(
            "UPDATE jobs SET claimed_by = ?, lease_until = ? WHERE id = ?",
            (B, until.strftime("%Y-%m-%d %H:%M:%S.%f"), job_id),
        )


async def test_a_lost_lease_stops_the_job_silently_and_an_expired_one_is_taken_back(
    api: FakeBotAPI, tmp_path: Path, model_cache: Path, corpus: Path, long_note: bytes
) -> None:
    """The real bot, JOB_LEASE_SECONDS=3. Mid-transcription another worker takes the job: the
    heartbeat notices within a beat, the job stops (no "Cancelled", nothing stored or charged)
    and the next job gets the slot. That worker then dies (its lease runs out): the sweeper
    queues the job again, this process takes it over, and the user gets one transcript."""
    bot = await run_bot(api, tmp_path, model_cache, JOB_LEASE_SECONDS="3", USER_MAX_ACTIVE_JOBS="5")
    first = api.send_voice(USER, long_note, duration=150)
    await shows(api, USER, first, texts.TRANSCRIBING)
    short = api.send_voice(
        USER, voice_note(corpus / "en" / "librispeech_alif_another_door.wav"), duration=4
    )
    await shows(api, USER, short, "Queued, position 1")
    await transcribing(api, USER, first)
    ids = job_ids(tmp_path)
    job, short_job = ids[USER, first], ids[USER, short]

    taken_at = time.monotonic()
    take_elsewhere(tmp_path, job, utcnow() + timedelta(hours=1))
    short_file = file_id_of(tmp_path, short_job)
    await api.wait_for(lambda: bool(downloads_of(api, short_file)), 10, "the next job")
    stopped = downloads_of(api, short_file)[0] - taken_at
    await api.wait_for(lambda: bool(log_events(bot, "lease_lost")), 5, "lease_lost logged")
    (lost,) = log_events(bot, "lease_lost")
    assert (lost["job_id"], lost["noticed"]) == (job, "heartbeat")
    await answered(api, USER, short, "another door")
    assert "%" in text_of(api, USER, first)  # its last progress edit: not "Cancelled", no answer
    assert rows(tmp_path, f"SELECT status, claimed_by FROM jobs WHERE id = {job}") == [
        ("running", B)
    ]
    assert rows(tmp_path, f"SELECT COUNT(*) FROM usage WHERE job_id = {job}") == [(0,)]

    # The other worker dies: its lease runs out, and nobody renews it.
    expired_at = time.monotonic()
    take_elsewhere(tmp_path, job, utcnow() - timedelta(seconds=1))
    done = f"SELECT status FROM jobs WHERE id = {job}"
    await api.wait_for(lambda: rows(tmp_path, done) == [("done",)], 90, "the job delivered")
    taken_back = time.monotonic() - expired_at
    requeued = log_events(bot, "lease_expired_requeued")
    assert requeued
    assert all(event["job_ids"] == [job] for event in requeued)
    assert await bot.stop() == 0, bot.output()

    assert "your country" in status(api, USER, first).text.lower()  # the one reply it has
    assert rows(tmp_path, "SELECT id, status, attempts FROM jobs ORDER BY id") == [
        (job, "done", 2),
        (short_job, "done", 1),
    ]
    ((claimed_by,),) = rows(tmp_path, f"SELECT claimed_by FROM jobs WHERE id = {job}")
    assert claimed_by not in (None, B)
    assert rows(tmp_path, "SELECT job_id FROM usage ORDER BY job_id") == [(job,), (short_job,)]
    print(
        f"\nlease taken -> next job's getFile {stopped:.2f} s; expired -> done {taken_back:.1f} s"
    )
