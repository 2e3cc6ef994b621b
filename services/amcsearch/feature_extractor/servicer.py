"""FeatureExtractor RPCs: validate, delegate, build the reply."""

from __future__ import annotations

import grpc

from amcsearch.feature_extractor.extractor import FeatureExtractor
from amcsearch.feature_extractor.settings import FeatureExtractorSettings
from amcsearch.runtime.deadlines import time_left
from amcsearch.runtime.images import decoded_or_encoded
from amcsearch.runtime.metrics import BATCH_ITEMS
from amcsearch.runtime.tensors import to_tensor
from amcsearch.v1 import common_pb2, feature_extractor_pb2, feature_extractor_pb2_grpc


class FeatureExtractorServicer(feature_extractor_pb2_grpc.FeatureExtractorServicer):
    def __init__(self, extractor: FeatureExtractor, settings: FeatureExtractorSettings) -> None:
        self.extractor = extractor
        self.settings = settings

    async def Extract(self, request: feature_extractor_pb2.ExtractRequest, context: grpc.aio.ServicerContext):
        images = decoded_or_encoded(request, self.settings.max_batch, self.settings.images)
        BATCH_ITEMS.labels("feature_extractor", "Extract").observe(len(images))
        features = await self.extractor.extract(images, time_left())
        return feature_extractor_pb2.ExtractResponse(
            results=[
                feature_extractor_pb2.ExtractedImage(
                    features=common_pb2.ImageFeatures(embedding=to_tensor(f.embedding), regions=to_tensor(f.regions)),
                    cache_hit=f.cache_hit,
                    content_sha256=f.sha256,
                )
                for f in features
            ]
        )
