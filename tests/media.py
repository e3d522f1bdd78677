"""Make test media with PyAV: voice notes from the corpus, silent audio, soundless video."""

from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from voicebot.audio import decode


def encode_audio(
    samples: np.ndarray, *, container: str = "ogg", codec: str = "libopus", rate: int = 48000
) -> bytes:
    """Encode 16 kHz mono float32 samples into a container, like a phone's voice note."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        _write_audio(out, _audio_stream(out, codec=codec, rate=rate), samples)
    return buffer.getvalue()


def _audio_stream(out: Any, *, codec: str, rate: int) -> Any:
    """A mono audio stream on an open output (streams must exist before muxing starts)."""
    stream = out.add_stream(codec, rate=rate)
    stream.layout = "mono"
    return stream


def _write_audio(out: Any, stream: Any, samples: np.ndarray) -> None:
    """Encode 16 kHz float32 `samples` into `stream`."""
    frame = av.AudioFrame.from_ndarray(
        (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1),
        format="s16",
        layout="mono",
    )
    frame.sample_rate, frame.pts, frame.time_base = 16000, 0, Fraction(1, 16000)
    resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=stream.rate)
    for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
        for packet in stream.encode(resampled):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


LONG_SPEECH_CLIPS = (
    "jfk.flac",
    "ljspeech_LJ001-0001.wav",
    "ljspeech_LJ001-0003.wav",
    "librispeech_2412-153948-0000.flac",
    "ljspeech_LJ001-0005.wav",
)


def long_speech(corpus: Path) -> np.ndarray:
    """About 50 s of real English speech (two 30 s windows, many segments), 16 kHz float32."""
    return np.concatenate([decode(corpus / "en" / c, max_seconds=60) for c in LONG_SPEECH_CLIPS])


def voice_note(path: Path) -> bytes:
    """OGG/Opus bytes of a corpus clip, as Telegram stores a voice message."""
    return encode_audio(decode(path.read_bytes(), max_seconds=3600))


def silence(seconds: float, *, container: str = "wav", codec: str = "pcm_s16le") -> bytes:
    """Quiet noise (no speech) of the given length."""
    rng = np.random.default_rng(7)
    samples = (rng.standard_normal(int(seconds * 16000)) * 1e-4).astype(np.float32)
    return encode_audio(samples, container=container, codec=codec, rate=16000)


def video_without_sound(seconds: float = 1.0) -> bytes:
    """An MP4 with one video stream and no audio stream."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"  # type: ignore[union-attr]
        for index in range(int(seconds * 10)):
            image = np.full((64, 64, 3), index * 20 % 255, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):  # type: ignore[union-attr]
                out.mux(packet)
        for packet in stream.encode(None):  # type: ignore[union-attr]
            out.mux(packet)
    return buffer.getvalue()


def video_with_sound(path: Path) -> bytes:
    """An MP4 (mpeg4 video + AAC audio) carrying a corpus clip, like a video note."""
    samples = decode(path.read_bytes(), max_seconds=3600)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as out:
        video = out.add_stream("mpeg4", rate=5)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"  # type: ignore[union-attr]
        audio = _audio_stream(out, codec="aac", rate=48000)
        for index in range(int(len(samples) / 16000 * 5)):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts = index
            for packet in video.encode(frame):  # type: ignore[union-attr]
                out.mux(packet)
        for packet in video.encode(None):  # type: ignore[union-attr]
            out.mux(packet)
        _write_audio(out, audio, samples)
    return buffer.getvalue()


def png() -> bytes:
    """A valid one-pixel PNG image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )
