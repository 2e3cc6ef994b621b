"""AMC rescoring of candidates against their queries, in one amc_rescorer call.

The caller sends each candidate's features (int8 regions, keywords). Keyword texts become
indices: into the model's built-in vocabulary (its config's keyword_vocabulary parameter), or
into a request table of the few texts outside it, embedded through QueryEncoder (which caches
them in Redis; indexing warms them). So a Search ships ~0.5 MB to Triton, not ~7 MB.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from amcsearch.runtime import contract as c
from amcsearch.runtime.metrics import stage
from amcsearch.runtime.triton import TritonModels

SERVICE = "attention_rescorer"
EmbedKeywords = Callable[[list[str], float | None], Awaitable[dict[str, np.ndarray]]]


@dataclass(frozen=True)
class Candidate:
    id: str
    regions: np.ndarray
    """int8 [REGION_COUNT, REGION_DIM]."""
    region_scales: np.ndarray
    """float32 [REGION_COUNT]."""
    keywords: list[tuple[str, float]]
    query: int = 0


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


def build_inputs(queries: np.ndarray, candidates: list[Candidate], vocabulary: dict[str, int],
                 extra: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The amc_rescorer request: `vocabulary` maps the model's built-in keyword texts to their
    rows, `extra` holds the vectors of the other texts (rows V, V + 1, ...)."""
    n = len(candidates)
    extra_texts = sorted(extra)
    row_of = dict(vocabulary)
    row_of.update((t, len(vocabulary) + i) for i, t in enumerate(extra_texts))
    keyword_index = np.zeros((n, c.KEYWORD_SLOTS), dtype=np.int32)
    keyword_mask = np.zeros((n, c.KEYWORD_SLOTS), dtype=np.float32)
    for i, candidate in enumerate(candidates):
        for j, (text, confidence) in enumerate(keyword_slots(candidate.keywords)):
            keyword_index[i, j] = row_of[text]
            keyword_mask[i, j] = confidence
    table = (np.stack([extra[t] for t in extra_texts]).astype(np.float16) if extra_texts
             else np.zeros((0, c.EMBEDDING_DIM), dtype=np.float16))
    return {
        "query": np.asarray(queries, dtype=np.float32).reshape(-1, c.EMBEDDING_DIM),
        "query_index": np.asarray([cand.query for cand in candidates], dtype=np.int32),
        "regions": np.stack([cand.regions for cand in candidates]).astype(np.int8),
        "region_scales": np.stack([cand.region_scales for cand in candidates]).astype(np.float32),
        "keyword_table": table,
        "keyword_index": keyword_index,
        "keyword_mask": keyword_mask,
    }


def top_attention(weights: np.ndarray, count: int) -> list[tuple[int, float]]:
    order = np.argsort(-weights, kind="stable")[:count]
    return [(int(i), float(weights[i])) for i in order]


class AttentionRescorer:
    def __init__(self, triton: TritonModels, embed_keywords: EmbedKeywords) -> None:
        """`embed_keywords(texts, timeout)` -> {text: vector} for texts outside the vocabulary."""
        self.triton = triton
        self.embed_keywords = embed_keywords

    async def vocabulary(self) -> dict[str, int]:
        """The model's built-in keyword texts -> rows (empty when the model carries none)."""
        parameters = (await self.triton.config(c.AMC_RESCORER)).get("parameters", {})
        text = parameters.get("keyword_vocabulary", {}).get("string_value", "")
        return {word: i for i, word in enumerate(text.split("\n")) if word}

    async def rescore(self, queries: np.ndarray, candidates: list[Candidate], explain_top: int,
                      timeout: float | None) -> list[Scored]:
        vocabulary = await self.vocabulary()
        texts = {text for cand in candidates for text, _ in keyword_slots(cand.keywords)}
        outside = sorted(texts - set(vocabulary))
        extra = await self.embed_keywords(outside, timeout) if outside else {}
        with stage(SERVICE, "build_inputs"):
            inputs = build_inputs(queries, candidates, vocabulary, extra)
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
                keywords = [(slots[j][0], w)
                            for j, w in top_attention(out[c.KEYWORD_ATTENTION_OUT][i][: len(slots)], explain_top)]
            weights = out[c.MODALITY_WEIGHTS_OUT][i]
            results.append(Scored(candidate.id, float(out[c.SCORE_OUT][i].reshape(-1)[0]), float(weights[0]),
                                  float(weights[1]), regions, keywords))
        return results
