"""AttentionRescorer settings: ATTENTION_RESCORER_* plus shared TRITON_*, REDIS_URL, CACHE_*,
SEARCH_ADDR and QUERY_ENCODER_ADDR (where misses and keyword vectors come from)."""

from __future__ import annotations

from dataclasses import dataclass

from amcsearch.runtime.settings import (
    CacheSettings,
    ClientTLSSettings,
    ServerSettings,
    TritonSettings,
    env,
    from_env,
    nested,
)

PREFIX = "ATTENTION_RESCORER"


@dataclass(frozen=True)
class AttentionRescorerSettings:
    server: ServerSettings = nested(ServerSettings)
    triton: TritonSettings = nested(TritonSettings)
    cache: CacheSettings = nested(CacheSettings)
    client_tls: ClientTLSSettings = nested(ClientTLSSettings)
    search_addr: str = env("SEARCH_ADDR", default="127.0.0.1:50050")
    """The gateway, whose Get reads the index of record for feature-cache misses."""
    query_encoder_addr: str = env("QUERY_ENCODER_ADDR", default="127.0.0.1:50051")
    """QueryEncoder, which embeds (and caches) keyword strings."""
    collection: str = env("INDEX_COLLECTION", default="amcsearch_images")
    max_candidates: int = 500
    """Candidates per Rescore request."""


def load_settings() -> AttentionRescorerSettings:
    return from_env(AttentionRescorerSettings, PREFIX)
