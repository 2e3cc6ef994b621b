"""AttentionRescorer RPCs: validate the caller's candidate columns, one AMC call, the reply."""

from __future__ import annotations

import grpc
import numpy as np

from amcsearch.attention_rescorer.rescorer import AttentionRescorer, Scored
from amcsearch.attention_rescorer.settings import AttentionRescorerSettings
from amcsearch.runtime import contract as c
from amcsearch.runtime.deadlines import time_left
from amcsearch.runtime.errors import limit, require
from amcsearch.runtime.keywords import normalize_keyword
from amcsearch.runtime.metrics import BATCH_ITEMS
from amcsearch.runtime.quantize import quantize_regions
from amcsearch.runtime.rescoring import CandidateBatch
from amcsearch.runtime.tensors import FLOATS, from_tensor, to_tensor
from amcsearch.v1 import attention_rescorer_pb2, attention_rescorer_pb2_grpc, common_pb2

INT8 = (common_pb2.Tensor.INT8,)
INT32 = (common_pb2.Tensor.INT32,)


def region_attention(regions: list[tuple[int, float]]) -> list[common_pb2.RegionAttention]:
    return [
        common_pb2.RegionAttention(index=i, row=i // c.REGION_GRID, column=i % c.REGION_GRID, weight=w)
        for i, w in regions
    ]


def evidence(scored: Scored) -> common_pb2.Evidence:
    return common_pb2.Evidence(
        score=scored.score,
        visual_weight=scored.visual_weight,
        keyword_weight=scored.keyword_weight,
        learned_visual_weight=scored.learned_visual_weight,
        learned_keyword_weight=scored.learned_keyword_weight,
        regions=region_attention(scored.regions),
        keywords=[common_pb2.KeywordAttention(keyword=k, weight=w) for k, w in scored.keywords],
    )


class AttentionRescorerServicer(attention_rescorer_pb2_grpc.AttentionRescorerServicer):
    def __init__(self, rescorer: AttentionRescorer, settings: AttentionRescorerSettings) -> None:
        self.rescorer = rescorer
        self.settings = settings

    def _batch(self, request: attention_rescorer_pb2.RescoreRequest, n: int, query_count: int) -> CandidateBatch:
        grid = (n, c.REGION_COUNT, c.REGION_DIM)
        regions = from_tensor(request.regions, grid, "regions", (*FLOATS, *INT8))
        if request.regions.dtype == common_pb2.Tensor.INT8:
            scales = from_tensor(request.region_scales, (n, c.REGION_COUNT), "region_scales")
        else:
            regions, scales = quantize_regions(regions)
        if request.HasField("query_index") and request.query_index.shape:
            query_index = from_tensor(request.query_index, (n,), "query_index", INT32)
            require(
                bool(((query_index >= 0) & (query_index < query_count)).all()),
                f"query_index has a row outside queries (0..{query_count - 1})",
            )
        else:
            query_index = np.zeros(n, dtype=np.int32)
        texts = [normalize_keyword(t) for t in request.keyword_texts]
        require(all(texts), "keyword_texts has an empty keyword")
        longest = max((len(t) for t in texts), default=0)
        limit(longest, self.settings.max_keyword_chars, "a keyword's length", "characters")
        require(len(set(texts)) == len(texts), "keyword_texts must be distinct (after normalisation)")
        slot_shape = (n, c.KEYWORD_SLOTS)
        slots = from_tensor(request.keyword_slots, slot_shape, "keyword_slots", INT32)
        require(
            bool(((slots >= -1) & (slots < len(texts))).all()),
            f"keyword_slots has an index outside -1..{len(texts) - 1}",
        )
        confidences = from_tensor(request.keyword_confidences, slot_shape, "keyword_confidences")
        require(bool(((confidences >= 0) & (confidences <= 1)).all()), "keyword_confidences must be in [0, 1]")
        return CandidateBatch(list(request.ids), regions, scales, query_index, texts, slots, confidences)

    @staticmethod
    def _bias(request: attention_rescorer_pb2.RescoreRequest, query_count: int) -> np.ndarray | None:
        if not request.HasField("modality_bias") or not request.modality_bias.shape:
            return None
        bias = from_tensor(request.modality_bias, (query_count, 3), "modality_bias")
        require(
            bool((bias[:, 0] >= 0).all() and (bias[:, 0] <= 100).all()),
            "modality_bias: keyword scale must be in [0, 100]",
        )
        require(
            bool(((bias[:, 1:] >= 0) & (bias[:, 1:] <= 1)).all()),
            "modality_bias: keyword weight bounds must be in [0, 1]",
        )
        require(bool((bias[:, 1] <= bias[:, 2]).all()), "modality_bias: the min keyword weight exceeds the max")
        return bias

    async def Rescore(self, request: attention_rescorer_pb2.RescoreRequest, context: grpc.aio.ServicerContext):
        count = len(request.ids)
        if request.columnar and not count:  # N is the regions' rows; ids only echo
            count = int(request.regions.shape[0]) if request.regions.shape else 0
        elif request.columnar:
            require(
                not request.regions.shape or request.regions.shape[0] == count,
                f"ids has {count} entries but regions {list(request.regions.shape)[:1]} rows",
            )
        require(count > 0, f"ids is empty: send 1 to {self.settings.max_candidates} candidates")
        limit(count, self.settings.max_candidates, "number of candidates")
        require(0 <= request.explain_top <= c.REGION_COUNT, f"explain_top must be in 0..{c.REGION_COUNT}")
        queries = from_tensor(request.queries, (-1, c.EMBEDDING_DIM), "queries")
        require(queries.shape[0] > 0, "queries is empty: send at least one query embedding")
        limit(queries.shape[0], self.settings.max_candidates, "number of queries")
        BATCH_ITEMS.labels("attention_rescorer", "Rescore").observe(count)
        batch = self._batch(request, count, queries.shape[0])
        bias = self._bias(request, queries.shape[0])
        explain_top = (request.explain_top or 5) if request.explain else 0
        if request.columnar:
            return await self._rescore_columns(request, queries, batch, explain_top, bias)
        scored = await self.rescorer.rescore(queries, batch, explain_top, time_left(), bias)
        return attention_rescorer_pb2.RescoreResponse(
            results=[attention_rescorer_pb2.RescoredCandidate(id=s.id, evidence=evidence(s)) for s in scored]
        )

    async def _rescore_columns(
        self,
        request: attention_rescorer_pb2.RescoreRequest,
        queries: np.ndarray,
        batch: CandidateBatch,
        explain_top: int,
        bias: np.ndarray | None,
    ) -> attention_rescorer_pb2.RescoreResponse:
        ranks = None
        if explain_top and request.HasField("explain_ranks") and request.explain_ranks.shape:
            ranks = from_tensor(request.explain_ranks, (queries.shape[0],), "explain_ranks", INT32)
            require(bool((ranks >= 0).all()), "explain_ranks must be >= 0")
        out = await self.rescorer.rescore_columns(queries, batch, explain_top, ranks, time_left(), bias)
        return attention_rescorer_pb2.RescoreResponse(
            scores=to_tensor(out.scores),
            modality_weights=to_tensor(out.modality_weights),
            learned_weights=to_tensor(out.learned_weights),
            explained=to_tensor(out.explained),
            region_index=to_tensor(out.region_index),
            region_weight=to_tensor(out.region_weight),
            keyword_slot=to_tensor(out.keyword_slot),
            keyword_weight=to_tensor(out.keyword_weight),
        )

    async def RescoreCrossDomain(
        self, request: attention_rescorer_pb2.CrossDomainRequest, context: grpc.aio.ServicerContext
    ):
        count = len(request.ids)
        require(count > 0, f"ids is empty: send 1 to {self.settings.max_candidates} candidates")
        limit(count, self.settings.max_candidates, "number of candidates")
        require(0 <= request.explain_top <= c.REGION_COUNT, f"explain_top must be in 0..{c.REGION_COUNT}")
        locations = from_tensor(request.locations, (-1, c.REGION_COUNT, c.YNET_DIM), "locations")
        queries = locations.shape[0]
        require(queries > 0, "locations is empty: send at least one street map")
        limit(queries, self.settings.max_candidates, "number of queries")
        query_index = from_tensor(request.query_index, (count,), "query_index", INT32)
        require(
            bool(((query_index >= 0) & (query_index < queries)).all()),
            f"query_index has a row outside locations (0..{queries - 1})",
        )
        contexts = from_tensor(request.contexts, (count, c.YNET_DIM), "contexts")
        BATCH_ITEMS.labels("attention_rescorer", "RescoreCrossDomain").observe(count)
        explain_top = (request.explain_top or 5) if request.explain else 0
        scored = await self.rescorer.rescore_cross_domain(
            locations, list(request.ids), query_index, contexts, explain_top, time_left()
        )
        return attention_rescorer_pb2.CrossDomainResponse(
            results=[
                attention_rescorer_pb2.CrossDomainCandidate(
                    id=s.id, distance=s.distance, regions=region_attention(s.regions)
                )
                for s in scored
            ]
        )
