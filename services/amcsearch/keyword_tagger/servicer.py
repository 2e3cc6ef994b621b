"""KeywordTagger RPCs: validate, delegate, build the reply."""

from __future__ import annotations

import grpc

from amcsearch.keyword_tagger.settings import KeywordTaggerSettings
from amcsearch.keyword_tagger.tagger import KeywordTagger, Tag
from amcsearch.runtime.deadlines import time_left
from amcsearch.runtime.errors import limit, require
from amcsearch.runtime.images import decoded_or_encoded
from amcsearch.runtime.metrics import BATCH_ITEMS
from amcsearch.v1 import common_pb2, keyword_tagger_pb2, keyword_tagger_pb2_grpc


class KeywordTaggerServicer(keyword_tagger_pb2_grpc.KeywordTaggerServicer):
    def __init__(self, tagger: KeywordTagger, settings: KeywordTaggerSettings) -> None:
        self.tagger = tagger
        self.settings = settings

    async def Tag(self, request: keyword_tagger_pb2.TagRequest, context: grpc.aio.ServicerContext):
        images = decoded_or_encoded(request, self.settings.max_batch, self.settings.images)
        count = len(images)
        require(0 <= request.threshold <= 1, f"threshold {request.threshold} is not in [0, 1]")
        require(request.top_k >= 0, f"top_k {request.top_k} is negative")
        limit(request.top_k, self.settings.max_top_k, "top_k")
        threshold = request.threshold or self.settings.default_threshold
        top_k = request.top_k or self.settings.default_top_k
        BATCH_ITEMS.labels("keyword_tagger", "Tag").observe(count)
        placements = (self.settings.placement_threshold, self.settings.max_placements)
        tagged = await self.tagger.tag(images, threshold, top_k, time_left(), placements)
        return keyword_tagger_pb2.TagResponse(
            results=[
                keyword_tagger_pb2.ImageKeywords(
                    keywords=[keyword(t, common_pb2.Keyword.AUTO) for t in tags],
                    placements=[keyword(t, common_pb2.Keyword.PLACEMENT) for t in where],
                )
                for tags, where in tagged
            ]
        )


def keyword(tag: Tag, source: common_pb2.Keyword.Source) -> common_pb2.Keyword:
    return common_pb2.Keyword(text=tag.text, confidence=tag.confidence, source=source)
