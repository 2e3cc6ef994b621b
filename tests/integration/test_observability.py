"""A real Prometheus (the Debian package) scrapes the running stack with deploy/prometheus's rules;
after a few searches, the Search p99 comes back over its HTTP API as a finite number, from the
raw histogram and from the recording rule, every metric the dashboard uses from Triton is one
the real server exports, and every query of the dashboard returns series.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import urllib.parse
import urllib.request

import grpc
import pytest
import yaml
from amcsearch.launcher import ROOT
from amcsearch.ports import SERVICES, TRITON_PORTS
from amcsearch.processes import Process, free_port, wait_until
from amcsearch.v1 import common_pb2, search_pb2, search_pb2_grpc

from loadtests.auth import write_metadata
from loadtests.data import png
from tests.integration.conftest import scrape
from tests.unit.test_dashboard import dashboard, fill_variables, metric_selectors, named_queries, queries

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
P99_RAW = (
    "histogram_quantile(0.99, sum by (le) (rate(amcsearch_rpc_duration_seconds_bucket"
    '{service="search", method="Search"}[1m])))'
)
P99_RECORDED = 'service_method:amcsearch_rpc_duration_seconds:p99_1m{service="search", method="Search"}'
IMAGES = 6
FAULT_ONLY = {
    "amcsearch_cache_errors_total": "counts failed Redis calls: a series appears with the first one",
    "amcsearch_triton_abandoned_total": "counts Triton calls whose caller gave up (deadline, cancel)",
}
"""Metrics a healthy stack under load has no series of: a dashboard target using one is exempt."""


def prometheus_config(stack) -> dict:
    """deploy/prometheus/prometheus.local.yml (the Prometheus for `make up`: its jobs, labels and
    rules) with each target moved from the launcher's default port to where `stack`'s process of
    that port listens, scraped every second. The launcher's own job goes: Stack runs no launcher."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.local.yml").read_text())
    default_ports = {spec.metrics_port: spec.module for spec in SERVICES}
    default_ports.update({port: "tritonserver" for endpoint, _, port in TRITON_PORTS if endpoint == "metrics"})
    jobs = []
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            moved = []
            for target in static["targets"]:
                name = default_ports.get(int(target.rsplit(":", 1)[1]))
                if name in stack.processes:
                    moved.append(urllib.parse.urlparse(stack.processes[name].endpoints["metrics"]).netloc)
            static["targets"] = moved
        if all(static["targets"] for static in job["static_configs"]):
            jobs.append(job)
    assert {j["job_name"] for j in config["scrape_configs"]} - {j["job_name"] for j in jobs} == {"amcsearch-launcher"}
    config["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
    config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config["rule_files"]]
    config["scrape_configs"] = jobs
    return config


@pytest.fixture(scope="module")
def prometheus(real_stack, tmp_path_factory):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: `make setup` installs it (apt-get install prometheus)")
    work = tmp_path_factory.mktemp("prometheus")
    (work / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(real_stack)))
    port = free_port()
    process = Process(
        "prometheus",
        [
            binary,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        {"PATH": "/usr/bin:/bin"},
        work / "prometheus.log",
    )
    process.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=1).status == 200, 30, "prometheus", process
        )
        yield base
    finally:
        process.stop()


def query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def value_when_finite(base: str, expr: str, timeout: float = 40.0) -> float:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        result = query(base, expr)
        if result:
            last = float(result[0]["value"][1])
            if math.isfinite(last):
                return last
        time.sleep(1)
    raise AssertionError(f"{expr} has no finite value after {timeout:.0f}s (last {last})")


