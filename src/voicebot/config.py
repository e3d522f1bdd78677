"""Settings, read once from the environment and `.env`; env names are flat (no prefix)."""

from __future__ import annotations

import os
import re
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

OFFICIAL_API_URL = "https://api.telegram.org"
# getFile refuses files over 20 MB, unless a self-hosted Bot API server runs in --local mode.
PUBLIC_FILE_LIMIT_MB = 20
LOCAL_FILE_LIMIT_MB = 2000
#: The broker's queues: every job goes to `default`, except long recordings with LONG_QUEUE.
QUEUES = ("default", "long")
WEBHOOK_SECRET = re.compile(r"[A-Za-z0-9_-]{16,256}")
#: What REDIS_URL may start with (before `://`).
REDIS_SCHEMES = ("redis", "rediss", "unix")


def _default_workers() -> int:
    """Two batch loops of one thread each where there are two cores or more: CTranslate2's two
    threads on one decoding keep two cores 66 % busy, two loops 92 % (README, Scale-out)."""
    return min(2, os.cpu_count() or 1)


#: Batch loops by default with WHISPER_DEVICE=cuda (at most one a core): CTranslate2 applies
#: Whisper's timestamp rules on the host, row by row at every step, so on a GPU more loops
#: overlap that work; four took a burst 20 % faster than two on an H100, eight no faster
#: (README, On a GPU).
GPU_WORKERS = 4


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "voicebot"


