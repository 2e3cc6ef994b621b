"""python -m amcsearch.attention_rescorer: the AttentionRescorer gRPC service."""

import asyncio

import numpy as np

from amcsearch.attention_rescorer.rescorer import AttentionRescorer
from amcsearch.attention_rescorer.servicer import AttentionRescorerServicer
from amcsearch.attention_rescorer.settings import load_settings
from amcsearch.runtime import contract as c
from amcsearch.runtime.clients import call, open_channel
from amcsearch.runtime.logs import setup_logging
from amcsearch.runtime.server import run_service
from amcsearch.runtime.tensors import to_array
from amcsearch.runtime.triton import TritonModels
from amcsearch.v1 import attention_rescorer_pb2, attention_rescorer_pb2_grpc, query_encoder_pb2, query_encoder_pb2_grpc


async def main() -> None:
    settings = load_settings()
    triton = TritonModels(settings.triton, "attention_rescorer")
    encoder_channel = open_channel(settings.query_encoder_addr, settings.client_tls)
    encoder = query_encoder_pb2_grpc.QueryEncoderStub(encoder_channel)

    async def embed_keywords(texts: list[str], timeout: float | None) -> dict[str, np.ndarray]:
        vectors: dict[str, np.ndarray] = {}
        for start in range(0, len(texts), settings.query_encoder_max_batch):
            chunk = texts[start : start + settings.query_encoder_max_batch]
            request = query_encoder_pb2.EncodeRequest(queries=[query_encoder_pb2.QueryInput(text=t) for t in chunk])
            reply = await call(encoder.Encode, request, timeout, "QueryEncoder.Encode")
            vectors.update((text, to_array(e.embedding)) for text, e in zip(chunk, reply.embeddings, strict=False))
        return vectors

    rescorer = AttentionRescorer(triton, embed_keywords)

    async def ready() -> bool:
        return await triton.ready([c.AMC_RESCORER])

    def add(server):
        attention_rescorer_pb2_grpc.add_AttentionRescorerServicer_to_server(
            AttentionRescorerServicer(rescorer, settings), server
        )
        return [attention_rescorer_pb2.DESCRIPTOR.services_by_name["AttentionRescorer"].full_name]

    await run_service("attention_rescorer", settings.server, add, ready, [triton.close, encoder_channel.close])


if __name__ == "__main__":
    setup_logging("attention_rescorer")
    asyncio.run(main())
