"""QueryEncoder RPCs: validate, convert protobuf <-> plain values, delegate to the encoder."""

from __future__ import annotations

import grpc

from amcsearch.query_encoder.encoder import QueryEncoder
from amcsearch.query_encoder.queries import ImageSource, Query
from amcsearch.query_encoder.settings import QueryEncoderSettings
from amcsearch.runtime import contract as c
from amcsearch.runtime.deadlines import time_left
from amcsearch.runtime.errors import InvalidArgument, Unavailable, limit, require
from amcsearch.runtime.metrics import BATCH_ITEMS
from amcsearch.runtime.tensors import from_tensor, to_tensor
from amcsearch.v1 import common_pb2, query_encoder_pb2, query_encoder_pb2_grpc


def image_source(message: common_pb2.ImageInput, what: str) -> ImageSource:
    kind = message.WhichOneof("source")
    if kind == "data":
        require(len(message.data) > 0, f"{what}: image bytes are empty")
        return ImageSource(data=message.data)
    if kind == "features":
        embedding = from_tensor(message.features.embedding, (c.EMBEDDING_DIM,), f"{what}.features.embedding")
        regions = from_tensor(message.features.regions, (c.REGION_COUNT, c.REGION_DIM), f"{what}.features.regions")
        return ImageSource(embedding=embedding, regions=regions)
    raise InvalidArgument(f"{what}: set image data or features")


class QueryEncoderServicer(query_encoder_pb2_grpc.QueryEncoderServicer):
    def __init__(self, encoder: QueryEncoder, settings: QueryEncoderSettings) -> None:
        self.encoder = encoder
        self.settings = settings

    def _query(self, message: query_encoder_pb2.QueryInput, index: int, models: set[str]) -> Query:
        what = f"queries[{index}]"
        kind = message.WhichOneof("kind")
        if kind == "text":
            self._check_text(message.text, what)
            return Query(text=message.text)
        if kind == "image" and message.cross_domain:
            self._check_model(c.YNET_STREET, models, what)
            require(
                message.image.WhichOneof("source") == "data",
                f"{what}: a cross-domain query needs the image bytes (features of an indexed image are not a street shot)",
            )
            return Query(image=image_source(message.image, f"{what}.image"), cross_domain=True)
        if kind == "image":
            self._check_model(c.IMAGE_ENCODER, models, what)
            return Query(image=image_source(message.image, f"{what}.image"))
        if kind == "composed":
            self._check_model(c.COMPOSER, models, what)
            self._check_text(message.composed.modification, f"{what}.composed.modification")
            return Query(
                text=message.composed.modification, image=image_source(message.composed.image, f"{what}.composed.image")
            )
        raise InvalidArgument(f"{what}: set one of text, image, composed")

    @staticmethod
    def _encoded(e) -> query_encoder_pb2.EncodedQuery:
        encoded = query_encoder_pb2.EncodedQuery(
            embedding=to_tensor(e.embedding),
            cache_hit=e.cache_hit,
            truncated=e.truncated,
            normalized_text=e.normalized_text,
        )
        if e.locations is not None:
            encoded.locations.CopyFrom(to_tensor(e.locations))
        return encoded

    def _check_text(self, text: str, what: str) -> None:
        require(bool(text.strip()), f"{what}: text is empty")
        limit(len(text), self.settings.max_text_chars, f"{what} text length", "characters")

    @staticmethod
    def _check_model(model: str, models: set[str], what: str) -> None:
        if model not in models:
            raise Unavailable(f"{what}: model {model} is not deployed in this model repository")

    async def Encode(self, request: query_encoder_pb2.EncodeRequest, context: grpc.aio.ServicerContext):
        count = len(request.queries)
        require(count > 0, f"queries is empty: send 1 to {self.settings.max_batch} queries")
        limit(count, self.settings.max_batch, "number of queries")
        BATCH_ITEMS.labels("query_encoder", "Encode").observe(count)
        models = set(self.encoder.builds)
        queries = [self._query(q, i, models) for i, q in enumerate(request.queries)]
        encoded = await self.encoder.encode(queries, time_left())
        return query_encoder_pb2.EncodeResponse(
            embeddings=[self._encoded(e) for e in encoded], model_builds=self.encoder.builds
        )
