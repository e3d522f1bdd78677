"""Decoding: every container a user may send, and every class of bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voicebot.audio import SAMPLE_RATE, decode
from voicebot.engine import Engine
from voicebot.errors import (
    AudioTooLongError,
    CorruptAudioError,
    EmptyAudioError,
    NoSpeechError,
    NotAudioError,
)

from .media import encode_audio, png, silence, video_without_sound, voice_note


@pytest.fixture(scope="module")
def jfk(corpus: Path) -> np.ndarray:
    return decode(corpus / "en" / "jfk.flac", max_seconds=60)


@pytest.mark.parametrize(
    ("container", "codec", "rate"),
    [
        ("ogg", "libopus", 48000),
        ("mp3", "libmp3lame", 44100),
        ("ipod", "aac", 44100),
        ("wav", "pcm_s16le", 16000),
        ("flac", "flac", 16000),
        ("webm", "libopus", 48000),
    ],
)
def test_containers_decode_to_16k_mono(
    jfk: np.ndarray, container: str, codec: str, rate: int
) -> None:
    data = encode_audio(jfk, container=container, codec=codec, rate=rate)
    samples = decode(data, max_seconds=60)
    assert samples.dtype == np.float32
    assert abs(samples.shape[0] - jfk.shape[0]) < 0.2 * SAMPLE_RATE
    assert 0.01 < float(np.abs(samples).mean()) < 0.5


def test_empty(tmp_path: Path) -> None:
    with pytest.raises(EmptyAudioError, match="empty"):
        decode(b"", max_seconds=60)
    (tmp_path / "empty.ogg").write_bytes(b"")
    with pytest.raises(EmptyAudioError):
        decode(tmp_path / "empty.ogg", max_seconds=60)


def test_png_renamed_ogg(tmp_path: Path) -> None:
    path = tmp_path / "picture.ogg"
    path.write_bytes(png())
    with pytest.raises(NotAudioError, match="not an audio or video file"):
        decode(path, max_seconds=60)


def test_random_bytes() -> None:
    noise = np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    with pytest.raises(NotAudioError):
        decode(noise, max_seconds=60)


def test_video_without_sound() -> None:
    with pytest.raises(NotAudioError, match="no sound track"):
        decode(video_without_sound(), max_seconds=60)


def test_truncated_file_is_transcribed_as_far_as_it_decodes(
    tiny_engine: Engine, corpus: Path
) -> None:
    whole = voice_note(corpus / "en" / "jfk.flac")
    transcript = tiny_engine.transcribe(whole[: len(whole) // 2])
    words = transcript.text.lower()
    assert "fellow americans" in words
    assert "for your country" not in words
    assert transcript.duration < 8


def test_truncated_to_nothing_decodable(corpus: Path) -> None:
    whole = voice_note(corpus / "en" / "jfk.flac")
    with pytest.raises(CorruptAudioError, match="damaged or cut off"):
        decode(whole[:120], max_seconds=60)


def test_corrupt_middle_keeps_what_decodes(tiny_engine: Engine, corpus: Path) -> None:
    data = bytearray(voice_note(corpus / "en" / "jfk.flac"))
    rng = np.random.default_rng(3)
    middle = len(data) // 2
    data[middle : middle + 400] = rng.integers(0, 256, 400, dtype=np.uint8).tobytes()
    transcript = tiny_engine.transcribe(bytes(data))
    assert "fellow americans" in transcript.text.lower()


def test_too_long(jfk: np.ndarray) -> None:
    with pytest.raises(AudioTooLongError, match="too long"):
        decode(encode_audio(jfk, container="wav", codec="pcm_s16le", rate=16000), max_seconds=5)


def test_too_long_without_duration_header(jfk: np.ndarray) -> None:
    # Raw ADTS AAC carries no duration: the limit is enforced while decoding.
    data = encode_audio(jfk, container="adts", codec="aac", rate=44100)
    with pytest.raises(AudioTooLongError):
        decode(data, max_seconds=5)


def test_no_speech(tiny_engine: Engine) -> None:
    with pytest.raises(NoSpeechError, match="speech"):
        tiny_engine.transcribe(silence(4.0))
