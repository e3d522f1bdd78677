"""One recording on its way through the engine, and what comes out of it.

A `Recording` is the engine's unit of work in the batcher (see `batching`): its pieces, the
language and task they are decoded in, and the callbacks that pass on its text as it comes.
`Attempt` and its rules are faster-whisper's, for choosing which decoding of a piece is kept.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from voicebot.batching import Work
from voicebot.pieces import Piece

Task = Literal["transcribe", "translate"]
"""Whisper's tasks: transcribe in the spoken language, or translate into English."""
ProgressCallback = Callable[[float, float], None]
"""Called with (seconds of audio done, total seconds) while segments are produced."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One piece of the transcript, with times in seconds from the start of the audio."""

    start: float
    end: float
    text: str


@dataclass(frozen=True, slots=True)
class Transcript:
    """What a transcription produced."""

    text: str
    language: str
    language_probability: float
    duration: float
    segments: tuple[Segment, ...]


SegmentCallback = Callable[[Segment], None]
"""Called with each segment as it is produced (from the worker thread): the text so far."""


class Recording(Work[Piece, tuple[Segment, ...]]):
    """One transcription on its way through the batcher: its pieces, language and callbacks."""

    def __init__(
        self,
        cut: list[Piece],
        *,
        timeline: Any,
        duration: float,
        language: str | None,
        allowed: tuple[str, ...],
        task: Task,
        progress: ProgressCallback | None,
        on_segment: SegmentCallback | None,
    ) -> None:
        super().__init__(cut, on_result=lambda work: self.report())
        self.timeline = timeline
        self.duration = duration
        #: Detected in its first batch when None (see `Engine._decide_languages`).
        self.language = language
        self.probability = 1.0
        self.allowed = allowed
        self.task = task
        self.progress = progress
        self.on_segment = on_segment
        self._reported = 0
        self._report_lock = threading.Lock()

    def report(self) -> None:
        """Pass on the segments of the pieces decoded so far, in order (from a batch thread)."""
        with self._report_lock:
            while self._reported < len(self.results):
                segments = self.results[self._reported]
                if segments is None:
                    break
                self._reported += 1
                for segment in segments:
                    if self.on_segment is not None:
                        self.on_segment(segment)
                if self.progress is not None and segments:
                    self.progress(min(segments[-1].end, self.duration), self.duration)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One decoding of a piece at one temperature."""

    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float


def needs_fallback(attempt: Attempt, options: Any) -> bool:
    """faster-whisper's rule: too repetitive or too unsure, unless it is silence."""
    repetitive = attempt.compression_ratio > float(options.compression_ratio_threshold)
    unsure = attempt.avg_logprob < float(options.log_prob_threshold)
    if unsure and attempt.no_speech_prob > float(options.no_speech_threshold):
        return False
    return repetitive or unsure


def silent(attempt: Attempt, options: Any) -> bool:
    """faster-whisper's rule for a window it leaves out: likely no speech, and not sure of
    the text either."""
    return attempt.no_speech_prob > float(
        options.no_speech_threshold
    ) and attempt.avg_logprob <= float(options.log_prob_threshold)
