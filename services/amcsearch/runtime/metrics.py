"""Prometheus metrics of every service, declared once. Labels are bounded sets only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.parser import text_string_to_metric_families

LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

RPC_SECONDS = Histogram(
    "amcsearch_rpc_duration_seconds",
    "Server-side duration of an RPC, by service, method and status code.",
    ["service", "method", "code"],
    buckets=LATENCY_BUCKETS,
)
RPC_IN_FLIGHT = Gauge("amcsearch_rpc_in_flight", "RPCs being handled now.", ["service", "method"])
STAGE_SECONDS = Histogram(
    "amcsearch_stage_duration_seconds",
    "Duration of one stage of a request (decode, tokenize, cache, triton, ann, ...).",
    ["service", "stage"],
    buckets=LATENCY_BUCKETS,
)
BATCH_ITEMS = Histogram("amcsearch_batch_items", "Items per request.", ["service", "method"], buckets=BATCH_BUCKETS)
CACHE_HITS = Counter("amcsearch_cache_hits_total", "Cache lookups that found a value.", ["service", "kind"])
CACHE_MISSES = Counter("amcsearch_cache_misses_total", "Cache lookups that found nothing.", ["service", "kind"])
CACHE_ERRORS = Counter(
    "amcsearch_cache_errors_total",
    "Cache operations that failed or were skipped by the open circuit breaker (each a miss).",
    ["service", "operation"],
)
TRITON_SECONDS = Histogram(
    "amcsearch_triton_request_duration_seconds",
    "Duration of one Triton inference call, by model and outcome.",
    ["service", "model", "outcome"],
    buckets=LATENCY_BUCKETS,
)
TRITON_ABANDONED = Counter(
    "amcsearch_triton_abandoned_total",
    "Triton inference calls whose caller stopped waiting (deadline passed or caller cancelled); "
    "they run to their end instead of being cancelled.",
    ["service", "model"],
)
BYTE_BUCKETS = tuple(2**i for i in range(10, 27, 2))  # 1 KiB .. 64 MiB
TRITON_REQUEST_BYTES = Histogram(
    "amcsearch_triton_request_bytes",
    "Bytes of input tensors sent in one Triton inference call, by model.",
    ["service", "model"],
    buckets=BYTE_BUCKETS,
)
READY = Gauge("amcsearch_ready", "1 while the service's dependencies answer (its health is SERVING).", ["service"])
DEGRADATIONS = Counter(
    "amcsearch_search_degradations_total",
    "Searches answered OK with a stage skipped (e.g. rescoring), by stage.",
    ["stage"],
)
COALESCED_SEARCHES = Histogram(
    "amcsearch_coalesced_searches",
    "Concurrent Search RPCs answered together by the gateway (one Encode, one Rescore): 1 when alone.",
    buckets=BATCH_BUCKETS,
)
INDEX_IMAGES = Gauge(
    "amcsearch_index_images",
    "Images in the index of record (refreshed by the gateway's readiness poll every 2 s and by Stats).",
    ["collection"],
)


@contextmanager
def stage(service: str, name: str) -> Iterator[None]:
    """Time a stage of a request into amcsearch_stage_duration_seconds."""
    start = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(service, name).observe(time.perf_counter() - start)


def serve_metrics(port: int, host: str = "127.0.0.1") -> int:
    """Serve /metrics on `port` (0: a free one) in a daemon thread; returns the bound port."""
    if port < 0:
        return -1
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)


def samples(text: str, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """{sorted label items: value} of the samples named `name` in a /metrics exposition whose
    labels include `labels` (prometheus_client's own parser; for tests and benchmarks)."""
    found = {}
    names = {name, f"{name}_total"}  # the parser names a counter's samples <name>_total (OpenMetrics)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names and all(sample.labels.get(k) == v for k, v in labels.items()):
                found[tuple(sorted(sample.labels.items()))] = float(sample.value)
    return found


def sample_total(text: str, name: str, **labels: str) -> float:
    """The sum of those samples (0 when there are none)."""
    return sum(samples(text, name, **labels).values())
