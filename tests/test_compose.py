"""The Compose files: docker-compose.yml (one process) and deploy/compose.scale.yml (the bot,
workers and their servers), parsed and checked against each other, the settings and the files
they mount. No Docker is needed; `docker compose config` also checks them where it is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices
from sqlalchemy.engine import make_url

from voicebot.config import Settings

from .deploytools import DEPLOY, GRACE, ROOT, SCALE, mounts, scale_stack, tool

#: Stand-ins for the passwords .env gives Compose.
DOTENV = {
    "POSTGRES_PASSWORD": "pg0secret",
    "RABBITMQ_PASSWORD": "mq0secret",
    "GRAFANA_ADMIN_PASSWORD": "gf0secret",
}
#: The Compose specification's keys these files may use (a misspelt one fails here).
TOP_KEYS = frozenset({"name", "services", "volumes", "networks", "configs", "secrets"})
SERVICE_KEYS = frozenset(
    {"build", "image", "command", "entrypoint", "environment", "env_file", "volumes", "ports"}
    | {"expose", "depends_on", "healthcheck", "restart", "deploy", "hostname", "profiles"}
    | {"stop_grace_period", "stop_signal", "user", "networks", "labels", "logging", "tmpfs"}
)
HEALTHCHECK_KEYS = frozenset(
    {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
)
#: Services of the stack that may run without a health check, and why.
NO_HEALTHCHECK: dict[str, str] = {}
#: `${NAME}`, `${NAME:-default}`, `${NAME:?error}`: the interpolation the stack uses.
VARIABLE = re.compile(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}")


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
    # `docker compose up` starts this one process; the stack at scale is a file of its own.
    assert "profiles" not in service
    assert "deploy/compose.scale.yml" in (ROOT / "docker-compose.yml").read_text()


# --- deploy/compose.scale.yml --------------------------------------------------------------


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """`value` with Compose's `${NAME}`, `${NAME:-default}`, `${NAME:?error}` resolved."""

    def one(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if env.get(name):
            return env[name]
        if operator == ":?":
            raise KeyError(f"{name}: {argument}")
        return argument if operator == ":-" else ""

    return VARIABLE.sub(one, value)


def environment(service: dict[str, Any], env: Mapping[str, str] = DOTENV) -> dict[str, str]:
    """A service's `environment`, interpolated from `env` (.env)."""
    assert isinstance(service.get("environment", {}), dict)
    return {key: interpolate(str(value), env) for key, value in service["environment"].items()}


def settings_env_names() -> set[str]:
    """The environment variable of each setting (the field's name or alias, upper-cased)."""
    prefix = Settings.model_config.get("env_prefix", "")
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice.upper() for choice in alias.choices if isinstance(choice, str)}
        else:
            names.add((alias if isinstance(alias, str) else f"{prefix}{name}").upper())
    return names


