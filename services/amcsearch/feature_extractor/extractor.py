"""Image features for a batch: decoded (unless the caller sent pixels), then the shared cached
image_encoder path (runtime/image_features.py): one MGET, one Triton call for the misses."""

from __future__ import annotations

from concurrent.futures import Executor

import numpy as np

from amcsearch.runtime.cache import EmbeddingCache
from amcsearch.runtime.image_features import Features, ImageFeatures
from amcsearch.runtime.images import decode_images
from amcsearch.runtime.metrics import stage
from amcsearch.runtime.settings import ImageLimits
from amcsearch.runtime.triton import TritonModels

SERVICE = "feature_extractor"


class FeatureExtractor:
    def __init__(
        self, triton: TritonModels, cache: EmbeddingCache, limits: ImageLimits, executor: Executor | None = None
    ) -> None:
        self.features = ImageFeatures(triton, cache, SERVICE)
        self.limits = limits
        self.executor = executor

    async def refresh_build(self) -> None:
        await self.features.refresh_build()

    @property
    def build(self) -> str:
        return self.features.build

    async def extract(self, images: list[bytes] | np.ndarray, timeout: float | None) -> list[Features]:
        """`images`: encoded bytes, or decoded uint8 pixels [B, size, size, 3]."""
        if not isinstance(images, np.ndarray):
            with stage(SERVICE, "decode"):
                images = await decode_images(images, self.limits, self.executor)
        return await self.features.of(images, timeout)
