"""Cutting and levelling a recording (pieces.py) on real speech and on exact token sequences."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voicebot import pieces
from voicebot.audio import SAMPLE_RATE, decode

#: Whisper's first timestamp token (<|0.00|>) in these sequences; words are smaller ids.
T0 = 50364


def _db(samples: np.ndarray) -> float:
    return float(20 * np.log10(np.abs(samples).max()))


def test_level_raises_a_quiet_speaker_and_leaves_a_loud_one(corpus: Path) -> None:
    loud = decode(corpus / "en" / "jfk.flac", max_seconds=60)
    quiet = decode(corpus / "en" / "fleurs_en-004.ogg", max_seconds=60)
    pause = np.zeros(3 * SAMPLE_RATE, dtype=np.float32)
    audio = np.concatenate([loud, pause, quiet])
    levelled = pieces.level(audio)
    assert levelled.dtype == np.float32
    assert len(levelled) == len(audio)
    assert _db(quiet) < -40
    assert _db(levelled[-len(quiet) :]) > -10  # 40 dB and more raised
    # The loud speaker keeps its level (within 2 dB) and nothing clips or gets quieter.
    assert abs(_db(levelled[: len(loud)]) - _db(loud)) < 2
    assert np.all(np.abs(levelled) <= 1.0)
    assert np.all(np.abs(levelled) >= np.abs(audio) - 1e-6)


def test_join_fills_windows_in_order() -> None:
    audio = np.arange(100 * SAMPLE_RATE, dtype=np.float32)
    second = SAMPLE_RATE
    stretches = [{"start": s * second, "end": (s + 12) * second} for s in (0, 15, 30, 45, 60)]
    cut = pieces.join(audio, stretches)
    assert [round(p.duration) for p in cut] == [24, 24, 12]
    assert [round(p.offset) for p in cut] == [0, 24, 48]
    assert cut[1].audio[0] == audio[30 * second]  # the third stretch starts the second piece
    rest = cut[0].after(10.0)
    assert (round(rest.offset), round(rest.duration)) == (10, 14)


def test_split_as_faster_whisper_splits_a_window() -> None:
    def at(seconds: float) -> int:
        return T0 + round(seconds / 0.02)

    finished = [at(0), 1, 2, at(2), at(2), 3, at(4.5)]
    said, resume = pieces.split(finished, first_timestamp=T0, precision=0.02, duration=6.0)
    assert [(s.start, s.end, s.tokens) for s in said] == [(0, 2, [1, 2]), (2, 4.5, [3])]
    assert resume is None  # ends on a single timestamp: the window is done
    # Stopped on a pair of timestamps before the end, an unfinished segment after it: decoding
    # goes on from the last timestamp, and the unfinished words are left for that pass.
    stopped = [at(0), 1, at(3), at(3), 2, 3]
    said, resume = pieces.split(stopped, first_timestamp=T0, precision=0.02, duration=20.0)
    assert [(s.start, s.end) for s in said] == [(0, 3)]
    assert resume == 3
    # No timestamps at all: one segment over the whole piece.
    said, resume = pieces.split([1, 2, 3], first_timestamp=T0, precision=0.02, duration=7.5)
    assert [(s.start, s.end, s.tokens) for s in said] == [(0, 7.5, [1, 2, 3])]
    assert resume is None