def voicebot_services(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run voicebot (`voicebot ROLE`), by name."""
    return {
        name: service
        for name, service in stack["services"].items()
        if service.get("command", [None])[0] == "voicebot"
    }


def seconds(duration: str) -> int:
    """A Compose duration in whole seconds (`45s`, `1m30s`)."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert duration, duration
    assert parts, duration
    minutes, secs = parts.groups()
    return int(minutes or 0) * 60 + int(secs or 0)


def test_scale_stack_has_its_services_each_with_a_health_check() -> None:
    """Bot, workers and their servers; known keys only; a health check each; pinned images."""
    stack = scale_stack()
    assert set(stack) - {key for key in stack if key.startswith("x-")} <= TOP_KEYS
    services = stack["services"]
    assert set(services) == {
        *("bot", "worker", "postgres", "rabbitmq", "redis", "prometheus", "grafana")
    }
    for name, service in services.items():
        assert set(service) <= SERVICE_KEYS, (name, set(service) - SERVICE_KEYS)
        assert service["restart"] == "unless-stopped", name
        assert "container_name" not in service, name  # a fixed name could not scale
        tag = service["image"].partition(":")[2]
        assert tag, f"{name}: pin the image's version"
        assert tag != "latest" or "build" in service, f"{name}: pin the image's version"
        if name in NO_HEALTHCHECK:
            continue
        check = service["healthcheck"]
        assert set(check) <= HEALTHCHECK_KEYS, name
        assert not check.get("disable"), name
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name
        assert len(check["test"]) > 1, name
        for duration in ("interval", "timeout", "start_period"):
            assert seconds(check[duration]) > 0, (name, duration)
        assert check["retries"] >= 1, name
    assert services["postgres"]["healthcheck"]["test"][1] == "pg_isready"
    assert "rabbitmq-diagnostics" in services["rabbitmq"]["healthcheck"]["test"]
    assert "redis-cli ping" in services["redis"]["healthcheck"]["test"][1]


def test_bot_and_worker_run_one_image_in_their_roles() -> None:
    """The same image built from this checkout, `voicebot bot` / `voicebot worker`, health."""
    stack = scale_stack()
    services = voicebot_services(stack)
    assert set(services) == {"bot", "worker"}
    bot, worker = services["bot"], services["worker"]
    assert bot["command"] == ["voicebot", "bot"]
    assert worker["command"] == ["voicebot", "worker"]
    for name, service in services.items():
        assert service["image"] == "voicebot:latest", name
        assert (DEPLOY / service["build"]).resolve() == ROOT, name
        assert (DEPLOY / service["env_file"]).resolve() == ROOT / ".env", name
        assert service["healthcheck"]["test"] == ["CMD", "voicebot", "health"], name
        assert seconds(service["stop_grace_period"]) > GRACE, name
        assert service["stop_signal"] == "SIGTERM", name
        env = environment(service)
        # As docker-compose.yml: the model in the image, the HTTP app on every interface.
        single = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
        for key in ("DATA_DIR", "MODEL_CACHE_DIR", "HTTP_HOST", "HTTP_PORT"):
            assert env[key] == single["voicebot"]["environment"][key], (name, key)
    replica = {"WORKER_QUEUES": "default,long", "WORKERS": "1", "BATCH_SIZE": "4"}
    assert environment(bot) | replica == environment(worker)

    # Workers: two by default of one batch loop of up to 4 notes each (RabbitMQ then gives each
    # 4 messages at a time), nothing published (so `--scale worker=N` works).
    assert worker["deploy"]["replicas"] == 2
    assert "ports" not in worker
    # The bot's HTTP app on the host's loopback: 8080 (nginx's upstream) and the next ports
    # for more bots in webhook mode.
    (published,) = bot["ports"]
    host, ports, container = published.split(":")
    assert host == "127.0.0.1"
    assert container == environment(bot)["HTTP_PORT"]
    first, _, last = ports.partition("-")
    assert int(first) == 8080 < int(last)
    assert "server 127.0.0.1:8080;" in (DEPLOY / "nginx" / "voicebot.conf").read_text()


def test_scale_stack_sets_only_settings_voicebot_has() -> None:
    """Every variable set for bot and worker is a setting (an env name of voicebot.config's
    Settings, or one of the scale-out's), and their values pass Settings' validation."""
    known = settings_env_names()
    assert {"DATABASE_URL", "WORKERS", "WHISPER_DEVICE", "BOT_MODE"} <= known
    for name, service in voicebot_services(scale_stack()).items():
        env = environment(service)
        unknown = set(env) - known
        assert not unknown, f"{name} sets {unknown}, which voicebot.config.Settings does not read"
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, **{key.lower(): value for key, value in env.items() if key in known}
        )
        assert settings.sqlalchemy_url == env["DATABASE_URL"]
    assert environment(scale_stack()["services"]["worker"])["WORKER_QUEUES"] == "default,long"
    assert environment(scale_stack()["services"]["bot"])["LONG_AUDIO_SECONDS"] == "600"


