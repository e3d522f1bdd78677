"""Output formats: SRT and WebVTT parse back with independent parsers."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import srt
import webvtt

from voicebot.formats import Format, clock, render
from voicebot.recording import Segment, Transcript

TRANSCRIPT = Transcript(
    text="Hello there. Second line --> arrow. Late words.",
    language="en",
    language_probability=0.93,
    duration=3725.5,
    segments=(
        Segment(0.0, 2.5, " Hello there."),
        Segment(2.5, 5.04, " Second line --> arrow.\n\nWith a blank line."),
        Segment(3700.125, 3725.5, " Late words."),
    ),
)


def test_clock() -> None:
    assert clock(3725.5) == "01:02:05.500"
    assert clock(3725.5, separator=",") == "01:02:05,500"
    assert clock(65.2, hours=False) == "01:05"


def test_srt_parses_back() -> None:
    subtitles = list(srt.parse(render(TRANSCRIPT, Format.srt)))
    assert [s.index for s in subtitles] == [1, 2, 3]
    assert subtitles[0].start == timedelta(0)
    assert subtitles[1].end == timedelta(seconds=5.04)
    assert subtitles[2].start == timedelta(seconds=3700.125)
    assert subtitles[1].content == "Second line → arrow.\nWith a blank line."


def test_vtt_parses_back() -> None:
    captions = webvtt.from_buffer(io.StringIO(render(TRANSCRIPT, Format.vtt)))
    assert len(captions) == 3
    assert captions[0].text == "Hello there."
    assert captions[2].start == "01:01:40.125"
    assert captions[2].end == "01:02:05.500"


def test_json() -> None:
    document = json.loads(render(TRANSCRIPT, Format.json))
    assert document["language"] == "en"
    assert document["segments"][2] == {"start": 3700.125, "end": 3725.5, "text": "Late words."}


def test_text_and_timestamps() -> None:
    assert render(TRANSCRIPT, Format.text) == TRANSCRIPT.text + "\n"
    lines = render(TRANSCRIPT, Format.timestamps).splitlines()
    assert lines[0] == "[00:00:00] Hello there."
    assert lines[-1] == "[01:01:40] Late words."
    short = Transcript("Hi.", "en", 1.0, 70.0, (Segment(65.0, 66.0, " Hi."),))
    assert render(short, Format.timestamps) == "[01:05] Hi.\n"
