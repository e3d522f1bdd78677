"""The broker jobs go through, built from settings: in this process, or RabbitMQ (BROKER_URL).

The job lifecycle is the same either way (`jobs.transcribe_job`, its leases and its records);
only where a published job id waits differs:
- BROKER_URL empty: taskiq's InMemoryBroker. A publish starts the task in this process at once
  (its slot decides when it runs), and nothing is kept: after a restart `jobs.recover`
  publishes every unfinished job again.
- BROKER_URL=amqp://…: taskiq-aio-pika. Queues are durable, messages persistent and confirmed
  by RabbitMQ before `publish` returns. A worker is given at most WORKERS messages at a time
  from each queue it consumes (prefetch; what it cannot run at once waits for its slot, and is
  given back if it stops first), and acknowledges one only when its task has ended: delivered,
  failed for good, or found cancelled, finished or taken by another worker. A worker killed
  mid-job leaves its message unacknowledged, and RabbitMQ gives it to another worker; that one
  runs it once the dead worker's lease expires (the sweeper publishes it again then).

What RabbitMQ holds is written in the job: `jobs.published_priority`, set once a publish is
confirmed, and cleared when a worker gives a job back at shutdown. The sweeper publishes the
unfinished jobs that are in no broker (a bot killed between its commit and its publish, a
publish that failed, a job given back) and those whose worker's lease expired; a job
published twice is run once, because its lease decides (`leases.claim`).
Safety net: a job marked as held but unclaimed REPUBLISH_AFTER_LEASES leases after its publish
is published again (`jobs.published_at`). That covers a message lost in a way the marks do not
see: a publish confirmed just as a worker gave the same job back (a shutdown within
milliseconds of its start: the mark lands after the give-back), a give-back the database
refused, a queue purged by hand. A job that merely waits that long in a busy queue gets a
second message, which is harmless.

Priorities: the queues have `x-max-priority` 10. A job's message priority encodes the order
`slots` keeps in one process, (class, turn): class 0 (premium, or free that waited
PRIORITY_MAX_WAIT_SECONDS) takes 10 to 6, class 1 takes 5 to 1, one step less for each earlier
job of the same sender in that window (its turn), down to the fifth. So premium goes before
free, and one person's flood takes turns with everyone else. A free job is published at its
class-1 priority; once it has waited PRIORITY_MAX_WAIT_SECONDS the sweeper publishes it again
at class 0 (no starvation), and the first copy, when it comes, finds the job taken or done.
Within a priority RabbitMQ keeps publish order, which is nearly the order of ids that queue
positions (`places.count_ahead`) count; positions shown stay from the database.

Long recordings: with LONG_QUEUE, a job whose declared duration is over LONG_AUDIO_SECONDS goes
to the `long` queue, the rest to `default`; a worker consumes the queues in WORKER_QUEUES.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import and_, select, update
from taskiq import AsyncBroker, InMemoryBroker
from taskiq.acks import AcknowledgeType
from taskiq.decor import AsyncTaskiqDecoratedTask
from taskiq.receiver import Receiver

from voicebot.config import QUEUES, Settings
from voicebot.errors import ConfigError
from voicebot.models import Job, JobStatus, utcnow
from voicebot.places import order_of

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractQueue
    from sqlalchemy.ext.asyncio import AsyncSession

    from voicebot.jobs import Runtime

log = structlog.get_logger(__name__)

#: x-max-priority of the queues: two classes of TURN_LEVELS priorities each.
MAX_PRIORITY = 10
TURN_LEVELS = 5
#: RabbitMQ's names: one exchange, a queue per name in `config.QUEUES`, and a dead-letter queue
#: (taskiq-aio-pika's; nothing is rejected into it, as every task ends with an acknowledgement).
EXCHANGE = "voicebot"
QUEUE_PREFIX = "voicebot."


def priority(job_class: int, turn: int) -> int:
    """The message priority of a job of class `job_class` (0 first) and sender's turn `turn`."""
    return MAX_PRIORITY - job_class * TURN_LEVELS - (min(max(turn, 1), TURN_LEVELS) - 1)


def queue_of(settings: Settings, duration: float | None) -> str:
    """The queue a job goes to: `long` for a declared duration over LONG_AUDIO_SECONDS (with
    LONG_QUEUE), else `default`."""
    if settings.long_queue and duration is not None and duration > settings.long_audio_seconds:
        return "long"
    return "default"


