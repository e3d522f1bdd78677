"""glibc's allocator, tuned for a process that runs Whisper (elsewhere these do nothing).

CTranslate2 allocates its encoder's and decoder's buffers with malloc: tens of MB each, freed
when a call returns. glibc keeps what was freed for reuse, so a process's resident memory stays
at the most it ever held, and two batch threads add their peaks on top of what the other left.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any

M_ARENA_MAX = -8  # <malloc.h>


@cache
def _libc() -> Any:
    """glibc, or None where there is none (musl, macOS: no mallopt or malloc_trim)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - only glibc has both
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def cap_arenas() -> None:
    """One malloc arena for the whole process.

    glibc gives each thread that allocates under contention an arena of its own, up to eight
    per core, and keeps what each freed for reuse by that arena alone. The encoder's and the
    decoder's buffers (from the batch threads, the VAD and levelling from job threads) then pile
    up in several arenas: the peak of one process at BATCH_SIZE=8 fell from 630 to 540 MB with
    one arena, and from 630 to 590 MB with two, at the same speed.
    """
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, 1)


def give_back() -> None:
    """Return the freed memory of the heap to the system (`malloc_trim`).

    Called after a decoder call while another batch thread is busy: what the call freed would
    otherwise stay resident, and the other thread's encoder (70 MB of attention a whole window,
    a layer at a time) then peaks on top of it. With WORKERS=2, 16 clips then a 223-s recording
    peaked at 655-703 MB in four runs without it, 570-599 MB in two with it, the recording
    taking 5.7 s instead of 5.2-5.6 (the freed pages fault in again). After every decoder
    call, a lone note too, it cost a lone 5.7-s note 75 ms.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
