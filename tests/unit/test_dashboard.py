"""deploy/grafana: the dashboard is a valid Grafana dashboard model, its provisioning matches the
compose mounts, and every query uses only metrics the system exports.

Validation: Grafana Labs' generated dashboard model (PyPI `grafana-foundation-sdk`, types generated
from Grafana's own schema) must read the JSON back without dropping a field, with every target
decoded as a Prometheus query and every panel's options as its plugin's options; plus the layout
rules Grafana's UI relies on (unique ids, a 24-column grid without overlaps, unique refIds).
Metric names: declarations in services/amcsearch/runtime/metrics.py (read with ast, exported
sample names derived as prometheus-client does), Triton's nv_* metrics, and the recording rules
of deploy/prometheus/rules.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "amcsearch.json"
METRICS_PY = ROOT / "services" / "amcsearch" / "runtime" / "metrics.py"
RULES = ROOT / "deploy" / "prometheus" / "rules"

# Triton 2.51's per-model inference metrics (checked against a live server by
# tests/integration/test_observability.py).
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_inference_pending_request_count",
}
SCRAPE_METRICS = {"up", "scrape_duration_seconds"}
SCRAPE_LABELS = {"job", "instance", "component"}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "atan2",
}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict) -> list[dict]:
    """Every panel, the ones nested in collapsed rows included."""
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


# Grafana's variables as a query sees them: $__rate_interval is 4 scrape intervals at least, 1m
# with the provisioned datasource's 15 s; $service is multi-valued with "All" = its allValue.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$service": ".*"}


def fill_variables(expr: str) -> str:
    """`expr` as Prometheus receives it from the dashboard with its default variable values."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def named_queries(board: dict) -> list[tuple[str, str]]:
    """(where, expr) of every panel target ("panel title [refId]") and of every query variable
    (its label_values() selector)."""
    found = [(f"{p['title']} [{t['refId']}]", t["expr"]) for p in panels(board) for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            selector = re.sub(r"^label_values\((.*), *\w+\)$", r"\1", variable["query"]["query"])
            found.append((f"variable ${variable['name']}", selector))
    return found


def queries(board: dict) -> list[str]:
    return [expr for _, expr in named_queries(board)]


# --- what the system exports ---------------------------------------------------------------------


def declared_metrics() -> dict[str, set[str]]:
    """Exported sample name -> label names, from the Counter/Gauge/Histogram calls in metrics.py."""
    exported: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(METRICS_PY.read_text())):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("Counter", "Gauge", "Histogram", "Summary")
        ):
            continue
        name = node.args[0].value
        labels = set()
        label_node = (
            node.args[2]
            if len(node.args) > 2
            else next((k.value for k in node.keywords if k.arg == "labelnames"), None)
        )
        if isinstance(label_node, (ast.List, ast.Tuple)):
            labels = {e.value for e in label_node.elts}
        kind = node.func.id
        if kind == "Counter":
            base = name.removesuffix("_total")
            exported[f"{base}_total"] = labels
            exported[f"{base}_created"] = labels
        elif kind == "Gauge":
            exported[name] = labels
        else:
            exported[f"{name}_count"] = labels
            exported[f"{name}_sum"] = labels
            exported[f"{name}_created"] = labels
            if kind == "Histogram":
                exported[f"{name}_bucket"] = labels | {"le"}
            else:
                exported[name] = labels | {"quantile"}
    return exported


def recorded_metrics() -> set[str]:
    names = set()
    for path in RULES.glob("*.yml"):
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            names.update(r["record"] for r in group["rules"] if "record" in r)
    return names


# --- PromQL, as far as the check needs it --------------------------------------------------------