class Settings(BaseSettings):
    """Every voicebot setting; see `.env.example` and the README table."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # Engine
    whisper_model: str = "base"
    whisper_device: Literal["auto", "cpu", "cuda"] = "auto"
    whisper_compute_type: str | None = None
    whisper_cpu_threads: int = Field(default=0, ge=0)
    whisper_beam_size: int = Field(default=5, ge=1)
    whisper_vad: bool = True
    whisper_language: str | None = None
    whisper_allowed_languages: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_audio_seconds: float = Field(default=3 * 3600, gt=0)
    job_timeout_seconds: float = Field(default=3600, gt=0)
    model_cache_dir: Path = Field(default_factory=_default_cache_dir)

    # Telegram
    telegram_bot_token: SecretStr | None = None
    telegram_api_url: str = OFFICIAL_API_URL
    telegram_local_mode: bool = False
    max_file_mb: float | None = Field(default=None, gt=0)

    # Jobs and delivery
    workers: int = Field(default_factory=_default_workers, ge=1)
    #: Pieces of recordings (up to 30 s each) one worker decodes together; 1 turns batching off.
    batch_size: int = Field(default=8, ge=1, le=64)
    job_max_attempts: int = Field(default=3, ge=1)
    progress_interval_seconds: float = Field(default=5.0, ge=1.0)
    #: Queue-position edits a second for all chats together (Telegram allows about 30 messages).
    position_edits_per_second: int = Field(default=20, ge=1)
    transcript_file_chars: int = Field(default=12000, ge=4096)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    #: A running job's lease (see `leases`): renewed every third of it; a job whose worker died
    #: is taken by another within it.
    job_lease_seconds: float = Field(default=60.0, gt=0)
    #: RabbitMQ (amqp://…) that `voicebot bot` publishes jobs to and `voicebot worker`
    #: consumes them from; None: the embedded in-process broker (`voicebot run` only).
    broker_url: str | None = None
    #: The queues this process's workers take jobs from (default, long).
    worker_queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(QUEUES))
    #: Recordings longer than LONG_AUDIO_SECONDS go to the `long` queue (for workers of their own).
    long_queue: bool = False
    long_audio_seconds: float = Field(default=600.0, gt=0)

    # Groups, live text and privacy
    #: Telegram allows a group about 20 messages a minute: status edits there at most this often.
    group_edit_interval_seconds: float = Field(default=15.0, ge=1.0)
    #: Recordings shorter than this get no progress edits in groups.
    group_progress_min_seconds: float = Field(default=60.0, ge=0)
    #: Recordings longer than this show the text recognised so far in their progress edits.
    partial_text_min_seconds: float = Field(default=60.0, ge=0)
    #: How long a chat member's admin status (getChatMember) is trusted before asking again.
    chat_admin_cache_seconds: float = Field(default=60.0, ge=0)
    #: Transcript texts older than this many days are deleted; 0 keeps them.
    retention_days: float = Field(default=30, ge=0)
    #: How often a running bot deletes transcripts and job texts past their time (and at start).
    purge_interval_seconds: float = Field(default=3600.0, gt=0)

    # Access, plans and quotas (0 seconds = no quota)
    admin_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)
    allowed_user_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)
    daily_quota_seconds: float = Field(default=0, ge=0)
    premium_daily_quota_seconds: float = Field(default=0, ge=0)
    quota_timezone: str = "UTC"

    # Limits, queue and priorities
    user_max_active_jobs: int = Field(default=3, ge=1)
    user_jobs_per_minute: int = Field(default=10, ge=1)
    global_jobs_per_minute: int = Field(default=100, ge=1)
    rate_limit_storage_url: str = "memory://"
    #: The Redis that several processes share (redis://, rediss:// or unix://); the rate-limit
    #: counters live there while RATE_LIMIT_STORAGE_URL is left at memory://.
    redis_url: str | None = None
    max_queue_size: int = Field(default=100, ge=1)
    priority_max_wait_seconds: float = Field(default=300, gt=0)

    # Transcript cache and purchases
    cache_ttl_days: float = Field(default=7, ge=0)
    stars_packages: Annotated[list[tuple[int, int]], NoDecode] = Field(default_factory=list)

    # Admin dashboard
    #: The token that opens /admin (the login form asks for it); None: no dashboard (404).
    admin_token: SecretStr | None = None

    # Service
    data_dir: Path = Path("data")
    database_url: str | None = None
    log_level: str = "INFO"
    log_format: Literal["console", "json"] = "console"
    #: Where `voicebot run` serves /health, /ready and /metrics; HTTP_PORT=0: no HTTP app.
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    #: Errors (and ERROR log lines) go to this Sentry project when set; off by default.
    sentry_dsn: str | None = None

    # Webhook mode: Telegram posts each update to WEBHOOK_URL, which reaches the HTTP app's
    # POST /telegram/webhook (through a TLS-terminating proxy); polling mode deletes it.
    bot_mode: Literal["polling", "webhook"] = "polling"
    webhook_url: str | None = None
    #: Telegram sends it in X-Telegram-Bot-Api-Secret-Token with every update (16 to 256 of
    #: A-Z a-z 0-9 _ -); required in webhook mode.
    webhook_secret: SecretStr | None = None
    #: Client networks allowed to post updates (CIDRs); empty: any address (the secret holds).
    webhook_trusted_networks: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list
    )
    #: Proxies whose X-Forwarded-For names the client (uvicorn's forwarded_allow_ips).
    forwarded_allow_ips: str = "127.0.0.1"
    #: Connections Telegram opens at once to deliver updates (setWebhook max_connections).
    webhook_max_connections: int = Field(default=40, ge=1, le=100)

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _check_secret(cls, value: object) -> object:
        """Blank is none; otherwise what Telegram accepts as a secret_token, and not short."""
        if isinstance(value, str):
            if not value.strip():
                return None
            if not WEBHOOK_SECRET.fullmatch(value):
                raise ValueError(
                    "must be 16 to 256 characters of A-Z, a-z, 0-9, _ and - "
                    "(for example: openssl rand -hex 32)"
                )
        return value

    @field_validator("webhook_trusted_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        """`149.154.160.0/20, 91.108.4.0/22` becomes two networks; a bad one is refused."""
        if isinstance(value, str):
            networks = []
            for part in value.replace(" ", "").split(","):
                if not part:
                    continue
                try:
                    networks.append(ip_network(part, strict=False))
                except ValueError as error:
                    raise ValueError(f"{part!r} is not a network in CIDR notation") from error
            return networks
        return value

    @field_validator("redis_url", mode="before")
    @classmethod
    def _check_redis_url(cls, value: object) -> object:
        """Blank is none; otherwise a URL the Redis client takes (not echoed: it may hold a
        password)."""
        if isinstance(value, str):
            if not value.strip():
                return None
            if value.strip().split("://", 1)[0] not in REDIS_SCHEMES:
                raise ValueError(
                    "expected redis://HOST:6379/0, rediss://HOST:6379/0 (TLS) or "
                    "unix:///path/to/redis.sock"
                )
            return value.strip()
        return value

    @field_validator("sentry_dsn", mode="before")
    @classmethod
    def _parse_dsn(cls, value: object) -> object:
        """A blank DSN is none; a malformed one is refused at start, not at the first error."""
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str):
            from sentry_sdk.utils import BadDsn, Dsn

            try:
                Dsn(value.strip())
            except BadDsn as error:
                raise ValueError(
                    f"not a Sentry DSN ({error}); expected https://KEY@HOST/PROJECT"
                ) from error
            return value.strip()
        return value

    @field_validator("whisper_allowed_languages", mode="before")
    @classmethod
    def _split_languages(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @field_validator("admin_ids", "allowed_user_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return [int(part) for part in value.replace(" ", "").split(",") if part]
        if isinstance(value, int):
            return [value]
        return value

    @field_validator("stars_packages", mode="before")
    @classmethod
    def _split_packages(cls, value: object) -> object:
        """`30:50,120:150` (minutes:stars) becomes [(30, 50), (120, 150)]."""
        if isinstance(value, str):
            packages = []
            for part in value.replace(" ", "").split(","):
                if not part:
                    continue
                minutes, separator, stars = part.partition(":")
                if not separator or int(minutes) <= 0 or int(stars) <= 0:
                    raise ValueError(f"expected MINUTES:STARS with positive numbers, got {part!r}")
                packages.append((int(minutes), int(stars)))
            return packages
        return value

    @field_validator("worker_queues", mode="before")
    @classmethod
    def _queue_names(cls, value: object) -> object:
        if isinstance(value, str):
            value = [name.strip() for name in value.split(",") if name.strip()]
        if isinstance(value, list):
            unknown = sorted(set(value) - set(QUEUES))
            if unknown or not value:
                raise ValueError(
                    f"expected a comma-separated list of {', '.join(QUEUES)}, got {value!r}"
                )
        return value

    @field_validator("quota_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(
                f"unknown time zone {value!r} (for example UTC or Europe/Berlin)"
            ) from error
        return value

    @field_validator(
        "whisper_language",
        "whisper_compute_type",
        "max_file_mb",
        "database_url",
        "broker_url",
        "webhook_url",
        "admin_token",
        mode="before",
    )
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _gpu_workers(self) -> Settings:
        """WORKERS left unset with WHISPER_DEVICE=cuda: GPU_WORKERS loops."""
        if self.whisper_device == "cuda" and "workers" not in self.model_fields_set:
            self.workers = min(GPU_WORKERS, os.cpu_count() or 1)
        return self

    @property
    def file_limit_bytes(self) -> int:
        """Largest file the bot will try to download through its Bot API server."""
        if self.max_file_mb is not None:
            megabytes = self.max_file_mb
        elif self.telegram_local_mode:
            megabytes = LOCAL_FILE_LIMIT_MB
        else:
            megabytes = PUBLIC_FILE_LIMIT_MB
        return int(megabytes * 1024 * 1024)

    @property
    def sqlalchemy_url(self) -> str:
        """DATABASE_URL, or a SQLite file under DATA_DIR."""
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'voicebot.db'}"

    @property
    def jobs_at_once(self) -> int:
        """Jobs one process transcribes at a time: WORKERS batches of BATCH_SIZE pieces each,
        one job per piece at most."""
        return self.workers * self.batch_size

    @property
    def cpu_threads(self) -> int:
        """Threads per transcription on CPU: the setting, or the cores shared among WORKERS."""
        return self.whisper_cpu_threads or max(1, (os.cpu_count() or 1) // self.workers)
