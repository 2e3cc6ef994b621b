"""python -m amcsearch.search: the public SearchService (the gateway)."""

import asyncio

from grpc_health.v1 import health_pb2, health_pb2_grpc

from amcsearch.runtime import contract as c
from amcsearch.runtime.clients import open_channel
from amcsearch.runtime.errors import AmcsearchError
from amcsearch.runtime.logs import setup_logging
from amcsearch.runtime.metrics import INDEX_IMAGES
from amcsearch.runtime.server import run_service
from amcsearch.runtime.triton import TritonModels
from amcsearch.search.index import open_index
from amcsearch.search.pipeline import ModelServices, SearchPipeline
from amcsearch.search.servicer import SearchServicer
from amcsearch.search.settings import load_settings
from amcsearch.search.synonyms import ServedSynonyms
from amcsearch.v1 import (
    attention_rescorer_pb2_grpc,
    feature_extractor_pb2_grpc,
    keyword_tagger_pb2_grpc,
    query_encoder_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)

MODELS = (
    c.TEXT_ENCODER,
    c.IMAGE_ENCODER,
    c.KEYWORD_TAGGER,
    c.AMC_RESCORER,
    c.COMPOSER,
    c.YNET_SHOP,
    c.YNET_STREET,
    c.CTX_YNET,
)
"""Every served model: Stats reports each one's build (a repository without the cross-domain
models reports the others)."""


async def refresh_index_gauges(pipeline: SearchPipeline, gauged: set[str]) -> None:
    """amcsearch_index_images for every collection, from start on; a dropped one's series goes.
    `gauged`: the collections shown so far (updated)."""
    counts = dict(await pipeline.collection_counts())
    for gone in gauged - counts.keys():
        INDEX_IMAGES.remove(gone)
    for name, count in counts.items():
        INDEX_IMAGES.labels(name).set(count)
    gauged.clear()
    gauged.update(counts)


async def main() -> None:
    settings = load_settings()
    index = open_index(
        settings.index_uri,
        settings.collection,
        settings.index_token,
        settings.hnsw_min_rows,
        settings.ef_search,
        settings.read_cache_mib,
        settings.reads_on_loop,
        settings.keyword_share,
        settings.feature_cache_mib,
    )
    await index.open()
    channels = [
        open_channel(a, settings.client_tls)
        for a in (
            settings.query_encoder_addr,
            settings.keyword_tagger_addr,
            settings.feature_extractor_addr,
            settings.attention_rescorer_addr,
        )
    ]
    services = ModelServices(
        encoder=query_encoder_pb2_grpc.QueryEncoderStub(channels[0]),
        tagger=keyword_tagger_pb2_grpc.KeywordTaggerStub(channels[1]),
        extractor=feature_extractor_pb2_grpc.FeatureExtractorStub(channels[2]),
        rescorer=attention_rescorer_pb2_grpc.AttentionRescorerStub(channels[3]),
    )
    encoder_health = health_pb2_grpc.HealthStub(channels[0])
    triton = TritonModels(settings.triton, "search")
    pipeline = SearchPipeline(
        index,
        services,
        settings.tagger_threshold,
        settings.query_encoder_max_batch,
        settings.rescorer_max_candidates,
        settings.images,
        settings.rescore_budget_share,
        settings.hybrid_merge,
        ServedSynonyms(triton).table,
    )

    async def refresh_builds() -> None:
        """Every model's build_id, for Stats, from Triton (what QueryEncoder reports stays too)."""
        for model in MODELS:
            try:
                if await triton.has_model(model):
                    pipeline.model_builds[model] = await triton.build_id(model)
            except AmcsearchError:
                continue

    gauged: set[str] = set()

    async def ready() -> bool:
        """The index answers and can be written, and the query encoder serves; a missing
        rescorer only degrades."""
        if not await index.healthy():
            return False
        if len(pipeline.model_builds) < len(MODELS):
            await refresh_builds()
        await refresh_index_gauges(pipeline, gauged)
        reply = await encoder_health.Check(health_pb2.HealthCheckRequest(), timeout=2)
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def add(server):
        search_pb2_grpc.add_SearchServiceServicer_to_server(SearchServicer(pipeline, settings), server)
        return [search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name]

    async def close() -> None:
        await triton.close()
        for channel in channels:
            await channel.close()
        await index.close()

    await run_service("search", settings.server, add, ready, [close], internal=False)


if __name__ == "__main__":
    setup_logging("search")
    asyncio.run(main())
