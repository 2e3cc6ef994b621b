"""AttentionRescorer settings: ATTENTION_RESCORER_* plus shared TRITON_* and QUERY_ENCODER_ADDR
(which embeds keyword texts outside the model's vocabulary)."""

from __future__ import annotations

from dataclasses import dataclass

from amcsearch.runtime.settings import (
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
    client_tls: ClientTLSSettings = nested(ClientTLSSettings)
    query_encoder_addr: str = env("QUERY_ENCODER_ADDR", default="127.0.0.1:50051")
    """QueryEncoder, which embeds (and caches) keyword strings outside the model's vocabulary."""
    query_encoder_max_batch: int = env("QUERY_ENCODER_MAX_BATCH", default=256)
    """Texts per Encode call (QueryEncoder's own limit): longer lists go in several calls."""
    max_candidates: int = env("ATTENTION_RESCORER_MAX_CANDIDATES", default=8192)
    """Candidates per Rescore request, all queries together (a BatchSearch sends its searches'
    candidates in one request; 8,192 int8 candidates are ~39 MB)."""
    max_keyword_chars: int = 64
    """Characters per keyword (the gateway stores none longer)."""


def load_settings() -> AttentionRescorerSettings:
    return from_env(AttentionRescorerSettings, PREFIX)
