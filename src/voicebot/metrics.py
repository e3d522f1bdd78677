"""Prometheus metrics: one registry per process, built in `build_metrics` and passed explicitly.

Every name has the `voicebot_` prefix; counters end in `_total`, durations are in seconds.
No label carries a user or chat id. Each event is counted by one call at the place it happens
(`jobs`, `answers`, `cache`, `polling`, `delivery.with_retries`, the Bot API session).
The counters are this process's; `voicebot_queue_length` is read from the database at scrape
time (the same for every process sharing it), `voicebot_running_jobs` is this process's slots.
The registry also carries prometheus-client's `process_*` metrics (memory, CPU; Linux only).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.methods import TelegramMethod
    from aiogram.types import Update

#: Job step durations: from a voice note's fraction of a second to a long recording's hour.
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Processing seconds per audio second (below 1: faster than real time).
FACTOR_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5)
#: Pieces in one batch (BATCH_SIZE is at most 64).
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
#: Why the door refused a message or press (`admission`), or "failed" when it could not record.
REFUSAL_REASONS = (
    "banned",
    "too_many_active",
    "queue_full",
    "quota",
    "rate_limit",
    "private",
    "failed",
)
#: What `leases` counts: a lease this process lost to another worker, and a job it queued again
#: because its lease expired or because no worker ever claimed it.
LEASE_EVENTS = ("lost", "expired_requeued", "unclaimed_requeued")
_CODES: tuple[tuple[type[Exception], str], ...] = (
    (TelegramRetryAfter, "429"),
    (TelegramMigrateToChat, "400"),
    (TelegramBadRequest, "400"),
    (TelegramUnauthorizedError, "401"),
    (TelegramForbiddenError, "403"),
    (TelegramNotFound, "404"),
    (TelegramConflictError, "409"),
    (TelegramEntityTooLarge, "413"),
    (TelegramServerError, "5xx"),
    (TelegramNetworkError, "network"),
    (ClientDecodeError, "decode"),
)


@dataclass(frozen=True)
class Metrics:
    """The process's registry and every metric in it."""

    registry: CollectorRegistry
    updates: Counter
    jobs: Counter
    refusals: Counter
    queue_wait: Histogram
    download: Histogram
    transcription: Histogram
    delivery: Histogram
    audio_seconds: Counter
    realtime_factor: Histogram
    queue_length: Gauge
    running_jobs: Gauge
    cache_hits: Counter
    cache_misses: Counter
    telegram_errors: Counter
    telegram_retries: Counter
    leases: Counter
    batch_pieces: Histogram

    def received(self, updates: list[Update], *, unparseable: int = 0) -> None:
        """Count a batch's updates by type, and those that did not parse."""
        for update in updates:
            try:
                kind = update.event_type
            except LookupError:  # a type this aiogram does not know
                kind = "unknown"
            self.updates.labels(type=kind).inc()
        if unparseable:
            self.updates.labels(type="unparseable").inc(unparseable)

    def job_done(self) -> None:
        """Count a job delivered."""
        self.jobs.labels(outcome="done", error="").inc()

    def job_failed(self, error: str) -> None:
        """Count a job that ended failed, by its error's class name."""
        self.jobs.labels(outcome="failed", error=error).inc()

    def job_cancelled(self) -> None:
        """Count a job that ended cancelled."""
        self.jobs.labels(outcome="cancelled", error="").inc()

    def lease(self, event: str, count: int = 1) -> None:
        """Count `count` lease events (one of LEASE_EVENTS)."""
        if count:
            self.leases.labels(event=event).inc(count)

    def refused(self, reason: str) -> None:
        """Count a message or press the door refused (one of REFUSAL_REASONS)."""
        self.refusals.labels(reason=reason).inc()

    def transcribed(self, *, audio: float, seconds: float) -> None:
        """Count `audio` seconds transcribed in `seconds` of processing."""
        self.transcription.observe(seconds)
        self.audio_seconds.inc(audio)
        if audio > 0:
            self.realtime_factor.observe(seconds / audio)

    async def count_telegram_errors(
        self,
        make_request: Callable[[Bot, TelegramMethod[Any]], Awaitable[Any]],
        bot: Bot,
        method: TelegramMethod[Any],
    ) -> Any:
        """A Bot API session middleware: count each failed request by its HTTP code."""
        try:
            return await make_request(bot, method)
        except (TelegramAPIError, ClientDecodeError) as error:
            self.telegram_errors.labels(code=error_code(error)).inc()
            raise


