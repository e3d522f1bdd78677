"""The Whisper engine: load once; transcribe recordings in batches, each in a worker thread.

The one package that talks to faster-whisper and CTranslate2. A recording is cut into pieces of
at most 30 s of speech (`pieces`); the pieces of every recording being transcribed are decoded
together, up to BATCH_SIZE at a time (`batching`), each with its own language and task
(`engine.decoding`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from voicebot import pieces
from voicebot.audio import SAMPLE_RATE, Audio, decode
from voicebot.batching import Batcher
from voicebot.config import Settings
from voicebot.engine import malloc
from voicebot.engine.decoding import Decoder
from voicebot.errors import (
    ModelUnavailableError,
    NoSpeechError,
)
from voicebot.pieces import Piece
from voicebot.recording import (
    ProgressCallback,
    Recording,
    Segment,
    SegmentCallback,
    Task,
    Transcript,
    cancelled,
    timed_out,
)
from voicebot.weights import resolve_model

log = structlog.get_logger(__name__)

#: A recording longer than a window is cut at pauses of at least this long (a voice note keeps
#: faster-whisper's default, 2 s, so it is decoded as before batching).
LONG_PAUSE_MS = 160
#: How often a waiting transcription looks at its cancel event and deadline.
WAIT_STEP_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class Options:
    """Decoding settings shared by every call of one engine."""

    beam_size: int = 5
    vad: bool = True
    max_audio_seconds: float = 3 * 3600
    workers: int = 1
    #: Pieces decoded together (one batch); 1 decodes one piece at a time.
    batch_size: int = 8
    #: Silence after each piece that the encoder still sees; None: the whole 30-s window, as
    #: stock faster-whisper (see `Decoder._window`).
    encoder_margin_seconds: float | None = 10.0


class Engine:
    """A loaded Whisper model; `transcribe` blocks, `transcribe_async` waits without a thread.

    Concurrent calls are decoded together, up to `Options.batch_size` pieces at a time, on
    `Options.workers` threads.
    """

    def __init__(
        self, model: Any, options: Options, *, on_batch: Callable[[int], None] | None = None
    ) -> None:
        self.model = model
        self.options = options
        decoder = Decoder(model, options)
        self.batcher: Batcher[Piece, tuple[Segment, ...]] = Batcher(
            decoder,
            size=options.batch_size,
            threads=options.workers,
            name="whisper",
            on_batch=on_batch,
            weight=decoder.weight,
            streams=True,
        )

    @property
    def multilingual(self) -> bool:
        """Whether the model can transcribe languages other than English."""
        return bool(self.model.model.is_multilingual)

    def close(self) -> None:
        """Stop the batch threads (after their current batch)."""
        self.batcher.close()

    def transcribe(
        self,
        source: bytes | Path | Audio,
        *,
        language: str | None = None,
        allowed_languages: Sequence[str] = (),
        task: Task = "transcribe",
        progress: ProgressCallback | None = None,
        on_segment: SegmentCallback | None = None,
        cancel: threading.Event | None = None,
        deadline: float | None = None,
    ) -> Transcript:
        """Transcribe (or, `task="translate"`, translate to English) `source`, blocking.

        Raises a `BadAudioError`, cancellation or timeout error. A translation's `language` is
        the source language (detected when None), as for a transcription.
        """
        recording = self._submit(
            self._recording(source, language, allowed_languages, task, progress, on_segment)
        )
        while True:
            if cancel is not None and cancel.is_set():
                self.batcher.withdraw(recording, cancelled())
            elif deadline is not None and time.monotonic() > deadline:
                self.batcher.withdraw(recording, timed_out())
            try:
                return self._finished(recording, recording.future.result(WAIT_STEP_SECONDS))
            except TimeoutError:
                continue

    async def transcribe_async(
        self,
        source: bytes | Path | Audio,
        *,
        language: str | None = None,
        allowed_languages: Sequence[str] = (),
        task: Task = "transcribe",
        progress: ProgressCallback | None = None,
        on_segment: SegmentCallback | None = None,
        time_limit: float | None = None,
    ) -> Transcript:
        """Transcribe without blocking the loop: the audio is cut in a worker thread, then its
        pieces wait for batches without holding a thread. Cancelling the awaiting task takes
        them out of the queue at once (a batch already running finishes without them)."""
        recording = self._submit(
            await asyncio.to_thread(
                self._recording, source, language, allowed_languages, task, progress, on_segment
            )
        )
        try:
            decoded = await asyncio.wait_for(asyncio.wrap_future(recording.future), time_limit)
        except asyncio.CancelledError:
            self.batcher.withdraw(recording, cancelled())
            raise
        except TimeoutError as error:
            self.batcher.withdraw(recording, timed_out())
            raise timed_out() from error
        return self._finished(recording, decoded)

    def _recording(
        self,
        source: bytes | Path | Audio,
        language: str | None,
        allowed_languages: Sequence[str],
        task: Task,
        progress: ProgressCallback | None,
        on_segment: SegmentCallback | None,
    ) -> Recording:
        """`source` decoded and cut, ready for the batcher (blocking: VAD takes a moment)."""
        audio = (
            source
            if isinstance(source, np.ndarray)
            else decode(source, max_seconds=self.options.max_audio_seconds)
        )
        cut, timeline = self._cut(audio)
        # Written in the caller's worker thread: it carries the job's ids, which `to_thread`
        # copied (the batch threads serve every job and carry none).
        log.debug(
            "recording_cut",
            pieces=len(cut),
            audio=round(audio.shape[0] / SAMPLE_RATE, 1),
            thread=threading.current_thread().name,
        )
        return Recording(
            cut,
            timeline=timeline,
            duration=audio.shape[0] / SAMPLE_RATE,
            language=language if self.multilingual else "en",
            allowed=tuple(allowed_languages),
            task=task,
            progress=progress,
            on_segment=on_segment,
        )

    def _submit(self, recording: Recording) -> Recording:
        self.batcher.submit(recording)
        return recording

    def _cut(self, audio: Audio) -> tuple[list[Piece], Any]:
        """The recording's speech in pieces of at most a window, and the map from the speech
        timeline back to the recording's (None without VAD: they are the same)."""
        from faster_whisper.vad import SpeechTimestampsMap, VadOptions, get_speech_timestamps

        if not self.options.vad:
            return pieces.windows(audio), None
        window = pieces.WINDOW_SECONDS
        if len(audio) > window * SAMPLE_RATE:
            # Longer than a window: levelled (see `pieces`) and cut at short pauses too.
            audio = pieces.level(audio)
            options = VadOptions(
                max_speech_duration_s=window, min_silence_duration_ms=LONG_PAUSE_MS
            )
        else:
            options = VadOptions(max_speech_duration_s=window)
        stretches = get_speech_timestamps(audio, options)
        if not stretches:
            raise NoSpeechError("I could not hear any speech in this recording.")
        return pieces.join(audio, stretches), SpeechTimestampsMap(stretches, SAMPLE_RATE)

    def _finished(self, recording: Recording, decoded: list[tuple[Segment, ...]]) -> Transcript:
        segments = tuple(s for part in decoded for s in part if s.text.strip())
        text = " ".join(s.text.strip() for s in segments)
        if not text:
            raise NoSpeechError("I could not hear any speech in this recording.")
        recording.report()  # every segment passed on before the result is
        if recording.progress is not None:
            recording.progress(recording.duration, recording.duration)
        assert recording.language is not None, "decided in the batch with its first piece"
        log.debug(
            "segments_decoded",
            segments=len(segments),
            pieces=len(recording.pieces),
            audio=round(recording.duration, 1),
            language=recording.language,
        )
        return Transcript(
            text=text,
            language=recording.language,
            language_probability=float(recording.probability),
            duration=recording.duration,
            segments=segments,
        )


