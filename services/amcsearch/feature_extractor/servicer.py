"""FeatureExtractor RPCs: validate, delegate, build the reply."""

from __future__ import annotations

import grpc

from amcsearch.feature_extractor.extractor import FeatureExtractor
from amcsearch.feature_extractor.settings import FeatureExtractorSettings
from amcsearch.runtime.deadlines import time_left
from amcsearch.runtime.errors import limit, require
from amcsearch.runtime.images import decoded_or_encoded
from amcsearch.runtime.metrics import BATCH_ITEMS
from amcsearch.runtime.tensors import to_tensor
from amcsearch.v1 import common_pb2, feature_extractor_pb2, feature_extractor_pb2_grpc

MAX_TAGS = 256
MAX_TAG_CHARS = 64


class FeatureExtractorServicer(feature_extractor_pb2_grpc.FeatureExtractorServicer):
    def __init__(self, extractor: FeatureExtractor, settings: FeatureExtractorSettings) -> None:
        self.extractor = extractor
        self.settings = settings

    async def Extract(self, request: feature_extractor_pb2.ExtractRequest, context: grpc.aio.ServicerContext):
        images = decoded_or_encoded(request, self.settings.max_batch, self.settings.images)
        BATCH_ITEMS.labels("feature_extractor", "Extract").observe(len(images))
        tags = self._tags(request, len(images))
        features, shop = await self.extractor.extract(images, time_left(), tags)
        results = [
            feature_extractor_pb2.ExtractedImage(
                features=common_pb2.ImageFeatures(embedding=to_tensor(f.embedding), regions=to_tensor(f.regions)),
                cache_hit=f.cache_hit,
                content_sha256=f.sha256,
            )
            for f in features
        ]
        for result, s in zip(results, shop or [], strict=False):
            result.shop.CopyFrom(
                feature_extractor_pb2.ShopFeatures(
                    embedding=to_tensor(s.embedding),
                    context=to_tensor(s.context),
                    attention=to_tensor(s.attention),
                    known_tags=s.known_tags,
                )
            )
        return feature_extractor_pb2.ExtractResponse(results=results)

    @staticmethod
    def _tags(request: feature_extractor_pb2.ExtractRequest, count: int) -> list[list[str]] | None:
        if not request.tags:
            return None
        require(len(request.tags) == count, f"tags has {len(request.tags)} lists for {count} images: one per image")
        for i, tags in enumerate(request.tags):
            limit(len(tags.tags), MAX_TAGS, f"tags[{i}] count")
            limit(max((len(t) for t in tags.tags), default=0), MAX_TAG_CHARS, f"tags[{i}] longest tag", "characters")
        return [list(t.tags) for t in request.tags]
