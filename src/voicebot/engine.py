"""The Whisper engine: load once; transcribe recordings in batches, each in a worker thread.

The one module that talks to faster-whisper and CTranslate2. A recording is cut into pieces of
at most 30 s of speech (`pieces`); the pieces of every recording being transcribed are decoded
together, up to BATCH_SIZE at a time (`batching`), each with its own language and task.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import inspect
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from voicebot import languages, pieces
from voicebot.audio import SAMPLE_RATE, Audio, decode
from voicebot.batching import Batcher, Item
from voicebot.config import Settings
from voicebot.errors import (
    ModelUnavailableError,
    NoSpeechError,
)
from voicebot.pieces import Piece
from voicebot.recording import (
    Attempt,
    ProgressCallback,
    Recording,
    Segment,
    SegmentCallback,
    Task,
    Transcript,
    best_of,
    cancelled,
    needs_fallback,
    silent,
    timed_out,
)
from voicebot.weights import resolve_model

log = structlog.get_logger(__name__)

#: A recording longer than a window is cut at pauses of at least this long (a voice note keeps
#: faster-whisper's default, 2 s, so it is decoded as before batching).
LONG_PAUSE_MS = 160
#: Feature frames (100 a second) one decoder call takes on a CPU at beam DEFAULT_BEAM, all its
#: items' windows together: four whole windows, eight of 15 s. The decoder keeps the encoder's
#: output for every beam of every item, about 95 MB a whole window at beam 5 with `base`. Peak
#: memory of one process at BATCH_SIZE=8 (a burst of 16 notes, then a 223-s recording; malloc
#: arenas capped, see `cap_malloc_arenas`): 480-540 MB at two to four whole windows, 650-690 MB
#: at six to eight; the 223-s recording took 8.9, 7.9 and 6.9 s at two, three and four.
CALL_FRAMES = 4 * 3000
DEFAULT_BEAM = 5
#: Encoder windows are whole multiples of this (see `Engine._window`).
WINDOW_STEP_SECONDS = 5
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
    #: stock faster-whisper (see `Engine._window`).
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
        self.batcher: Batcher[Piece, tuple[Segment, ...]] = Batcher(
            self._decode,
            size=options.batch_size,
            threads=options.workers,
            name="whisper",
            on_batch=on_batch,
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
        assert recording.language is not None, "decided in the recording's first batch"
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

    def _decode(
        self, batch: list[Item[Piece, tuple[Segment, ...]]]
    ) -> list[tuple[Segment, ...] | Exception]:
        """One batch (a batch thread); an item that fails alone fails only its recording."""
        try:
            return list(self._decode_together(batch))
        except (RuntimeError, ValueError, MemoryError) as error:
            if len(batch) == 1:
                return [error]
            log.warning("batch_split", items=len(batch), error=str(error))
        results: list[tuple[Segment, ...] | Exception] = []
        for item in batch:
            try:
                results.extend(self._decode_together([item]))
            except (RuntimeError, ValueError, MemoryError) as error:
                results.append(error)
        return results

    def _decode_together(
        self, batch: list[Item[Piece, tuple[Segment, ...]]]
    ) -> list[tuple[Segment, ...]]:
        recordings = [Recording.of(work) for work, _ in batch]
        decoded = self._decode_pieces(recordings, [work.pieces[index] for work, index in batch])
        return [tuple(segments) for segments in decoded]

    def _decode_pieces(self, recordings: list[Recording], cut: list[Piece]) -> list[list[Segment]]:
        """Each piece's segments in its recording's time. Pieces with the same encoder window
        go through the encoder and the decoder together; then the rest of each piece whose
        window stopped early, as stock decoding goes on."""
        computed = [self._features(piece) for piece in cut]
        windows = [self._window(features.shape[-1]) for features in computed]
        decoded: list[list[Segment]] = [[] for _ in cut]
        again: list[int] = []
        rest: list[Piece] = []
        for window in dict.fromkeys(windows):
            alike = [i for i, w in enumerate(windows) if w == window]
            # The decoder's memory grows with items x window x beam: on a CPU at most
            # CALL_FRAMES of windows per call (a GPU has room for the whole batch).
            per_call = max(1, CALL_FRAMES * DEFAULT_BEAM // (window * self.options.beam_size))
            if self.model.model.device != "cpu":
                per_call = len(alike)
            for start in range(0, len(alike), per_call):
                same = alike[start : start + per_call]
                for i, (segments, resume) in zip(
                    same,
                    self._decode_window(
                        [recordings[i] for i in same],
                        [cut[i] for i in same],
                        [computed[i] for i in same],
                        window,
                    ),
                    strict=True,
                ):
                    decoded[i] = segments
                    if resume is not None:
                        again.append(i)
                        rest.append(cut[i].after(resume))
        if again:  # the rests of every piece of this batch together
            more = self._decode_pieces([recordings[i] for i in again], rest)
            for i, segments in zip(again, more, strict=True):
                decoded[i].extend(segments)
        return decoded

    def _window(self, frames: int) -> int:
        """The encoder window for a piece of `frames` feature frames.

        Whisper's encoder takes 30 s whatever the audio; CTranslate2 takes less. The piece plus
        a margin of 10 s (then up to the next 5 s, so that pieces of similar length share a
        window) costs a 5-s note half the encoder time, with the same accuracy on the corpus
        (margins of 1 and 5 s cost accuracy). Each piece's window depends on it alone: what it
        is batched with never changes its text.
        """
        whole = self.model.feature_extractor.nb_max_frames
        margin = self.options.encoder_margin_seconds
        if margin is None:
            return int(whole)
        per_second = self.model.frames_per_second
        step = WINDOW_STEP_SECONDS * per_second
        wanted = frames + round(margin * per_second)
        return int(min(whole, -(-wanted // step) * step))

    def _decode_window(
        self, recordings: list[Recording], cut: list[Piece], computed: list[Any], window: int
    ) -> list[tuple[list[Segment], float | None]]:
        """Pieces of one window size in one call: each one's segments, and where to decode
        the rest of it from when its window stopped early."""
        from faster_whisper.audio import pad_or_trim

        model = self.model
        features = np.stack([pad_or_trim(f, window) for f in computed])
        encoder_output = self._encode(features)
        self._decide_languages(recordings, encoder_output)
        tokenizers = [self._tokenizer(r.language, r.task) for r in recordings]
        options = _stock_options(tokenizers[0], beam_size=self.options.beam_size)
        chosen = self._generate_with_fallback(encoder_output, features, tokenizers, options)

        decoded: list[tuple[list[Segment], float | None]] = []
        for i, attempt in enumerate(chosen):
            if silent(attempt, options):
                decoded.append(([], None))
                continue
            piece, tokenizer = cut[i], tokenizers[i]
            said, resume = pieces.split(
                attempt.tokens,
                first_timestamp=tokenizer.timestamp_begin,
                precision=model.time_precision,
                duration=piece.duration,
            )
            segments = [
                Segment(
                    recordings[i].original(piece.offset + part.start),
                    recordings[i].original(piece.offset + part.end, end=True),
                    tokenizer.decode(part.tokens),
                )
                for part in said
            ]
            decoded.append((segments, resume))
        return decoded

    def _generate_with_fallback(
        self, encoder_output: Any, features: Any, tokenizers: list[Any], options: Any
    ) -> list[Attempt]:
        """faster-whisper's fallback, batched: every item at temperature 0 (beam search), then
        those too repetitive or too unsure again at each higher temperature (sampling)."""
        model = self.model
        prompts = [model.get_prompt(t, previous_tokens=[]) for t in tokenizers]
        chosen: dict[int, Attempt] = {}
        tried: list[list[Attempt]] = [[] for _ in tokenizers]
        waiting = list(range(len(tokenizers)))
        for temperature in options.temperatures:
            if len(waiting) < len(tokenizers):
                encoder_output = self._encode(features[waiting])
            generated = self._generate(
                encoder_output, [prompts[i] for i in waiting], options, temperature
            )
            still: list[int] = []
            for i, result in zip(waiting, generated, strict=True):
                attempt = Attempt.of(result, tokenizers[i], options)
                tried[i].append(attempt)
                if needs_fallback(attempt, options):
                    still.append(i)
                else:
                    chosen[i] = attempt
            waiting = still
            if not waiting:
                break
        for i in waiting:
            chosen[i] = best_of(tried[i], options)
        return [chosen[i] for i in range(len(tokenizers))]

    def _encode(self, features: Any) -> Any:
        """The encoder's output for a batch of windows. On a CPU one window at a time: the
        encoder gains nothing from a batch there (its matrices are big enough alone), and its
        attention takes about 95 MB a whole window while it runs."""
        model = self.model
        if model.model.device != "cpu" or len(features) == 1:
            return model.encode(features)
        import ctranslate2

        alone = [np.asarray(model.encode(features[i : i + 1])) for i in range(len(features))]
        return ctranslate2.StorageView.from_array(np.concatenate(alone))

    def _features(self, piece: Piece) -> Any:
        """The piece's log-mel features, exactly as faster-whisper computes a window's."""
        features = self.model.feature_extractor(piece.audio)
        return features[:, : max(features.shape[-1] - 1, 1)]

    def _decide_languages(self, recordings: list[Recording], encoder_output: Any) -> None:
        """Detect the language of each recording that has none from its items in this batch
        (the probabilities of its pieces here averaged), among its allowed languages."""
        undecided = {id(r): r for r in recordings if r.language is None}
        if not undecided:
            return
        detected = self.model.model.detect_language(encoder_output)
        for recording in undecided.values():
            mine = [d for r, d in zip(recordings, detected, strict=True) if r is recording]
            recording.language, recording.probability = languages.most_likely(
                mine, recording.allowed
            )

    def _tokenizer(self, language: str | None, task: Task) -> Any:
        return _tokenizer(self.model.hf_tokenizer, self.multilingual, task, language)

    def _generate(
        self, encoder_output: Any, prompts: list[list[int]], options: Any, temperature: float
    ) -> Any:
        if temperature > 0:
            search: dict[str, Any] = {
                "beam_size": 1,
                "num_hypotheses": options.best_of,
                "sampling_topk": 0,
                "sampling_temperature": temperature,
            }
        else:
            search = {"beam_size": options.beam_size, "patience": options.patience}
        return self.model.model.generate(
            encoder_output,
            prompts,
            length_penalty=options.length_penalty,
            repetition_penalty=options.repetition_penalty,
            no_repeat_ngram_size=options.no_repeat_ngram_size,
            max_length=self.model.max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=options.suppress_blank,
            suppress_tokens=options.suppress_tokens,
            max_initial_timestamp_index=round(
                options.max_initial_timestamp / self.model.time_precision
            ),
            **search,
        )


@cache
def _tokenizer(hf_tokenizer: Any, multilingual: bool, task: str, language: str | None) -> Any:
    from faster_whisper.tokenizer import Tokenizer

    return Tokenizer(hf_tokenizer, multilingual, task=task, language=language)


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


def cap_malloc_arenas() -> None:
    """One malloc arena for the whole process (glibc; elsewhere nothing happens).

    glibc gives each thread that allocates under contention an arena of its own, up to eight
    per core, and keeps what each freed for reuse by that arena alone. The encoder's and the
    decoder's buffers (tens of MB each, from the batch thread, the VAD and levelling from job
    threads) then pile up in several arenas: the peak of one process at BATCH_SIZE=8 fell from
    630 to 540 MB with one arena, and from 630 to 590 MB with two, at the same speed.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc, or no C library found
        return
    m_arena_max = -8  # <malloc.h>
    mallopt(m_arena_max, 1)


def load_whisper(settings: Settings) -> Any:
    """Load the CTranslate2 Whisper model the settings name (blocking, seconds)."""
    from faster_whisper import WhisperModel

    cap_malloc_arenas()  # before the model's threads allocate anything

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
