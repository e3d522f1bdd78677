"""Settings, read once from the environment and `.env`; env names are flat (no prefix)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "voicebot"


class Settings(BaseSettings):
    """Every voicebot setting; see `.env.example` and the README table."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # Engine
    whisper_model: str = "base"
    whisper_device: Literal["auto", "cpu", "cuda"] = "auto"
    whisper_compute_type: str | None = None
    whisper_cpu_threads: int = Field(default=0, ge=0)
    whisper_beam_size: int = Field(default=5, ge=1)
    whisper_vad: bool = True
    whisper_language: str | None = None
    whisper_allowed_languages: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_audio_seconds: float = Field(default=3 * 3600, gt=0)
    job_timeout_seconds: float = Field(default=3600, gt=0)
    model_cache_dir: Path = Field(default_factory=_default_cache_dir)

    # Service
    data_dir: Path = Path("data")
    log_level: str = "INFO"
    log_format: Literal["console", "json"] = "console"

    @field_validator("whisper_allowed_languages", mode="before")
    @classmethod
    def _split_languages(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @field_validator("whisper_language", "whisper_compute_type", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @property
    def cpu_threads(self) -> int:
        """Threads for CTranslate2 on CPU: the setting, or every core when it is 0."""
        return self.whisper_cpu_threads or os.cpu_count() or 1
