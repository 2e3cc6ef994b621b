"""python -m amcsearch.query_encoder: the QueryEncoder gRPC service."""

import asyncio

from amcsearch.query_encoder.encoder import QueryEncoder
from amcsearch.query_encoder.servicer import QueryEncoderServicer
from amcsearch.query_encoder.settings import load_settings
from amcsearch.query_encoder.tokenize import Tokenizer
from amcsearch.runtime import contract as c
from amcsearch.runtime.cache import EmbeddingCache
from amcsearch.runtime.images import decoder_pool
from amcsearch.runtime.logs import setup_logging
from amcsearch.runtime.server import run_service
from amcsearch.runtime.triton import TritonModels
from amcsearch.v1 import query_encoder_pb2, query_encoder_pb2_grpc

OPTIONAL_MODELS = (c.IMAGE_ENCODER, c.COMPOSER, c.YNET_STREET)


async def main() -> None:
    settings = load_settings()
    triton = TritonModels(settings.triton, "query_encoder")
    cache = EmbeddingCache(settings.cache, "query_encoder")
    tokenizer = Tokenizer.from_file(settings.tokenizer_path) if settings.tokenizer_path else Tokenizer.default()
    encoder = QueryEncoder(triton, cache, tokenizer, settings.images, decoder_pool(settings.images))

    async def ready() -> bool:
        models = [c.TEXT_ENCODER] + [m for m in OPTIONAL_MODELS if await triton.has_model(m)]
        if not await triton.ready(models):
            return False
        await encoder.refresh_builds(models)
        return True

    def add(server):
        query_encoder_pb2_grpc.add_QueryEncoderServicer_to_server(QueryEncoderServicer(encoder, settings), server)
        return [query_encoder_pb2.DESCRIPTOR.services_by_name["QueryEncoder"].full_name]

    await run_service("query_encoder", settings.server, add, ready, [triton.close, cache.close])


if __name__ == "__main__":
    setup_logging("query_encoder")
    asyncio.run(main())
