"""AttentionRescorer RPCs: validate, gather candidate features, one AMC call, build the reply."""

from __future__ import annotations

import grpc

from amcsearch.attention_rescorer.rescorer import AttentionRescorer, Scored
from amcsearch.attention_rescorer.settings import AttentionRescorerSettings
from amcsearch.runtime import contract as c
from amcsearch.runtime.errors import InvalidArgument, NotFound, limit, require
from amcsearch.runtime.indexed import IndexedFeatures
from amcsearch.runtime.metrics import BATCH_ITEMS
from amcsearch.runtime.tensors import from_tensor
from amcsearch.v1 import attention_rescorer_pb2, attention_rescorer_pb2_grpc, common_pb2


def evidence(scored: Scored) -> common_pb2.Evidence:
    return common_pb2.Evidence(
        score=scored.score, visual_weight=scored.visual_weight, keyword_weight=scored.keyword_weight,
        regions=[common_pb2.RegionAttention(index=i, row=i // c.REGION_GRID, column=i % c.REGION_GRID, weight=w)
                 for i, w in scored.regions],
        keywords=[common_pb2.KeywordAttention(keyword=k, weight=w) for k, w in scored.keywords],
    )


def inline_features(message: attention_rescorer_pb2.InlineCandidate, index: int) -> IndexedFeatures:
    what = f"candidates[{index}].inline"
    regions = from_tensor(message.regions, (c.REGION_COUNT, c.REGION_DIM), f"{what}.regions")
    for keyword in message.keywords:
        require(bool(keyword.text.strip()), f"{what}: a keyword is empty")
        require(0 <= keyword.confidence <= 1, f"{what}: keyword {keyword.text!r} confidence is not in [0, 1]")
    return IndexedFeatures(message.id, regions, [(k.text.strip().lower(), k.confidence) for k in message.keywords])


class AttentionRescorerServicer(attention_rescorer_pb2_grpc.AttentionRescorerServicer):
    def __init__(self, rescorer: AttentionRescorer, settings: AttentionRescorerSettings) -> None:
        self.rescorer = rescorer
        self.settings = settings

    async def Rescore(self, request: attention_rescorer_pb2.RescoreRequest, context: grpc.aio.ServicerContext):
        count = len(request.candidates)
        require(count > 0, f"candidates is empty: send 1 to {self.settings.max_candidates}")
        limit(count, self.settings.max_candidates, "number of candidates")
        require(0 <= request.explain_top <= c.REGION_COUNT, f"explain_top must be in 0..{c.REGION_COUNT}")
        query = from_tensor(request.query, (c.EMBEDDING_DIM,), "query")
        BATCH_ITEMS.labels("attention_rescorer", "Rescore").observe(count)
        timeout = context.time_remaining()
        ids = [cand.id for cand in request.candidates if cand.WhichOneof("source") == "id"]
        by_id = await self.rescorer.features_by_id(ids, timeout) if ids else {}
        missing = sorted(set(ids) - set(by_id))
        if missing:
            raise NotFound(f"{len(missing)} candidate ids are not in the index: {', '.join(missing[:10])}")
        candidates = []
        for i, cand in enumerate(request.candidates):
            source = cand.WhichOneof("source")
            if source == "id":
                candidates.append(by_id[cand.id])
            elif source == "inline":
                candidates.append(inline_features(cand.inline, i))
            else:
                raise InvalidArgument(f"candidates[{i}]: set id or inline")
        explain_top = (request.explain_top or 5) if request.explain else 0
        scored = await self.rescorer.rescore(query, candidates, explain_top, context.time_remaining())
        return attention_rescorer_pb2.RescoreResponse(results=[
            attention_rescorer_pb2.RescoredCandidate(id=s.id, evidence=evidence(s)) for s in scored
        ])
