"""An image's features (global embedding + region grid) from decoded pixels: one cache and one
image_encoder call shared by FeatureExtractor (indexing) and QueryEncoder (query by image), so
an image is encoded once whichever service sees it first.

The cache key is the sha256 of the decoded 128 x 128 pixels: the gateway decodes an Index batch
itself, and the same image sent as a query decodes to the same pixels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from amcsearch.runtime import contract as c
from amcsearch.runtime.cache import EmbeddingCache, content_key
from amcsearch.runtime.cached import cached_batch
from amcsearch.runtime.metrics import stage
from amcsearch.runtime.singleflight import SingleFlight
from amcsearch.runtime.triton import TritonModels

PACKED = c.EMBEDDING_DIM + c.REGION_COUNT * c.REGION_DIM


@dataclass
class Features:
    embedding: np.ndarray
    regions: np.ndarray
    cache_hit: bool
    sha256: str


def pack(embedding: np.ndarray, regions: np.ndarray) -> np.ndarray:
    packed: np.ndarray = np.concatenate([embedding.reshape(-1), regions.reshape(-1)]).astype(np.float32)
    return packed


def unpack(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = packed.reshape(-1)
    return flat[: c.EMBEDDING_DIM], flat[c.EMBEDDING_DIM :].reshape(c.REGION_COUNT, c.REGION_DIM)


def pixels_digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()


class ImageFeatures:
    """Features of decoded images, cached by pixel content and image_encoder build."""

    def __init__(self, triton: TritonModels, cache: EmbeddingCache, service: str) -> None:
        self.triton = triton
        self.cache = cache
        self.service = service
        self.flight: SingleFlight[np.ndarray] = SingleFlight()
        self.build = "unknown"

    async def refresh_build(self) -> None:
        self.build = await self.triton.build_id(c.IMAGE_ENCODER)

    async def of(self, pixels: np.ndarray, timeout: float | None) -> list[Features]:
        digests = [pixels_digest(p) for p in pixels]
        keys = [content_key("features", c.IMAGE_ENCODER, self.build, digest) for digest in digests]
        first = {key: i for i, key in reversed(list(enumerate(keys)))}

        async def compute(missing: list[str]) -> dict[str, np.ndarray]:
            with stage(self.service, "triton_image_encoder"):
                out = await self.triton.infer_chunked(
                    c.IMAGE_ENCODER,
                    {"image": pixels[[first[k] for k in missing]]},
                    [c.EMBEDDING_OUT, c.REGIONS_OUT],
                    timeout,
                )
            return {k: pack(e, r) for k, e, r in zip(missing, out[c.EMBEDDING_OUT], out[c.REGIONS_OUT], strict=True)}

        found, hits = await cached_batch(
            self.cache, self.flight, self.service, "features", keys, compute, valid=lambda value: value.size == PACKED
        )
        return [Features(*unpack(found[key]), key in hits, digest) for key, digest in zip(keys, digests, strict=True)]