@pytest.fixture(scope="module")
def searched(real_stack, ci_corpus):
    """A few images (ids obs-*, train split) indexed, searched by text, image and composed; removed after."""
    split = ci_corpus.train
    ids = [f"obs-{r.id}" for r in split.images[-IMAGES:]]
    with grpc.insecure_channel(real_stack.address("search")) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        items = [
            search_pb2.ImageItem(
                id=i, image=png(p), keywords=[common_pb2.Keyword(text=k, confidence=c) for k, c in r.noisy_keywords]
            )
            for i, r, p in zip(ids, split.images[-IMAGES:], split.pixels[-IMAGES:], strict=True)
        ]
        reply = stub.Index(search_pb2.IndexRequest(items=items), timeout=120, metadata=write_metadata())
        assert reply.indexed_count == IMAGES

        def search_round() -> None:
            for query_ in split.text_queries[:4]:
                stub.Search(search_pb2.SearchRequest(text=query_.text, top_k=3, within_ids=ids), timeout=60)
            stub.Search(search_pb2.SearchRequest(image=search_pb2.ImageQuery(id=ids[0]), top_k=3), timeout=60)

        search_round()
        yield search_round
        stub.Delete(search_pb2.DeleteRequest(ids=ids), timeout=60, metadata=write_metadata())


def test_every_target_is_scraped(prometheus, searched, real_stack):
    expected = len([p for p in real_stack.processes.values() if "metrics" in p.endpoints])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        up = query(prometheus, "up")
        if len(up) == expected and all(r["value"][1] == "1" for r in up):
            return
        time.sleep(1)
    raise AssertionError(f"targets not all up: {up}")


def test_the_deploy_rules_are_loaded(prometheus):
    with urllib.request.urlopen(f"{prometheus}/api/v1/rules", timeout=5) as response:
        groups = json.loads(response.read())["data"]["groups"]
    recorded = {r["name"] for g in groups for r in g["rules"] if r["type"] == "recording"}
    alerts = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
    assert "service_method:amcsearch_rpc_duration_seconds:p99_1m" in recorded
    assert "AmcsearchSearchLatencyOverSLO" in alerts
    assert all(g["rules"] and all(r["health"] != "err" for r in g["rules"]) for g in groups)


def test_search_p99_is_a_finite_number_from_the_raw_histogram_and_the_recording_rule(prometheus, searched):
    searched()
    time.sleep(2)  # two scrapes after the last searches: the rate has two points
    searched()
    raw = value_when_finite(prometheus, P99_RAW)
    recorded = value_when_finite(prometheus, P99_RECORDED)
    assert 0 < raw <= 10 and 0 < recorded <= 10
    stage = value_when_finite(
        prometheus, 'service_stage:amcsearch_stage_duration_seconds:p99_1m{service="search", stage="ann"}'
    )
    assert 0 < stage <= 10


def test_triton_metrics_the_dashboard_uses_exist_on_the_real_server(real_stack, searched):
    exported = scrape(real_stack.processes["tritonserver"].endpoints["metrics"])
    names = {line.split("{")[0].split(" ")[0] for line in exported.splitlines() if line and not line.startswith("#")}
    used = {name for expr in queries(dashboard()) for name, _ in metric_selectors(expr) if name.startswith("nv_")}
    assert used and used <= names, f"Triton does not export {used - names}"


def test_every_dashboard_query_returns_series_under_load(prometheus, searched, real_stack):
    """Each panel target of deploy/grafana/dashboards (and the $service variable's selector), with
    Grafana's default variable values, answers with at least one series once the stack has served
    Index, Search and a refused Search. Targets on FAULT_ONLY metrics are exempt."""
    with grpc.insecure_channel(real_stack.address("search")) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            # neither text nor image: a client error, as real traffic has, for "Errors by code (non-OK)"
            stub.Search(search_pb2.SearchRequest(top_k=3), timeout=60)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    searched()
    searched()
    boards = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
    assert boards, "no dashboard under deploy/grafana/dashboards"
    pending = {}
    for path in boards:
        for where, expr in named_queries(json.loads(path.read_text())):
            if not {name for name, _ in metric_selectors(expr)} & FAULT_ONLY.keys():
                pending[f"{path.name}: {where}"] = fill_variables(expr)
    deadline = time.monotonic() + 40  # scrapes and rules every 1 s: the series come within a few
    while True:
        pending = {where: expr for where, expr in pending.items() if not query(prometheus, expr)}
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not pending, "dashboard queries with no series:\n" + "\n".join(f"{w}: {e}" for w, e in pending.items())
