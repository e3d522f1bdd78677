"""Model assembly: the bundled base model is reassembled once, verified, atomically."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from voicebot import weights
from voicebot.errors import ModelUnavailableError


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    """Copies of the shipped parts and side files, free to damage."""
    source = tmp_path_factory.mktemp("parts")
    found = []
    for index, package in enumerate(weights.BASE_PARTS, start=1):
        original = weights._package_dir(package, "data") / f"model.bin.part{index}"
        found.append(Path(shutil.copyfile(original, source / original.name)))
    side_dir = weights._package_dir(weights.BASE_PARTS[0], "data")
    sides = [Path(shutil.copyfile(side_dir / n, source / n)) for n in weights.BASE_SIDE_FILES]
    return found, sides


def _assemble(parts: list[Path], sides: list[Path], target: Path) -> None:
    weights.assemble(
        parts, side_files=sides, target=target, size=weights.BASE_SIZE, sha256=weights.BASE_SHA256
    )


def test_assembled_once_and_reused(tmp_path: Path) -> None:
    target = weights.resolve_model("base", cache_dir=tmp_path)
    model = target / "model.bin"
    assert model.stat().st_size == weights.BASE_SIZE
    stamp = model.stat().st_mtime_ns
    assert weights.resolve_model("base", cache_dir=tmp_path) == target
    assert model.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in target.iterdir()) == [
        ".verified",
        "config.json",
        "model.bin",
        "tokenizer.json",
        "vocabulary.txt",
    ]


def test_damaged_part_gives_clear_error_and_no_model(
    parts: tuple[list[Path], list[Path]], tmp_path: Path
) -> None:
    found, sides = parts
    damaged = tmp_path / "model.bin.part2"
    data = bytearray(found[1].read_bytes())
    data[1000] ^= 0xFF
    damaged.write_bytes(bytes(data))
    target = tmp_path / "model"
    with pytest.raises(ModelUnavailableError, match="damaged"):
        _assemble([found[0], damaged], sides, target)
    assert not (target / "model.bin").exists()
    assert not [p for p in target.iterdir() if p.name.endswith(".tmp")]


def test_missing_part(parts: tuple[list[Path], list[Path]], tmp_path: Path) -> None:
    found, sides = parts
    with pytest.raises(ModelUnavailableError, match=r"model\.bin\.part2 is missing"):
        _assemble([found[0], tmp_path / "model.bin.part2"], sides, tmp_path / "model")
    assert not (tmp_path / "model" / "model.bin").exists()


def test_truncated_part(parts: tuple[list[Path], list[Path]], tmp_path: Path) -> None:
    found, sides = parts
    short = tmp_path / "model.bin.part1"
    short.write_bytes(found[0].read_bytes()[:-10])
    with pytest.raises(ModelUnavailableError, match="damaged"):
        _assemble([short, found[1]], sides, tmp_path / "model")


def test_stale_cache_is_rebuilt(tmp_path: Path) -> None:
    target = weights.resolve_model("base", cache_dir=tmp_path)
    (target / "model.bin").write_bytes(b"half-written")
    weights.resolve_model("base", cache_dir=tmp_path)
    assert (target / "model.bin").stat().st_size == weights.BASE_SIZE


def test_directory_and_names(tmp_path: Path) -> None:
    assert (weights.resolve_model("tiny.en", cache_dir=tmp_path) / "model.bin").is_file()
    with pytest.raises(ModelUnavailableError, match=r"no model\.bin"):
        weights.resolve_model(str(tmp_path), cache_dir=tmp_path)
    with pytest.raises(ModelUnavailableError, match="no such directory"):
        weights.resolve_model(str(tmp_path / "nope"), cache_dir=tmp_path)


def test_hub_name_offline_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError, match="WHISPER_MODEL=small"):
        weights.resolve_model("small", cache_dir=tmp_path)
