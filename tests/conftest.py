"""Shared fixtures: the real corpus and real models, loaded once per test session."""

from __future__ import annotations

import csv
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from voicebot.config import Settings
from voicebot.engine import Engine, build_engine

from .fakes import FakeBotAPI

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("CORPUS_DIR", ROOT.parent / "shared" / "corpus"))


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The shared real-speech corpus; its absence is a set-up error, not a skip."""
    assert (CORPUS / "manifest.tsv").is_file(), f"corpus not found at {CORPUS}"
    return CORPUS


@pytest.fixture(scope="session")
def references(corpus: Path) -> dict[str, dict[str, str]]:
    """Manifest rows by file name."""
    with (corpus / "manifest.tsv").open(encoding="utf-8") as handle:
        return {row["file"]: row for row in csv.DictReader(handle, delimiter="\t")}


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh model cache, so every run assembles the bundled model for real."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def base_engine(model_cache: Path) -> Engine:
    """The bundled multilingual `base` model."""
    return build_engine(Settings(whisper_model="base", model_cache_dir=model_cache))


@pytest.fixture(scope="session")
def tiny_engine(model_cache: Path) -> Engine:
    """The bundled English-only `tiny.en` model: fast."""
    return build_engine(Settings(whisper_model="tiny.en", model_cache_dir=model_cache))


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    """A fresh fake Bot API server on 127.0.0.1, stopped after the test."""
    async with FakeBotAPI() as fake:
        yield fake
