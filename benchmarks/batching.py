"""Benchmark: batched decoding across jobs, and long recordings (issue 13).

One process, one loaded model (WHISPER_MODEL, by default the bundled `base`; int8 on a CPU,
beam WHISPER_BEAM_SIZE = 5, VAD on, language auto-detected), every clip decoded once from the
shared real-speech corpus (`../shared/corpus`, references from its manifest.tsv) into 16-kHz
float arrays, so that every run below times recognition only:

1. Burst of short voices, (a) the English corpus clips and (b) every clip of the corpus (en,
   de, es, ru, languages interleaved so that batches mix them). Wall time and WER of
   - stock faster-whisper one by one: `WhisperModel.transcribe(clip, beam_size, vad_filter)`;
   - stock batched: `BatchedInferencePipeline.transcribe(..., batch_size=8)` over the clips
     laid end to end, each clip one batch item via `clip_timestamps` (a clip over 30 s is cut
     at VAD pauses into items of at most 30 s, since the pipeline would drop the rest), with
     `multilingual=True` so that each item's language is detected (stock one by one detects
     per file too; `language=None` adds the pipeline's one detection over the first 30 s);
   - voicebot: every clip at once, `asyncio.gather(engine.transcribe_async(...))`, for each
     `--batch-sizes` value (batch 1: one at a time), or once where `Options` has no
     `batch_size` (the engine before batching).
   Ratios against stock one by one. Goals: <= 0.5x, WER <= stock + 0.5 points.
2. Long recordings built from corpus speech with 1.5 s of silence between clips: clean read
   English (LibriSpeech, LJ Speech) of >= 2 min and >= 7 min, and every English clip (with the
   very quiet FLEURS speakers) once (~224 s) and twice (~446 s). Wall time and WER of stock
   sequential (`WhisperModel.transcribe`, VAD on), stock batched (`BatchedInferencePipeline`,
   batch 8, VAD on) and voicebot (`engine.transcribe(audio)` at the default batch size),
   against the WER of the same speech transcribed clip by clip (voicebot, batch size 1, one
   clip at a time). Goals: <= 0.5x stock sequential, never slower than stock batched, WER
   within 1 point of clip by clip.
3. Memory: for each batch size a fresh process (`--memory-child N`) loads the model, runs a
   burst of 16 English clips at once and then the ~224-s recording, and reports its resident
   memory (VmRSS after imports and after loading, peak VmHWM and ru_maxrss) and times. Goal:
   <= 600 MB at the default batch size. Also what `import aiogram` alone adds to a bare
   interpreter's resident memory, as is and as voicebot imports it (`telegramtypes`), and
   `import faster_whisper`, for scale.

Prints a markdown report and writes it to bench-results/batching.md (batching-quick.md with
`--quick`, a smoke test: a few clips and one 1-minute recording).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import csv
import dataclasses
import importlib.metadata
import inspect
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jiwer
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus"
sys.path.insert(0, str(ROOT))  # benchmarks.engine: the WER normalisation of `make bench`

from benchmarks.engine import normalise  # noqa: E402

from voicebot.audio import SAMPLE_RATE, Audio, decode  # noqa: E402
from voicebot.config import Settings  # noqa: E402
from voicebot.engine import Engine, Options, load_whisper  # noqa: E402
from voicebot.logs import setup_logging  # noqa: E402

GAP_SECONDS = 1.5  # silence between clips in a long recording
STOCK_BATCH = 8  # BatchedInferencePipeline's batch size (its default)
WINDOW_SECONDS = 30.0  # one Whisper window: the longest batch item
CLEAN_SOURCES = ("librispeech_", "ljspeech_")  # clean read speech (no FLEURS, no JFK)
MEMORY_BURST = 16  # clips sent at once in each memory child
GOAL_BURST_RATIO = 0.5
GOAL_BURST_WER = 0.5  # points over stock one by one
GOAL_LONG_RATIO = 0.5
GOAL_LONG_WER = 1.0  # points from clip by clip
GOAL_MB = 600.0
DEFERRED_AIOGRAM = "voicebot.telegramtypes:import_deferred"
RSS_PROBE = (
    "import importlib, sys\n"
    "for name in sys.argv[1:]:\n"
    "    module, _, call = name.partition(':')\n"
    "    module = importlib.import_module(module)\n"
    "    if call:\n"
    "        getattr(module, call)()\n"
    "with open('/proc/self/status') as status:\n"
    "    print(next(line.split()[1] for line in status if line.startswith('VmRSS:')))\n"
)


@dataclass(frozen=True)
class Clip:
    """A corpus clip decoded once: 16-kHz samples, its reference and language."""

    file: str
    language: str
    reference: str
    samples: Audio

    @property
    def seconds(self) -> float:
        return float(self.samples.shape[0] / SAMPLE_RATE)


@dataclass
class Run:
    """One way of transcribing one piece of work: its wall time and texts, clip by clip."""

    label: str
    seconds: float
    hypotheses: list[str]
    failures: list[str] = field(default_factory=list)  # exception names of failed clips


@dataclass(frozen=True)
class Recording:
    """A long recording: clips end to end with `GAP_SECONDS` of silence between them."""

    name: str
    clips: tuple[Clip, ...]
    samples: Audio

    @property
    def seconds(self) -> float:
        return float(self.samples.shape[0] / SAMPLE_RATE)

    @property
    def reference(self) -> str:
        return " ".join(clip.reference for clip in self.clips)


@dataclass
class Section:
    """Runs of one piece of work (a burst or a recording), in the order they were timed."""

    name: str
    clips: Sequence[Clip]  # a long recording: one, its clips' references end to end
    audio_seconds: float
    parts: int  # corpus clips in it
    runs: list[Run] = field(default_factory=list)

    def wer(self, run: Run) -> float:
        return word_error_rate([c.reference for c in self.clips], run.hypotheses)


# ---------------------------------------------------------------------------- corpus, audio


def load_corpus(corpus: Path, languages: Iterable[str] | None = None) -> list[Clip]:
    """The manifest's clips (of `languages`, when given), decoded to 16-kHz float32."""
    wanted = set(languages) if languages is not None else None
    with (corpus / "manifest.tsv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [
        Clip(
            row["file"],
            row["language"],
            row["reference_transcript"],
            decode(corpus / row["file"], max_seconds=3600),
        )
        for row in rows
        if wanted is None or row["language"] in wanted
    ]


