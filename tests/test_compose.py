"""The Compose files: docker-compose.yml (one process) and deploy/compose.scale.yml (the bot,
workers and their servers), parsed and checked against each other, the settings and the files
they mount. No Docker is needed; `docker compose config` also checks them where it is installed.
"""

from __future__ import annotations

import yaml

from .deploytools import GRACE, ROOT


def test_compose_runs_the_service_with_a_volume_and_the_env_file() -> None:
    """One service: built here, .env, the data volume at DATA_DIR, a stop grace past the bot's."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["voicebot"]
    assert service["build"] == "."
    assert service["env_file"] == ".env"
    data_dir = service["environment"]["DATA_DIR"]
    (volume,) = service["volumes"]
    name, mount = volume.split(":")
    assert mount == data_dir
    assert name in compose["volumes"]
    assert service["ports"] == ["127.0.0.1:8080:8080"]
    grace = service["stop_grace_period"]
    assert grace.endswith("s")
    assert int(grace[:-1]) > GRACE
    assert "# profile `scale`" in (ROOT / "docker-compose.yml").read_text()