def test_scale_stack_urls_reach_its_servers_as_their_users() -> None:
    """DATABASE_URL, BROKER_URL and REDIS_URL name the services, their ports and credentials."""
    services = scale_stack()["services"]
    env = environment(services["bot"])
    postgres = environment(services["postgres"])
    database = make_url(env["DATABASE_URL"])
    assert database.drivername == "postgresql+asyncpg"
    assert (database.host, database.port) == ("postgres", 5432)
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == postgres["POSTGRES_PASSWORD"] == DOTENV["POSTGRES_PASSWORD"]
    assert database.database == postgres["POSTGRES_DB"]
    assert mounts(services["postgres"])["/var/lib/postgresql/data"] in scale_stack()["volumes"]

    rabbitmq = environment(services["rabbitmq"])
    broker = urlsplit(env["BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port) == ("amqp", "rabbitmq", 5672)
    assert broker.username == rabbitmq["RABBITMQ_DEFAULT_USER"]
    assert broker.password == rabbitmq["RABBITMQ_DEFAULT_PASS"] == DOTENV["RABBITMQ_PASSWORD"]
    # Durable: the data in a volume, under a node name that does not change with the container.
    assert mounts(services["rabbitmq"])["/var/lib/rabbitmq"] in scale_stack()["volumes"]
    assert services["rabbitmq"]["hostname"] == "rabbitmq"

    redis = urlsplit(env["REDIS_URL"])
    assert (redis.scheme, redis.hostname, redis.port, redis.path) == ("redis", "redis", 6379, "/0")


def test_scale_stack_waits_for_healthy_servers() -> None:
    """Bot and worker start once PostgreSQL, RabbitMQ and Redis are healthy; Grafana after
    Prometheus; every dependency is on a service with a health check."""
    services = scale_stack()["services"]
    for name in ("bot", "worker"):
        assert services[name]["depends_on"] == {
            server: {"condition": "service_healthy"} for server in ("postgres", "rabbitmq", "redis")
        }
    assert services["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    for name, service in services.items():
        for dependency, wait in service.get("depends_on", {}).items():
            assert wait["condition"] == "service_healthy", (name, dependency)
            assert "healthcheck" in services[dependency], (name, dependency)


def test_scale_stack_takes_its_passwords_from_the_env_file() -> None:
    """No password is written in the file: each is `${NAME:?...}` from .env (documented in
    .env.example, which .gitignore and .dockerignore keep out), and a missing one stops Compose."""
    text = SCALE.read_text()
    # Every `$` is an interpolation this test understands.
    assert text.count("$") == len(VARIABLE.findall(text))
    stack = scale_stack()
    required = {name for name, operator, _ in VARIABLE.findall(text) if operator == ":?"}
    assert required == set(DOTENV)
    for name, service in stack["services"].items():
        for key, value in service.get("environment", {}).items():
            value = str(value)
            if re.search(r"PASS|SECRET|TOKEN", key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", value), (name, key)
            userinfo = urlsplit(value).netloc.rpartition("@")[0] if "://" in value else ""
            if ":" in userinfo:
                assert VARIABLE.fullmatch(userinfo.partition(":")[2]), (name, key)
    with pytest.raises(KeyError, match=r"set POSTGRES_PASSWORD in \.env"):
        environment(stack["services"]["postgres"], {})
    example = (ROOT / ".env.example").read_text()
    for name in required:
        assert re.search(rf"^#?{name}=$", example, re.MULTILINE), name
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def test_scale_stack_mounts_files_that_exist_and_declares_its_volumes() -> None:
    """Each bind mount's source exists under deploy/; each named volume is declared and used;
    RabbitMQ lets a long job's delivery wait past JOB_TIMEOUT_SECONDS."""
    stack = scale_stack()
    used = set()
    for name, service in stack["services"].items():
        for target, source in mounts(service).items():
            assert target.startswith("/"), (name, target)
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
            else:
                used.add(source)
    assert used == set(stack["volumes"])

    conf = mounts(stack["services"]["rabbitmq"])["/etc/rabbitmq/conf.d/20-voicebot.conf"]
    values = dict(
        (part.strip() for part in line.split("=", 1))
        for line in (DEPLOY / conf).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    job_timeout = Settings.model_fields["job_timeout_seconds"].default
    assert int(values["consumer_timeout"]) > 2 * job_timeout * 1000


def test_docker_compose_config_accepts_the_stack(tmp_path: Path) -> None:
    """`docker compose config` (the Compose specification's own check), where Docker's Compose
    plugin is installed: not in CI, which has no Docker."""
    docker = tool("docker", required_in_ci=False)
    version = subprocess.run(
        [docker, "compose", "version"], capture_output=True, check=False, timeout=60
    )
    if version.returncode != 0:
        pytest.skip("docker has no compose plugin")
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    dotenv = tmp_path / ".env"
    dotenv.write_text("".join(f"{key}={value}\n" for key, value in DOTENV.items()))
    command = [docker, "compose", "-f", str(tmp_path / "deploy" / SCALE.name)]
    result = subprocess.run(
        [*command, "--env-file", str(dotenv), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
