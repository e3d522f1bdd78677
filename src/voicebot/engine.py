"""The Whisper engine: load once, transcribe in a worker thread, return a `Transcript`."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog

from voicebot.audio import SAMPLE_RATE, Audio, decode
from voicebot.config import Settings
from voicebot.errors import (
    ConfigError,
    ModelUnavailableError,
    NoSpeechError,
    TranscriptionCancelledError,
    TranscriptionTimeoutError,
)
from voicebot.weights import resolve_model

log = structlog.get_logger(__name__)

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


@dataclass(frozen=True, slots=True)
class Options:
    """Decoding settings shared by every call of one engine."""

    beam_size: int = 5
    vad: bool = True
    max_audio_seconds: float = 3 * 3600
    workers: int = 1


class Engine:
    """A loaded Whisper model; `transcribe` is blocking, `transcribe_async` runs it in a thread."""

    def __init__(self, model: Any, options: Options) -> None:
        self.model = model
        self.options = options
        # One transcription per CTranslate2 worker (WORKERS); more would only queue inside it.
        self._slots = threading.BoundedSemaphore(options.workers)

    @property
    def multilingual(self) -> bool:
        """Whether the model can transcribe languages other than English."""
        return bool(self.model.model.is_multilingual)

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
        """Transcribe (or, `task="translate"`, translate to English) `source`.

        Raises a `BadAudioError`, cancellation or timeout error. A translation's `language` is
        the source language (detected when None), as for a transcription.
        """
        audio = (
            source
            if isinstance(source, np.ndarray)
            else decode(source, max_seconds=self.options.max_audio_seconds)
        )
        with self._slots:
            return self._transcribe(
                audio,
                language=language,
                allowed=tuple(allowed_languages),
                task=task,
                progress=progress,
                on_segment=on_segment,
                cancel=cancel,
                deadline=deadline,
            )

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
        """Transcribe in a worker thread; cancelling the awaiting task stops it between segments."""
        cancel = threading.Event()
        deadline = time.monotonic() + time_limit if time_limit else None
        work = asyncio.ensure_future(
            asyncio.to_thread(
                self.transcribe,
                source,
                language=language,
                allowed_languages=allowed_languages,
                task=task,
                progress=progress,
                on_segment=on_segment,
                cancel=cancel,
                deadline=deadline,
            )
        )
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            cancel.set()
            # Wait for the thread to notice so the model is free for the next job.
            await asyncio.wait([work])
            if not work.cancelled():
                work.exception()  # its TranscriptionCancelledError is expected: mark it seen
            raise

    def _transcribe(
        self,
        audio: Audio,
        *,
        language: str | None,
        allowed: tuple[str, ...],
        task: Task,
        progress: ProgressCallback | None,
        on_segment: SegmentCallback | None,
        cancel: threading.Event | None,
        deadline: float | None,
    ) -> Transcript:
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import restore_speech_timestamps
        from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

        model = self.model
        duration = audio.shape[0] / SAMPLE_RATE
        speech_chunks: list[dict[str, int]] | None = None
        if self.options.vad:
            speech_chunks = get_speech_timestamps(audio, VadOptions())
            if not speech_chunks:
                raise NoSpeechError("I could not hear any speech in this recording.")
            audio = np.concatenate(collect_chunks(audio, speech_chunks)[0], axis=0)

        features = model.feature_extractor(audio)
        encoder_output = None
        probability = 1.0
        if not self.multilingual:
            language = "en"
        elif language is None:
            # Encode the first window exactly as decoding will, and detect the language from
            # that same output: stock faster-whisper encodes this window twice.
            content_frames = features.shape[-1] - 1
            first = pad_or_trim(
                features[:, : min(model.feature_extractor.nb_max_frames, content_frames)]
            )
            encoder_output = model.encode(first)
            language, probability = _pick_language(
                model.model.detect_language(encoder_output)[0], allowed
            )

        tokenizer = Tokenizer(model.hf_tokenizer, self.multilingual, task=task, language=language)
        options = _stock_options(tokenizer, beam_size=self.options.beam_size)
        segments = model.generate_segments(features, tokenizer, options, False, encoder_output)
        if speech_chunks:
            segments = restore_speech_timestamps(segments, speech_chunks, SAMPLE_RATE)

        produced: list[Segment] = []
        for segment in segments:
            produced.append(Segment(float(segment.start), float(segment.end), segment.text))
            if on_segment is not None:
                on_segment(produced[-1])
            if progress is not None:
                progress(min(float(segment.end), duration), duration)
            if cancel is not None and cancel.is_set():
                raise TranscriptionCancelledError("The transcription was cancelled.")
            if deadline is not None and time.monotonic() > deadline:
                raise TranscriptionTimeoutError("The transcription took too long and was stopped.")
        text = " ".join(part for s in produced if (part := s.text.strip()))
        if not text:
            raise NoSpeechError("I could not hear any speech in this recording.")
        if progress is not None:
            progress(duration, duration)
        # Written in the worker thread: it carries the job's ids, which `to_thread` copied.
        log.debug(
            "segments_decoded",
            segments=len(produced),
            audio=round(duration, 1),
            language=language,
            thread=threading.current_thread().name,
        )
        return Transcript(
            text=text,
            language=language,
            language_probability=float(probability),
            duration=duration,
            segments=tuple(s for s in produced if s.text.strip()),
        )


def _pick_language(
    probabilities: Sequence[tuple[str, float]], allowed: tuple[str, ...]
) -> tuple[str, float]:
    """Most likely language, among `allowed` when that is not empty."""
    for token, probability in probabilities:
        code = token[2:-2]  # "<|en|>" -> "en"
        if not allowed or code in allowed:
            return code, probability
    raise ConfigError(f"none of WHISPER_ALLOWED_LANGUAGES={','.join(allowed)} is a known language")


def _stock_options(tokenizer: Any, *, beam_size: int) -> Any:
    """faster-whisper's own `transcribe()` defaults, so results match the stock engine."""
    from faster_whisper import WhisperModel
    from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(WhisperModel.transcribe).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    temperature = defaults.pop("temperature")
    fields = inspect.signature(TranscriptionOptions).parameters
    values = {name: value for name, value in defaults.items() if name in fields}
    values.update(
        beam_size=beam_size,
        temperatures=list(temperature) if isinstance(temperature, (list, tuple)) else [temperature],
        suppress_tokens=get_suppressed_tokens(tokenizer, defaults["suppress_tokens"]),
    )
    return TranscriptionOptions(**values)


def load_whisper(settings: Settings) -> Any:
    """Load the CTranslate2 Whisper model the settings name (blocking, seconds)."""
    from faster_whisper import WhisperModel

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


def build_engine(settings: Settings) -> Engine:
    """Load the model named in `settings` and wrap it in an `Engine`."""
    options = Options(
        beam_size=settings.whisper_beam_size,
        vad=settings.whisper_vad,
        max_audio_seconds=settings.max_audio_seconds,
        workers=settings.workers,
    )
    return Engine(load_whisper(settings), options)
