"""The engine on real speech from the corpus, against the references and stock faster-whisper."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import jiwer
import numpy as np
import pytest

from voicebot.engine import Engine
from voicebot.errors import TranscriptionCancelledError, TranscriptionTimeoutError
from voicebot.formats import Format, render

from .media import encode_audio, long_speech, video_with_sound


def _words(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


def _wer(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(_words(reference), _words(hypothesis)))


def test_english_words(base_engine: Engine, corpus: Path) -> None:
    transcript = base_engine.transcribe(corpus / "en" / "jfk.flac")
    assert transcript.language == "en"
    assert transcript.language_probability > 0.5
    assert "ask not what your country can do for you" in _words(transcript.text)
    assert transcript.duration == pytest.approx(11.0, abs=0.05)
    assert transcript.segments
    assert transcript.segments[-1].end <= transcript.duration + 0.01


@pytest.mark.parametrize(
    ("clip", "language"),
    [
        ("de/fleurs_de-001.ogg", "de"),
        ("es/fleurs_es-002.ogg", "es"),
        ("ru/deepspeech_ru.wav", "ru"),
        ("en/librispeech_61-70968-0000.flac", "en"),
    ],
)
def test_detects_language_and_matches_reference(
    base_engine: Engine,
    corpus: Path,
    references: dict[str, dict[str, str]],
    clip: str,
    language: str,
) -> None:
    transcript = base_engine.transcribe(corpus / clip)
    assert transcript.language == language
    assert _wer(references[clip]["reference_transcript"], transcript.text) < 0.35


@pytest.fixture(scope="module")
def whole_window_engine(base_engine: Engine) -> Iterator[Engine]:
    """The bundled `base` model, its encoder given the whole 30-s window as stock gives it."""
    engine = Engine(base_engine.model, replace(base_engine.options, encoder_margin_seconds=None))
    yield engine
    engine.close()


@pytest.mark.parametrize("clip", ["en/jfk.flac", "de/fleurs_de-003.ogg", "es/fleurs_es-005.ogg"])
def test_same_result_as_stock_faster_whisper(
    whole_window_engine: Engine, corpus: Path, clip: str
) -> None:
    """Cut into pieces and decoded in batches, a short clip comes out as stock's, to the
    character and the hundredth of a second (with the encoder's whole window, as stock's)."""
    ours = whole_window_engine.transcribe(corpus / clip)
    segments, info = whole_window_engine.model.transcribe(str(corpus / clip), vad_filter=True)
    stock = [(round(s.start, 2), round(s.end, 2), s.text) for s in segments]
    assert ours.language == info.language
    assert ours.language_probability == pytest.approx(info.language_probability, abs=0.02)
    assert [(round(s.start, 2), round(s.end, 2), s.text) for s in ours.segments] == stock


def test_language_hint_and_allowed_list(base_engine: Engine, corpus: Path) -> None:
    hinted = base_engine.transcribe(corpus / "de" / "fleurs_de-002.ogg", language="de")
    assert (hinted.language, hinted.language_probability) == ("de", 1.0)
    restricted = base_engine.transcribe(
        corpus / "es" / "fleurs_es-003.ogg", allowed_languages=["en", "de"]
    )
    assert restricted.language in {"en", "de"}


def test_english_only_model(tiny_engine: Engine, corpus: Path) -> None:
    transcript = tiny_engine.transcribe(corpus / "en" / "librispeech_alif_i_tell_you.wav")
    assert transcript.language == "en"
    assert "i tell you it is not poison" in _words(transcript.text)


@pytest.fixture(scope="module")
def long_audio(corpus: Path) -> np.ndarray:
    """About 50 s of real speech: several 30 s windows and many segments."""
    return long_speech(corpus)


def test_progress_reaches_total(tiny_engine: Engine, long_audio: np.ndarray) -> None:
    seen: list[tuple[float, float]] = []
    transcript = tiny_engine.transcribe(long_audio, progress=lambda d, t: seen.append((d, t)))
    done = [d for d, _ in seen]
    assert len(seen) >= 3
    assert done == sorted(done)
    assert seen[-1] == (transcript.duration, transcript.duration)
    assert "fellow americans" in _words(transcript.text)
    assert "painful to myself" in _words(transcript.text)


def test_cancel_between_batches(tiny_engine: Engine, long_audio: np.ndarray) -> None:
    """Cancelled after its first piece, a recording stops: nothing more is reported."""
    engine = Engine(tiny_engine.model, replace(tiny_engine.options, batch_size=1, workers=1))
    cancel = threading.Event()
    calls: list[float] = []

    def on_progress(done: float, total: float) -> None:
        calls.append(done)
        cancel.set()
        # The batch loop is held here until the waiting call has withdrawn the recording.
        until = time.monotonic() + 5
        while engine.batcher.pending() and time.monotonic() < until:
            time.sleep(0.01)

    try:
        with pytest.raises(TranscriptionCancelledError):
            engine.transcribe(long_audio, progress=on_progress, cancel=cancel)
    finally:
        engine.close()
    assert len(calls) == 1
    assert engine.batcher.pending() == 0


def test_timeout(tiny_engine: Engine, long_audio: np.ndarray) -> None:
    with pytest.raises(TranscriptionTimeoutError):
        tiny_engine.transcribe(long_audio, deadline=time.monotonic())


async def test_async_runs_off_the_event_loop(tiny_engine: Engine, corpus: Path) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    data = (corpus / "en" / "librispeech_alif_another_door.wav").read_bytes()
    transcript = await tiny_engine.transcribe_async(data)
    ticking.cancel()
    assert "another door" in _words(transcript.text)
    assert ticks > 10  # the loop kept running while the model worked


async def test_async_cancel_takes_the_pieces_out(
    tiny_engine: Engine, long_audio: np.ndarray
) -> None:
    """Cancelled after its first piece (one a batch here), a recording's other pieces leave
    the queue at once, and the awaiting task ends cancelled."""
    engine = Engine(tiny_engine.model, replace(tiny_engine.options, batch_size=1))
    started = asyncio.Event()
    loop = asyncio.get_running_loop()
    data = encode_audio(long_audio, container="wav", codec="pcm_s16le", rate=16000)
    cancelled = threading.Event()

    def on_progress(done: float, total: float) -> None:
        loop.call_soon_threadsafe(started.set)
        cancelled.wait(30)  # the batch loop is held here until the test has cancelled

    task = asyncio.create_task(engine.transcribe_async(data, progress=on_progress))
    try:
        await asyncio.wait_for(started.wait(), 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        cancelled.set()
        # Its pieces left the queue at once: the next recording does not wait behind them.
        assert engine.batcher.pending() == 0
    finally:
        cancelled.set()
        engine.close()


def test_video_note_container(tiny_engine: Engine, corpus: Path) -> None:
    data = video_with_sound(corpus / "en" / "librispeech_alif_another_engineer.wav")
    transcript = tiny_engine.transcribe(data)
    assert "another engineer" in _words(transcript.text)
    assert "another engineer" in _words(render(transcript, Format.srt))
