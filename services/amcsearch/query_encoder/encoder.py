"""Encode a batch of queries: one MGET, then at most one Triton call per model for the misses.

Text -> text_encoder. Image -> image_encoder (or the given features). Image + modification ->
image_encoder + text_encoder (with token states) + composer. Street shot (cross-domain) ->
ynet_street. Identical misses of concurrent requests are computed once (SingleFlight).
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor

import numpy as np

from amcsearch.query_encoder.queries import Encoded, Query
from amcsearch.query_encoder.tokenize import Tokenizer
from amcsearch.runtime import contract as c
from amcsearch.runtime.cache import EmbeddingCache, content_key
from amcsearch.runtime.cached import cached_batch
from amcsearch.runtime.image_features import ImageFeatures, pixels_digest
from amcsearch.runtime.images import decode_images
from amcsearch.runtime.metrics import stage
from amcsearch.runtime.settings import ImageLimits
from amcsearch.runtime.singleflight import SingleFlight
from amcsearch.runtime.triton import TritonModels

log = logging.getLogger(__name__)

SERVICE = "query_encoder"
STREET_PACKED = c.YNET_DIM + c.REGION_COUNT * c.YNET_DIM


def _pad_to(array: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad axis 1 (tokens) to `length`."""
    pad = [(0, 0), (0, length - array.shape[1])] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad)


