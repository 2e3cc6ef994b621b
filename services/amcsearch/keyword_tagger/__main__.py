"""python -m amcsearch.keyword_tagger: the KeywordTagger gRPC service."""

import asyncio

from amcsearch.keyword_tagger.servicer import KeywordTaggerServicer
from amcsearch.keyword_tagger.settings import load_settings
from amcsearch.keyword_tagger.tagger import KeywordTagger
from amcsearch.runtime import contract as c
from amcsearch.runtime.images import decoder_pool
from amcsearch.runtime.logs import setup_logging
from amcsearch.runtime.server import run_service
from amcsearch.runtime.triton import TritonModels
from amcsearch.v1 import keyword_tagger_pb2, keyword_tagger_pb2_grpc


async def main() -> None:
    settings = load_settings()
    triton = TritonModels(settings.triton, "keyword_tagger")
    tagger = KeywordTagger(triton, settings.images, decoder_pool(settings.images))

    async def ready() -> bool:
        return await triton.ready([c.KEYWORD_TAGGER])

    def add(server):
        keyword_tagger_pb2_grpc.add_KeywordTaggerServicer_to_server(KeywordTaggerServicer(tagger, settings), server)
        return [keyword_tagger_pb2.DESCRIPTOR.services_by_name["KeywordTagger"].full_name]

    await run_service("keyword_tagger", settings.server, add, ready, [triton.close])


if __name__ == "__main__":
    setup_logging("keyword_tagger")
    asyncio.run(main())
