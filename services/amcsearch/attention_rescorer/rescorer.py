"""AMC rescoring of candidates against their queries, in one amc_rescorer call.

The caller sends the candidates' features as columns (runtime/rescoring.py). Keyword texts
become rows: of the model's built-in vocabulary (its config's keyword_vocabulary parameter), or
of a request table of the few texts outside it, embedded through QueryEncoder (which caches them
in Redis; indexing warms them). A Search so ships ~0.5 MB to Triton, not ~7 MB.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from amcsearch.runtime import contract as c
from amcsearch.runtime.errors import Unavailable
from amcsearch.runtime.metrics import stage
from amcsearch.runtime.rescoring import CandidateBatch, top_attention
from amcsearch.runtime.triton import TritonModels

SERVICE = "attention_rescorer"
EmbedKeywords = Callable[[list[str], float | None], Awaitable[dict[str, np.ndarray]]]


@dataclass
class Scored:
    id: str
    score: float
    visual_weight: float
    keyword_weight: float
    regions: list[tuple[int, float]]
    keywords: list[tuple[str, float]]
    learned_visual_weight: float = 0.0
    learned_keyword_weight: float = 0.0


def build_inputs(
    queries: np.ndarray,
    batch: CandidateBatch,
    vocabulary: dict[str, int],
    extra: dict[str, np.ndarray],
    modality_bias: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The amc_rescorer request: `vocabulary` maps the model's built-in keyword texts to their
    rows, `extra` holds the vectors of the batch's other texts (rows V, V + 1, ...);
    `modality_bias` [Q, 3] (None: the learned weights unchanged)."""
    queries = np.asarray(queries, dtype=np.float32).reshape(-1, c.EMBEDDING_DIM)
    if modality_bias is None:
        modality_bias = np.tile(np.asarray(c.NO_BIAS, dtype=np.float32), (queries.shape[0], 1))
    extra_texts = [t for t in batch.keyword_texts if t not in vocabulary]
    extra_row = {t: len(vocabulary) + i for i, t in enumerate(extra_texts)}
    rows = np.asarray(
        [vocabulary[t] if t in vocabulary else extra_row[t] for t in batch.keyword_texts] + [0], dtype=np.int32
    )
    keyword_index = rows[batch.slots]  # -1 (empty) picks the trailing 0: row 0 with confidence 0
    table = (
        np.stack([extra[t] for t in extra_texts]).astype(np.float16)
        if extra_texts
        else np.zeros((0, c.EMBEDDING_DIM), dtype=np.float16)
    )
    return {
        "query": queries,
        "query_index": batch.query_index,
        "regions": batch.regions,
        "region_scales": batch.region_scales,
        "keyword_table": table,
        "keyword_index": keyword_index,
        "keyword_mask": np.where(batch.slots >= 0, batch.confidences, 0.0).astype(np.float32),
        "modality_bias": np.asarray(modality_bias, dtype=np.float32),
    }


@dataclass
class CrossDomainScored:
    id: str
    distance: float
    regions: list[tuple[int, float]]


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

    async def rescore(
        self,
        queries: np.ndarray,
        batch: CandidateBatch,
        explain_top: int,
        timeout: float | None,
        modality_bias: np.ndarray | None = None,
    ) -> list[Scored]:
        vocabulary = await self.vocabulary()
        outside = [t for t in batch.keyword_texts if t not in vocabulary]
        extra = await self.embed_keywords(outside, timeout) if outside else {}
        with stage(SERVICE, "build_inputs"):
            inputs = build_inputs(queries, batch, vocabulary, extra, modality_bias)
        outputs = [c.SCORE_OUT, c.MODALITY_WEIGHTS_OUT, c.LEARNED_WEIGHTS_OUT]
        if explain_top:
            outputs += [c.REGION_ATTENTION_OUT, c.KEYWORD_ATTENTION_OUT]
        with stage(SERVICE, "triton"):
            out = await self.triton.infer(c.AMC_RESCORER, inputs, outputs, timeout)
        scores = out[c.SCORE_OUT].reshape(-1)
        weights = out[c.MODALITY_WEIGHTS_OUT]
        learned = out[c.LEARNED_WEIGHTS_OUT]
        results = []
        for i, candidate_id in enumerate(batch.ids):
            regions: list[tuple[int, float]] = []
            keywords: list[tuple[str, float]] = []
            if explain_top:
                regions = top_attention(out[c.REGION_ATTENTION_OUT][i], explain_top)
                texts = batch.slot_texts(i)
                keywords = [
                    (texts[j], w) for j, w in top_attention(out[c.KEYWORD_ATTENTION_OUT][i][: len(texts)], explain_top)
                ]
            results.append(
                Scored(
                    candidate_id,
                    float(scores[i]),
                    float(weights[i, 0]),
                    float(weights[i, 1]),
                    regions,
                    keywords,
                    float(learned[i, 0]),
                    float(learned[i, 1]),
                )
            )
        return results

    async def rescore_cross_domain(
        self,
        locations: np.ndarray,
        ids: list[str],
        query_index: np.ndarray,
        contexts: np.ndarray,
        explain_top: int,
        timeout: float | None,
    ) -> list[CrossDomainScored]:
        """CtxYNet: each candidate's squared distance to its street query attended with the
        candidate's context; one ctx_ynet call for every candidate of every query."""
        if not await self.triton.has_model(c.CTX_YNET):
            raise Unavailable(f"model {c.CTX_YNET} is not deployed in this model repository")
        inputs = {
            "locations": np.asarray(locations, dtype=np.float32),
            "query_index": np.asarray(query_index, dtype=np.int32),
            "context": np.asarray(contexts, dtype=np.float32),
        }
        outputs = [c.DISTANCE_OUT] + ([c.ATTENTION_OUT] if explain_top else [])
        with stage(SERVICE, "triton_ctx_ynet"):
            out = await self.triton.infer(c.CTX_YNET, inputs, outputs, timeout)
        distances = out[c.DISTANCE_OUT].reshape(-1)
        return [
            CrossDomainScored(
                candidate_id,
                float(distances[i]),
                top_attention(out[c.ATTENTION_OUT][i], explain_top) if explain_top else [],
            )
            for i, candidate_id in enumerate(ids)
        ]
