"""What the operator-file tests share: the checkout, the shutdown grace, and the tools they
check files with (a missing one fails in CI, where `make test` installs it, and skips elsewhere)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from voicebot.config import Settings

ROOT = Path(__file__).resolve().parent.parent
GRACE = Settings.model_fields["shutdown_grace_seconds"].default
DEPLOY = ROOT / "deploy"
#: The stack at scale; its relative paths are relative to its folder (Compose's project folder).
SCALE = DEPLOY / "compose.scale.yml"


def tool(name: str, *, required_in_ci: bool = True) -> str:
    """The tool's path; missing, it fails in CI (`make test` installs it) and skips elsewhere."""
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None
    )
    if found is None:
        message = f"{name} is not installed (`make test` installs it with apt-get)"
        if required_in_ci and os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """`promtool ARGS...` (`check rules FILE`, `check config FILE`)."""
    return subprocess.run(
        [tool("promtool"), *args], capture_output=True, text=True, check=False, timeout=60
    )


def scale_stack() -> dict[str, Any]:
    """deploy/compose.scale.yml, parsed (anchors and `<<` merges resolved, as Compose does)."""
    stack: dict[str, Any] = yaml.safe_load(SCALE.read_text())
    return stack


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's mounts, target -> source (a named volume, or a path relative to deploy/)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        found[target] = source
    return found