def _l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class QueryEncoder:
    def __init__(
        self,
        triton: TritonModels,
        cache: EmbeddingCache,
        tokenizer: Tokenizer,
        limits: ImageLimits,
        executor: Executor | None = None,
    ) -> None:
        self.triton = triton
        self.cache = cache
        self.tokenizer = tokenizer
        self.limits = limits
        self.executor = executor
        self.flight: SingleFlight[np.ndarray] = SingleFlight()
        self.builds: dict[str, str] = {}
        self.image_features = ImageFeatures(triton, cache, SERVICE)
        """The image_encoder path FeatureExtractor uses too (same cache keys): an indexed image sent
        again as a query is not encoded again."""

    async def refresh_builds(self, models: list[str]) -> None:
        """Read the build_id of each model present; cache keys include them."""
        self.builds = {model: await self.triton.build_id(model) for model in models}
        if c.IMAGE_ENCODER in self.builds:
            self.image_features.build = self.builds[c.IMAGE_ENCODER]

    def _key(self, query: Query) -> str:
        model = {"text": c.TEXT_ENCODER, "image": c.IMAGE_ENCODER, "composed": c.COMPOSER}[query.kind]
        build = self.builds.get(model, "missing")
        if query.kind == "composed":
            build = f"{build}.{self.builds.get(c.IMAGE_ENCODER, 'missing')}.{self.builds.get(c.TEXT_ENCODER)}"
        return content_key("query", model, build, query.cache_content())

    async def encode(self, queries: list[Query], timeout: float | None) -> list[Encoded]:
        """Image queries given as bytes go through the shared image-features cache only; the
        others (texts, composed queries, given features) through the query cache."""
        with stage(SERVICE, "tokenize"):
            truncated = self.tokenizer.truncated([q.text or "" for q in queries])
        by_image = [
            i for i, q in enumerate(queries) if q.kind == "image" and q.image is not None and q.image.data is not None
        ]
        street = [i for i, q in enumerate(queries) if q.kind == "street"]
        others = [i for i in range(len(queries)) if i not in set(by_image) | set(street)]
        vectors: dict[int, tuple[np.ndarray, bool]] = {}
        locations: dict[int, np.ndarray] = {}
        if street:
            for i, (embedding, where, hit) in zip(
                street, await self._street([queries[i] for i in street], timeout), strict=True
            ):
                vectors[i] = (embedding, hit)
                locations[i] = where
        if by_image:
            features = await self._image_features([queries[i] for i in by_image], timeout)
            vectors.update((i, (f.embedding, f.cache_hit)) for i, f in zip(by_image, features, strict=True))
        if others:
            keys = [self._key(queries[i]) for i in others]
            by_key = dict(zip(keys, (queries[i] for i in others), strict=True))

            async def compute(missing: list[str]) -> dict[str, np.ndarray]:
                return dict(zip(missing, await self._run_models([by_key[k] for k in missing], timeout), strict=True))

            found, hits = await cached_batch(self.cache, self.flight, SERVICE, "query", keys, compute)
            vectors.update((i, (found[key], key in hits)) for i, key in zip(others, keys, strict=True))
        return [
            Encoded(
                vectors[i][0],
                vectors[i][1],
                truncated[i] and query.text is not None,
                query.normalized_text(),
                locations.get(i),
            )
            for i, query in enumerate(queries)
        ]

    async def _street(self, queries: list[Query], timeout: float | None) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        """(TagYNet street vector, CtxYNet street map, cache hit) per street shot: decoded, then
        one MGET and one ynet_street call for the misses, keyed by pixels and build."""
        with stage(SERVICE, "decode"):
            names = ["image" if len(queries) == 1 else "a query image"] * len(queries)
            data = [q.image.data for q in queries if q.image is not None and q.image.data is not None]
            pixels = await decode_images(data, self.limits, self.executor, names)
        build = self.builds.get(c.YNET_STREET, "missing")
        keys = [content_key("street", c.YNET_STREET, build, pixels_digest(p)) for p in pixels]
        first = {key: i for i, key in reversed(list(enumerate(keys)))}

        async def compute(missing: list[str]) -> dict[str, np.ndarray]:
            with stage(SERVICE, "triton_ynet_street"):
                out = await self.triton.infer_chunked(
                    c.YNET_STREET,
                    {"image": pixels[[first[k] for k in missing]]},
                    [c.EMBEDDING_OUT, c.LOCATIONS_OUT],
                    timeout,
                )
            packed = np.concatenate([out[c.EMBEDDING_OUT], out[c.LOCATIONS_OUT].reshape(len(missing), -1)], axis=1)
            return dict(zip(missing, packed.astype(np.float32), strict=True))

        found, hits = await cached_batch(
            self.cache, self.flight, SERVICE, "street", keys, compute, valid=lambda value: value.size == STREET_PACKED
        )
        d = c.YNET_DIM
        return [(found[k][:d], found[k][d:].reshape(c.REGION_COUNT, d), k in hits) for k in keys]

    async def _image_features(self, queries: list[Query], timeout: float | None):
        """Decode the query images (bounded) and read or compute their features."""
        with stage(SERVICE, "decode"):
            names = ["image" if len(queries) == 1 else "a query image"] * len(queries)
            data = [q.image.data for q in queries if q.image is not None and q.image.data is not None]
            pixels = await decode_images(data, self.limits, self.executor, names)
        return await self.image_features.of(pixels, timeout)

    async def _run_models(self, queries: list[Query], timeout: float | None) -> list[np.ndarray]:
        """Embeddings of `queries` (distinct misses), with one call per model."""
        results: list[np.ndarray | None] = [None] * len(queries)
        text_rows = [i for i, q in enumerate(queries) if q.kind in ("text", "composed")]
        image_rows = [i for i, q in enumerate(queries) if q.kind in ("image", "composed")]
        composed = any(q.kind == "composed" for q in queries)

        text_out = await self._encode_texts([queries[i].text or "" for i in text_rows], composed, timeout)
        image_out = await self._encode_images([queries[i] for i in image_rows], timeout)
        text_at = {row: j for j, row in enumerate(text_rows)}
        image_at = {row: j for j, row in enumerate(image_rows)}
        for i, query in enumerate(queries):
            if query.kind == "text":
                results[i] = text_out[c.EMBEDDING_OUT][text_at[i]]
            elif query.kind == "image":
                results[i] = image_out[c.EMBEDDING_OUT][image_at[i]]
        composed_rows = [i for i, q in enumerate(queries) if q.kind == "composed"]
        if composed_rows:
            embeddings = await self._compose(composed_rows, text_out, text_at, image_out, image_at, timeout)
            for row, embedding in zip(composed_rows, embeddings, strict=False):
                results[row] = embedding
        return [r for r in results if r is not None]

    async def _encode_texts(self, texts: list[str], with_tokens: bool, timeout: float | None) -> dict:
        """Embeddings (and token states) of `texts`: one Triton call per max_batch_size texts,
        each padded to its own longest text; token states are padded to a common length."""
        if not texts:
            return {}
        step = await self.triton.max_batch_size(c.TEXT_ENCODER) or len(texts)
        outputs = [c.EMBEDDING_OUT, c.TOKENS_OUT] if with_tokens else [c.EMBEDDING_OUT]
        parts = []
        for start in range(0, len(texts), step):
            with stage(SERVICE, "tokenize"):
                ids, mask, _ = self.tokenizer.encode(texts[start : start + step])
            with stage(SERVICE, "triton_text_encoder"):
                out = await self.triton.infer(
                    c.TEXT_ENCODER, {"input_ids": ids, "attention_mask": mask}, outputs, timeout
                )
            out["mask"] = mask.astype(np.float32)
            parts.append(out)
        if len(parts) == 1:
            return parts[0]
        merged = {c.EMBEDDING_OUT: np.concatenate([p[c.EMBEDDING_OUT] for p in parts])}
        if with_tokens:
            length = max(p["mask"].shape[1] for p in parts)
            merged[c.TOKENS_OUT] = np.concatenate([_pad_to(p[c.TOKENS_OUT], length) for p in parts])
            merged["mask"] = np.concatenate([_pad_to(p["mask"], length) for p in parts])
        return merged

    async def _encode_images(self, queries: list[Query], timeout: float | None) -> dict:
        """Embedding (and regions) per query: given features pass through, bytes go to Triton once."""
        if not queries:
            return {}
        embeddings = np.zeros((len(queries), c.EMBEDDING_DIM), dtype=np.float32)
        regions = np.zeros((len(queries), c.REGION_COUNT, c.REGION_DIM), dtype=np.float32)
        to_decode = [i for i, q in enumerate(queries) if q.image is not None and q.image.data is not None]
        for i, query in enumerate(queries):
            if i not in to_decode:
                assert query.image is not None and query.image.embedding is not None
                embeddings[i] = _l2_normalize(query.image.embedding)
                regions[i] = query.image.regions
        if to_decode:
            features = await self._image_features([queries[i] for i in to_decode], timeout)
            embeddings[to_decode] = np.stack([f.embedding for f in features])
            regions[to_decode] = np.stack([f.regions for f in features])
        return {c.EMBEDDING_OUT: embeddings, c.REGIONS_OUT: regions}

    async def _compose(
        self, rows: list[int], text_out: dict, text_at: dict, image_out: dict, image_at: dict, timeout: float | None
    ) -> np.ndarray:
        t = [text_at[r] for r in rows]
        v = [image_at[r] for r in rows]
        inputs = {
            "image_embedding": image_out[c.EMBEDDING_OUT][v],
            "regions": image_out[c.REGIONS_OUT][v],
            "text_embedding": text_out[c.EMBEDDING_OUT][t],
            "tokens": text_out[c.TOKENS_OUT][t],
            "token_mask": text_out["mask"][t],
        }
        with stage(SERVICE, "triton_composer"):
            out = await self.triton.infer_chunked(c.COMPOSER, inputs, [c.EMBEDDING_OUT], timeout)
        return out[c.EMBEDDING_OUT]
