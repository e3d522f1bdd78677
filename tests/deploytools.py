"""What the operator-file tests share: the checkout, the shutdown grace, and the tools they
check files with (a missing one fails in CI, where `make test` installs it, and skips elsewhere)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from voicebot.config import Settings

ROOT = Path(__file__).resolve().parent.parent
GRACE = Settings.model_fields["shutdown_grace_seconds"].default


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
