"""Per-process maps of what was seen lately, oldest first, each entry forgotten after a while."""

from __future__ import annotations

from itertools import islice
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(
    entries: dict[K, tuple[V, float]], key: K, value: V, *, now: float, keep_for: float
) -> None:
    """Make (`value`, `now`) the newest entry of `key`; drop the entries older than `keep_for`
    seconds from the front (at most 64 a call: each call stays small, the rest go later)."""
    entries.pop(key, None)
    entries[key] = (value, now)
    for oldest, (_, at) in list(islice(entries.items(), 64)):
        if now - at < keep_for:
            break
        del entries[oldest]
