"""Refusals at the door, counted per UTC day and reason in the database (all processes together).

The door adds a batch's counts in the transaction that decides the batch (`intake`); the admin
dashboard reads them (`dashboard.refusals`). The rows hold no user data.
"""

from __future__ import annotations

from collections import Counter
from datetime import date

from sqlalchemy.ext.asyncio import AsyncSession

from voicebot.models import RefusalCount, _insert_for


async def count_refusals(session: AsyncSession, *, day: date, reasons: list[str]) -> None:
    """Add one to `day`'s count of each reason in `reasons` (repeats add more), in one statement."""
    if not reasons:
        return
    # Rows in reason order: concurrent batches then lock the same rows in the same order
    # (PostgreSQL), so two of them cannot deadlock on each other's counts.
    rows = [
        {"day": day, "reason": reason, "count": count}
        for reason, count in sorted(Counter(reasons).items())
    ]
    insert = _insert_for(session)(RefusalCount).values(rows)
    await session.execute(
        insert.on_conflict_do_update(
            index_elements=[RefusalCount.day, RefusalCount.reason],
            set_={"count": RefusalCount.count + insert.excluded["count"]},
        )
    )
