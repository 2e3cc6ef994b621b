"""AttentionRescorer RPCs: validate the caller's candidates, one AMC call, build the reply."""

from __future__ import annotations

import grpc

from amcsearch.attention_rescorer.rescorer import AttentionRescorer, Candidate, Scored
from amcsearch.attention_rescorer.settings import AttentionRescorerSettings
from amcsearch.runtime import contract as c
from amcsearch.runtime.errors import limit, require
from amcsearch.runtime.keywords import normalize_keyword
from amcsearch.runtime.metrics import BATCH_ITEMS
from amcsearch.runtime.quantize import quantize_regions
from amcsearch.runtime.tensors import FLOATS, from_tensor
from amcsearch.v1 import attention_rescorer_pb2, attention_rescorer_pb2_grpc, common_pb2


def evidence(scored: Scored) -> common_pb2.Evidence:
    return common_pb2.Evidence(
        score=scored.score, visual_weight=scored.visual_weight, keyword_weight=scored.keyword_weight,
        regions=[common_pb2.RegionAttention(index=i, row=i // c.REGION_GRID, column=i % c.REGION_GRID, weight=w)
                 for i, w in scored.regions],
        keywords=[common_pb2.KeywordAttention(keyword=k, weight=w) for k, w in scored.keywords],
    )


class AttentionRescorerServicer(attention_rescorer_pb2_grpc.AttentionRescorerServicer):
    def __init__(self, rescorer: AttentionRescorer, settings: AttentionRescorerSettings) -> None:
        self.rescorer = rescorer
        self.settings = settings

    def _candidate(self, message: attention_rescorer_pb2.Candidate, index: int, query_count: int) -> Candidate:
        what = f"candidates[{index}]"
        grid = (c.REGION_COUNT, c.REGION_DIM)
        regions = from_tensor(message.regions, grid, f"{what}.regions", (*FLOATS, common_pb2.Tensor.INT8))
        if message.regions.dtype == common_pb2.Tensor.INT8:
            scales = from_tensor(message.region_scales, (c.REGION_COUNT,), f"{what}.region_scales")
        else:
            regions, scales = quantize_regions(regions)
        require(0 <= message.query < query_count, f"{what}.query {message.query} is not a row of queries (0..{query_count - 1})")
        keywords = []
        for keyword in message.keywords:
            text = normalize_keyword(keyword.text)
            require(bool(text), f"{what}: a keyword is empty")
            limit(len(text), self.settings.max_keyword_chars, f"{what} keyword length", "characters")
            require(0 <= keyword.confidence <= 1, f"{what}: keyword confidence {keyword.confidence} is not in [0, 1]")
            keywords.append((text, keyword.confidence))
        return Candidate(message.id, regions, scales, keywords, message.query)

    async def Rescore(self, request: attention_rescorer_pb2.RescoreRequest, context: grpc.aio.ServicerContext):
        count = len(request.candidates)
        require(count > 0, f"candidates is empty: send 1 to {self.settings.max_candidates}")
        limit(count, self.settings.max_candidates, "number of candidates")
        require(0 <= request.explain_top <= c.REGION_COUNT, f"explain_top must be in 0..{c.REGION_COUNT}")
        queries = from_tensor(request.queries, (-1, c.EMBEDDING_DIM), "queries")
        require(queries.shape[0] > 0, "queries is empty: send at least one query embedding")
        limit(queries.shape[0], self.settings.max_candidates, "number of queries")
        BATCH_ITEMS.labels("attention_rescorer", "Rescore").observe(count)
        candidates = [self._candidate(m, i, queries.shape[0]) for i, m in enumerate(request.candidates)]
        explain_top = (request.explain_top or 5) if request.explain else 0
        scored = await self.rescorer.rescore(queries, candidates, explain_top, context.time_remaining())
        return attention_rescorer_pb2.RescoreResponse(results=[
            attention_rescorer_pb2.RescoredCandidate(id=s.id, evidence=evidence(s)) for s in scored
        ])
