"""The port table: each service's module, variable prefix, default gRPC and metrics ports, and
the Triton models it needs, plus the ports of the launcher's own children (Triton, Redis) and of
its status endpoint, each with the variable that moves it. The one copy: the launcher, the
container entrypoint (amcsearch/container.py), the container health check and the deploy
manifests' tests read it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceSpec:
    module: str
    prefix: str
    port: int
    metrics_port: int
    models: tuple[str, ...]
    """Triton models it needs: the stack only starts services whose models are in the repository."""


SERVICES = (
    ServiceSpec("query_encoder", "QUERY_ENCODER", 50051, 9101, ("text_encoder",)),
    ServiceSpec("keyword_tagger", "KEYWORD_TAGGER", 50052, 9102, ("keyword_tagger",)),
    ServiceSpec("feature_extractor", "FEATURE_EXTRACTOR", 50053, 9103, ("image_encoder",)),
    ServiceSpec("attention_rescorer", "ATTENTION_RESCORER", 50054, 9104, ("amc_rescorer",)),
    ServiceSpec("search", "SEARCH", 50050, 9100, ("text_encoder", "image_encoder", "amc_rescorer")),
)
BY_MODULE = {spec.module: spec for spec in SERVICES}

TRITON_PORTS = (
    ("grpc", "TRITON_GRPC_PORT", 8001),
    ("http", "TRITON_HTTP_PORT", 8000),
    ("metrics", "TRITON_METRICS_PORT", 8002),
)
"""The launcher's tritonserver: (endpoint, the variable that moves it, default port)."""
REDIS_PORT = ("REDIS_PORT", 6380)
"""The launcher's redis-server (when REDIS_URL names no Redis of your own)."""
LAUNCHER_METRICS_PORT = ("LAUNCHER_METRICS_PORT", 9105)
"""The launcher's own /metrics and /health (its children's states and restarts)."""
