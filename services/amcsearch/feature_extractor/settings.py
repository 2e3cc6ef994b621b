"""FeatureExtractor settings: FEATURE_EXTRACTOR_* plus the shared TRITON_*, REDIS_URL, CACHE_*."""

from __future__ import annotations

from dataclasses import dataclass

from amcsearch.runtime.settings import CacheSettings, ImageLimits, ServerSettings, TritonSettings, from_env, nested

PREFIX = "FEATURE_EXTRACTOR"


@dataclass(frozen=True)
class FeatureExtractorSettings:
    server: ServerSettings = nested(ServerSettings)
    triton: TritonSettings = nested(TritonSettings)
    cache: CacheSettings = nested(CacheSettings)
    images: ImageLimits = nested(ImageLimits)
    max_batch: int = 64
    """Images per Extract request."""


def load_settings() -> FeatureExtractorSettings:
    return from_env(FeatureExtractorSettings, PREFIX)
