"""Decoding a batch of pieces: CTranslate2's Whisper encoder and decoder, as stock
faster-whisper decodes a window (beam search, temperature fallback, decoding on from where a
window stopped early: the rest goes back to the batcher), for several pieces at once, each with
its own language and task.

Part of `engine`, the one place that talks to faster-whisper and CTranslate2; the batch threads
of `batching` call a `Decoder` with each batch.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from voicebot import languages, pieces
from voicebot.batching import Item, Report, Rest
from voicebot.engine import malloc
from voicebot.pieces import Piece
from voicebot.recording import (
    Attempt,
    Recording,
    Segment,
    Task,
    best_of,
    needs_fallback,
    silent,
)

if TYPE_CHECKING:
    from voicebot.engine import Options

log = structlog.get_logger(__name__)

Decoded = tuple[Segment, ...] | Rest[Piece, tuple[Segment, ...]]
"""A piece's segments, or those of its start and the rest of it to decode in a later batch."""

#: Feature frames (100 a second) one decoder call takes on a CPU at beam DEFAULT_BEAM, all its
#: items' windows together: four whole windows, eight of 15 s. The decoder keeps the encoder's
#: output for every beam of every item, about 95 MB a whole window at beam 5 with `base`. Peak
#: memory of one process at BATCH_SIZE=8 (a burst of 16 notes, then a 223-s recording; one
#: malloc arena, see `engine.malloc`): 480-540 MB at two to four whole windows,
#: 650-690 MB at six to eight; the 223-s recording took 8.9, 7.9 and 6.9 s at two, three, four.
CALL_FRAMES = 4 * 3000
DEFAULT_BEAM = 5
#: Encoder windows are whole multiples of this (see `Decoder._window`).
WINDOW_STEP_SECONDS = 5


