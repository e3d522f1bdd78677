"""`voicebot transcribe` as a user runs it: a real process, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .media import png


def _run(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODEL_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "voicebot", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_good_and_bad_files(corpus: Path, tmp_path: Path, model_cache: Path) -> None:
    picture = tmp_path / "picture.ogg"
    picture.write_bytes(png())
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    good = corpus / "en" / "librispeech_alif_another_door.wav"
    result = _run(
        "transcribe", str(picture), str(good), str(empty), "--model", "tiny.en", cache=model_cache
    )
    assert result.returncode == 1
    assert "another door" in result.stdout.lower()
    errors = result.stderr.strip().splitlines()
    assert errors == [
        f"voicebot: {picture}: This is not an audio or video file I can read.",
        f"voicebot: {empty}: The file is empty.",
    ]


@pytest.mark.parametrize(("fmt", "suffix"), [("srt", "srt"), ("json", "json")])
def test_output_directory(
    corpus: Path, tmp_path: Path, model_cache: Path, fmt: str, suffix: str
) -> None:
    clip = corpus / "de" / "fleurs_de-004.ogg"
    result = _run(
        "transcribe", str(clip), "-f", fmt, "-o", str(tmp_path / "out"), cache=model_cache
    )
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "out" / f"fleurs_de-004.{suffix}").read_text(encoding="utf-8")
    if fmt == "json":
        assert json.loads(written)["language"] == "de"
    else:
        assert written.startswith("1\n00:00:0")


def test_language_option(corpus: Path, model_cache: Path) -> None:
    clip = corpus / "es" / "fleurs_es-006.ogg"
    result = _run("transcribe", str(clip), "--language", "es", "-f", "json", cache=model_cache)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert (document["language"], document["language_probability"]) == ("es", 1.0)


def test_unknown_model_is_one_line(tmp_path: Path, model_cache: Path) -> None:
    result = _run("transcribe", "x.ogg", "--model", str(tmp_path / "missing"), cache=model_cache)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"voicebot: WHISPER_MODEL={tmp_path / 'missing'}: no such directory"
    ]
