"""AMC rescoring of one query against its candidates, in one amc_rescorer call.

Candidate features: inline, or by id from the Redis feature cache (one MGET), misses from the
index of record through SearchService.Get (one call). Keyword vectors: QueryEncoder.Encode of
the distinct keyword strings (one call, cached there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from amcsearch.runtime import contract as c
from amcsearch.runtime.cache import EmbeddingCache
from amcsearch.runtime.indexed import IndexedFeatures, decode_indexed, encode_indexed, indexed_key
from amcsearch.runtime.metrics import stage
from amcsearch.runtime.triton import TritonModels

SERVICE = "attention_rescorer"


@dataclass
class Scored:
    id: str
    score: float
    visual_weight: float
    keyword_weight: float
    regions: list[tuple[int, float]]
    keywords: list[tuple[str, float]]


def keyword_slots(keywords: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """The KEYWORD_SLOTS most confident keywords (ties by text, for determinism)."""
    return sorted(keywords, key=lambda kw: (-kw[1], kw[0]))[: c.KEYWORD_SLOTS]


def build_inputs(query: np.ndarray, candidates: list[IndexedFeatures],
                 vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(candidates)
    keywords = np.zeros((n, c.KEYWORD_SLOTS, c.EMBEDDING_DIM), dtype=np.float32)
    mask = np.zeros((n, c.KEYWORD_SLOTS), dtype=np.float32)
    for i, candidate in enumerate(candidates):
        for j, (text, confidence) in enumerate(keyword_slots(candidate.keywords)):
            keywords[i, j] = vectors[text]
            mask[i, j] = confidence
    return {
        "query": np.repeat(query.reshape(1, -1).astype(np.float32), n, axis=0),
        "regions": np.stack([cand.regions for cand in candidates]).astype(np.float32),
        "keywords": keywords,
        "keyword_mask": mask,
    }


def top_attention(weights: np.ndarray, count: int) -> list[tuple[int, float]]:
    order = np.argsort(-weights, kind="stable")[:count]
    return [(int(i), float(weights[i])) for i in order]


class AttentionRescorer:
    def __init__(self, triton: TritonModels, cache: EmbeddingCache, collection: str,
                 read_index, embed_keywords) -> None:
        """`read_index(ids, timeout)` -> {id: IndexedFeatures} (missing ids absent);
        `embed_keywords(texts, timeout)` -> {text: vector}."""
        self.triton = triton
        self.cache = cache
        self.collection = collection
        self.read_index = read_index
        self.embed_keywords = embed_keywords

    async def features_by_id(self, ids: list[str], timeout: float | None) -> dict[str, IndexedFeatures]:
        unique = list(dict.fromkeys(ids))
        keys = [indexed_key(self.collection, i) for i in unique]
        with stage(SERVICE, "cache_get"):
            cached = await self.cache.get_many("indexed", keys, decode=decode_indexed)
        found = {i: value for i, value in zip(unique, cached) if value is not None}
        missing = [i for i in unique if i not in found]
        if missing:
            with stage(SERVICE, "index_read"):
                read = await self.read_index(missing, timeout)
            found.update(read)
            await self.cache.set_many({indexed_key(self.collection, i): f for i, f in read.items()},
                                      encode=encode_indexed)
        return found

    async def rescore(self, query: np.ndarray, candidates: list[IndexedFeatures], explain_top: int,
                      timeout: float | None) -> list[Scored]:
        texts = sorted({text for cand in candidates for text, _ in keyword_slots(cand.keywords)})
        vectors = await self.embed_keywords(texts, timeout) if texts else {}
        inputs = build_inputs(query, candidates, vectors)
        outputs = [c.SCORE_OUT, c.MODALITY_WEIGHTS_OUT]
        if explain_top:
            outputs += [c.REGION_ATTENTION_OUT, c.KEYWORD_ATTENTION_OUT]
        with stage(SERVICE, "triton"):
            out = await self.triton.infer(c.AMC_RESCORER, inputs, outputs, timeout)
        results = []
        for i, candidate in enumerate(candidates):
            regions: list[tuple[int, float]] = []
            keywords: list[tuple[str, float]] = []
            if explain_top:
                regions = top_attention(out[c.REGION_ATTENTION_OUT][i], explain_top)
                slots = keyword_slots(candidate.keywords)
                keywords = [(slots[j][0], w) for j, w in top_attention(out[c.KEYWORD_ATTENTION_OUT][i][: len(slots)], explain_top)]
            weights = out[c.MODALITY_WEIGHTS_OUT][i]
            results.append(Scored(candidate.id, float(out[c.SCORE_OUT][i].reshape(-1)[0]), float(weights[0]),
                                  float(weights[1]), regions, keywords))
        return results
