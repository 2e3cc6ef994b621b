"""SearchService RPCs: validate and convert at the edge; the flows live in pipeline.py."""

from __future__ import annotations

import grpc

from amcsearch.runtime.auth import check_bearer
from amcsearch.runtime.errors import InvalidArgument, limit, require
from amcsearch.runtime.keywords import normalize_keyword
from amcsearch.runtime.metrics import BATCH_ITEMS, INDEX_IMAGES
from amcsearch.runtime.quantize import dequantize_regions
from amcsearch.runtime.tensors import to_tensor
from amcsearch.search.index import INDEX_VERSION
from amcsearch.search.pipeline import ID_PATTERN, IndexItem, ItemOutcome, SearchOptions, SearchPipeline
from amcsearch.search.records import Filter
from amcsearch.search.settings import SearchSettings
from amcsearch.v1 import common_pb2, query_encoder_pb2, search_pb2, search_pb2_grpc

DEFAULT_TOP_K = 10


def keyword_messages(keywords: list[tuple[str, float, int]]) -> list[common_pb2.Keyword]:
    return [common_pb2.Keyword(text=t, confidence=c, source=s) for t, c, s in keywords]


def check_id(image_id: str, what: str) -> None:
    require(bool(ID_PATTERN.fullmatch(image_id)), f"{what} {image_id[:40]!r} must be 1..128 characters of [A-Za-z0-9_.:-]")


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, pipeline: SearchPipeline, settings: SearchSettings) -> None:
        self.pipeline = pipeline
        self.settings = settings

    def _item_problem(self, item: search_pb2.ImageItem) -> ItemOutcome | None:
        """Checks of one item that fail that item alone."""
        if not ID_PATTERN.fullmatch(item.id):
            return ItemOutcome(item.id, False, "INVALID_ARGUMENT", "id must be 1..128 characters of [A-Za-z0-9_.:-]")
        if not item.image:
            return ItemOutcome(item.id, False, "INVALID_ARGUMENT", "image is empty")
        if len(item.image) > self.settings.max_image_bytes:
            return ItemOutcome(item.id, False, "RESOURCE_EXHAUSTED",
                               f"image is {len(item.image)} bytes, the limit is {self.settings.max_image_bytes} bytes")
        if len(item.tags) + len(item.keywords) > self.settings.max_tags:
            return ItemOutcome(item.id, False, "RESOURCE_EXHAUSTED",
                               f"{len(item.tags) + len(item.keywords)} tags and keywords, the limit is {self.settings.max_tags}")
        longest = max((len(normalize_keyword(t)) for t in [*item.tags, *(k.text for k in item.keywords)]), default=0)
        if longest > self.settings.max_keyword_chars:
            return ItemOutcome(item.id, False, "RESOURCE_EXHAUSTED",
                               f"a tag or keyword is {longest} characters, the limit is {self.settings.max_keyword_chars}")
        if any(not 0 <= k.confidence <= 1 for k in item.keywords):
            return ItemOutcome(item.id, False, "INVALID_ARGUMENT", "keyword confidences must be in [0, 1]")
        if len(item.title) > 1024:
            return ItemOutcome(item.id, False, "RESOURCE_EXHAUSTED", f"title is {len(item.title)} characters, the limit is 1024")
        return None

    async def Index(self, request: search_pb2.IndexRequest, context: grpc.aio.ServicerContext):
        check_bearer(context.invocation_metadata(), self.settings.auth_token, "Index")
        count = len(request.items)
        require(count > 0, f"items is empty: send 1 to {self.settings.max_index_batch} items")
        limit(count, self.settings.max_index_batch, "number of items")
        ids = [item.id for item in request.items]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        require(not duplicates, f"ids must be distinct within a request; repeated: {', '.join(duplicates[:5])}")
        BATCH_ITEMS.labels("search", "Index").observe(count)
        problems = {item.id: p for item in request.items if (p := self._item_problem(item)) is not None}
        items = [IndexItem(i.id, i.image, i.title, list(i.tags), dict(i.metadata),
                           [(k.text, k.confidence) for k in i.keywords])
                 for i in request.items if i.id not in problems]
        auto_tags = not request.skip_auto_tags
        collection = self.pipeline.index.default_collection
        outcomes = await self.pipeline.index_items(collection, items, auto_tags, context.time_remaining()) if items else []
        by_id = {o.id: o for o in [*outcomes, *problems.values()]}
        results = [
            search_pb2.IndexItemResult(id=o.id, indexed=o.indexed, error_code=o.error_code, error=o.error,
                                       keywords=keyword_messages(o.keywords))
            for o in (by_id[i] for i in ids)
        ]
        indexed = sum(r.indexed for r in results)
        return search_pb2.IndexResponse(results=results, indexed_count=indexed, failed_count=count - indexed)

    def _text(self, text: str, what: str) -> str:
        require(bool(text.strip()), f"{what} is empty")
        limit(len(text), self.settings.max_text_chars, f"{what} length", "characters")
        return text

    async def _image_input(self, image: search_pb2.ImageQuery, what: str) -> tuple[common_pb2.ImageInput, list[str]]:
        """The query image for QueryEncoder, and the ids to leave out of the results."""
        source = image.WhichOneof("source")
        if source == "data":
            limit(len(image.data), self.settings.max_image_bytes, f"{what} size", "bytes")
            return common_pb2.ImageInput(data=image.data), []
        if source == "id":
            check_id(image.id, f"{what}.id")
            return await self.pipeline.indexed_image(self.pipeline.index.default_collection, image.id), [image.id]
        raise InvalidArgument(f"{what}: set data or id")

    async def Search(self, request: search_pb2.SearchRequest, context: grpc.aio.ServicerContext):
        top_k = request.top_k or DEFAULT_TOP_K
        require(request.top_k >= 0 and request.candidates >= 0, "top_k and candidates must not be negative")
        limit(top_k, self.settings.max_top_k, "top_k")
        candidates = max(request.candidates or self.settings.default_candidates, top_k)
        limit(candidates, self.settings.max_candidates, "candidates")
        limit(len(request.within_ids), self.settings.max_get_ids, "number of within_ids")
        for i in request.within_ids:
            check_id(i, "within_ids entry")
        keyword_filter = [normalize_keyword(k) for k in request.keyword_filter]
        require(all(keyword_filter), "keyword_filter has an empty keyword")
        kind = request.WhichOneof("query")
        exclude: list[str] = []
        if kind == "text":
            query = query_encoder_pb2.QueryInput(text=self._text(request.text, "text"))
        elif kind == "image":
            image, exclude = await self._image_input(request.image, "image")
            query = query_encoder_pb2.QueryInput(image=image)
        elif kind == "composed":
            modification = self._text(request.composed.modification, "composed.modification")
            image, exclude = await self._image_input(request.composed.image, "composed.image")
            query = query_encoder_pb2.QueryInput(
                composed=query_encoder_pb2.ComposedQueryInput(image=image, modification=modification))
        else:
            raise InvalidArgument("set one of text, image, composed")
        options = SearchOptions(top_k, candidates, rescore=kind == "text", explain=request.explain,
                                condition=Filter(tuple(keyword_filter), tuple(request.within_ids), tuple(exclude)))
        outcome = await self.pipeline.search(self.pipeline.index.default_collection, query, options,
                                             context.time_remaining)
        return search_pb2.SearchResponse(
            results=[
                search_pb2.SearchResult(id=r.id, score=r.score, ann_score=r.ann_score, title=r.title,
                                        metadata=r.metadata, evidence=r.evidence)
                for r in outcome.results
            ],
            stages=outcome.stages,
            degradations=[search_pb2.Degradation(stage=s, reason=why) for s, why in outcome.degradations],
        )

    def _ids(self, ids, what: str = "ids") -> list[str]:
        require(len(ids) > 0, f"{what} is empty")
        limit(len(ids), self.settings.max_get_ids, f"number of {what}")
        for i in ids:
            check_id(i, "id")
        return list(dict.fromkeys(ids))

    async def Get(self, request: search_pb2.GetRequest, context: grpc.aio.ServicerContext):
        ids = self._ids(request.ids)
        records = await self.pipeline.index.get(self.pipeline.index.default_collection, ids, request.include_features)
        images = []
        for i in ids:
            if i not in records:
                continue
            r = records[i]
            features = (common_pb2.ImageFeatures(embedding=to_tensor(r.embedding),
                                                 regions=to_tensor(dequantize_regions(r.regions, r.region_scales)))
                        if request.include_features else None)
            images.append(search_pb2.IndexedImage(id=r.id, title=r.title, keywords=keyword_messages(r.keywords),
                                                  metadata=r.metadata, features=features))
        return search_pb2.GetResponse(images=images, missing_ids=[i for i in ids if i not in records])

    async def Delete(self, request: search_pb2.DeleteRequest, context: grpc.aio.ServicerContext):
        check_bearer(context.invocation_metadata(), self.settings.auth_token, "Delete")
        ids = self._ids(request.ids)
        deleted = set(await self.pipeline.delete(self.pipeline.index.default_collection, ids))
        return search_pb2.DeleteResponse(deleted_count=len(deleted), missing_ids=[i for i in ids if i not in deleted])

    async def Stats(self, request: search_pb2.StatsRequest, context: grpc.aio.ServicerContext):
        index = self.pipeline.index
        collection = index.default_collection
        count = await index.count(collection)
        INDEX_IMAGES.labels(collection).set(count)
        return search_pb2.StatsResponse(image_count=count, collection=collection,
                                        index_backend=index.backend, model_builds=self.pipeline.model_builds,
                                        index_version=INDEX_VERSION, ann_mode=await index.ann_mode(collection))