def interleave(clips: Sequence[Clip]) -> list[Clip]:
    """Round-robin over languages (en, de, es, ru, en, ...), as a burst from many chats."""
    by_language: dict[str, list[Clip]] = {}
    for clip in clips:
        by_language.setdefault(clip.language, []).append(clip)
    rounds = itertools.zip_longest(*by_language.values())
    return [clip for group in rounds for clip in group if clip is not None]


def spread(clips: Sequence[Clip], count: int) -> list[Clip]:
    """`count` clips taken evenly across `clips` (for --quick)."""
    if count >= len(clips):
        return list(clips)
    return [clips[i * len(clips) // count] for i in range(count)]


def cycle_to(clips: Sequence[Clip], min_seconds: float) -> list[Clip]:
    """`clips` in order, cycled until they span `min_seconds` with the gaps; at least once."""
    chosen: list[Clip] = []
    total = -GAP_SECONDS
    for clip in itertools.cycle(clips):
        if len(chosen) >= len(clips) and total >= min_seconds:
            break
        chosen.append(clip)
        total += clip.seconds + GAP_SECONDS
    return chosen


def join(clips: Sequence[Clip], gap_seconds: float = GAP_SECONDS) -> tuple[Audio, list[int]]:
    """The clips end to end with silence between them, and where each clip starts (samples)."""
    gap = np.zeros(int(gap_seconds * SAMPLE_RATE), dtype=np.float32)
    pieces: list[Audio] = []
    starts: list[int] = []
    position = 0
    for index, clip in enumerate(clips):
        if index:
            pieces.append(gap)
            position += gap.shape[0]
        starts.append(position)
        pieces.append(clip.samples)
        position += clip.samples.shape[0]
    return np.concatenate(pieces).astype(np.float32, copy=False), starts


def recording(name: str, clips: Sequence[Clip], min_seconds: float = 0.0) -> Recording:
    """A long recording of `clips` (cycled to `min_seconds`)."""
    chosen = cycle_to(clips, min_seconds)
    return Recording(name, tuple(chosen), join(chosen)[0])


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """WER in percent over all pairs, both sides normalised as benchmarks/engine.py does."""
    refs = [normalise(r) for r in references]
    return 100 * float(jiwer.wer(refs, [normalise(h) for h in hypotheses]))


def status_kb(key: str) -> int:
    """A /proc/self/status value in kB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------- engines


def batching_supported() -> bool:
    """Whether the engine under test has a `batch_size` option (issue 13)."""
    return "batch_size" in {f.name for f in dataclasses.fields(Options)}


def default_batch_size(settings: Settings) -> int | None:
    """BATCH_SIZE's default (Settings, else Options), or None for the engine before batching."""
    if not batching_supported():
        return None
    configured = getattr(settings, "batch_size", None)
    if isinstance(configured, int):
        return configured
    default = {f.name: f.default for f in dataclasses.fields(Options)}["batch_size"]
    return default if isinstance(default, int) else 1


def make_engine(model: Any, settings: Settings, batch_size: int | None) -> Engine:
    """An engine on the shared `model` (loaded for WORKERS batch threads), with as many threads;
    `batch_size` is passed only where Options has it."""
    values: dict[str, Any] = {
        "beam_size": settings.whisper_beam_size,
        "vad": True,
        "workers": settings.workers,
    }
    if batch_size is not None and batching_supported():
        values["batch_size"] = batch_size
    return Engine(model, Options(**values))


def close_engine(engine: Engine, runner: asyncio.Runner) -> None:
    """Call the engine's `close()` where it has one (sync or async)."""
    close: Callable[[], object] | None = getattr(engine, "close", None)
    if close is None:
        return
    result = close()
    if inspect.isawaitable(result):
        runner.run(_await(result))


async def _await(awaitable: Any) -> None:
    await awaitable


def voicebot_label(size: int | None, default: int | None) -> str:
    if size is None:
        return "voicebot (no BATCH_SIZE: one at a time)"
    return f"voicebot BATCH_SIZE={size}" + (" (default)" if size == default else "")


def stock_text(segments: Iterable[Any]) -> str:
    return " ".join(part for s in segments if (part := s.text.strip()))


def stock_one(model: Any, audio: Audio, beam: int) -> str:
    """Stock faster-whisper on one recording, language detected, VAD on."""
    segments, _ = model.transcribe(audio, beam_size=beam, vad_filter=True)
    return stock_text(segments)


def batch_items(samples: Audio) -> list[tuple[int, int]]:
    """A clip as batch items (sample ranges): whole when <= 30 s, else cut at VAD pauses."""
    limit = int(WINDOW_SECONDS * SAMPLE_RATE)
    if samples.shape[0] <= limit:
        return [(0, samples.shape[0])]
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    speech = get_speech_timestamps(
        samples, VadOptions(max_speech_duration_s=WINDOW_SECONDS, min_silence_duration_ms=160)
    )
    items: list[tuple[int, int]] = []
    for part in speech:
        if items and part["end"] - items[-1][0] <= limit:
            items[-1] = (items[-1][0], part["end"])
        else:
            items.append((part["start"], part["end"]))
    return items or [(s, min(s + limit, samples.shape[0])) for s in range(0, len(samples), limit)]


def stock_batched_burst(pipeline: Any, clips: Sequence[Clip], beam: int) -> Run:
    """Stock BatchedInferencePipeline, each clip one item (or more, past 30 s)."""
    audio, starts = join(clips, gap_seconds=1.0)
    stamps: list[dict[str, float]] = []
    owners: list[int] = []
    for index, (clip, start) in enumerate(zip(clips, starts, strict=True)):
        for begin, end in batch_items(clip.samples):
            stamps.append(
                {"start": (start + begin) / SAMPLE_RATE, "end": (start + end) / SAMPLE_RATE}
            )
            owners.append(index)
    offsets = [stamp["start"] for stamp in stamps]
    texts: list[list[str]] = [[] for _ in clips]
    started = time.perf_counter()
    segments, _ = pipeline.transcribe(
        audio,
        beam_size=beam,
        batch_size=STOCK_BATCH,
        clip_timestamps=stamps,
        multilingual=True,
    )
    for segment in segments:
        # A segment starts inside its item; items are a second apart or more (or same clip).
        item = max(0, bisect.bisect_right(offsets, float(segment.start) + 0.01) - 1)
        if part := segment.text.strip():
            texts[owners[item]].append(part)
    seconds = time.perf_counter() - started
    return Run(
        f"stock batched (batch {STOCK_BATCH}, clip_timestamps)",
        seconds,
        [" ".join(t) for t in texts],
    )


async def _gather(engine: Engine, clips: Sequence[Clip]) -> list[Any]:
    return await asyncio.gather(
        *(engine.transcribe_async(clip.samples) for clip in clips), return_exceptions=True
    )


def voicebot_burst(
    engine: Engine, clips: Sequence[Clip], label: str, runner: asyncio.Runner
) -> Run:
    """Every clip at once through `transcribe_async`."""
    started = time.perf_counter()
    results = runner.run(_gather(engine, clips))
    seconds = time.perf_counter() - started
    run = Run(label, seconds, [])
    for result in results:
        if isinstance(result, BaseException):
            run.hypotheses.append("")
            run.failures.append(type(result).__name__)
        else:
            run.hypotheses.append(result.text)
    return run


def timed(label: str, work: Callable[[], list[str]]) -> Run:
    started = time.perf_counter()
    hypotheses = work()
    return Run(label, time.perf_counter() - started, hypotheses)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- the bench


class Bench:
    """The shared model, the engines on it, and what each part measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings = Settings()
        self.beam = self.settings.whisper_beam_size
        self.default = (
            args.batch_size or default_batch_size(self.settings) if batching_supported() else None
        )
        self.sizes: list[int | None] = (
            sorted({*args.batch_sizes, *([self.default] if self.default else [])})
            if batching_supported()
            else [None]
        )
        self.solo_size: int | None = 1 if batching_supported() else None
        self.model: Any = None  # loaded by start(), after the memory children ran
        self.stock_model: Any = None  # the same, for stock faster-whisper: every core
        self.pipeline: Any = None
        self.runner = asyncio.Runner()
        self.engines: dict[int | None, Engine] = {}
        self.solo: dict[str, str] = {}  # file -> voicebot text, one clip at a time
        self.stock_solo: dict[str, str] = {}  # file -> stock one-by-one text
        self.bursts: list[Section] = []
        self.longs: list[Section] = []
        self.clip_by_clip: dict[str, tuple[float, float | None]] = {}  # name -> WER ours, stock
        self.memory: list[dict[str, Any]] = []
        self.imports: dict[str, float] = {}
        self.load = os.getloadavg()[0]

    def engine(self, size: int | None) -> Engine:
        """The engine for `size`, made (and warmed up on one clip) on first use."""
        if size not in self.engines:
            engine = make_engine(self.model, self.settings, size)
            warm = self.clips("en")[0].samples
            engine.transcribe(warm)
            self.runner.run(_gather(engine, [self.clips("en")[0]] * 2))
            self.engines[size] = engine
        return self.engines[size]

    def clips(self, language: str | None = None) -> list[Clip]:
        if not hasattr(self, "_clips"):
            self._clips = load_corpus(self.args.corpus)
        return [c for c in self._clips if language is None or c.language == language]

    def close(self) -> None:
        for engine in self.engines.values():
            close_engine(engine, self.runner)
        self.runner.close()

    def start(self) -> None:
        """Load the model, and warm up stock faster-whisper on it (first calls allocate)."""
        from faster_whisper import BatchedInferencePipeline

        self.model = load_whisper(self.settings)
        # WORKERS=N loads the model with 1/N of the cores for each of its N batch threads; stock
        # faster-whisper runs one decoding at a time and gets every core, as it would alone.
        self.stock_model = (
            self.model if self.settings.workers == 1 else load_whisper(Settings(workers=1))
        )
        self.pipeline = BatchedInferencePipeline(self.stock_model)
        clip = self.clips("en")[0]
        stock_one(self.stock_model, clip.samples, self.beam)
        stock_batched_burst(self.pipeline, [clip], self.beam)

    # -- part 1

    def burst(self, name: str, clips: Sequence[Clip]) -> None:
        section = Section(name, clips, sum(c.seconds for c in clips), len(clips))
        log(f"burst {name}: {len(clips)} clips, {section.audio_seconds:.0f} s of audio")
        stock = timed(
            "stock one by one",
            lambda: [stock_one(self.stock_model, c.samples, self.beam) for c in clips],
        )
        section.runs.append(stock)
        self.stock_solo.update((c.file, h) for c, h in zip(clips, stock.hypotheses, strict=True))
        section.runs.append(stock_batched_burst(self.pipeline, clips, self.beam))
        for size in self.sizes:
            label = voicebot_label(size, self.default)
            run = voicebot_burst(self.engine(size), clips, label, self.runner)
            section.runs.append(run)
            if size == self.solo_size and not run.failures:
                for clip, text in zip(clips, run.hypotheses, strict=True):
                    self.solo.setdefault(clip.file, text)
        for run in section.runs:
            log(f"  {run.label}: {run.seconds:.1f} s, WER {section.wer(run):.1f}")
        log(f"  (this process's peak so far: {status_kb('VmHWM') / 1024:.0f} MB)")
        self.bursts.append(section)

    # -- part 2

    def long(self, rec: Recording) -> None:
        whole = Clip(rec.name, "en", rec.reference, rec.samples)
        section = Section(rec.name, [whole], rec.seconds, len(rec.clips))
        log(f"long {rec.name}: {len(rec.clips)} clips, {rec.seconds:.0f} s")
        audio = rec.samples
        section.runs.append(
            timed("stock sequential", lambda: [stock_one(self.stock_model, audio, self.beam)])
        )

        def batched() -> list[str]:
            segments, _ = self.pipeline.transcribe(
                audio, beam_size=self.beam, batch_size=STOCK_BATCH, vad_filter=True
            )
            return [stock_text(segments)]

        section.runs.append(timed(f"stock batched (batch {STOCK_BATCH}, VAD)", batched))
        engine = self.engine(self.default)

        def ours() -> list[str]:
            try:
                return [engine.transcribe(audio).text]
            except Exception as error:  # noqa: BLE001 - a failure is a result here
                log(f"  voicebot failed: {error!r}")
                return [""]

        section.runs.append(timed(voicebot_label(self.default, self.default), ours))
        refs = [c.reference for c in rec.clips]
        solo = self.solo_texts(rec.clips)
        stock = (
            word_error_rate(refs, [self.stock_solo[c.file] for c in rec.clips])
            if all(c.file in self.stock_solo for c in rec.clips)
            else None
        )
        self.clip_by_clip[rec.name] = (word_error_rate(refs, solo), stock)
        for run in section.runs:
            log(f"  {run.label}: {run.seconds:.1f} s, WER {section.wer(run):.1f}")
        log(f"  (this process's peak so far: {status_kb('VmHWM') / 1024:.0f} MB)")
        self.longs.append(section)

    def solo_texts(self, clips: Sequence[Clip]) -> list[str]:
        """voicebot's text of each clip transcribed alone (batch size 1), cached by file."""
        engine = self.engine(self.solo_size)
        for clip in clips:
            if clip.file not in self.solo:
                try:
                    self.solo[clip.file] = engine.transcribe(clip.samples).text
                except Exception:  # noqa: BLE001 - no speech heard: an empty text
                    self.solo[clip.file] = ""
        return [self.solo[c.file] for c in clips]

    # -- part 3

    def memory_runs(self) -> None:
        sizes: list[int | None] = list(self.args.batch_sizes) if batching_supported() else [None]
        for size in sizes:
            log(f"memory: BATCH_SIZE={size if size is not None else '(none)'}")
            command = [sys.executable, str(Path(__file__).resolve()), "--memory-child"]
            command += [str(size or 0), "--corpus", str(self.args.corpus)]
            command += ["--quick"] if self.args.quick else []
            env = dict(os.environ)
            if size is not None:
                env["BATCH_SIZE"] = str(size)
            done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
            line = next(x for x in reversed(done.stdout.splitlines()) if x.startswith("MEMORY "))
            self.memory.append(json.loads(line.removeprefix("MEMORY ")))
        bare = probe_rss([])
        for module in ("aiogram", DEFERRED_AIOGRAM, "faster_whisper"):
            self.imports[module] = probe_rss([module]) - bare
        self.imports["bare python"] = bare


def probe_rss(modules: list[str]) -> float:
    """Median VmRSS (MB) of a fresh interpreter after importing `modules`, three runs.

    A name `module:function` also calls the function, without arguments, once imported.
    """
    values = []
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", RSS_PROBE, *modules],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        values.append(int(done.stdout.strip()) / 1024)
    return statistics.median(values)


def memory_child(size: int, args: argparse.Namespace) -> None:
    """In a fresh process: load, a burst of 16 clips at once, one long recording; print JSON."""
    setup_logging("WARNING")
    rss_imports = status_kb("VmRSS")
    settings = Settings()
    started = time.perf_counter()
    model = load_whisper(settings)
    engine = make_engine(model, settings, size or None)
    load_seconds = time.perf_counter() - started
    rss_loaded = status_kb("VmRSS")
    english = load_corpus(args.corpus, ["en"])
    burst = spread(english, 4) if args.quick else english[:MEMORY_BURST]
    rec = quick_recording(english) if args.quick else recording("all English", english)
    runner = asyncio.Runner()
    try:
        started = time.perf_counter()
        results = runner.run(_gather(engine, burst))
        burst_seconds = time.perf_counter() - started
        failures = [type(r).__name__ for r in results if isinstance(r, BaseException)]
        started = time.perf_counter()
        try:
            engine.transcribe(rec.samples)
        except Exception as error:  # noqa: BLE001 - reported with the numbers
            failures.append(type(error).__name__)
        long_seconds = time.perf_counter() - started
        close_engine(engine, runner)
    finally:
        runner.close()
    report = {
        "batch_size": size or None,
        "effective": getattr(engine.options, "batch_size", None),
        "rss_imports_mb": rss_imports / 1024,
        "rss_loaded_mb": rss_loaded / 1024,
        "hwm_mb": status_kb("VmHWM") / 1024,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_s": load_seconds,
        "burst_clips": len(burst),
        "burst_s": burst_seconds,
        "long_audio_s": rec.seconds,
        "long_s": long_seconds,
        "failures": failures,
    }
    print("MEMORY " + json.dumps(report), flush=True)


def quick_recording(english: Sequence[Clip]) -> Recording:
    """--quick's one long recording: four English clips (one FLEURS) cycled to >= 60 s."""
    return recording("quick (4 English clips, >= 1 min)", spread(english, 4), 60.0)


def long_recordings(english: Sequence[Clip], quick: bool) -> list[Recording]:
    if quick:
        return [quick_recording(english)]
    clean = [c for c in english if Path(c.file).name.startswith(CLEAN_SOURCES)]
    return [
        recording("clean read speech, >= 2 min", clean, 120.0),
        recording("clean read speech, >= 7 min", clean, 420.0),
        recording("all English clips (quiet FLEURS too)", english),
        recording("all English clips twice, >= 7 min", [*english, *english], 420.0),
    ]


# ---------------------------------------------------------------------------- report


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def render(bench: Bench) -> str:
    args, settings = bench.args, bench.settings
    compute = settings.whisper_compute_type or "int8"
    if bench.model is not None:
        compute = getattr(bench.model.model, "compute_type", compute)
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("faster-whisper", "ctranslate2")
    )
    lines = [
        "# Batched decoding and long recordings (issue 13)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
        f"load {bench.load:.2f} at start; {versions}",
        f"model {settings.whisper_model}, {compute}, beam {bench.beam}, VAD on, language "
        f"auto-detected; voicebot WORKERS={settings.workers} batch threads of "
        f"{settings.cpu_threads} CPU threads each, stock faster-whisper "
        f"{Settings(workers=1).cpu_threads} threads"
        + (", **--quick** (smoke test)" if args.quick else ""),
        "engine: "
        + (
            f"batching (Options.batch_size), default BATCH_SIZE={bench.default}"
            if batching_supported()
            else "no `batch_size` in Options: the engine before batching, one job at a time"
        ),
        "",
    ]
    if bench.bursts:
        lines += render_bursts(bench)
    if bench.longs:
        lines += render_longs(bench)
    if bench.memory:
        lines += render_memory(bench)
    return "\n".join(lines) + "\n"


def render_bursts(bench: Bench) -> list[str]:
    lines = [
        "## Burst of short voices",
        "",
        "All clips handed over at once (voicebot: `asyncio.gather` of `transcribe_async`); "
        "stock one by one is the baseline of the ratios.",
        "",
        "| burst | clips | audio s | run | wall s | x stock 1-by-1 | WER % | WER - stock |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    goals = []
    for section in bench.bursts:
        base = section.runs[0]
        base_wer = section.wer(base)
        for run in section.runs:
            failed = f" ({len(run.failures)} failed: {', '.join(run.failures)})" * bool(
                run.failures
            )
            lines.append(
                f"| {section.name} | {len(section.clips)} | {section.audio_seconds:.0f} "
                f"| {run.label}{failed} | {run.seconds:.1f} | {run.seconds / base.seconds:.2f} "
                f"| {section.wer(run):.1f} | {section.wer(run) - base_wer:+.1f} |"
            )
        runs = {r.label: r for r in section.runs}
        ours = runs[voicebot_label(bench.default, bench.default)]
        ratio, delta = ours.seconds / base.seconds, section.wer(ours) - base_wer
        one = runs.get(voicebot_label(1, bench.default))
        buys = (
            f"; {ours.seconds / one.seconds:.2f}x the time of BATCH_SIZE=1"
            if one is not None and one is not ours
            else ""
        )
        goals.append(
            f"- {section.name}: {ours.label} {ratio:.2f}x stock one by one (goal <= "
            f"{GOAL_BURST_RATIO}): {met(ratio <= GOAL_BURST_RATIO)}; WER {delta:+.1f} points "
            f"(goal <= +{GOAL_BURST_WER}): {met(delta <= GOAL_BURST_WER)}{buys}"
        )
    return [*lines, "", *goals, ""]


def render_longs(bench: Bench) -> list[str]:
    lines = [
        "## Long recordings",
        "",
        f"Corpus clips end to end, {GAP_SECONDS} s of silence between them, transcribed as one "
        "recording. Clip by clip: the same clips transcribed alone (voicebot, batch size 1; "
        "stock one by one in brackets when the burst ran).",
        "",
        "| recording | clips | audio s | run | wall s | x stock sequential | x stock batched "
        "| WER % | WER - clip by clip |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    goals = []
    for section in bench.longs:
        sequential, batched = section.runs[0], section.runs[1]
        solo, stock_solo = bench.clip_by_clip[section.name]
        for run in section.runs:
            lines.append(
                f"| {section.name} | {section.parts} | {section.audio_seconds:.0f} | {run.label} "
                f"| {run.seconds:.1f} | {run.seconds / sequential.seconds:.2f} "
                f"| {run.seconds / batched.seconds:.2f} | {section.wer(run):.1f} "
                f"| {section.wer(run) - solo:+.1f} |"
            )
        brackets = f" ({stock_solo:.1f})" if stock_solo is not None else ""
        lines.append(
            f"| {section.name} | {section.parts} | {section.audio_seconds:.0f} | clip by clip "
            f"| | | | {solo:.1f}{brackets} | |"
        )
        ours = section.runs[2]
        ratio = ours.seconds / sequential.seconds
        delta = section.wer(ours) - solo
        goals.append(
            f"- {section.name}: {ratio:.2f}x stock sequential (goal <= {GOAL_LONG_RATIO}): "
            f"{met(ratio <= GOAL_LONG_RATIO)}; {ours.seconds / batched.seconds:.2f}x stock batched "
            f"(goal <= 1): {met(ours.seconds <= batched.seconds)}; WER {delta:+.1f} points from "
            f"clip by clip (goal <= +{GOAL_LONG_WER}): {met(delta <= GOAL_LONG_WER)}"
        )
    return [*lines, "", *goals, ""]


def render_memory(bench: Bench) -> list[str]:
    lines = [
        "## Memory per process",
        "",
        "A fresh process per batch size: load the model, a burst of "
        f"{bench.memory[0]['burst_clips']} English clips at once, then one "
        f"{bench.memory[0]['long_audio_s']:.0f}-s recording.",
        "",
        "| BATCH_SIZE | RSS after imports MB | after load MB | peak (VmHWM) MB | ru_maxrss MB "
        "| load s | burst s | long s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in bench.memory:
        size = row["effective"] if row["effective"] is not None else "(none)"
        failed = f" ({len(row['failures'])} failed)" * bool(row["failures"])
        lines.append(
            f"| {size}{failed} | {row['rss_imports_mb']:.0f} | {row['rss_loaded_mb']:.0f} "
            f"| {row['hwm_mb']:.0f} | {row['maxrss_mb']:.0f} | {row['load_s']:.1f} "
            f"| {row['burst_s']:.1f} | {row['long_s']:.1f} |"
        )
    chosen = next((r for r in bench.memory if r["effective"] == bench.default), bench.memory[0])
    lines += [
        "",
        f"- peak at the default batch size: {chosen['hwm_mb']:.0f} MB (goal <= {GOAL_MB:.0f}): "
        f"{met(chosen['hwm_mb'] <= GOAL_MB)}",
        "- ru_maxrss (getrusage) is kept across exec, so it is at least the launching process's "
        "peak; VmHWM is the child's own",
        f"- resident memory a fresh interpreter adds by importing (bare python "
        f"{bench.imports['bare python']:.0f} MB): aiogram {bench.imports['aiogram']:.0f} MB "
        f"({bench.imports[DEFERRED_AIOGRAM]:.0f} MB as voicebot imports it, its types' schemas "
        "built on first use), "
        f"faster_whisper {bench.imports['faster_whisper']:.0f} MB",
        "",
    ]
    return lines


# ---------------------------------------------------------------------------- main


def sizes(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("batch sizes are integers >= 1, comma-separated")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--corpus", type=Path, default=Path(os.environ.get("CORPUS_DIR", DEFAULT_CORPUS))
    )
    parser.add_argument(
        "--batch-sizes", type=sizes, default=[1, 4, 8, 16], help="voicebot's, e.g. 1,4,8,16"
    )
    parser.add_argument(
        "--batch-size", type=int, help="the chosen size (default: BATCH_SIZE's default)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: a few clips")
    parser.add_argument("--only", choices=["burst", "long", "memory"])
    parser.add_argument("--output", type=Path)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child, args)
        return
    output = args.output or ROOT / "bench-results" / (
        "batching-quick.md" if args.quick else "batching.md"
    )

    setup_logging("WARNING")  # not the engine's debug line per recording
    bench = Bench(args)
    if args.only in (None, "memory"):
        # First, while this process is small: a child's ru_maxrss starts from its parent's.
        bench.memory_runs()
    try:
        if args.only in (None, "burst", "long"):
            bench.start()
        english = bench.clips("en") if args.only != "memory" else []
        if args.only in (None, "burst"):
            everything = interleave(bench.clips())
            if args.quick:
                everything = interleave(
                    [c for lang in ("en", "de", "es", "ru") for c in spread(bench.clips(lang), 2)]
                )
            bench.burst("English", spread(english, 4) if args.quick else english)
            bench.burst("mixed en/de/es/ru", everything)
        if args.only in (None, "long"):
            for rec in long_recordings(english, args.quick):
                bench.long(rec)
    finally:
        bench.close()

    report = render(bench)
    print(report)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
