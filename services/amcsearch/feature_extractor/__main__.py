"""python -m amcsearch.feature_extractor: the FeatureExtractor gRPC service."""

import asyncio

from amcsearch.feature_extractor.extractor import FeatureExtractor
from amcsearch.feature_extractor.servicer import FeatureExtractorServicer
from amcsearch.feature_extractor.settings import load_settings
from amcsearch.runtime import contract as c
from amcsearch.runtime.cache import EmbeddingCache
from amcsearch.runtime.images import decoder_pool
from amcsearch.runtime.logs import setup_logging
from amcsearch.runtime.server import run_service
from amcsearch.runtime.triton import TritonModels
from amcsearch.v1 import feature_extractor_pb2, feature_extractor_pb2_grpc


async def main() -> None:
    settings = load_settings()
    triton = TritonModels(settings.triton, "feature_extractor")
    cache = EmbeddingCache(settings.cache, "feature_extractor")
    extractor = FeatureExtractor(triton, cache, settings.images, decoder_pool(settings.images))

    async def ready() -> bool:
        if not await triton.ready([c.IMAGE_ENCODER]):
            return False
        await extractor.refresh_build()
        return True

    def add(server):
        feature_extractor_pb2_grpc.add_FeatureExtractorServicer_to_server(
            FeatureExtractorServicer(extractor, settings), server
        )
        return [feature_extractor_pb2.DESCRIPTOR.services_by_name["FeatureExtractor"].full_name]

    await run_service("feature_extractor", settings.server, add, ready, [triton.close, cache.close])


if __name__ == "__main__":
    setup_logging("feature_extractor")
    asyncio.run(main())
