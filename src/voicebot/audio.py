"""Decode any audio or video container PyAV reads into 16 kHz mono float32, in memory."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from pathlib import Path

import av
import av.error
import numpy as np
import numpy.typing as npt

from voicebot.errors import (
    AudioTooLongError,
    CorruptAudioError,
    EmptyAudioError,
    NotAudioError,
)

SAMPLE_RATE = 16000
# Containers PyAV opens that hold pictures, not sound: a PNG renamed .ogg is "not audio".
_IMAGE_FORMATS = ("_pipe", "image2", "gif", "apng", "webp")
_GROUP_SAMPLES = 500_000

Audio = npt.NDArray[np.float32]
DAMAGED = "The audio is damaged or cut off: nothing in it could be decoded."
# Leading bytes of containers people send; such a file that fails to open is damaged, not alien.
_SIGNATURES = (b"OggS", b"ID3", b"RIFF", b"fLaC", b"\x1aE\xdf\xa3", b"FORM", b"#!AMR", b"caff")


def decode(source: bytes | Path, *, max_seconds: float) -> Audio:
    """Return the first audio track as 16 kHz mono float32, or raise a `BadAudioError`."""
    if isinstance(source, Path):
        if not source.is_file():
            raise NotAudioError("no such file")
        if source.stat().st_size == 0:
            raise EmptyAudioError("The file is empty.")
        opened: str | io.BytesIO = str(source)
    else:
        if not source:
            raise EmptyAudioError("The file is empty.")
        opened = io.BytesIO(source)
    try:
        container = av.open(opened, mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        head = source[:12] if isinstance(source, bytes) else _head(source)
        if isinstance(error, av.error.EOFError) or _looks_like_media(head):
            raise CorruptAudioError(DAMAGED) from error
        raise NotAudioError("This is not an audio or video file I can read.") from error
    with container:
        if not container.streams.audio:
            if container.streams.video and not container.format.name.endswith(_IMAGE_FORMATS):
                raise NotAudioError("This video has no sound track.")
            raise NotAudioError("This is not an audio or video file I can read.")
        if container.duration is not None and container.duration / av.time_base > max_seconds:
            raise _too_long(container.duration / av.time_base, max_seconds)
        samples = _decode_samples(container, max_seconds=max_seconds)
    if samples.size == 0:
        raise CorruptAudioError(DAMAGED)
    return (samples.astype(np.float32) / 32768.0).astype(np.float32, copy=False)


def _head(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(12)


def _looks_like_media(head: bytes) -> bool:
    return head.startswith(_SIGNATURES) or head[4:8] == b"ftyp"


def _decode_samples(container: av.container.InputContainer, *, max_seconds: float) -> np.ndarray:
    # Same pipeline as faster-whisper's decode_audio (s16 mono through one resampler,
    # frames grouped by a FIFO), so both engines see identical samples.
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    limit = int(max_seconds * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    for frame in _resample(_group(_frames(container)), resampler):
        array = frame.to_ndarray().reshape(-1)
        total += array.size
        if total > limit:
            raise _too_long(total / SAMPLE_RATE, max_seconds)
        chunks.append(array)
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


def _frames(container: av.container.InputContainer) -> Iterator[av.AudioFrame]:
    """Yield decodable frames; a truncated or damaged tail ends the stream instead of failing."""
    packets = container.demux(container.streams.audio[0])
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError:
            return
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            continue
        except av.error.FFmpegError:
            return
        yield from frames


def _group(frames: Iterator[av.AudioFrame]) -> Iterator[av.AudioFrame]:
    fifo = av.AudioFifo()
    for frame in frames:
        frame.pts = None
        fifo.write(frame)
        if fifo.samples >= _GROUP_SAMPLES and (grouped := fifo.read()) is not None:
            yield grouped
    if fifo.samples > 0 and (rest := fifo.read()) is not None:
        yield rest


def _resample(
    frames: Iterator[av.AudioFrame], resampler: av.AudioResampler
) -> Iterator[av.AudioFrame]:
    for frame in itertools.chain(frames, [None]):
        yield from resampler.resample(frame)


def _too_long(seconds: float, limit: float) -> AudioTooLongError:
    return AudioTooLongError(
        f"The audio is too long: {_clock(seconds)}+ where the limit is {_clock(limit)}."
    )


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
