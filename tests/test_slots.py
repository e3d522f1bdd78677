"""Slots: premium before free, first come first served, old free jobs promoted, no slot lost."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from voicebot.models import utcnow
from voicebot.slots import Slots


async def run_in_order(
    slots: Slots, jobs: list[tuple[int, int, float]], *, users: dict[int, int] | None = None
) -> list[int]:
    """Queue (job_id, priority, age in seconds) jobs behind a held slot; the order they run in.

    `users` maps job ids to senders (default: all from user 1).
    """
    order: list[int] = []
    now = utcnow()
    senders = users or {}

    async def work(job_id: int, priority: int, age: float) -> None:
        created = now - timedelta(seconds=age)
        sender = senders.get(job_id, 1)
        async with slots.take(job_id=job_id, user_id=sender, priority=priority, created_at=created):
            order.append(job_id)
            await asyncio.sleep(0)

    async with slots.take(job_id=0, user_id=0, priority=1, created_at=now):
        tasks = [asyncio.create_task(work(*job)) for job in jobs]
        await asyncio.sleep(0.01)
        assert order == []  # everyone waits for the held slot
    await asyncio.gather(*tasks)
    return order


async def test_premium_runs_before_earlier_free_jobs() -> None:
    """Five free jobs, then a premium one: the premium one runs first, the rest in order."""
    jobs = [(n, 0, 1.0) for n in range(1, 6)] + [(6, 1, 0.0)]
    assert await run_in_order(Slots(1, max_wait=300), jobs) == [6, 1, 2, 3, 4, 5]


async def test_a_free_job_waiting_too_long_is_promoted() -> None:
    """A free job older than max_wait goes before a newer premium job."""
    jobs = [(1, 0, 10.0), (2, 0, 400.0), (3, 1, 0.0)]
    assert await run_in_order(Slots(1, max_wait=300), jobs) == [2, 3, 1]


async def test_people_take_turns_within_a_class() -> None:
    """A flood of five from one person, then one each from two others: they go second and third."""
    jobs = [(n, 0, 1.0) for n in range(1, 8)]
    users = {1: 5, 2: 5, 3: 5, 4: 5, 5: 5, 6: 6, 7: 7}
    assert await run_in_order(Slots(1, max_wait=300), jobs, users=users) == [1, 6, 7, 2, 3, 4, 5]


async def test_a_cancelled_waiter_gives_its_turn_on() -> None:
    """Cancelling a waiting job neither blocks the slot nor lets two jobs hold it."""
    slots = Slots(1, max_wait=300)
    now = utcnow()
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with slots.take(job_id=1, user_id=1, priority=0, created_at=now):
            holding.set()
            await release.wait()

    async def wait(job_id: int) -> None:
        async with slots.take(job_id=job_id, user_id=job_id, priority=0, created_at=now):
            assert slots.busy == 1

    holder = asyncio.create_task(hold())
    await holding.wait()
    cancelled, later = asyncio.create_task(wait(2)), asyncio.create_task(wait(3))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    release.set()
    await asyncio.gather(holder, later)
    assert cancelled.cancelled()
    assert slots.busy == 0
    assert slots.waiters == []