def metric_selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of every vector selector in `expr`."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", text)
    text = re.sub(r"\s*\b(by|without)\b\s*", "", text)  # `sum by (x) (...)` reads as `sum(...)`
    selectors = []
    for match in re.finditer(r"(?<![\w.:$])([a-zA-Z_:][\w:]*)(?![\w:])\s*(\{[^}]*\})?", text):
        name, braces = match.group(1), match.group(2) or ""
        if text[match.end() :].lstrip().startswith("(") and not braces:
            continue  # a function or an aggregation
        if name.lower() in PROMQL_WORDS or re.fullmatch(r"e\d+", name):
            continue
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", braces))
        selectors.append((name, labels))
    return selectors


def test_selector_parsing_finds_names_labels_and_skips_functions():
    expr = (
        "sum by (model) (rate(nv_inference_count[5m])) / ignoring(stage) group_left "
        'sum(rate(amcsearch_rpc_duration_seconds_sum{service="search", method=~"S.*"}[$__rate_interval])) / 1e6'
    )
    assert metric_selectors(expr) == [
        ("nv_inference_count", set()),
        ("amcsearch_rpc_duration_seconds_sum", {"service", "method"}),
    ]


def test_declared_metrics_are_read_from_the_runtime():
    exported = declared_metrics()
    assert exported["amcsearch_rpc_duration_seconds_bucket"] == {"service", "method", "code", "le"}
    assert "amcsearch_cache_hits_total" in exported and "amcsearch_index_images" in exported


# --- the checks ------------------------------------------------------------------------------------


def test_every_query_uses_metrics_and_labels_the_system_exports():
    exported = declared_metrics()
    known = set(exported) | TRITON_METRICS | recorded_metrics() | SCRAPE_METRICS
    problems = []
    for expr in queries(dashboard()):
        selectors = metric_selectors(expr)
        if not selectors:
            problems.append(f"no metric in {expr!r}")
        for name, labels in selectors:
            if name not in known:
                problems.append(f"{name} (in {expr!r}) is not exported")
            elif name in exported and not labels <= exported[name] | SCRAPE_LABELS:
                problems.append(f"{name} has no label(s) {labels - exported[name]} (in {expr!r})")
    assert not problems, "\n".join(problems)


def test_dashboard_covers_what_operators_look_for():
    exprs = "\n".join(queries(dashboard()))
    for needed in (
        "rate(amcsearch_rpc_duration_seconds_count",
        *(f"amcsearch_rpc_duration_seconds:{q}_1m" for q in ("p50", "p95", "p99")),
        *(f"amcsearch_stage_duration_seconds:{q}_1m" for q in ("p50", "p95", "p99")),
        'code!="OK"',
        "amcsearch_cache_hits_total",
        "amcsearch_cache_misses_total",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "rate(nv_inference_count",
        "rate(nv_inference_exec_count",
        "amcsearch_index_images",
    ):
        assert needed in exprs, f"no panel queries {needed}"


def test_dashboard_reads_back_through_grafanas_dashboard_model_without_losing_a_field():
    import grafana_foundation_sdk as sdk  # noqa: F401 - pinned in requirements.lock
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models import dashboard as model
    from grafana_foundation_sdk.models import prometheus

    assert sdk is not None
    register_default_plugins()
    board = dashboard()
    parsed = model.Dashboard.from_json(board)
    for panel in parsed.panels:
        if isinstance(panel, model.Panel):
            assert panel.targets, f"panel {panel.title!r} has no query"
            assert all(isinstance(t, prometheus.Dataquery) for t in panel.targets), panel.title
    back = json.loads(json.dumps(parsed, cls=JSONEncoder))

    def dropped(original, read, path="") -> list[str]:
        if isinstance(original, dict):
            return [
                p
                for k, v in original.items()
                for p in ([f"{path}/{k}"] if k not in read else dropped(v, read[k], f"{path}/{k}"))
            ]
        if isinstance(original, list):
            return [
                p for i, (a, b) in enumerate(zip(original, read, strict=False)) for p in dropped(a, b, f"{path}[{i}]")
            ]
        return []

    lost = dropped(board, back)
    assert not lost, f"fields unknown to Grafana's dashboard model: {lost}"


