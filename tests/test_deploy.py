"""The operator files: nginx (`nginx -t`), systemd (`systemd-analyze verify`), Docker (parsed),
Prometheus rules (`promtool check rules`), the Grafana dashboard (its queries parsed by promtool).

No Docker daemon or registry is reachable where the tests run, so the Dockerfile and
docker-compose.yml are parsed and their one build step with our code in it (assembling the
model) is run here; nginx and systemd files are checked by their own tools.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from voicebot.config import Settings
from voicebot.metrics import build_metrics
from voicebot.weights import BASE_SIZE

ROOT = Path(__file__).resolve().parent.parent
NGINX = ROOT / "deploy" / "nginx" / "voicebot.conf"
UNIT = ROOT / "deploy" / "systemd" / "voicebot.service"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "voicebot.json"
OPERATIONS = ROOT / "docs" / "operations.md"
CERTIFICATE = "/etc/letsencrypt/live/bot.example.org/fullchain.pem"
PRIVATE_KEY = "/etc/letsencrypt/live/bot.example.org/privkey.pem"
GRACE = Settings.model_fields["shutdown_grace_seconds"].default
#: The app refuses webhook bodies over 1 MB (issue 9); nginx must let at least that through.
WEBHOOK_BODY_LIMIT = 1024 * 1024


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


# --- Prometheus and Grafana ----------------------------------------------------------------

#: Series Prometheus makes itself for each scrape, and the labels it puts on every target's.
SCRAPE_SERIES = {"up": frozenset()}
TARGET_LABELS = frozenset({"job", "instance"})
#: PromQL words that look like names.
PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
    | {"bool", "offset", "inf", "nan"}
)


def exported() -> dict[str, frozenset[str]]:
    """Every series name the app's /metrics can show -> its label names (from build_metrics)."""
    metrics = build_metrics()
    labels = {
        wrapper._name: frozenset(wrapper._labelnames)
        for wrapper in vars(metrics).values()
        if hasattr(wrapper, "_labelnames")
    }
    names: dict[str, frozenset[str]] = {}
    for family in metrics.registry.collect():
        own = labels.get(family.name, frozenset())
        suffixes = {
            "counter": {"_total": own, "_created": own},
            "gauge": {"": own},
            "histogram": {"_bucket": own | {"le"}, "_sum": own, "_count": own, "_created": own},
            "summary": {"": own | {"quantile"}, "_sum": own, "_count": own, "_created": own},
        }[family.type]
        for suffix, label_names in suffixes.items():
            names[family.name + suffix] = label_names
    return names


def test_exported_names_include_the_app_metrics_and_process_metrics() -> None:
    """The list the checks below use: suffixes resolved, labels known, process_* there."""
    names = exported()
    assert names["voicebot_jobs_total"] == {"outcome", "error"}
    assert names["voicebot_transcription_seconds_bucket"] == {"le"}
    assert "voicebot_transcription_seconds_count" in names
    assert names["voicebot_queue_length"] == frozenset()
    assert "voicebot_jobs" not in names  # a counter's samples end in _total
    assert "process_resident_memory_bytes" in names  # the ProcessCollector is registered
    assert "process_cpu_seconds_total" in names


