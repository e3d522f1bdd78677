"""Batched decoding: the batcher's rules, and the engine's batches on real corpus speech."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pytest
import srt
import webvtt

from voicebot.audio import SAMPLE_RATE, decode
from voicebot.batching import TIMING_DECAY, Batcher, Item, Report, Rest, Timing, Work
from voicebot.config import Settings
from voicebot.engine import Engine, build_engine
from voicebot.errors import (
    CorruptAudioError,
    NoSpeechError,
    TranscriptionCancelledError,
    TranscriptionTimeoutError,
    VoicebotError,
)
from voicebot.formats import Format, render
from voicebot.recording import Transcript

from .media import silence

#: Loud read speech and three FLEURS voices 35-45 dB quieter, taking turns.
TURNS = (
    "en/ljspeech_LJ001-0001.wav",
    "en/fleurs_en-002.ogg",
    "en/librispeech_2412-153948-0000.flac",
    "en/fleurs_en-004.ogg",
    "en/ljspeech_LJ001-0005.wav",
    "en/fleurs_en-009.ogg",
    "en/jfk.flac",
)


def _words(text: str) -> list[str]:
    return "".join(c for c in text.lower() if c.isalnum() or c.isspace()).split()


def _joined(corpus: Path, clips: Sequence[str], *, gap: float = 1.5) -> np.ndarray:
    pause = np.zeros(int(gap * SAMPLE_RATE), dtype=np.float32)
    parts = [decode(corpus / clip, max_seconds=600) for clip in clips]
    return np.concatenate([x for part in parts for x in (part, pause)])


def _together(engine: Engine, sources: Sequence[bytes | np.ndarray]) -> list[object]:
    """Transcripts (or errors) of `sources` submitted at once: their pieces form batches from
    the first (the batcher's lock is held until all are in)."""
    recordings = []
    outcomes: list[object] = [None] * len(sources)
    for number, source in enumerate(sources):
        try:
            recordings.append(
                (number, engine._recording(source, None, (), "transcribe", None, None))
            )
        except VoicebotError as error:
            outcomes[number] = error
    with engine.batcher._changed:
        for _, recording in recordings:
            engine.batcher.submit(recording)
    for number, recording in recordings:
        try:
            outcomes[number] = engine._finished(recording, recording.future.result(120))
        except VoicebotError as error:
            outcomes[number] = error
    return outcomes


@pytest.fixture(scope="module")
def batched(base_engine: Engine) -> Iterator[Engine]:
    """The bundled `base` model, four pieces a batch, one batch loop."""
    engine = Engine(base_engine.model, replace(base_engine.options, batch_size=4, workers=1))
    yield engine
    engine.close()


# The batcher alone: its run function is real code here, squaring numbers, failing on 13.


def _square(batch: list[Item[int, int]]) -> list[int | Exception]:
    time.sleep(0.05)
    return [
        ValueError("13 is bad") if work.pieces[i] == 13 else work.pieces[i] ** 2
        for work, i in batch
    ]


def test_batches_take_turns_and_one_bad_piece_fails_only_its_work() -> None:
    seen: list[list[int]] = []

    def run(batch: list[Item[int, int]]) -> list[int | Exception]:
        seen.append([work.pieces[i] for work, i in batch])
        return _square(batch)

    batcher: Batcher[int, int] = Batcher(run, size=3, threads=1)
    long, short, bad = Work(range(100, 106)), Work([7]), Work([12, 13, 14])
    with batcher._changed:  # all three are in before the first batch forms
        for work in (long, short, bad):
            batcher.submit(work)
    assert long.future.result(5) == [n**2 for n in range(100, 106)]
    assert short.future.result(5) == [49]
    with pytest.raises(ValueError, match="13 is bad"):
        bad.future.result(5)
    batcher.close()
    # The first batch: each work's first piece, round robin; the next batches are the rest.
    assert seen[0] == [100, 7, 12]
    assert {n for batch in seen for n in batch} >= {*range(100, 106), 7, 12, 13}
    assert all(len(batch) <= 3 for batch in seen)


def test_idle_threads_share_a_lone_work() -> None:
    """A work that comes while both threads wait is split between them, decoded at once."""
    ran: list[tuple[str, list[int], float, float]] = []

    def run(batch: list[Item[int, int]]) -> list[int | Exception]:
        started = time.monotonic()
        results = _square(batch)
        pieces = [work.pieces[i] for work, i in batch]
        ran.append((threading.current_thread().name, pieces, started, time.monotonic()))
        return results

    batcher: Batcher[int, int] = Batcher(run, size=8, threads=2)
    assert batcher.submit(Work(range(2, 9))).future.result(5) == [n**2 for n in range(2, 9)]
    batcher.close()
    assert sorted(len(pieces) for _, pieces, _, _ in ran) == [3, 4]
    (first, _, start_a, end_a), (second, _, start_b, end_b) = ran
    assert first != second
    assert max(start_a, start_b) < min(end_a, end_b)  # at the same time


def test_a_batch_takes_as_long_as_a_fixed_part_and_a_part_for_each_unit_of_load() -> None:
    timing = Timing()
    assert timing.fit() is None  # nothing ran yet
    timing.add(8, 0.0)
    assert timing.fit() is None  # a batch that took no time is no estimate
    one_load = Timing()
    one_load.add(8, 1.6)
    one_load.add(8, 1.6)
    assert one_load.fit() == pytest.approx((0.0, 0.2))  # one load so far: no fixed part known
    line = Timing()
    line.add(1, 0.5)
    line.add(8, 1.2)
    assert line.fit() == pytest.approx((0.4, 0.1))  # two loads: the line through them
    backwards = Timing()
    backwards.add(1, 1.0)
    backwards.add(8, 0.9)  # no line that makes sense: seconds per unit of load, on average
    earlier = TIMING_DECAY  # what the earlier batch counts
    assert backwards.fit() == pytest.approx((0.0, (earlier * 1.0 + 0.9) / (earlier * 1 + 8)))


def test_a_thread_that_frees_first_leaves_a_share_of_the_last_pieces_to_one_freeing_soon() -> None:
    """The share is by weight (here a piece weighs its value) and counts what busy threads
    still have to decode, at the time batches have taken so far: all threads free, an even
    split; a thread busy for long, this one takes what is left; one that frees soon, this one
    takes about half of it."""
    batcher: Batcher[int, int] = Batcher(_square, size=8, threads=2, weight=float)

    def formed(pieces: list[int]) -> list[int]:
        """The batch this thread would form now from one work of `pieces`."""
        work = Work(pieces)
        with batcher._changed:
            batcher._works = [work]
            taken = [work.pieces[i] for _, i in batcher._take()]
            del batcher._running[threading.current_thread().name]
            batcher._works = []
        return taken

    assert formed([1] * 7) == [1] * 4  # nothing ran yet: half of 7 each, to the nearest piece
    assert formed([6, 1, 1, 1, 1, 2]) == [6]  # half the weight
    batcher._timing.add(1, 0.5)
    batcher._timing.add(8, 1.2)  # a batch takes 0.4 s and 0.1 s a unit of load
    now = time.monotonic()
    batcher._running = {"whisper-1": (now, 8.0)}  # one thread busy for 1.2 s more
    assert formed([1] * 6) == [1] * 6  # 6 + 12 units of work to share: all of these
    batcher._running = {"whisper-1": (now - 1.0, 8.0)}  # 0.2 s more: 2 units
    assert formed([1] * 6) == [1] * 4
    assert formed([3, 1, 1, 1, 1, 1]) == [3, 1, 1]  # by weight: (8 + 2) / 2 units
    batcher._running = {"whisper-1": (now - 2.0, 8.0)}  # late: as if it were free
    assert formed([1] * 6) == [1] * 3
    assert formed([1] * 40) == [1] * 8  # never more than `size`


def test_the_rest_of_a_piece_waits_ahead_of_later_pieces_and_its_parts_are_joined() -> None:
    """A run function that decodes two characters of a piece at a time answers with a `Rest`:
    the rest is queued before the work's later pieces, and the parts come back joined."""
    seen: list[list[str]] = []

    def run(batch: list[Item[str, str]]) -> list[str | Rest[str, str] | Exception]:
        pieces = [work.pieces[i] for work, i in batch]
        seen.append(pieces)
        return [p if len(p) <= 2 else Rest(p[:2], p[2:]) for p in pieces]

    batcher: Batcher[str, str] = Batcher(run, size=2, threads=1)
    letters = Work(["abcde", "xy", "z"], join="".join)
    digits = Work(["12345"], join="".join)
    unjoinable: Work[str, str] = Work(["long piece"])
    with batcher._changed:
        for work in (letters, digits):
            batcher.submit(work)
    assert letters.future.result(5) == ["abcde", "xy", "z"]
    assert digits.future.result(5) == ["12345"]
    assert seen == [["abcde", "12345"], ["cde", "345"], ["e", "5"], ["xy", "z"]]
    with pytest.raises(RuntimeError, match="cannot join"):
        batcher.submit(unjoinable).future.result(5)
    assert batcher.pending() == 0
    batcher.close()


def test_outcomes_reported_before_a_batch_ends_go_on_at_once() -> None:
    """A batcher that streams: what `run` reports before its batch ends completes its work at
    once, a rest so reported is decoded by a free thread while the batch still runs, and what
    the batch then returns for them is not recorded again."""
    release = threading.Event()
    seen: list[list[str]] = []

    def run(
        batch: list[Item[str, str]], report: Report[str, str]
    ) -> list[str | Rest[str, str] | Exception]:
        pieces = [work.pieces[i] for work, i in batch]
        seen.append(pieces)
        if "slow" not in pieces:
            return list(pieces)
        report([(0, "ab"), (1, Rest("xy", "zw"))])
        report([(0, "reported twice")])
        assert release.wait(5)
        return ["late", "late", "slow"]

    # Weightless pieces: one thread takes all three (the share never stops a batch).
    batcher: Batcher[str, str] = Batcher(run, size=3, threads=2, weight=lambda _: 0.0, streams=True)
    first, second, slow = Work(["ab"]), Work(["xyzw"], join="".join), Work(["slow"])
    with batcher._changed:
        for work in (first, second, slow):
            batcher.submit(work)
    assert first.future.result(5) == ["ab"]
    assert second.future.result(5) == ["xyzw"]  # its rest, on the other thread
    assert not slow.future.done()
    release.set()
    assert slow.future.result(5) == ["slow"]
    assert first.future.result() == ["ab"]
    assert seen == [["ab", "xyzw", "slow"], ["zw"]]
    batcher.close()


@pytest.mark.exclusive  # a bound in seconds (a start, a stop within 2 s)
def test_a_lone_work_starts_at_once_and_a_withdrawn_one_stops() -> None:
    batcher: Batcher[int, int] = Batcher(_square, size=8, threads=1)
    started = time.monotonic()
    lone = batcher.submit(Work([3]))
    assert lone.future.result(5) == [9]
    assert time.monotonic() - started < 1.0  # no waiting for a batch to fill
    endless = batcher.submit(Work(range(20, 2000)))
    time.sleep(0.2)
    batcher.withdraw(endless, TranscriptionCancelledError("stop"))
    with pytest.raises(TranscriptionCancelledError):
        endless.future.result(1)
    assert batcher.pending() == 0
    batcher.close()


# The engine: real speech, the bundled models.


@pytest.mark.exclusive  # a bound in seconds (a start, a stop within 2 s)
def test_a_batch_of_good_bad_cancelled_and_late_recordings_each_gets_its_own_answer(
    batched: Engine, corpus: Path
) -> None:
    good = [corpus / "en" / "jfk.flac", corpus / "de" / "fleurs_de-001.ogg"]
    long = _joined(corpus, TURNS)
    cancel = threading.Event()
    with ThreadPoolExecutor(6) as pool:
        outcomes = {
            "good": [pool.submit(batched.transcribe, path) for path in good],
            "damaged": pool.submit(batched.transcribe, b"OggS" + bytes(range(256)) * 40),
            "silent": pool.submit(batched.transcribe, silence(8.0)),
            "cancelled": pool.submit(batched.transcribe, long, cancel=cancel),
            "late": pool.submit(batched.transcribe, long, deadline=time.monotonic() + 1.0),
        }
        time.sleep(0.5)
        cancelled_at = time.monotonic()
        cancel.set()
        with pytest.raises(TranscriptionCancelledError):
            outcomes["cancelled"].result(60)
        assert time.monotonic() - cancelled_at < 2.0
        with pytest.raises(TranscriptionTimeoutError):
            outcomes["late"].result(60)
        with pytest.raises(CorruptAudioError):
            outcomes["damaged"].result(60)
        with pytest.raises(NoSpeechError):
            outcomes["silent"].result(60)
        first, second = (future.result(60) for future in outcomes["good"])
    assert "ask not what your country can do for you" in " ".join(_words(first.text))
    assert second.language == "de"
    # Alone, each good one says the same, to the word.
    assert first.text == batched.transcribe(good[0]).text
    assert second.text == batched.transcribe(good[1]).text


def test_each_decoder_call_is_reported_and_a_later_failure_keeps_it(
    batched: Engine, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pieces of two window sizes take two decoder calls: each is reported as it returns.
    When the second call fails, the batch is split and only its piece is decoded again, alone:
    the first keeps the outcome already reported."""
    decoder = batched.batcher.run
    short, longer = (
        batched._recording(corpus / clip, None, (), "transcribe", None, None)
        for clip in ("en/ljspeech_LJ001-0006.wav", "en/jfk.flac")
    )
    windows = {decoder._window(decoder._features(r.pieces[0]).shape[-1]) for r in (short, longer)}
    assert len(windows) == 2
    decode_window = decoder._decode_window
    calls: list[int] = []

    def failing_once(recordings: list[Any], *args: Any) -> Any:
        calls.append(len(recordings))
        if len(calls) == 2:
            raise RuntimeError("the second call fails")
        return decode_window(recordings, *args)

    monkeypatch.setattr(decoder, "_decode_window", failing_once)
    reports: list[list[int]] = []
    results = decoder(
        [(short, 0), (longer, 0)], lambda outcomes: reports.append([p for p, _ in outcomes])
    )
    assert calls == [1, 1, 1]  # a call a window size, then the failed one's piece alone
    assert reports == [[0]]  # the first call, once
    texts = [" ".join(s.text for s in result) for result in results if isinstance(result, tuple)]
    assert len(texts) == 2, results
    assert all(texts), results


def test_mixed_languages_in_one_batch(
    batched: Engine, corpus: Path, references: dict[str, dict[str, str]]
) -> None:
    clips = [
        "en/librispeech_61-70968-0000.flac",
        "de/fleurs_de-004.ogg",
        "es/fleurs_es-002.ogg",
        "ru/deepspeech_ru.wav",
    ]
    before = batched.batcher.batches
    outcomes = _together(batched, [(corpus / clip).read_bytes() for clip in clips])
    assert batched.batcher.batches - before == 1  # all four decoded in one batch
    for clip, outcome in zip(clips, outcomes, strict=True):
        assert isinstance(outcome, Transcript), outcome
        assert outcome.language == references[clip]["language"]
        reference = " ".join(_words(references[clip]["reference_transcript"]))
        assert jiwer.wer(reference, " ".join(_words(outcome.text))) < 0.35, (clip, outcome.text)


def test_a_long_recording_keeps_the_quiet_speakers_next_to_the_loud_ones(
    batched: Engine, corpus: Path, references: dict[str, dict[str, str]]
) -> None:
    """Every sentence of both, the quiet ones 35-45 dB below the loud ones, is in the
    transcript (stock faster-whisper drops quiet sentences whole here)."""
    transcript = batched.transcribe(_joined(corpus, TURNS))
    heard = set(_words(transcript.text))
    for clip in TURNS:
        said = _words(references[clip]["reference_transcript"])
        found = sum(word in heard for word in said) / len(said)
        assert found >= 0.7, (clip, transcript.text)


@pytest.mark.exclusive  # a bound in seconds (a start, a stop within 2 s)
def test_a_long_recording_on_the_batched_path(
    tiny_engine: Engine, corpus: Path, references: dict[str, dict[str, str]]
) -> None:
    """Progress and the text so far come batch by batch; text, SRT and VTT are well formed;
    a cancel stops it within 2 s."""
    engine = Engine(tiny_engine.model, replace(tiny_engine.options, batch_size=2))
    clips = [c for c in references if c.startswith("en/") and "fleurs" not in c][:12]
    audio = _joined(corpus, clips * 2)
    assert len(audio) / SAMPLE_RATE > 150  # at least five pieces: three batches or more
    progress: list[float] = []
    said: list[str] = []
    try:
        transcript = engine.transcribe(
            audio,
            progress=lambda done, total: progress.append(done),
            on_segment=lambda segment: said.append(segment.text),
        )
        assert len(progress) >= 3
        assert progress == sorted(progress)
        assert progress[-1] == transcript.duration
        assert " ".join(s.strip() for s in said) == transcript.text
        starts = [s.start for s in transcript.segments]
        assert starts == sorted(starts)
        assert all(0 <= s.start <= s.end <= transcript.duration + 0.01 for s in transcript.segments)
        assert len(list(srt.parse(render(transcript, Format.srt)))) == len(transcript.segments)
        assert len(webvtt.from_string(render(transcript, Format.vtt))) == len(transcript.segments)
        assert "ask not what your country can do for you" in " ".join(_words(transcript.text))

        cancel = threading.Event()
        stopped: list[float] = []

        def on_progress(done: float, total: float) -> None:
            stopped.append(time.monotonic())
            cancel.set()

        with pytest.raises(TranscriptionCancelledError):
            engine.transcribe(audio, progress=on_progress, cancel=cancel)
        assert time.monotonic() - stopped[0] < 2.0
        assert engine.batcher.pending() == 0
    finally:
        engine.close()


def test_a_long_recording_is_decoded_on_every_thread_in_the_language_of_its_start(
    model_cache: Path, corpus: Path, references: dict[str, dict[str, str]]
) -> None:
    """WORKERS=2: a German recording's pieces go to both batch threads at once; the batch with
    its first piece detects German and the other thread decodes its pieces in German too, even
    where they are English."""
    settings = Settings(whisper_model="base", model_cache_dir=model_cache, workers=2)
    threads: list[str] = []
    engine = build_engine(
        settings, on_batch=lambda size: threads.append(threading.current_thread().name)
    )
    german = ["de/fleurs_de-000.ogg", "de/fleurs_de-007.ogg", "de/fleurs_de-001.ogg"]
    english = [c for c in references if c.startswith("en/ljspeech")]
    try:
        transcript = engine.transcribe(_joined(corpus, german + english))
    finally:
        engine.close()
    assert len(set(threads)) == 2, threads
    assert transcript.language == "de"
    said = " ".join(w for c in german for w in _words(references[c]["reference_transcript"]))
    start = " ".join(_words(transcript.text)[: len(said.split())])
    assert jiwer.wer(said, start) < 0.35, transcript.text
