"""Rate limits on new jobs, with the `limits` library, in the storage RATE_LIMIT_STORAGE_URL names.

`memory://` keeps the counters in this process (one bot process); `redis://…` shares them
between processes. While RATE_LIMIT_STORAGE_URL is left at `memory://`, REDIS_URL (when set)
is the storage: every limiter (these, the position edits', the dashboard's failed logins) is
built by `build_limiter`, so setting REDIS_URL moves them all. Limits are counted per minute
in a moving window.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from voicebot.config import Settings
from voicebot.errors import ConfigError

#: RATE_LIMIT_STORAGE_URL's default: counters in this process, or in REDIS_URL when set.
IN_PROCESS = "memory://"
#: How long the storage may take to answer the PING at start (`check_storage`).
STORAGE_TIMEOUT = 5.0
#: REDIS_URL's scheme -> the `limits` async storage scheme (its default client is coredis).
_REDIS_STORAGES = {"redis": "async+redis", "rediss": "async+rediss", "unix": "async+redis+unix"}


@dataclass(frozen=True, slots=True)
class Limiters:
    """The limiter and the three limits it applies."""

    limiter: MovingWindowRateLimiter
    per_user: RateLimitItem
    everyone: RateLimitItem
    #: Refusal messages: a flood gets at most one a minute per user.
    notices: RateLimitItem


def build_limiter(settings: Settings) -> MovingWindowRateLimiter:
    """A moving-window limiter over the counters' storage (see the module docstring); nothing
    is connected yet: `check_storage` asks it at start."""
    name, value = _storage_setting(settings)
    if name == "REDIS_URL":
        scheme, rest = value.split("://", 1)
        url = f"{_REDIS_STORAGES[scheme]}://{rest}"
    else:
        url = value if value.startswith("async+") else f"async+{value}"
    try:
        storage = storage_from_string(url)
    except Exception as error:
        raise ConfigError(f"{name}={_hide_password(value)} is not usable: {error}") from error
    return MovingWindowRateLimiter(storage)


async def check_storage(limiter: MovingWindowRateLimiter, *, settings: Settings) -> None:
    """Raise a one-line ConfigError unless the limiter's storage answers (a Redis: PING)."""
    try:
        async with asyncio.timeout(STORAGE_TIMEOUT):
            # limits' check() turns every failure into False: the cause is not known here.
            answers = await limiter.storage.check()
    except TimeoutError:
        answers = False
    if not answers:
        name, value = _storage_setting(settings)
        raise ConfigError(
            f"{name}={_hide_password(value)} does not answer within {STORAGE_TIMEOUT:g} s: "
            "is Redis running there, and is the password right?"
        )


def _storage_setting(settings: Settings) -> tuple[str, str]:
    """The setting that names the counters' storage, and its value."""
    if settings.redis_url is not None and settings.rate_limit_storage_url == IN_PROCESS:
        return "REDIS_URL", settings.redis_url
    return "RATE_LIMIT_STORAGE_URL", settings.rate_limit_storage_url


def _hide_password(url: str) -> str:
    """`url` with its password, if any, replaced by ***: it goes into logs and terminals."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def build_limiters(settings: Settings) -> Limiters:
    """Limiters over the counters' storage (RATE_LIMIT_STORAGE_URL, or REDIS_URL)."""
    return Limiters(
        limiter=build_limiter(settings),
        per_user=RateLimitItemPerMinute(settings.user_jobs_per_minute),
        everyone=RateLimitItemPerMinute(settings.global_jobs_per_minute),
        notices=RateLimitItemPerMinute(1),
    )


@dataclass(frozen=True, slots=True)
class Exceeded:
    """A limit that refused a job: which, how many a minute, and seconds until one is free."""

    scope: str
    per_minute: int
    retry_after: int


async def take_job(limiters: Limiters, *, user_id: int) -> Exceeded | None:
    """Count one new job for `user_id` and for everyone; None when both limits allow it."""
    checks = (("user", limiters.per_user, str(user_id)), ("everyone", limiters.everyone, "all"))
    for scope, item, key in checks:
        if not await limiters.limiter.test(item, "jobs", key):
            stats = await limiters.limiter.get_window_stats(item, "jobs", key)
            wait = max(1, math.ceil(stats.reset_time - time.time()))
            return Exceeded(scope, item.amount, wait)
    for _, item, key in checks:
        await limiters.limiter.hit(item, "jobs", key)
    return None


async def may_notify(limiters: Limiters, *, user_id: int) -> bool:
    """Whether a refusal may be sent to `user_id` now (at most one a minute)."""
    return await limiters.limiter.hit(limiters.notices, "notices", str(user_id))
