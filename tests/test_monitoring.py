"""Prometheus and Grafana: the alert rules (`promtool check rules`), the scrape config of the
scale-out stack (`promtool check config`), the dashboard (its queries parsed by promtool, every
name one the app exports) and Grafana's provisioning files."""

from __future__ import annotations

import json
import posixpath
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from voicebot.metrics import build_metrics

from .deploytools import DEPLOY, ROOT, mounts, promtool, scale_stack

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
#: Prometheus of the stack at scale (deploy/compose.scale.yml).
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "voicebot.json"
#: Grafana's provisioning in that stack: the data source, the dashboard.
PROVISIONING = DEPLOY / "grafana" / "provisioning"
OPERATIONS = ROOT / "docs" / "operations.md"

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
    return promtool("check", "rules", str(path))


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


# --- The stack at scale: Prometheus' scrape config, Grafana's provisioning ------------------


def alert_rules() -> list[dict[str, Any]]:
    """The rules of deploy/prometheus/alerts.yml."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_prometheus_config_passes_promtool_check_config(tmp_path: Path) -> None:
    """The stack's config passes `promtool check config`, which loads the alert rules beside it
    (so they are the ones evaluated); a broken copy fails it."""
    result = promtool("check", "config", str(PROMETHEUS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert f"Checking {ALERTS}" in result.stdout
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout

    shutil.copy(ALERTS, tmp_path / ALERTS.name)
    broken = tmp_path / PROMETHEUS.name
    text = PROMETHEUS.read_text()
    assert "port: 8080" in text
    broken.write_text(text.replace("port: 8080", "# port: 8080", 1))
    result = promtool("check", "config", str(broken))
    assert result.returncode != 0
    assert "a port is required in DNS-SD configs" in result.stdout + result.stderr


def test_prometheus_scrapes_every_bot_and_worker_under_the_alerts_job() -> None:
    """Docker DNS discovery on the names of the services that run voicebot, at their HTTP_PORT,
    as the job the alert rules select; compose mounts the config and the rules where the
    config expects them."""
    config = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "voicebot"
    assert any('job="voicebot"' in rule["expr"] for rule in alert_rules())
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (discovery,) = job["dns_sd_configs"]
    services = scale_stack()["services"]
    roles = {
        name: service
        for name, service in services.items()
        if service.get("command", [None])[0] == "voicebot"
    }
    assert sorted(discovery["names"]) == sorted(roles) == ["bot", "worker"]
    assert discovery["type"] == "A"
    for service in roles.values():
        assert str(discovery["port"]) == service["environment"]["HTTP_PORT"]
    assert job["relabel_configs"] == [
        {"source_labels": ["__meta_dns_name"], "target_label": "role"}
    ]

    mounted = mounts(services["prometheus"])
    # The image's default --config.file; the rule file resolved against the config's folder.
    assert (DEPLOY / mounted["/etc/prometheus/prometheus.yml"]).resolve() == PROMETHEUS
    (rules,) = config["rule_files"]
    assert (PROMETHEUS.parent / rules).resolve() == ALERTS
    assert (DEPLOY / mounted[posixpath.join("/etc/prometheus", rules)]).resolve() == ALERTS
    assert mounted["/prometheus"] in scale_stack()["volumes"]


def test_grafana_provisioning_adds_the_prometheus_and_the_dashboard() -> None:
    """The data source is the stack's Prometheus, the default one of the type the dashboard's
    variable asks for; the dashboard provider reads the folder compose mounts voicebot.json in."""
    services = scale_stack()["services"]
    mounted = mounts(services["grafana"])
    for kind in ("datasources", "dashboards"):
        source = (DEPLOY / mounted[f"/etc/grafana/provisioning/{kind}"]).resolve()
        assert source == PROVISIONING / kind

    (datasources,) = (PROVISIONING / "datasources").iterdir()
    provisioned = yaml.safe_load(datasources.read_text())
    assert provisioned["apiVersion"] == 1
    (source,) = provisioned["datasources"]
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert source["type"] == variable["query"] == "prometheus"
    assert source["isDefault"] is True  # the variable has no current value: it takes this one
    assert source["access"] == "proxy"
    assert source["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in services["prometheus"]["ports"]

    (dashboards,) = (PROVISIONING / "dashboards").iterdir()
    provisioned = yaml.safe_load(dashboards.read_text())
    assert provisioned["apiVersion"] == 1
    (provider,) = provisioned["providers"]
    assert provider["type"] == "file"
    folder = provider["options"]["path"]
    files = {
        target: (DEPLOY / source).resolve()
        for target, source in mounted.items()
        if posixpath.dirname(target) == folder
    }
    assert files == {posixpath.join(folder, DASHBOARD.name): DASHBOARD}
    # Provisioning does not fill in an exported dashboard's inputs, nor takes a fixed id.
    assert "__inputs" not in dashboard
    assert dashboard["id"] is None
