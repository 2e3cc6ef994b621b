"""Image features for a batch: one MGET by content hash, one image_encoder call for the misses.

The cached value of an image is its embedding and its region grid in one array, so a hit costs
one key. Identical images in a batch, or in concurrent requests, are decoded and encoded once.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from amcsearch.runtime import contract as c
from amcsearch.runtime.cache import EmbeddingCache, content_key
from amcsearch.runtime.images import decode_images
from amcsearch.runtime.metrics import stage
from amcsearch.runtime.settings import ImageLimits
from amcsearch.runtime.singleflight import SingleFlight
from amcsearch.runtime.triton import TritonModels

SERVICE = "feature_extractor"
PACKED = c.EMBEDDING_DIM + c.REGION_COUNT * c.REGION_DIM


@dataclass
class Features:
    embedding: np.ndarray
    regions: np.ndarray
    cache_hit: bool
    sha256: str


def pack(embedding: np.ndarray, regions: np.ndarray) -> np.ndarray:
    return np.concatenate([embedding.reshape(-1), regions.reshape(-1)]).astype(np.float32)


def unpack(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = packed.reshape(-1)
    return flat[: c.EMBEDDING_DIM], flat[c.EMBEDDING_DIM :].reshape(c.REGION_COUNT, c.REGION_DIM)


class FeatureExtractor:
    def __init__(self, triton: TritonModels, cache: EmbeddingCache, limits: ImageLimits,
                 executor: Executor | None = None) -> None:
        self.triton = triton
        self.cache = cache
        self.limits = limits
        self.executor = executor
        self.flight: SingleFlight[np.ndarray] = SingleFlight()
        self.build = "unknown"

    async def refresh_build(self) -> None:
        self.build = await self.triton.build_id(c.IMAGE_ENCODER)

    async def extract(self, images: list[bytes] | np.ndarray, timeout: float | None) -> list[Features]:
        """`images`: encoded bytes, or decoded uint8 pixels [B, size, size, 3]."""
        decoded = isinstance(images, np.ndarray)
        hashes = [hashlib.sha256(b"pixels:" + image.tobytes() if decoded else image).hexdigest() for image in images]
        keys = [content_key("features", c.IMAGE_ENCODER, self.build, digest) for digest in hashes]
        unique = list(dict.fromkeys(keys))
        with stage(SERVICE, "cache_get"):
            cached = await self.cache.get_many("features", unique)
        found = {key: value for key, value in zip(unique, cached, strict=True) if value is not None and value.size == PACKED}
        hits = set(found)
        missing = [key for key in unique if key not in hits]
        if missing:
            first = {key: i for i, key in reversed(list(enumerate(keys)))}
            found.update(await self._compute(images, [first[k] for k in missing], missing, timeout))
        return [Features(*unpack(found[key]), key in hits, digest) for key, digest in zip(keys, hashes, strict=True)]

    async def _compute(self, images: list[bytes] | np.ndarray, rows: list[int], keys: list[str],
                       timeout: float | None) -> dict:
        """Features of images[rows] (one per key), computed once across concurrent requests."""
        mine, theirs = self.flight.claim(keys)
        try:
            values: dict[str, np.ndarray] = {}
            if mine:
                chosen = [rows[keys.index(k)] for k in mine]
                if isinstance(images, np.ndarray):
                    pixels = images[chosen]
                else:
                    names = ["image"] if len(images) == 1 else [f"image {i}" for i in chosen]
                    with stage(SERVICE, "decode"):
                        pixels = await decode_images([images[i] for i in chosen], self.limits, self.executor, names)
                with stage(SERVICE, "triton"):
                    out = await self.triton.infer_chunked(c.IMAGE_ENCODER, {"image": pixels},
                                                          [c.EMBEDDING_OUT, c.REGIONS_OUT], timeout)
                values = {k: pack(e, r) for k, e, r in zip(mine, out[c.EMBEDDING_OUT], out[c.REGIONS_OUT], strict=True)}
        except BaseException as error:
            self.flight.fail(mine, error)
            raise
        self.flight.resolve(values)
        with stage(SERVICE, "cache_set"):
            await self.cache.set_many(values)
        values.update(await SingleFlight.wait(theirs))
        return values
