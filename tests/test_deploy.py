"""The operator files: nginx (`nginx -t`), systemd (`systemd-analyze verify`), the Dockerfile
(parsed, and its model-assembly step run). Compose files: tests/test_compose.py; Prometheus and
Grafana: tests/test_monitoring.py.

No Docker daemon or registry is reachable where the tests run, so the Dockerfile is parsed and
its one build step with our code in it (assembling the model) is run here; nginx and systemd
files are checked by their own tools.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from voicebot.weights import BASE_SIZE

from .deploytools import GRACE, ROOT, tool

NGINX = ROOT / "deploy" / "nginx" / "voicebot.conf"
UNIT = ROOT / "deploy" / "systemd" / "voicebot.service"
CERTIFICATE = "/etc/letsencrypt/live/bot.example.org/fullchain.pem"
PRIVATE_KEY = "/etc/letsencrypt/live/bot.example.org/privkey.pem"
#: The app refuses webhook bodies over 1 MB (issue 9); nginx must let at least that through.
WEBHOOK_BODY_LIMIT = 1024 * 1024


# --- nginx ---------------------------------------------------------------------------------


def nginx_test(site: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on a main config that includes `site` as a distribution's http block does."""
    nginx = tool("nginx")
    key, certificate = workdir / "privkey.pem", workdir / "fullchain.pem"
    if not key.exists():
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
                *("-subj", "/CN=bot.example.org", "-keyout", str(key), "-out", str(certificate)),
            ],
            check=True,
            capture_output=True,
        )
    included = workdir / "voicebot.conf"
    included.write_text(site.replace(CERTIFICATE, str(certificate)).replace(PRIVATE_KEY, str(key)))
    temp = "\n".join(
        f"    {kind}_temp_path {workdir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = workdir / "nginx.conf"
    main.write_text(
        f"pid {workdir / 'nginx.pid'};\nerror_log {workdir / 'error.log'};\nevents {{}}\n"
        f"http {{\n    access_log off;\n{temp}\n    include {included};\n}}\n"
    )
    return subprocess.run(
        [nginx, "-t", "-p", str(workdir), "-c", str(main), "-e", str(workdir / "error.log")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    """The real file (certificate paths pointed at a fresh self-signed pair) passes `nginx -t`."""
    site = NGINX.read_text()
    assert CERTIFICATE in site
    assert PRIVATE_KEY in site
    result = nginx_test(site, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr

    # nginx -t does catch mistakes: a misspelt directive fails.
    broken = nginx_test(site.replace("proxy_pass", "proxy_passs", 1), tmp_path)
    assert broken.returncode != 0
    assert 'unknown directive "proxy_passs"' in broken.stderr


def directives(block: str) -> dict[str, list[str]]:
    """Directive name -> values, for the directives written directly in `block`."""
    found: dict[str, list[str]] = {}
    depth = 0
    statement = ""
    for char in block:
        if char == "{":
            depth += 1
            statement = ""
        elif char == "}":
            depth -= 1
            statement = ""
        elif char == ";":
            if depth == 0 and statement.strip():
                name, _, value = statement.strip().partition(" ")
                found.setdefault(name, []).append(value.strip())
            statement = ""
        else:
            statement += char
    return found


def blocks(text: str, header: str) -> list[str]:
    """The bodies of the blocks whose header matches the regex `header` (then `{`)."""
    text = re.sub(r"#[^\n]*", "", text)
    bodies = []
    for match in re.finditer(rf"{header}\s*\{{", text):
        depth, index = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            index += 1
        bodies.append(text[match.end() : index - 1])
    return bodies


def location(server: str, path: str) -> str:
    """The body of `location [=] path { ... }` in a server block."""
    (body,) = blocks(server, rf"\blocation\s+(?:=\s+)?{re.escape(path)}")
    return body


def test_nginx_config_proxies_the_webhook_and_dashboard() -> None:
    """TLS on 443, /telegram/webhook and /admin to 127.0.0.1:8080, body limit, proxy headers."""
    conf = re.sub(r"#[^\n]*", "", NGINX.read_text())
    assert re.search(r"upstream voicebot\s*\{\s*server 127\.0\.0\.1:8080;", conf)
    tls = next(s for s in blocks(conf, r"\bserver") if "443 ssl" in s)
    settings = directives(tls)
    assert settings["ssl_certificate"] == [CERTIFICATE]
    assert settings["ssl_protocols"] == ["TLSv1.2 TLSv1.3"]
    (limit,) = settings["client_max_body_size"]
    number, unit = re.fullmatch(r"(\d+)([km]?)", limit.lower()).groups()  # type: ignore[union-attr]
    allowed = int(number) * {"": 1, "k": 1024, "m": 1024 * 1024}[unit]
    assert WEBHOOK_BODY_LIMIT < allowed <= 4 * WEBHOOK_BODY_LIMIT
    headers = dict(value.split(" ", 1) for value in settings["proxy_set_header"])
    assert headers["X-Forwarded-For"] == "$remote_addr"  # overwritten: cannot be forged
    assert headers["X-Forwarded-Proto"] == "$scheme"
    assert headers["Host"] == "$host"
    for path in ("/telegram/webhook", "/admin"):
        assert directives(location(tls, path))["proxy_pass"] == ["http://voicebot"]
    # Nothing else is published (/metrics, /ready stay on the loopback).
    assert directives(location(tls, "/"))["return"] == ["404"]
    plain = next(s for s in blocks(conf, r"\bserver") if "listen 80;" in s)
    assert directives(location(plain, "/"))["return"] == ["301 https://$host$request_uri"]


# --- systemd -------------------------------------------------------------------------------


def unit_keys(text: str) -> dict[str, list[str]]:
    """`Section.Key` -> values of a unit file."""
    keys: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        keys.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return keys


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds nothing (ExecStart pointed at this checkout's voicebot)."""
    # Part of systemd: not installed for the tests; without it test_systemd_unit_keys still runs.
    analyze = tool("systemd-analyze", required_in_ci=False)
    voicebot = Path(sys.executable).parent / "voicebot"
    assert voicebot.is_file()
    text = UNIT.read_text()
    assert "/opt/voicebot/.venv/bin/voicebot run" in text
    unit = tmp_path / "voicebot.service"
    unit.write_text(text.replace("/opt/voicebot/.venv/bin/voicebot", str(voicebot)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False, timeout=60
    )
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")

    # It does report mistakes (on stderr, even when it exits 0).
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False, timeout=60
    )
    assert "Failed to parse service restart specifier" in result.stderr


def test_systemd_unit_keys() -> None:
    """Restart on failure, a stop timeout past the shutdown grace, the data dir, the env file."""
    keys = unit_keys(UNIT.read_text())
    assert keys["Service.Restart"] == ["on-failure"]
    (timeout,) = keys["Service.TimeoutStopSec"]
    assert re.fullmatch(r"\d+s?", timeout), timeout
    assert int(timeout.rstrip("s")) > GRACE
    assert keys["Service.KillSignal"] == ["SIGTERM"]
    assert keys["Service.EnvironmentFile"] == ["/etc/voicebot/voicebot.env"]
    assert "DATA_DIR=/var/lib/voicebot" in keys["Service.Environment"]
    assert keys["Service.StateDirectory"] == ["voicebot"]  # creates /var/lib/voicebot for User
    assert keys["Service.User"] != ["root"]
    assert keys["Service.ExecStart"][0].endswith("voicebot run")
    assert keys["Install.WantedBy"] == ["multi-user.target"]


# --- Docker --------------------------------------------------------------------------------


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def stages(dockerfile: Path) -> dict[str, list[tuple[str, str]]]:
    """Each named stage's instructions after its FROM."""
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for name, args in instructions(dockerfile):
        if name == "FROM":
            found[args.split()[-1]] = current = []
        elif current is not None:
            current.append((name, args))
    return found


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    """The ENV values a stage sets."""
    values = {}
    for name, args in stage:
        if name == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                values[key] = value
    return values


def test_dockerfile_builds_in_stages_with_the_model_and_runs_as_a_user(tmp_path: Path) -> None:
    """uv builder with the locked deps and the model; slim runtime: user, volume, health, run."""
    dockerfile = ROOT / "Dockerfile"
    found = stages(dockerfile)
    assert list(found)[-2:] == ["builder", "runtime"]
    builder, runtime = found["builder"], found["runtime"]
    runs = [args for name, args in builder if name == "RUN"]
    assert any("uv sync --locked --no-dev --no-editable" in run for run in runs)

    # The model is assembled at build time into MODEL_CACHE_DIR, which the runtime copies.
    models = env_of(runtime)["MODEL_CACHE_DIR"]
    assert env_of(builder)["MODEL_CACHE_DIR"] == models
    (assembly,) = [run for run in runs if "assemble_base" in run]
    assert ("COPY", f"--from=builder {models} {models}") in runtime
    # Run that very step here, into a temporary directory: it makes a verified model.
    program = shlex.split(assembly)[shlex.split(assembly).index("-c") + 1]
    target = tmp_path / "models"
    subprocess.run(
        [sys.executable, "-c", program.replace(models, str(target))], check=True, timeout=300
    )
    assert (target / "whisper-base" / "model.bin").stat().st_size == BASE_SIZE
    assert (target / "whisper-base" / ".verified").is_file()

    # Runtime: no uv, a non-root user, data in a volume, the health check, `voicebot run`.
    assert not any("uv" in args.split() for name, args in runtime if name == "RUN")
    (user,) = [args for name, args in runtime if name == "USER"]
    assert user.split(":")[0] not in {"root", "0"}
    env = env_of(runtime)
    (volume,) = [json.loads(args) for name, args in runtime if name == "VOLUME"]
    assert volume == [env["DATA_DIR"]]
    assert env["PATH"].startswith("/app/.venv/bin:")
    (healthcheck,) = [args for name, args in runtime if name == "HEALTHCHECK"]
    assert json.loads(healthcheck.split("CMD", 1)[1]) == ["voicebot", "health"]
    (command,) = [args for name, args in runtime if name == "CMD"]
    assert json.loads(command) == ["voicebot", "run"]
    # What the build copies exists, and .dockerignore does not hide it (nor lets secrets in).
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for name, args in builder:
        if name == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert source not in ignored, source
    assert {".env", ".venv", "data", ".git"} <= ignored