def load_whisper(settings: Settings) -> Any:
    """Load the CTranslate2 Whisper model the settings name (blocking, seconds)."""
    from faster_whisper import WhisperModel

    malloc.cap_arenas()  # before the model's threads allocate anything

    path = resolve_model(settings.whisper_model, cache_dir=settings.model_cache_dir)
    device = settings.whisper_device
    if device == "auto":
        import ctranslate2

        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    compute_type = settings.whisper_compute_type or ("float16" if device == "cuda" else "int8")
    try:
        return WhisperModel(
            str(path),
            device=device,
            compute_type=compute_type,
            cpu_threads=settings.cpu_threads,
            num_workers=settings.workers,
        )
    except (RuntimeError, ValueError, OSError) as error:
        raise ModelUnavailableError(
            f"WHISPER_MODEL={settings.whisper_model}: cannot load it on {device} "
            f"with {compute_type}: {error}"
        ) from error


def build_engine(settings: Settings, *, on_batch: Callable[[int], None] | None = None) -> Engine:
    """Load the model named in `settings` and wrap it in an `Engine` (`on_batch`: told each
    batch's size)."""
    options = Options(
        beam_size=settings.whisper_beam_size,
        vad=settings.whisper_vad,
        max_audio_seconds=settings.max_audio_seconds,
        workers=settings.workers,
        batch_size=settings.batch_size,
    )
    return Engine(load_whisper(settings), options, on_batch=on_batch)
