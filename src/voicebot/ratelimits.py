"""Rate limits on new jobs, with the `limits` library, in the storage RATE_LIMIT_STORAGE_URL names.

`memory://` keeps the counters in this process (one bot process); `redis://…` shares them
between processes. Limits are counted per minute in a moving window.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from voicebot.config import Settings
from voicebot.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Limiters:
    """The limiter and the three limits it applies."""

    limiter: MovingWindowRateLimiter
    per_user: RateLimitItem
    everyone: RateLimitItem
    #: Refusal messages: a flood gets at most one a minute per user.
    notices: RateLimitItem


def build_limiter(settings: Settings) -> MovingWindowRateLimiter:
    """A moving-window limiter over the storage RATE_LIMIT_STORAGE_URL names."""
    url = settings.rate_limit_storage_url
    scheme = url.split("://", 1)[0]
    try:
        storage = storage_from_string(url if scheme.startswith("async+") else f"async+{url}")
    except Exception as error:
        raise ConfigError(f"RATE_LIMIT_STORAGE_URL={url} is not usable: {error}") from error
    return MovingWindowRateLimiter(storage)


def build_limiters(settings: Settings) -> Limiters:
    """Limiters over the storage RATE_LIMIT_STORAGE_URL names."""
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