def test_layout_ids_and_references_are_what_grafana_requires():
    board = dashboard()
    assert board["uid"] and len(board["uid"]) <= 40 and board["title"] and board["schemaVersion"] >= 36
    all_panels = panels(board)
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels:
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in "hwxy") and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["type"] in ("timeseries", "stat"), panel["type"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == provisioned_datasource()["uid"]
    used = set(re.findall(r"\$(\w+)", json.dumps(board))) - {"__rate_interval", "__all"}
    assert used <= set(variables), f"undefined variables {used - set(variables)}"


def provisioned_datasource() -> dict:
    config = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = config["datasources"]
    return source


def provisioned(path: str, environ: dict[str, str]) -> tuple[dict, set[str]]:
    """deploy/grafana/provisioning/`path` as Grafana reads it with `environ`: $VAR and ${VAR} in
    its values become the variable's value, an unset one nothing; and the unset ones used."""
    unset: set[str] = set()

    def variable(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in environ:
            unset.add(name)
        return environ.get(name, "")

    def expand(value):
        if isinstance(value, dict):
            return {k: expand(v) for k, v in value.items()}
        if isinstance(value, list):
            return [expand(v) for v in value]
        if isinstance(value, str):
            return re.sub(r"\$(?:\{(\w+)\}|(\w+))", variable, value)
        return value

    return expand(yaml.safe_load((GRAFANA / "provisioning" / path).read_text())), unset


def compose() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())


def make_up_env() -> dict[str, str]:
    """deploy/grafana/make-up.env: the variables of Grafana beside `make up` (docker --env-file)."""
    lines = (GRAFANA / "make-up.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_provisioning_with_composes_environment_reads_the_compose_prometheus_and_dashboards():
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    sources, unset = provisioned("datasources/prometheus.yml", grafana["environment"])
    providers, unset_too = provisioned("dashboards/amcsearch.yml", grafana["environment"])
    assert not unset | unset_too, f"compose's grafana does not set {unset | unset_too}"
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose()["services"]
    assert providers["providers"][0]["options"]["path"] == mounts["./grafana/dashboards"]


def test_provisioning_with_make_up_env_reads_the_local_prometheus_and_dashboards():
    """Grafana beside `make up` reads the Prometheus that prometheus.local.yml's header starts,
    and the dashboards where make-up.env's header mounts them."""
    environ = make_up_env()
    sources, unset = provisioned("datasources/prometheus.yml", environ)
    providers, unset_too = provisioned("dashboards/amcsearch.yml", environ)
    assert not unset | unset_too, f"make-up.env does not set {unset | unset_too}"
    (source,) = sources["datasources"]
    url = urllib.parse.urlparse(source["url"])
    assert url.scheme == "http" and url.hostname == "127.0.0.1", source["url"]
    local = (ROOT / "deploy" / "prometheus" / "prometheus.local.yml").read_text()
    assert f"--web.listen-address={url.netloc}" in local, f"prometheus.local.yml's command does not serve {url}"
    path = providers["providers"][0]["options"]["path"]
    assert f'-v "$PWD/deploy/grafana/dashboards:{path}:ro"' in (GRAFANA / "make-up.env").read_text()


def test_index_size_is_the_max_over_gateway_replicas_not_their_sum():
    """Every gateway reports the whole collection: a sum over N replicas shows N times the images."""
    exprs = [e for e in queries(dashboard()) if "amcsearch_index_images" in e]
    assert exprs
    for expr in exprs:
        assert expr == "max by (collection) (amcsearch_index_images)", expr


def test_every_query_is_valid_promql(tmp_path):
    """promtool parses each query (as a recording rule), with Grafana's variables filled in."""
    assert shutil.which("promtool"), "promtool missing: `make setup` installs prometheus (Debian package)"
    rules = [
        {"record": f"dashboard:query:{i}", "expr": fill_variables(expr)} for i, expr in enumerate(queries(dashboard()))
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