def error_code(error: Exception) -> str:
    """The Bot API's HTTP status of a failed request ("5xx", "network", "decode" for the rest)."""
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return "other"


def build_metrics() -> Metrics:
    """A fresh registry with every voicebot metric registered (nothing at import time)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # process_resident_memory_bytes, CPU, open fds (Linux)

    def histogram(name: str, doc: str, buckets: tuple[float, ...] = SECONDS_BUCKETS) -> Histogram:
        return Histogram(name, doc, registry=registry, buckets=buckets)

    refusals = Counter(
        "voicebot_refusals_total",
        "Messages and presses refused at the door, by reason.",
        ["reason"],
        registry=registry,
    )
    for reason in REFUSAL_REASONS:
        refusals.labels(reason=reason)  # present at 0, so rate() sees the first one
    jobs = Counter(
        "voicebot_jobs_total",
        "Jobs ended, by outcome (done, failed, cancelled) and error class (failed only).",
        ["outcome", "error"],
        registry=registry,
    )
    jobs.labels(outcome="done", error="")
    jobs.labels(outcome="cancelled", error="")
    leases = Counter(
        "voicebot_leases_total",
        "Job leases lost by this process, and jobs it queued again (expired, unclaimed).",
        ["event"],
        registry=registry,
    )
    for event in LEASE_EVENTS:
        leases.labels(event=event)
    return Metrics(
        registry=registry,
        updates=Counter(
            "voicebot_updates_total",
            "Telegram updates received, by type (message, callback_query, ...; unparseable).",
            ["type"],
            registry=registry,
        ),
        jobs=jobs,
        refusals=refusals,
        queue_wait=histogram(
            "voicebot_queue_wait_seconds", "From a job's acceptance to its transcription slot."
        ),
        download=histogram("voicebot_download_seconds", "Downloading a job's file from Telegram."),
        transcription=histogram(
            "voicebot_transcription_seconds", "Decoding done, the model's transcription of a job."
        ),
        delivery=histogram("voicebot_delivery_seconds", "Sending a transcript to its chat."),
        audio_seconds=Counter(
            "voicebot_audio_seconds_total", "Seconds of audio transcribed.", registry=registry
        ),
        realtime_factor=histogram(
            "voicebot_realtime_factor",
            "Transcription seconds per audio second, per job.",
            FACTOR_BUCKETS,
        ),
        queue_length=Gauge(
            "voicebot_queue_length",
            "Jobs queued in the database, all processes together (read at scrape time).",
            registry=registry,
        ),
        running_jobs=Gauge(
            "voicebot_running_jobs",
            "Jobs holding a transcription slot in this process.",
            registry=registry,
        ),
        cache_hits=Counter(
            "voicebot_cache_hits_total",
            "Jobs answered from the transcript cache.",
            registry=registry,
        ),
        cache_misses=Counter(
            "voicebot_cache_misses_total",
            "Jobs the transcript cache could not answer (the cache on).",
            registry=registry,
        ),
        telegram_errors=Counter(
            "voicebot_telegram_errors_total",
            "Failed Bot API requests, by HTTP status (or network, decode).",
            ["code"],
            registry=registry,
        ),
        telegram_retries=Counter(
            "voicebot_telegram_retries_total",
            "Bot API calls retried after a transient failure.",
            registry=registry,
        ),
        leases=leases,
        batch_pieces=histogram(
            "voicebot_batch_pieces",
            "Pieces of recordings (up to 30 s each) the engine decoded together, per batch.",
            BATCH_BUCKETS,
        ),
    )


# `delivery.with_retries` runs deep under calls that carry a Bot but not the runtime; it finds
# the process's metrics here. `service.serve` sets it once; the tasks it starts inherit it.
_current: ContextVar[Metrics | None] = ContextVar("voicebot_metrics", default=None)


def set_current(metrics: Metrics) -> None:
    """Make `metrics` the current context's (and its future tasks') metrics."""
    _current.set(metrics)


def retried() -> None:
    """Count a Bot API retry in the current metrics, if any are set."""
    metrics = _current.get()
    if metrics is not None:
        metrics.telegram_retries.inc()