def strip_strings(expr: str) -> str:
    """`expr` with its string literals emptied (a label value is not a name)."""
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects."""
    text = strip_strings(expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)  # matchers, ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    return {
        match.group(1)
        for match in re.finditer(r"(?<![\w.$:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text)
        if match.group(1).lower() not in PROMQL_KEYWORDS
    }


def check_names(expr: str, names: dict[str, frozenset[str]]) -> set[str]:
    """Checks each selected series and label in `expr` against `names`; returns the series."""
    found = metric_names(expr)
    assert found, expr
    for name in found:
        assert name in names, f"{name} (in {expr!r}) is not exported by the app"
    text = strip_strings(expr)
    for name, matchers in re.findall(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", text):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
            assert label in names[name] | TARGET_LABELS, f"{name} has no label {label}: {expr!r}"
    every_label = set(TARGET_LABELS).union(*(names[name] for name in found))
    for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", text):
        for label in re.split(r"\s*,\s*", grouping.strip()):
            assert label in every_label, f"no series in {expr!r} has the label {label}"
    return found


def test_metric_names_reads_promql() -> None:
    """The parser finds selectors, not functions, keywords, labels, ranges or numbers."""
    expr = (
        'sum by (outcome) (rate(voicebot_jobs_total{outcome="failed",error=~"a|b"}[15m]))'
        " / on() group_left sum(rate(x_total[$__rate_interval] offset 1h)) > 4 * 1024 and up"
    )
    assert metric_names(expr) == {"voicebot_jobs_total", "x_total", "up"}
    names = exported()
    with pytest.raises(AssertionError, match=r"voicebot_jobs \(in .* is not exported"):
        check_names("rate(voicebot_jobs[5m])", names)
    with pytest.raises(AssertionError, match="has no label outcom"):
        check_names('voicebot_jobs_total{outcom="failed"}', names)
    with pytest.raises(AssertionError, match="has the label reason"):
        check_names("sum by (reason) (voicebot_jobs_total)", names)


def promtool_check_rules(path: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check rules PATH`."""
    promtool = tool("promtool")
    return subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_alert_rules_pass_promtool_check_rules(tmp_path: Path) -> None:
    """The rule file passes `promtool check rules`; a broken expression in a copy fails it."""
    result = promtool_check_rules(ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout

    broken = tmp_path / "alerts.yml"
    text = ALERTS.read_text()
    assert "max(voicebot_queue_length) > 50" in text
    broken.write_text(
        text.replace("max(voicebot_queue_length) > 50", "max(voicebot_queue_length > 50")
    )
    result = promtool_check_rules(broken)
    assert result.returncode != 0
    assert "unclosed left parenthesis" in result.stdout + result.stderr


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_alert_rules_have_the_thresholds_and_use_exported_metrics() -> None:
    """Queue > 50, error rate > 5%, p95 over target, memory, down; names exported; runbooks."""
    names = exported() | SCRAPE_SERIES
    rules = {
        rule["alert"]: rule
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
    }
    for rule in rules.values():
        check_names(rule["expr"], names)
    exprs = {alert: " ".join(rule["expr"].split()) for alert, rule in rules.items()}
    assert exprs["VoicebotQueueLong"] == "max(voicebot_queue_length) > 50"
    assert exprs["VoicebotErrorRateHigh"] == (
        'sum(rate(voicebot_jobs_total{outcome="failed"}[15m])) '
        "/ sum(rate(voicebot_jobs_total[15m])) > 0.05"
    )
    assert "histogram_quantile(0.95," in exprs["VoicebotTranscriptionSlow"]
    assert "voicebot_realtime_factor_bucket" in exprs["VoicebotTranscriptionSlow"]
    assert exprs["VoicebotTranscriptionSlow"].endswith("> 0.5")
    assert "0.5" in rules["VoicebotTranscriptionSlow"]["annotations"]["summary"]
    assert exprs["VoicebotMemoryHigh"].endswith("> 4 * 1024 * 1024 * 1024")
    assert exprs["VoicebotDown"] == 'up{job="voicebot"} == 0'
    # Each runbook is a section of docs/operations.md.
    anchors = {
        github_anchor(line.lstrip("#"))
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("### ")
    }
    for alert, rule in rules.items():
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert page == "docs/operations.md", alert
        assert anchor in anchors, f"{alert}: no section #{anchor} in docs/operations.md"
        assert alert in OPERATIONS.read_text(), alert


def dashboard_panels() -> list[dict[str, object]]:
    """The dashboard's panels (those in rows too)."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [panel for panel in panels if panel["type"] != "row"]


def test_grafana_dashboard_is_importable() -> None:
    """Valid JSON, a schema version, a Prometheus data source variable every query uses."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["title"]
    assert dashboard["uid"]
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert (variable["name"], variable["query"]) == ("DS_PROMETHEUS", "prometheus")
    source = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    panels = dashboard_panels()
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == source, panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == source, panel["title"]
            assert target["expr"].strip(), panel["title"]
    titles = " | ".join(str(panel["title"]).lower() for panel in panels)
    for wanted in (
        "updates",
        "jobs",
        "refusals",
        "queue length",
        "running jobs",
        "transcription seconds p50/p95",
        "real-time factor",
        "audio seconds per hour",
        "cache hit rate",
        "telegram errors",
        "memory",
    ):
        assert wanted in titles, wanted


def test_grafana_queries_use_exported_metrics_and_parse(tmp_path: Path) -> None:
    """Every query names series the app exports, and promtool parses each one."""
    names = exported()
    used: set[str] = set()
    rules = []
    for panel in dashboard_panels():
        for target in panel["targets"]:  # type: ignore[attr-defined]
            used |= check_names(target["expr"], names)
            expr = target["expr"].replace("$__rate_interval", "5m")
            rules.append(
                {"record": f"dashboard:panel{panel['id']}:{target['refId']}", "expr": expr}
            )
    assert {
        "voicebot_updates_total",
        "voicebot_jobs_total",
        "voicebot_refusals_total",
        "voicebot_queue_length",
        "voicebot_running_jobs",
        "voicebot_transcription_seconds_bucket",
        "voicebot_realtime_factor_bucket",
        "voicebot_audio_seconds_total",
        "voicebot_cache_hits_total",
        "voicebot_cache_misses_total",
        "voicebot_telegram_errors_total",
        "process_resident_memory_bytes",
    } <= used
    # promtool parses the queries (as recording rules: the same PromQL parser Prometheus runs).
    recorded = tmp_path / "dashboard-rules.yml"
    recorded.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool_check_rules(recorded)
    assert result.returncode == 0, result.stdout + result.stderr
