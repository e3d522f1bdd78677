"""Render a `Transcript` as plain text, timestamped text, SRT, WebVTT or JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import StrEnum

from voicebot.recording import Transcript


class Format(StrEnum):
    """Output formats, by the name the CLI and the bot use."""

    text = "text"
    timestamps = "timestamps"
    srt = "srt"
    vtt = "vtt"
    json = "json"


EXTENSIONS = {
    Format.text: "txt",
    Format.timestamps: "txt",
    Format.srt: "srt",
    Format.vtt: "vtt",
    Format.json: "json",
}


def render(transcript: Transcript, fmt: Format) -> str:
    """Return `transcript` in format `fmt`, ending with a newline."""
    return _RENDERERS[fmt](transcript)


def clock(seconds: float, *, separator: str = ".", hours: bool = True) -> str:
    """Format seconds as HH:MM:SS.mmm (SRT uses a comma); without hours, MM:SS."""
    millis = max(0, round(seconds * 1000))
    hh, rest = divmod(millis, 3_600_000)
    mm, rest = divmod(rest, 60_000)
    ss, ms = divmod(rest, 1000)
    if not hours:
        return f"{hh * 60 + mm:02d}:{ss:02d}"
    return f"{hh:02d}:{mm:02d}:{ss:02d}{separator}{ms:03d}"


def _text(transcript: Transcript) -> str:
    return transcript.text + "\n"


def _timestamps(transcript: Transcript) -> str:
    long = transcript.duration >= 3600

    def stamp(seconds: float) -> str:
        return clock(seconds)[:8] if long else clock(seconds, hours=False)

    return "".join(f"[{stamp(s.start)}] {s.text.strip()}\n" for s in transcript.segments)


def _srt(transcript: Transcript) -> str:
    blocks = [
        f"{index}\n{clock(s.start, separator=',')} --> {clock(s.end, separator=',')}\n"
        f"{_cue_text(s.text)}\n"
        for index, s in enumerate(transcript.segments, start=1)
    ]
    return "\n".join(blocks)


def _vtt(transcript: Transcript) -> str:
    cues = [
        f"{clock(s.start)} --> {clock(s.end)}\n{_cue_text(s.text)}\n" for s in transcript.segments
    ]
    return "WEBVTT\n\n" + "\n".join(cues)


def _json(transcript: Transcript) -> str:
    document = {
        "text": transcript.text,
        "language": transcript.language,
        "language_probability": round(transcript.language_probability, 4),
        "duration": round(transcript.duration, 3),
        "segments": [
            {"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text.strip()}
            for s in transcript.segments
        ],
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def _cue_text(text: str) -> str:
    # A blank line ends a cue in both SRT and VTT, and "-->" would start a new timing line.
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines).replace("-->", "→") or "…"


_RENDERERS: dict[Format, Callable[[Transcript], str]] = {
    Format.text: _text,
    Format.timestamps: _timestamps,
    Format.srt: _srt,
    Format.vtt: _vtt,
    Format.json: _json,
}
