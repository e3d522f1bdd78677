"""Benchmark: our engine against stock faster-whisper on the shared real-speech corpus.

Same loaded model and settings for both, alternating per file (and swapping which goes first),
with language auto-detection. Prints per-language WER for both and the time ratio ours/stock.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import jiwer

from voicebot.config import Settings
from voicebot.engine import Engine, Options, load_whisper

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus"


@dataclass
class Tally:
    """Per-language totals."""

    files: int = 0
    audio: float = 0.0
    seconds: dict[str, float] = field(default_factory=lambda: {"stock": 0.0, "ours": 0.0})
    references: list[str] = field(default_factory=list)
    hypotheses: dict[str, list[str]] = field(default_factory=lambda: {"stock": [], "ours": []})


def normalise(text: str) -> str:
    """Lower-case, fold Russian ё, drop punctuation, squeeze spaces."""
    text = unicodedata.normalize("NFKC", text).lower().replace("ё", "е")  # noqa: RUF001 (Russian yo → ye)
    text = re.sub(r"[^\w\s']|_", " ", text)
    text = text.replace("'", "")
    return " ".join(text.split())


def main() -> None:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--corpus", type=Path, default=Path(os.environ.get("CORPUS_DIR", DEFAULT_CORPUS))
    )
    parser.add_argument("--repeat", type=int, default=1, help="passes over the corpus")
    parser.add_argument("--language", help="give both engines this language instead of detecting")
    parser.add_argument("--limit", type=int, default=0, help="only the first N files")
    parser.add_argument("--output", type=Path, default=ROOT / "bench-results" / "engine.md")
    args = parser.parse_args()

    # One file at a time: one batch loop with every core, for stock and ours alike (with the
    # default WORKERS=2 each would get one thread of two).
    settings = Settings(workers=1)
    model = load_whisper(settings)
    engine = Engine(model, Options(beam_size=settings.whisper_beam_size, vad=True, workers=1))
    rows = list(
        csv.DictReader((args.corpus / "manifest.tsv").open(encoding="utf-8"), delimiter="\t")
    )
    if args.limit:
        rows = rows[: args.limit]

    def stock(path: Path) -> str:
        segments, _ = model.transcribe(
            str(path), language=args.language, beam_size=settings.whisper_beam_size, vad_filter=True
        )
        return " ".join(s.text.strip() for s in segments)

    def ours(path: Path) -> str:
        return engine.transcribe(path, language=args.language).text

    runners = {"stock": stock, "ours": ours}
    ours(args.corpus / rows[0]["file"])  # warm-up: first calls allocate
    stock(args.corpus / rows[0]["file"])

    tallies: dict[str, Tally] = {}
    for rep in range(args.repeat):
        for index, row in enumerate(rows):
            path = args.corpus / row["file"]
            tally = tallies.setdefault(row["language"], Tally())
            order = ["stock", "ours"] if (index + rep) % 2 == 0 else ["ours", "stock"]
            texts: dict[str, str] = {}
            for name in order:
                started = time.perf_counter()
                texts[name] = runners[name](path)
                tally.seconds[name] += time.perf_counter() - started
            tally.files += 1
            tally.audio += float(row["duration_s"])
            tally.references.append(normalise(row["reference_transcript"]))
            for name in runners:
                tally.hypotheses[name].append(normalise(texts[name]))
            print(
                f"{row['file']}: stock {texts['stock']!r} | ours {texts['ours']!r}", file=sys.stderr
            )

    table = render(tallies, settings, args)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table, encoding="utf-8")


def render(tallies: dict[str, Tally], settings: Settings, args: argparse.Namespace) -> str:
    """Markdown table of WER and speed per language, with a total row."""
    lines = [
        f"model {settings.whisper_model}, {settings.whisper_compute_type or 'int8'}, "
        f"{settings.cpu_threads} threads, beam {settings.whisper_beam_size}, VAD on, language "
        f"{args.language or 'auto-detected'}, {args.repeat} pass(es)",
        "",
        "| language | files | audio s | WER stock | WER ours | RTF stock | RTF ours "
        "| time ours/stock |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = []
    for language, t in [*sorted(tallies.items()), ("all", _total(tallies))]:
        wer = {n: 100 * jiwer.wer(t.references, h) for n, h in t.hypotheses.items()}
        rtf = {n: s / t.audio for n, s in t.seconds.items()}
        ratio = t.seconds["ours"] / t.seconds["stock"]
        if language != "all":
            ratios.append(ratio)
        lines.append(
            f"| {language} | {t.files} | {t.audio:.0f} | {wer['stock']:.1f} | {wer['ours']:.1f} "
            f"| {rtf['stock']:.3f} | {rtf['ours']:.3f} | {ratio:.3f} |"
        )
    lines.append("")
    lines.append(f"median per-language ratio {statistics.median(ratios):.3f}")
    return "\n".join(lines) + "\n"


def _total(tallies: dict[str, Tally]) -> Tally:
    total = Tally()
    for t in tallies.values():
        total.files += t.files
        total.audio += t.audio
        total.references += t.references
        for name in total.seconds:
            total.seconds[name] += t.seconds[name]
            total.hypotheses[name] += t.hypotheses[name]
    return total


if __name__ == "__main__":
    main()
