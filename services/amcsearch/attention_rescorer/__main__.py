"""python -m amcsearch.attention_rescorer: the AttentionRescorer gRPC service."""

import asyncio

import numpy as np

from amcsearch.attention_rescorer.rescorer import AttentionRescorer
from amcsearch.attention_rescorer.servicer import AttentionRescorerServicer
from amcsearch.attention_rescorer.settings import load_settings
from amcsearch.runtime import contract as c
from amcsearch.runtime.cache import EmbeddingCache
from amcsearch.runtime.clients import call, open_channel
from amcsearch.runtime.indexed import IndexedFeatures
from amcsearch.runtime.logs import setup_logging
from amcsearch.runtime.server import run_service
from amcsearch.runtime.tensors import to_array
from amcsearch.runtime.triton import TritonModels
from amcsearch.v1 import (
    attention_rescorer_pb2,
    attention_rescorer_pb2_grpc,
    query_encoder_pb2,
    query_encoder_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)


async def main() -> None:
    settings = load_settings()
    triton = TritonModels(settings.triton, "attention_rescorer")
    cache = EmbeddingCache(settings.cache, "attention_rescorer")
    search_channel = open_channel(settings.search_addr, settings.client_tls)
    encoder_channel = open_channel(settings.query_encoder_addr, settings.client_tls)
    search = search_pb2_grpc.SearchServiceStub(search_channel)
    encoder = query_encoder_pb2_grpc.QueryEncoderStub(encoder_channel)

    async def read_index(ids: list[str], timeout: float | None) -> dict[str, IndexedFeatures]:
        reply = await call(search.Get, search_pb2.GetRequest(ids=ids, include_features=True), timeout,
                           "SearchService.Get")
        return {
            image.id: IndexedFeatures(image.id, to_array(image.features.regions),
                                      [(k.text, k.confidence) for k in image.keywords])
            for image in reply.images
        }

    async def embed_keywords(texts: list[str], timeout: float | None) -> dict[str, np.ndarray]:
        request = query_encoder_pb2.EncodeRequest(queries=[query_encoder_pb2.QueryInput(text=t) for t in texts])
        reply = await call(encoder.Encode, request, timeout, "QueryEncoder.Encode")
        return {text: to_array(e.embedding) for text, e in zip(texts, reply.embeddings)}

    rescorer = AttentionRescorer(triton, cache, settings.collection, read_index, embed_keywords)

    async def ready() -> bool:
        return await triton.ready([c.AMC_RESCORER])

    def add(server):
        attention_rescorer_pb2_grpc.add_AttentionRescorerServicer_to_server(
            AttentionRescorerServicer(rescorer, settings), server)
        return [attention_rescorer_pb2.DESCRIPTOR.services_by_name["AttentionRescorer"].full_name]

    async def close_channels() -> None:
        await search_channel.close()
        await encoder_channel.close()

    await run_service("attention_rescorer", settings.server, add, ready, [triton.close, cache.close, close_channels])


if __name__ == "__main__":
    setup_logging("attention_rescorer")
    asyncio.run(main())
