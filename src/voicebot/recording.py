"""One recording on its way through the engine, and what comes out of it.

A `Recording` is the engine's unit of work in the batcher (see `batching`): its pieces, the
language and task they are decoded in, and the callbacks that pass on its text as it comes.
`Attempt` and its rules are faster-whisper's, for choosing which decoding of a piece is kept.
"""

from __future__ import annotations

import itertools
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from voicebot.batching import Work
from voicebot.errors import TranscriptionCancelledError, TranscriptionTimeoutError
from voicebot.pieces import Piece

Task = Literal["transcribe", "translate"]
"""Whisper's tasks: transcribe in the spoken language, or translate into English."""
ProgressCallback = Callable[[float, float], None]
"""Called with (seconds of audio done, total seconds) while segments are produced."""
#: How often a batch thread waiting for another's language decision looks whether the
#: recording ended meanwhile.
DECIDE_WAIT_SECONDS = 0.2


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
        super().__init__(
            cut,
            on_result=lambda work: self.report(),
            join=lambda parts: tuple(itertools.chain.from_iterable(parts)),
        )
        self.timeline = timeline
        self.duration = duration
        #: Detected in the batch that has its first piece when None (`Decoder._decide_languages`).
        self.language = language
        self.probability = 1.0
        #: Set once `language` is known: other batch threads decoding its later pieces wait.
        self.decided = threading.Event()
        if language is not None:
            self.decided.set()
        self.allowed = allowed
        self.task = task
        self.progress = progress
        self.on_segment = on_segment
        self._reported = 0
        self._report_lock = threading.Lock()

    @staticmethod
    def of(work: Work[Piece, tuple[Segment, ...]]) -> Recording:
        """`work` as the recording it is (the engine submits nothing else)."""
        assert isinstance(work, Recording), "the engine submits recordings only"
        return work

    def decide(self, language: str, probability: float) -> None:
        """Record the detected language, for this batch and every other one."""
        self.language, self.probability = language, probability
        self.decided.set()

    def wait_decided(self) -> None:
        """Block until the language is decided, or the recording ends without it (failed,
        withdrawn: what is decoded for it then is dropped)."""
        while not self.decided.wait(DECIDE_WAIT_SECONDS) and not self.finished:
            pass

    def original(self, moment: float, *, end: bool = False) -> float:
        """A time on the speech timeline (pauses left out) as a time in the recording."""
        if self.timeline is None:
            return round(moment, 2)
        return float(self.timeline.get_original_time(moment, is_end=end))

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

    @staticmethod
    def of(result: Any, tokenizer: Any, options: Any) -> Attempt:
        """A CTranslate2 result's first hypothesis, scored as faster-whisper scores it."""
        tokens = result.sequences_ids[0]
        logprob = result.scores[0] * len(tokens) ** options.length_penalty / (len(tokens) + 1)
        text = tokenizer.decode(tokens).strip().encode("utf-8")
        return Attempt(
            tokens=tokens,
            avg_logprob=logprob,
            no_speech_prob=result.no_speech_prob,
            compression_ratio=len(text) / len(zlib.compress(text)),
        )


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


def best_of(tried: list[Attempt], options: Any) -> Attempt:
    """When every temperature failed: the likeliest of the results that were not repetitive."""
    kept = [a for a in tried if a.compression_ratio <= float(options.compression_ratio_threshold)]
    return max(kept or tried, key=lambda a: a.avg_logprob)


def cancelled() -> TranscriptionCancelledError:
    """The error a cancelled transcription ends with."""
    return TranscriptionCancelledError("The transcription was cancelled.")


def timed_out() -> TranscriptionTimeoutError:
    """The error a transcription past its time ends with."""
    return TranscriptionTimeoutError("The transcription took too long and was stopped.")
