"""A recording cut into pieces of at most one Whisper window (30 s) of speech, at pauses.

The engine finds the speech (VAD) and hands its stretches here; consecutive stretches are joined
into pieces that fill a window, so each piece is one item of a batch.

A recording longer than a window is first levelled: a quiet speaker next to a loud one (tens of
decibels apart) is otherwise dropped whole, by the speech detection and by Whisper, whose
features are scaled to the loudest sound in the window. `level` raises each part of the
recording towards full scale with a gain that follows the audio over seconds (the way ffmpeg's
`dynaudnorm` does), never lowering anything. A recording of one window (a voice note) is left as
it is: alone, a quiet voice is transcribed well, and the same filter costs short clips accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from voicebot.audio import SAMPLE_RATE, Audio

#: One Whisper window: the most audio one batch item decodes.
WINDOW_SECONDS = 30.0
#: `level`'s frames, the frames its gain is smoothed over, the peak it aims at and the most
#: gain it gives: dynaudnorm's f=250, g=15, p=0.95, but 60 dB at most where its m=100 gives
#: 40. The corpus's quiet voices are 35 to 50 dB below its loud ones: on loud and quiet speakers
#: taking turns (tests/test_batching.py's, 76 s), 40 dB left the quietest 10 dB short and lost
#: its sentence (WER 11.0 %); 60 dB kept every sentence (3.7 %).
LEVEL_FRAME = SAMPLE_RATE // 4
LEVEL_SPAN = 15
LEVEL_PEAK = 0.95
LEVEL_MAX_GAIN = 1000.0
_BLOCK = 60 * SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class Piece:
    """Up to one window of a recording's speech, decoded as one batch item."""

    audio: Audio
    #: Where it starts on the speech timeline (the recording's speech joined, pauses left out).
    offset: float

    @property
    def duration(self) -> float:
        """Its length in seconds."""
        return len(self.audio) / SAMPLE_RATE

    def after(self, seconds: float) -> Piece:
        """The rest of the piece from `seconds` on."""
        return Piece(self.audio[int(seconds * SAMPLE_RATE) :], self.offset + seconds)


def join(audio: Audio, stretches: Sequence[Mapping[str, int]]) -> list[Piece]:
    """Consecutive speech `stretches` (sample ranges, each at most a window) joined into pieces
    of at most a window each."""
    window = int(WINDOW_SECONDS * SAMPLE_RATE)
    pieces: list[Piece] = []
    parts: list[Audio] = []
    length = 0
    offset = 0
    for stretch in stretches:
        samples = audio[stretch["start"] : stretch["end"]]
        if parts and length + len(samples) > window:
            pieces.append(Piece(np.concatenate(parts), offset / SAMPLE_RATE))
            offset += length
            parts, length = [], 0
        parts.append(samples)
        length += len(samples)
    if parts:
        pieces.append(Piece(np.concatenate(parts), offset / SAMPLE_RATE))
    return pieces


def windows(audio: Audio) -> list[Piece]:
    """The whole recording in consecutive windows (no speech detection: no pauses to cut at)."""
    window = int(WINDOW_SECONDS * SAMPLE_RATE)
    return [
        Piece(audio[start : start + window], start / SAMPLE_RATE)
        for start in range(0, max(len(audio), 1), window)
    ]


def level(audio: Audio) -> Audio:
    """`audio` with each part raised towards LEVEL_PEAK, the gain smoothed over LEVEL_SPAN
    frames and never above LEVEL_MAX_GAIN; nothing is made quieter."""
    frames = -(-len(audio) // LEVEL_FRAME)
    if frames == 0:
        return audio
    padded = np.zeros(frames * LEVEL_FRAME, dtype=np.float32)
    padded[: len(audio)] = np.abs(audio)
    peaks = padded.reshape(frames, LEVEL_FRAME).max(axis=1)
    gains = np.clip(LEVEL_PEAK / np.maximum(peaks, 1e-9), 1.0, LEVEL_MAX_GAIN)
    half = LEVEL_SPAN // 2
    # The smallest gain nearby, then a Gaussian: no frame is pushed past its peak, no pumping.
    lowest = sliding_window_view(np.pad(gains, half, mode="edge"), LEVEL_SPAN).min(axis=1)
    sigma = (LEVEL_SPAN / 2 - 1) / 3 + 1 / 3
    kernel = np.exp(-0.5 * ((np.arange(LEVEL_SPAN) - half) / sigma) ** 2)
    smooth = np.convolve(np.pad(lowest, half, mode="edge"), kernel / kernel.sum(), mode="valid")
    centres = (np.arange(frames) + 0.5) * LEVEL_FRAME
    out = np.empty_like(audio)
    for start in range(0, len(audio), _BLOCK):  # a per-sample gain for hours is gigabytes
        end = min(start + _BLOCK, len(audio))
        gain = np.interp(np.arange(start, end), centres, smooth).astype(np.float32)
        np.clip(audio[start:end] * gain, -1.0, 1.0, out=out[start:end])
    return out


@dataclass(frozen=True, slots=True)
class Said:
    """One segment a piece's decoding produced: its times within the piece, its text tokens."""

    start: float
    end: float
    tokens: list[int]


def split(
    tokens: Sequence[int], *, first_timestamp: int, precision: float, duration: float
) -> tuple[list[Said], float | None]:
    """A decoded piece's tokens as segments at their timestamp tokens, as faster-whisper splits
    a window; and the time to decode the rest of the piece from, when the window ended on an
    unfinished segment (its words are left for that second pass), else None."""

    def moment(token: int) -> float:
        return min((token - first_timestamp) * precision, duration)

    def words(part: Sequence[int]) -> list[int]:
        return [token for token in part if token < first_timestamp]

    pairs = [
        k
        for k in range(1, len(tokens))
        if tokens[k] >= first_timestamp and tokens[k - 1] >= first_timestamp
    ]
    ends_once = len(tokens) >= 2 and tokens[-2] < first_timestamp <= tokens[-1]
    if not pairs:
        stamps = [token for token in tokens if token >= first_timestamp]
        end = moment(stamps[-1]) if stamps and stamps[-1] != first_timestamp else duration
        start = moment(stamps[0]) if stamps and stamps[0] != stamps[-1] else 0.0
        return [Said(start, max(end, start), words(tokens))], None
    said: list[Said] = []
    last = 0
    for cut in [*pairs, len(tokens)] if ends_once else pairs:
        part = tokens[last:cut]
        said.append(Said(moment(part[0]), max(moment(part[-1]), moment(part[0])), words(part)))
        last = cut
    if ends_once:
        return said, None
    resume = moment(tokens[last - 1])
    # A window that stopped on its last timestamp before the end of the piece: stock decoding
    # goes on from there in a new window, and so does this (nothing said is dropped).
    return said, resume if 0 < resume < duration - precision else None
