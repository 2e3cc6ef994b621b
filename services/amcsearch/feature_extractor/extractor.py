"""Image features for a batch: decoded (unless the caller sent pixels), then the shared cached
image_encoder path (runtime/image_features.py): one MGET, one Triton call for the misses.

With tags, also the cross-domain shop features (ynet_shop: TagYNet's tag-attended vector, the
CtxYNet context and the tag attention), cached by pixels, tags and build; one Triton call for
the misses, concurrent with the image_encoder call.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from amcsearch.runtime import contract as c
from amcsearch.runtime.cache import EmbeddingCache, content_key
from amcsearch.runtime.cached import cached_batch
from amcsearch.runtime.image_features import Features, ImageFeatures, pixels_digest
from amcsearch.runtime.images import decode_images
from amcsearch.runtime.keywords import normalize_keyword
from amcsearch.runtime.metrics import stage
from amcsearch.runtime.settings import ImageLimits
from amcsearch.runtime.singleflight import SingleFlight
from amcsearch.runtime.triton import TritonModels

SERVICE = "feature_extractor"
SHOP_PACKED = 2 * c.YNET_DIM + c.REGION_COUNT


@dataclass
class Shop:
    """ynet_shop's outputs for one image."""

    embedding: np.ndarray
    context: np.ndarray
    attention: np.ndarray
    known_tags: int


def tag_vector(tags: list[str], vocabulary: dict[str, int]) -> np.ndarray:
    """The multi-hot row ynet_shop reads: 1 at each known tag's row."""
    row = np.zeros(len(vocabulary), dtype=np.float32)
    for tag in tags:
        index = vocabulary.get(normalize_keyword(tag))
        if index is not None:
            row[index] = 1.0
    return row


class FeatureExtractor:
    def __init__(
        self, triton: TritonModels, cache: EmbeddingCache, limits: ImageLimits, executor: Executor | None = None
    ) -> None:
        self.triton = triton
        self.cache = cache
        self.features = ImageFeatures(triton, cache, SERVICE)
        self.limits = limits
        self.executor = executor
        self.shop_flight: SingleFlight[np.ndarray] = SingleFlight()
        self.shop_build: str | None = None
        """ynet_shop's build_id; None when the model is not deployed (no cross-domain features)."""
        self.tag_vocabulary: dict[str, int] = {}

    async def refresh_build(self) -> None:
        await self.features.refresh_build()
        if await self.triton.has_model(c.YNET_SHOP):
            self.shop_build = await self.triton.build_id(c.YNET_SHOP)
            parameters = (await self.triton.config(c.YNET_SHOP)).get("parameters", {})
            text = parameters.get("tag_vocabulary", {}).get("string_value", "")
            self.tag_vocabulary = {word: i for i, word in enumerate(text.split("\n")) if word}
        else:
            self.shop_build = None

    @property
    def build(self) -> str:
        return self.features.build

    async def extract(
        self, images: list[bytes] | np.ndarray, timeout: float | None, tags: list[list[str]] | None = None
    ) -> tuple[list[Features], list[Shop] | None]:
        """`images`: encoded bytes, or decoded uint8 pixels [B, size, size, 3]; `tags`, one list per
        image, asks for the shop features too (None back when ynet_shop is not deployed)."""
        if not isinstance(images, np.ndarray):
            with stage(SERVICE, "decode"):
                images = await decode_images(images, self.limits, self.executor)
        if tags is None or self.shop_build is None:
            return await self.features.of(images, timeout), None
        features, shop = await asyncio.gather(self.features.of(images, timeout), self.shop(images, tags, timeout))
        return features, shop

    async def shop(self, pixels: np.ndarray, tags: list[list[str]], timeout: float | None) -> list[Shop]:
        rows = np.stack([tag_vector(t, self.tag_vocabulary) for t in tags])
        keys = [
            content_key("shop", c.YNET_SHOP, str(self.shop_build), pixels_digest(p) + np.flatnonzero(r).tobytes().hex())
            for p, r in zip(pixels, rows, strict=True)
        ]
        first = {key: i for i, key in reversed(list(enumerate(keys)))}

        async def compute(missing: list[str]) -> dict[str, np.ndarray]:
            chosen = [first[k] for k in missing]
            with stage(SERVICE, "triton_ynet_shop"):
                out = await self.triton.infer_chunked(
                    c.YNET_SHOP,
                    {"image": pixels[chosen], "tags": rows[chosen]},
                    [c.EMBEDDING_OUT, c.ATTENTION_OUT, c.CONTEXT_OUT],
                    timeout,
                )
            packed = np.concatenate([out[c.EMBEDDING_OUT], out[c.CONTEXT_OUT], out[c.ATTENTION_OUT]], axis=1)
            return dict(zip(missing, packed.astype(np.float32), strict=True))

        found, _ = await cached_batch(
            self.cache,
            self.shop_flight,
            SERVICE,
            "shop",
            keys,
            compute,
            valid=lambda value: value.size == SHOP_PACKED,
        )
        d = c.YNET_DIM
        return [
            Shop(found[k][:d], found[k][d : 2 * d], found[k][2 * d :], int(r.sum()))
            for k, r in zip(keys, rows, strict=True)
        ]
