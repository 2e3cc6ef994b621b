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


class Vocabulary:
    """The amc_rescorer model's built-in keyword texts, sorted, for array lookups of many texts."""

    def __init__(self, texts: list[str]) -> None:
        self.order = np.argsort(np.asarray(texts, dtype=object)).astype(np.int32) if texts else np.zeros(0, np.int32)
        self.sorted = np.asarray(texts, dtype=str)[self.order] if texts else np.zeros(0, dtype=str)
        self.size = len(texts)

    def rows(self, texts: list[str]) -> np.ndarray:
        """Each text's model row, or -1 when the model does not know it."""
        if not texts or not self.size:
            return np.full(len(texts), -1, dtype=np.int32)
        wanted = np.asarray(texts, dtype=str)
        at = np.minimum(np.searchsorted(self.sorted, wanted), self.size - 1)
        return np.where(self.sorted[at] == wanted, self.order[at], -1).astype(np.int32)


def build_inputs(
    queries: np.ndarray,
    batch: CandidateBatch,
    vocabulary: Vocabulary,
    extra: dict[str, np.ndarray],
    modality_bias: np.ndarray | None = None,
    known: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The amc_rescorer request: `vocabulary` holds the model's built-in keyword texts, `extra`
    the vectors of the batch's other texts (rows V, V + 1, ...); `modality_bias` [Q, 3] (None:
    the learned weights unchanged); `known`: vocabulary.rows of the batch's texts when the caller
    has them already."""
    queries = np.asarray(queries, dtype=np.float32).reshape(-1, c.EMBEDDING_DIM)
    if modality_bias is None:
        modality_bias = np.tile(np.asarray(c.NO_BIAS, dtype=np.float32), (queries.shape[0], 1))
    rows = (vocabulary.rows(batch.keyword_texts) if known is None else known).copy()
    outside = np.flatnonzero(rows < 0)
    rows[outside] = vocabulary.size + np.arange(len(outside), dtype=np.int32)
    extra_texts = [batch.keyword_texts[i] for i in outside.tolist()]
    rows = np.append(rows, np.int32(0))
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
class Columns:
    """A columnar Rescore reply: every candidate's score and weights, attention for `explained`."""

    scores: np.ndarray
    """float32 [N]."""
    modality_weights: np.ndarray
    """float32 [N, 2]: applied (visual, keyword)."""
    learned_weights: np.ndarray
    """float32 [N, 2]: learned (visual, keyword)."""
    explained: np.ndarray
    """int32 [M]: the rows explained."""
    region_index: np.ndarray
    """int32 [M, E], strongest first (ties by index)."""
    region_weight: np.ndarray
    keyword_slot: np.ndarray
    """int32 [M, E]: slot of the candidate, -1 past its keywords."""
    keyword_weight: np.ndarray


def best_rows(scores: np.ndarray, query_index: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """The rows among each query's best ranks[q] by score (ties in row order), in row order."""
    rows = np.arange(len(scores))
    order = np.lexsort((rows, -scores, query_index))
    grouped = query_index[order]
    starts = np.searchsorted(grouped, grouped, side="left")
    rank = np.arange(len(order)) - starts
    return np.sort(order[rank < ranks[grouped]]).astype(np.int32)


def top_columns(weights: np.ndarray, count: int, filled: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the `count` largest weights' columns and values, largest first (ties by column);
    with `filled` [M], columns at or past a row's filled count are left out (-1, weight 0)."""
    if filled is not None:
        weights = np.where(np.arange(weights.shape[1]) < filled[:, None], weights, -np.inf)
    order = np.argsort(-weights, axis=1, kind="stable")[:, :count].astype(np.int32)
    values = np.take_along_axis(weights, order, axis=1)
    if filled is not None:
        order = np.where(np.isfinite(values), order, -1)
        values = np.where(np.isfinite(values), values, 0.0)
    return order, values.astype(np.float32)


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
        self._vocabulary: tuple[dict, Vocabulary] | None = None

    async def vocabulary(self) -> Vocabulary:
        """The model's built-in keyword texts (none when the model carries none); read again
        when Triton's config is (a new build)."""
        config = await self.triton.config(c.AMC_RESCORER)
        if self._vocabulary is None or self._vocabulary[0] is not config:
            text = config.get("parameters", {}).get("keyword_vocabulary", {}).get("string_value", "")
            self._vocabulary = (config, Vocabulary(text.split("\n") if text else []))
        return self._vocabulary[1]

    async def _infer(
        self,
        queries: np.ndarray,
        batch: CandidateBatch,
        explain: bool,
        timeout: float | None,
        modality_bias: np.ndarray | None,
    ) -> dict[str, np.ndarray]:
        vocabulary = await self.vocabulary()
        known = vocabulary.rows(batch.keyword_texts)
        outside = [batch.keyword_texts[i] for i in np.flatnonzero(known < 0).tolist()]
        extra = await self.embed_keywords(outside, timeout) if outside else {}
        with stage(SERVICE, "build_inputs"):
            inputs = build_inputs(queries, batch, vocabulary, extra, modality_bias, known)
        outputs = [c.SCORE_OUT, c.MODALITY_WEIGHTS_OUT, c.LEARNED_WEIGHTS_OUT]
        if explain:
            outputs += [c.REGION_ATTENTION_OUT, c.KEYWORD_ATTENTION_OUT]
        with stage(SERVICE, "triton"):
            return await self.triton.infer(c.AMC_RESCORER, inputs, outputs, timeout)

    async def rescore_columns(
        self,
        queries: np.ndarray,
        batch: CandidateBatch,
        explain_top: int,
        explain_ranks: np.ndarray | None,
        timeout: float | None,
        modality_bias: np.ndarray | None = None,
    ) -> Columns:
        """Scores and weights of every candidate as arrays; with `explain_top`, the attention of
        each query's best `explain_ranks[q]` candidates (all when None)."""
        out = await self._infer(queries, batch, explain_top > 0, timeout, modality_bias)
        scores = out[c.SCORE_OUT].reshape(-1).astype(np.float32)
        none_i, none_f = np.zeros((0, explain_top), np.int32), np.zeros((0, explain_top), np.float32)
        explained = np.zeros(0, np.int32)
        region_index, region_weight, keyword_slot, keyword_weight = none_i, none_f, none_i, none_f
        if explain_top:
            if explain_ranks is None:
                explained = np.arange(len(scores), dtype=np.int32)
            else:
                explained = best_rows(scores, batch.query_index, explain_ranks)
            region_index, region_weight = top_columns(out[c.REGION_ATTENTION_OUT][explained], explain_top)
            filled = (batch.slots[explained] >= 0).sum(axis=1)
            keyword_slot, keyword_weight = top_columns(out[c.KEYWORD_ATTENTION_OUT][explained], explain_top, filled)
        return Columns(
            scores,
            out[c.MODALITY_WEIGHTS_OUT].astype(np.float32),
            out[c.LEARNED_WEIGHTS_OUT].astype(np.float32),
            explained,
            region_index,
            region_weight,
            keyword_slot,
            keyword_weight,
        )

    async def rescore(
        self,
        queries: np.ndarray,
        batch: CandidateBatch,
        explain_top: int,
        timeout: float | None,
        modality_bias: np.ndarray | None = None,
    ) -> list[Scored]:
        out = await self._infer(queries, batch, explain_top > 0, timeout, modality_bias)
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
