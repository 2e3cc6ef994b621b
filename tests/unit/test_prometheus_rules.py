"""deploy/prometheus: the config and rules are valid for Prometheus's own checker, and the rules
compute what they claim (promtool's rule unit tests in deploy/prometheus/rules/tests.yml).

promtool ships with the Debian `prometheus` package that `make setup` installs.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")

SERVICE_METRICS_PORTS = {
    "search": 9100,
    "query_encoder": 9101,
    "keyword_tagger": 9102,
    "feature_extractor": 9103,
    "attention_rescorer": 9104,
}


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess:
    assert PROMTOOL is not None, "promtool missing: `make setup` installs prometheus (Debian package)"
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.local.yml"])
def test_config_and_rule_files_pass_promtool_check_config(config):
    result = promtool("check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout + result.stderr


def test_rules_pass_promtool_check_rules():
    result = promtool("check", "rules", "rules/recording.yml", "rules/alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass():
    """Quantiles, error ratio (server codes only), batch size, queue/compute time and every alert."""
    result = promtool("test", "rules", "tests.yml", cwd=PROMETHEUS / "rules")
    assert result.returncode == 0, result.stdout + result.stderr


def _targets(config: str) -> set[str]:
    loaded = yaml.safe_load((PROMETHEUS / config).read_text())
    return {t for job in loaded["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}


def test_local_config_scrapes_every_service_triton_and_the_launcher_on_make_ups_ports():
    from amcsearch.launcher import SERVICES
    from amcsearch.ports import LAUNCHER_METRICS_PORT, TRITON_PORTS

    targets = _targets("prometheus.local.yml")
    assert f"127.0.0.1:{LAUNCHER_METRICS_PORT[1]}" in targets, "the launcher's own /metrics is not scraped"
    assert {f"127.0.0.1:{port}" for endpoint, _, port in TRITON_PORTS if endpoint == "metrics"} <= targets
    for spec in SERVICES:
        assert f"127.0.0.1:{spec.metrics_port}" in targets, f"{spec.module} metrics port is not scraped"
    assert {s.module: s.metrics_port for s in SERVICES} == SERVICE_METRICS_PORTS


def test_compose_config_scrapes_every_compose_service():
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    targets = _targets("prometheus.yml")
    for module, port in SERVICE_METRICS_PORTS.items():
        host = module.replace("_", "-")
        assert host in compose["services"], f"compose has no service {host}"
        assert f"{host}:{port}" in targets
    assert "triton" in compose["services"] and "triton:8002" in targets


def _rules() -> list[dict]:
    rules = []
    for name in ("recording.yml", "alerts.yml"):
        for group in yaml.safe_load((PROMETHEUS / "rules" / name).read_text())["groups"]:
            rules.extend(group["rules"])
    return rules


def test_recording_rules_cover_the_quantiles_per_rpc_and_per_stage():
    recorded = {r["record"] for r in _rules() if "record" in r}
    for q in ("p50", "p95", "p99"):
        assert f"service_method:amcsearch_rpc_duration_seconds:{q}_1m" in recorded
        assert f"service_stage:amcsearch_stage_duration_seconds:{q}_1m" in recorded


def test_alerts_cover_latency_errors_triton_and_cache():
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert {
        "AmcsearchSearchLatencyOverSLO",
        "AmcsearchErrorRatioHigh",
        "TritonNotReady",
        "AmcsearchCacheErrorRate",
    } <= alerts