class Decoder:
    """Decodes batches of pieces with one loaded model: each item's segments, or its error."""

    def __init__(self, model: Any, options: Options) -> None:
        self.model = model
        self.options = options
        self._running = 0  # batches being decoded now, one per batch thread
        self._counting = threading.Lock()

    @property
    def multilingual(self) -> bool:
        """Whether the model can transcribe languages other than English."""
        return bool(self.model.model.is_multilingual)

    def __call__(
        self,
        batch: list[Item[Piece, tuple[Segment, ...]]],
        report: Report[Piece, tuple[Segment, ...]] | None = None,
    ) -> list[Decoded | Exception]:
        """One batch (a batch thread); an item that fails alone fails only its recording. The
        items of each decoder call are reported as it returns (`report`)."""
        with self._counting:
            self._running += 1
        try:
            return self._decode(batch, report)
        finally:
            with self._counting:
                self._running -= 1

    def _decode(
        self,
        batch: list[Item[Piece, tuple[Segment, ...]]],
        report: Report[Piece, tuple[Segment, ...]] | None,
    ) -> list[Decoded | Exception]:
        done: dict[int, Decoded] = {}

        def early(places: list[int], decoded: list[Decoded]) -> None:
            done.update(zip(places, decoded, strict=True))
            if report is not None:
                report(list(zip(places, decoded, strict=True)))

        try:
            return list(self._together(batch, early))
        except (RuntimeError, ValueError, MemoryError) as error:
            if len(batch) == 1:
                return [error]
            log.warning("batch_split", items=len(batch), error=str(error))
        results: list[Decoded | Exception] = []
        failed: dict[int, Exception] = {}
        for place, item in enumerate(batch):
            work = item[0]
            if place in done:  # decoded (and reported) before the call that failed
                results.append(done[place])
            elif id(work) in failed:  # its recording fails anyway, and may never decide one
                results.append(failed[id(work)])
            else:
                try:
                    results.extend(self._together([item], None))
                except (RuntimeError, ValueError, MemoryError) as error:
                    failed[id(work)] = error
                    results.append(error)
        return results

    def _together(
        self,
        batch: list[Item[Piece, tuple[Segment, ...]]],
        early: Callable[[list[int], list[Decoded]], None] | None,
    ) -> list[Decoded]:
        """Each item's segments, or its start and rest; `early` is told each decoder call's."""
        recordings = [Recording.of(work) for work, _ in batch]
        # The batch with a recording's first piece detects its language; another batch thread
        # with its later pieces waits for that (see `_decide_languages`).
        deciding = {id(work) for work, index in batch if index == 0}
        decoded: list[Decoded] = [() for _ in batch]

        def called(places: list[int], parts: list[tuple[list[Segment], Piece | None]]) -> None:
            for place, (segments, rest) in zip(places, parts, strict=True):
                decoded[place] = tuple(segments) if rest is None else Rest(tuple(segments), rest)
            if early is not None:
                early(places, [decoded[place] for place in places])

        self._pieces(recordings, [work.pieces[index] for work, index in batch], deciding, called)
        return decoded

    def _pieces(
        self,
        recordings: list[Recording],
        cut: list[Piece],
        deciding: set[int],
        called: Callable[[list[int], list[tuple[list[Segment], Piece | None]]], None],
    ) -> None:
        """Each piece's segments in its recording's time, and the rest of the piece where its
        window stopped early (stock decoding goes on from there in a new window: the batcher
        queues it for the next free thread), told to `called` after each decoder call. Pieces
        with the same encoder window go through the encoder and the decoder together."""
        computed = [self._features(piece) for piece in cut]
        windows = [self._window(features.shape[-1]) for features in computed]
        for window in dict.fromkeys(windows):
            alike = [i for i, w in enumerate(windows) if w == window]
            # The decoder's memory grows with items x window x beam: on a CPU at most
            # CALL_FRAMES of windows per call, shared by the process's batch threads (a GPU
            # has room for the whole batch).
            frames = CALL_FRAMES // self.options.workers
            per_call = max(1, frames * DEFAULT_BEAM // (window * self.options.beam_size))
            if self.model.model.device != "cpu":
                per_call = len(alike)
            for start in range(0, len(alike), per_call):
                same = alike[start : start + per_call]
                parts = self._decode_window(
                    [recordings[i] for i in same],
                    [cut[i] for i in same],
                    [computed[i] for i in same],
                    window,
                    deciding,
                )
                called(
                    same,
                    [
                        (segments, None if resume is None else cut[i].after(resume))
                        for i, (segments, resume) in zip(same, parts, strict=True)
                    ],
                )

    def weight(self, piece: Piece) -> float:
        """A piece's share of a batch's time: its encoder window and its audio (what the
        decoder's text grows with), in seconds."""
        per_second = float(self.model.frames_per_second)
        return self._window(round(piece.duration * per_second)) / per_second + piece.duration

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
        self,
        recordings: list[Recording],
        cut: list[Piece],
        computed: list[Any],
        window: int,
        deciding: set[int],
    ) -> list[tuple[list[Segment], float | None]]:
        """Pieces of one window size in one call: each one's segments, and where to decode
        the rest of it from when its window stopped early."""
        from faster_whisper.audio import pad_or_trim

        model = self.model
        features = np.stack([pad_or_trim(f, window) for f in computed])
        encoder_output = self._encode(features)
        self._decide_languages(recordings, encoder_output, deciding)
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

    def _decide_languages(
        self, recordings: list[Recording], encoder_output: Any, deciding: set[int]
    ) -> None:
        """Detect the language of each recording that has none from its items in this call
        (the probabilities of its pieces here averaged), among its allowed languages, where
        this batch has the recording's first piece (`deciding`, ids); elsewhere wait for the
        batch that has it. The batch with a first piece was formed before any with a later
        piece, so the waits follow the order batches formed in and cannot go round."""
        undecided = {id(r): r for r in recordings if r.language is None}
        for key, recording in list(undecided.items()):
            if key not in deciding:
                recording.wait_decided()
                if recording.language is not None:
                    del undecided[key]
        if not undecided:  # else the deciding batch failed: what is decoded here is dropped
            return
        detected = self.model.model.detect_language(encoder_output)
        for recording in undecided.values():
            mine = [d for r, d in zip(recordings, detected, strict=True) if r is recording]
            recording.decide(*languages.most_likely(mine, recording.allowed))

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
        generated = self.model.model.generate(
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
        if self._running > 1:
            # Another batch thread may be encoding: its peak would come on top of what this
            # call freed and glibc kept (a lone batch keeps it, to reuse without page faults).
            malloc.give_back()
        return generated


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
