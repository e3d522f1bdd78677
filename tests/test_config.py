"""Settings defaults that depend on the machine."""

from __future__ import annotations

import os

import pytest

from voicebot.config import GPU_WORKERS, Settings


def test_workers_default_to_two_loops_on_a_cpu_and_more_on_a_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WORKERS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert Settings(_env_file=None).workers == 2
    assert Settings(_env_file=None, whisper_device="cpu").workers == 2
    assert Settings(_env_file=None, whisper_device="cuda").workers == GPU_WORKERS
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert Settings(_env_file=None).workers == 1
    assert Settings(_env_file=None, whisper_device="cuda").workers == 1


def test_workers_set_by_the_operator_win_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert Settings(_env_file=None, whisper_device="cuda", workers=1).workers == 1
    monkeypatch.setenv("WORKERS", "3")
    monkeypatch.setenv("WHISPER_DEVICE", "cuda")
    assert Settings(_env_file=None).workers == 3