@dataclass
class Broker:
    """The built broker, the transcription task registered on it, and how it keeps messages."""

    broker: AsyncBroker
    task: AsyncTaskiqDecoratedTask[..., Any]
    #: Whether messages outlive this process (RabbitMQ), so the job rows record them.
    durable: bool
    #: Whether this process takes jobs from it (a worker).
    consume: bool
    #: Set to stop taking new messages; the receiving loop while it runs.
    finish: asyncio.Event
    receiving: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect (declaring the exchange and queues) and, for a worker, start consuming."""
        await self.broker.startup()
        if self.durable and self.consume:
            receiver = Receiver(
                self.broker,
                max_async_tasks=10_000,  # the prefetch (WORKERS) bounds them
                propagate_exceptions=False,
                run_startup=False,
                ack_type=AcknowledgeType.WHEN_EXECUTED,
            )
            self.receiving = asyncio.create_task(receiver.listen(self.finish))

    async def stop_consuming(self) -> None:
        """Take no new messages (the running tasks go on until they end)."""
        self.finish.set()

    async def close(self) -> None:
        """Stop receiving and disconnect; unacknowledged messages go back to the queue."""
        self.finish.set()
        if self.receiving is not None:
            self.receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.receiving
        await self.broker.shutdown()


def build_broker(
    runtime: Runtime,
    transcribe_job: Callable[..., Awaitable[None]],
    *,
    consume: bool,
) -> Broker:
    """The broker BROKER_URL names (none: embedded), with `transcribe_job` registered on it;
    `consume`: this process runs the jobs (a worker, or `voicebot run`)."""
    settings = runtime.settings
    broker: AsyncBroker
    if settings.broker_url is None:
        broker = InMemoryBroker(max_async_tasks=10_000, propagate_exceptions=False)
        durable = False
    else:
        broker = _rabbit(settings, consume=consume)
        durable = True
    broker.is_worker_process = consume
    broker.add_dependency_context({type(runtime): runtime})
    task = broker.register_task(transcribe_job, task_name="transcribe_job")
    built = Broker(broker, task, durable=durable, consume=consume, finish=asyncio.Event())
    runtime.publish = lambda job_ids: publish(runtime, built, job_ids)
    return built


def _rabbit(settings: Settings, *, consume: bool) -> AsyncBroker:
    """taskiq-aio-pika on BROKER_URL: every queue declared, WORKER_QUEUES consumed."""
    from taskiq_aio_pika import AioPikaBroker, Exchange, Queue
    from taskiq_aio_pika.queue import QueueType

    if not settings.broker_url or not settings.broker_url.startswith(("amqp://", "amqps://")):
        raise ConfigError(f"BROKER_URL={settings.broker_url} is not amqp://… or amqps://…")

    consumed = {QUEUE_PREFIX + name for name in settings.worker_queues}

    class _Broker(AioPikaBroker):
        """Declares every queue (any process may publish to any), consumes WORKER_QUEUES."""

        async def _declare_queues(
            self, channel: AbstractChannel
        ) -> list[tuple[AbstractQueue, dict[str, Any]]]:
            declared = await super()._declare_queues(channel)
            if channel is not self.read_channel:
                return declared
            return [(queue, args) for queue, args in declared if queue.name in consumed]

    # Classic queues: RabbitMQ's quorum queues (taskiq-aio-pika's default) take no
    # x-max-priority before RabbitMQ 4, and then only two levels.
    queues = [
        Queue(
            name=QUEUE_PREFIX + name,
            routing_key=QUEUE_PREFIX + name,
            type=QueueType.CLASSIC,
            max_priority=MAX_PRIORITY,
        )
        for name in QUEUES
    ]
    return _Broker(
        settings.broker_url,
        exchange=Exchange(name=EXCHANGE),
        task_queues=queues,
        dead_letter_queue=Queue(name=QUEUE_PREFIX + "dead_letter", type=QueueType.CLASSIC),
        # The messages a worker holds unacknowledged: as many jobs as it runs at once (WORKERS
        # batches of BATCH_SIZE), so a batch can form from what RabbitMQ hands it.
        qos=settings.jobs_at_once,
        label_for_routing="queue",
        label_for_priority="priority",
    )


async def publish(runtime: Runtime, broker: Broker, job_ids: Sequence[int]) -> None:
    """Publish jobs `job_ids`; to a durable broker with their priority and queue, recorded in
    their rows."""
    if not job_ids:
        return
    if not broker.durable:
        # In this process the slots order the jobs (`slots`): no priority or queue to read.
        for job_id in job_ids:
            await broker.task.kiq(job_id)
        return
    settings = runtime.settings
    async with runtime.sessions() as session:
        keys = await _keys(session, job_ids=job_ids, settings=settings)
    published: dict[int, list[int]] = defaultdict(list)
    for job_id in job_ids:
        key = keys.get(job_id)
        if key is None:
            continue  # gone (forgotten) meanwhile
        level = priority(key.job_class, key.turn)
        await (
            broker.task.kicker()
            .with_labels(priority=level, queue=QUEUE_PREFIX + queue_of(settings, key.duration))
            .kiq(job_id)
        )
        published[level].append(job_id)
    now = utcnow()
    async with runtime.sessions() as session:
        for level, ids in published.items():
            await session.execute(
                update(Job)
                .where(Job.id.in_(ids))
                .values(published_priority=level, published_at=now)
                .execution_options(synchronize_session=False)
            )
        await session.commit()


@dataclass(frozen=True, slots=True)
class _Key:
    job_class: int
    turn: int
    duration: float | None


async def _keys(
    session: AsyncSession, *, job_ids: Sequence[int], settings: Settings
) -> dict[int, _Key]:
    """Each job's class and turn (as `slots` counts them) and declared duration, in one query."""
    since = utcnow() - timedelta(seconds=settings.priority_max_wait_seconds)
    job_class, turn = order_of(since=since)
    found = await session.execute(
        select(Job.id, job_class, turn, Job.duration).where(Job.id.in_(list(job_ids)))
    )
    return {
        job_id: _Key(int(klass), int(turns), duration) for job_id, klass, turns, duration in found
    }


async def starving(session: AsyncSession, *, settings: Settings, limit: int) -> list[int]:
    """Free jobs a durable broker holds at a class-1 priority that have waited
    PRIORITY_MAX_WAIT_SECONDS: to be published again at class 0."""
    since = utcnow() - timedelta(seconds=settings.priority_max_wait_seconds)
    found = await session.scalars(
        select(Job.id)
        .where(
            Job.status == JobStatus.queued,
            Job.claimed_by.is_(None),
            and_(Job.published_priority.is_not(None), Job.published_priority <= TURN_LEVELS),
            Job.created_at <= since,
        )
        .order_by(Job.id)
        .limit(limit)
    )
    return list(found)
