"""SearchService RPCs: validate and convert at the edge; the flows live in pipeline.py."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc

from amcsearch.runtime import contract as c
from amcsearch.runtime.auth import check_bearer
from amcsearch.runtime.deadlines import time_left
from amcsearch.runtime.errors import AmcsearchError, InvalidArgument, ResourceExhausted, limit, require
from amcsearch.runtime.keywords import normalize_keyword
from amcsearch.runtime.metrics import BATCH_ITEMS, INDEX_IMAGES
from amcsearch.runtime.quantize import dequantize_regions
from amcsearch.runtime.tensors import to_tensor
from amcsearch.search import requests
from amcsearch.search.coalescer import SearchCoalescer
from amcsearch.search.index import INDEX_VERSION
from amcsearch.search.pipeline import (
    ID_PATTERN,
    Evidence,
    IndexItem,
    ItemOutcome,
    SearchOptions,
    SearchOutcome,
    SearchPipeline,
    SearchQuery,
)
from amcsearch.search.records import Filter
from amcsearch.search.settings import SearchSettings
from amcsearch.v1 import common_pb2, query_encoder_pb2, search_pb2, search_pb2_grpc

DEFAULT_TOP_K = 10
IMAGE_MATCHES = {value: name for name, value in search_pb2.SearchRequest.ImageMatch.items()}
CANDIDATE_SOURCES = {value: name for name, value in search_pb2.SearchRequest.CandidateSource.items()}
KEYWORD_SOURCES = {value: name for name, value in common_pb2.Keyword.Source.items()}
SOURCES = {
    search_pb2.SearchRequest.CANDIDATES_VECTOR: "vector",
    search_pb2.SearchRequest.CANDIDATES_KEYWORD: "keyword",
    search_pb2.SearchRequest.CANDIDATES_HYBRID: "hybrid",
}


def keyword_messages(keywords: list[tuple[str, float, int]]) -> list[common_pb2.Keyword]:
    return [common_pb2.Keyword(text=t, confidence=c, source=cast(Any, s)) for t, c, s in keywords]


def check_id(image_id: str, what: str) -> None:
    require(
        bool(ID_PATTERN.fullmatch(image_id)), f"{what} {image_id[:40]!r} must be 1..128 characters of [A-Za-z0-9_.:-]"
    )


def region_messages(regions: list[tuple[int, float]]) -> list[common_pb2.RegionAttention]:
    return [
        common_pb2.RegionAttention(index=i, row=i // c.REGION_GRID, column=i % c.REGION_GRID, weight=w)
        for i, w in regions
    ]


def evidence_message(e: Evidence | None) -> common_pb2.Evidence | None:
    if e is None:
        return None
    return common_pb2.Evidence(
        score=e.score,
        visual_weight=e.visual_weight,
        keyword_weight=e.keyword_weight,
        learned_visual_weight=e.learned_visual_weight,
        learned_keyword_weight=e.learned_keyword_weight,
        regions=region_messages(e.regions),
        keywords=[common_pb2.KeywordAttention(keyword=k, weight=w) for k, w in e.keywords],
        candidate_regions=region_messages(e.candidate_regions),
    )


def search_response(outcome: SearchOutcome) -> search_pb2.SearchResponse:
    return search_pb2.SearchResponse(
        results=[
            search_pb2.SearchResult(
                id=r.id,
                score=r.score,
                ann_score=r.ann_score,
                title=r.title,
                metadata=r.metadata,
                evidence=evidence_message(r.evidence),
            )
            for r in outcome.results
        ],
        stages=outcome.stages,
        degradations=[search_pb2.Degradation(stage=s, reason=why) for s, why in outcome.degradations],
        explanation=outcome.explanation,
    )


def in_callers_terms(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Errors of `method` name collections as the caller does ('shoes'), never as the engine
    does ('amcsearch_images__shoes'): the index engines and the pipeline see only engine names."""

    @functools.wraps(method)
    async def answered(self: SearchServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except AmcsearchError as error:
            message = self.callers_terms(str(error))
            if message == str(error):
                raise
            raise type(error)(message) from None

    return answered


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, pipeline: SearchPipeline, settings: SearchSettings) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.coalescer = SearchCoalescer(pipeline, settings.coalesce_max_batch, settings.coalesce_in_flight)

    @property
    def default_collection(self) -> str:
        return self.pipeline.default_collection

    def _collection(self, name: str) -> str:
        return requests.collection_name(name, self.default_collection)

    def callers_terms(self, message: str) -> str:
        """`message` with every engine collection name replaced by the caller's name for it."""
        prefix = re.escape(f"{self.default_collection}{requests.COLLECTION_SEPARATOR}")
        return re.sub(rf"\b{prefix}([A-Za-z][A-Za-z0-9_]*)", r"\1", message)

    def _check_read(self, context: grpc.aio.ServicerContext, method: str) -> None:
        if self.settings.read_token:
            check_bearer(
                context.invocation_metadata(), (self.settings.read_token, self.settings.auth_token), method, "reading"
            )

    # --- Index ---------------------------------------------------------------------------------

    def _item_problem(self, item: search_pb2.ImageItem) -> ItemOutcome | None:
        """Checks of one item that fail that item alone."""
        s = self.settings
        if not ID_PATTERN.fullmatch(item.id):
            return ItemOutcome(item.id, False, "INVALID_ARGUMENT", "id must be 1..128 characters of [A-Za-z0-9_.:-]")
        if not item.image:
            return ItemOutcome(item.id, False, "INVALID_ARGUMENT", "image is empty")
        if len(item.image) > s.images.max_image_bytes:
            return ItemOutcome(
                item.id,
                False,
                "RESOURCE_EXHAUSTED",
                f"image is {len(item.image)} bytes, the limit is {s.images.max_image_bytes} bytes",
            )
        if len(item.tags) + len(item.keywords) > s.max_tags:
            return ItemOutcome(
                item.id,
                False,
                "RESOURCE_EXHAUSTED",
                f"{len(item.tags) + len(item.keywords)} tags and keywords, the limit is {s.max_tags}",
            )
        longest = max((len(normalize_keyword(t)) for t in [*item.tags, *(k.text for k in item.keywords)]), default=0)
        if longest > s.max_keyword_chars:
            return ItemOutcome(
                item.id,
                False,
                "RESOURCE_EXHAUSTED",
                f"a tag or keyword is {longest} characters, the limit is {s.max_keyword_chars}",
            )
        if any(not 0 <= k.confidence <= 1 for k in item.keywords):
            return ItemOutcome(item.id, False, "INVALID_ARGUMENT", "keyword confidences must be in [0, 1]")
        if any(k.source not in KEYWORD_SOURCES for k in item.keywords):
            allowed = ", ".join(f"{name} ({number})" for number, name in sorted(KEYWORD_SOURCES.items()))
            return ItemOutcome(
                item.id, False, "INVALID_ARGUMENT", f"a keyword's source is not a known value: {allowed}"
            )
        if len(item.title) > s.max_title_chars:
            return ItemOutcome(
                item.id,
                False,
                "RESOURCE_EXHAUSTED",
                f"title is {len(item.title)} characters, the limit is {s.max_title_chars}",
            )
        return self._metadata_problem(item)

    def _metadata_problem(self, item: search_pb2.ImageItem) -> ItemOutcome | None:
        s = self.settings
        metadata = item.metadata
        problem = None
        if len(metadata) > s.max_metadata_keys:
            problem = f"metadata has {len(metadata)} keys, the limit is {s.max_metadata_keys}"
        elif any(not k for k in metadata):
            return ItemOutcome(item.id, False, "INVALID_ARGUMENT", "a metadata key is empty")
        elif (longest := max((len(k) for k in metadata), default=0)) > requests.MAX_KEY_CHARS:
            problem = f"a metadata key is {longest} characters, the limit is {requests.MAX_KEY_CHARS}"
        elif (longest := max((len(v) for v in metadata.values()), default=0)) > requests.MAX_VALUE_CHARS:
            problem = f"a metadata value is {longest} characters, the limit is {requests.MAX_VALUE_CHARS}"
        elif (size := sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())) > s.max_metadata_bytes:
            problem = f"metadata is {size} bytes, the limit is {s.max_metadata_bytes} bytes"
        return ItemOutcome(item.id, False, "RESOURCE_EXHAUSTED", problem) if problem else None

    @in_callers_terms
    async def Index(self, request: search_pb2.IndexRequest, context: grpc.aio.ServicerContext):
        check_bearer(context.invocation_metadata(), self.settings.auth_token, "Index")
        count = len(request.items)
        require(count > 0, f"items is empty: send 1 to {self.settings.max_index_batch} items")
        limit(count, self.settings.max_index_batch, "number of items")
        collection = self._collection(request.collection)
        ids = [item.id for item in request.items]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        require(not duplicates, f"ids must be distinct within a request; repeated: {', '.join(duplicates[:5])}")
        BATCH_ITEMS.labels("search", "Index").observe(count)
        problems = {item.id: p for item in request.items if (p := self._item_problem(item)) is not None}
        items = [
            IndexItem(
                i.id, i.image, i.title, list(i.tags), dict(i.metadata), [(k.text, k.confidence) for k in i.keywords]
            )
            for i in request.items
            if i.id not in problems
        ]
        await self.pipeline.require_collection(collection)
        auto_tags = not request.skip_auto_tags
        outcomes = await self.pipeline.index_items(collection, items, auto_tags, time_left) if items else []
        by_id = {o.id: o for o in [*outcomes, *problems.values()]}
        results = [
            search_pb2.IndexItemResult(
                id=o.id,
                indexed=o.indexed,
                error_code=o.error_code,
                error=o.error,
                keywords=keyword_messages(o.keywords),
            )
            for o in (by_id[i] for i in ids)
        ]
        indexed = sum(r.indexed for r in results)
        return search_pb2.IndexResponse(results=results, indexed_count=indexed, failed_count=count - indexed)

    # --- Search --------------------------------------------------------------------------------

    def _text(self, text: str, what: str) -> str:
        require(bool(text.strip()), f"{what} is empty")
        limit(len(text), self.settings.max_text_chars, f"{what} length", "characters")
        return text

    async def _image_input(
        self, collection: str, image: search_pb2.ImageQuery, what: str
    ) -> tuple[common_pb2.ImageInput, list[str]]:
        """The query image for QueryEncoder, and the ids to leave out of the results."""
        source = image.WhichOneof("source")
        if source == "data":
            limit(len(image.data), self.settings.images.max_image_bytes, f"{what} size", "bytes")
            return common_pb2.ImageInput(data=image.data), []
        if source == "id":
            check_id(image.id, f"{what}.id")
            return await self.pipeline.indexed_image(collection, image.id), [image.id]
        raise InvalidArgument(f"{what}: set data or id")

    async def _search_query(self, request: search_pb2.SearchRequest, what: str = "") -> SearchQuery:
        """One search request as plain values; `what` prefixes messages ("searches[3].")."""
        s = self.settings
        require(
            request.top_k >= 0 and request.candidates >= 0 and request.offset >= 0,
            f"{what}top_k, candidates and offset must not be negative",
        )
        top_k = request.top_k or DEFAULT_TOP_K
        limit(top_k, s.max_top_k, f"{what}top_k")
        limit(request.offset, s.max_candidates, f"{what}offset")
        collection = self._collection(request.collection)
        kind = request.WhichOneof("query")
        cross_domain = self._cross_domain(request, kind, what)
        needed = request.offset + top_k
        if request.candidates:
            candidates = max(request.candidates, top_k)
            require(
                (kind != "text" and not cross_domain) or needed <= candidates,
                f"{what}offset + top_k ({needed}) exceeds candidates ({candidates}): raise candidates",
            )
        else:
            candidates = max(s.default_candidates, needed)
        limit(candidates, s.max_candidates, f"{what}candidates")
        limit(len(request.within_ids), s.max_get_ids, f"{what}number of within_ids")
        for i in request.within_ids:
            check_id(i, f"{what}within_ids entry")
        limit(len(request.keyword_filter), s.max_keyword_filter, f"{what}number of keyword_filter entries")
        keyword_filter = [normalize_keyword(k) for k in request.keyword_filter]
        require(all(keyword_filter), f"{what}keyword_filter has an empty keyword")
        longest = max((len(k) for k in keyword_filter), default=0)
        limit(longest, s.max_keyword_chars, f"{what}keyword_filter keyword length", "characters")
        metadata = requests.metadata_filter(request.metadata_filter, f"{what}metadata_filter")
        bias = requests.modality_bias(request.modality, f"{what}modality")
        exclude: list[str] = []
        if kind == "text":
            query = query_encoder_pb2.QueryInput(text=self._text(request.text, f"{what}text"))
        elif kind == "image":
            image, exclude = await self._image_input(collection, request.image, f"{what}image")
            query = query_encoder_pb2.QueryInput(image=image, cross_domain=cross_domain)
        elif kind == "composed":
            modification = self._text(request.composed.modification, f"{what}composed.modification")
            image, exclude = await self._image_input(collection, request.composed.image, f"{what}composed.image")
            query = query_encoder_pb2.QueryInput(
                composed=query_encoder_pb2.ComposedQueryInput(image=image, modification=modification)
            )
        else:
            raise InvalidArgument(f"{what}set one of text, image, composed")
        condition = Filter(tuple(keyword_filter), tuple(request.within_ids), tuple(exclude), metadata)
        requests.known(request.candidate_source, CANDIDATE_SOURCES, f"{what}candidate_source")
        source = SOURCES.get(request.candidate_source)
        options = SearchOptions(
            top_k,
            candidates,
            rescore=kind == "text",
            condition=condition,
            explain=request.explain,
            offset=request.offset,
            modality_bias=bias,
            source=source or s.candidate_source,
            text=request.text if kind == "text" else "",
            cross_domain=cross_domain,
        )
        return SearchQuery(collection, query, options)

    @staticmethod
    def _cross_domain(request: search_pb2.SearchRequest, kind: str | None, what: str) -> bool:
        match = request.image_match
        requests.known(match, IMAGE_MATCHES, f"{what}image_match")
        if match != search_pb2.SearchRequest.CROSS_DOMAIN:
            return False
        require(kind == "image", f"{what}image_match CROSS_DOMAIN applies to image queries only")
        require(
            request.image.WhichOneof("source") == "data",
            f"{what}image_match CROSS_DOMAIN needs the snapshot's bytes in image.data (an indexed id is a "
            "catalogue image, not a snapshot)",
        )
        return True

    @in_callers_terms
    async def Search(self, request: search_pb2.SearchRequest, context: grpc.aio.ServicerContext):
        self._check_read(context, "Search")
        query = await self._search_query(request)
        return search_response(await self.coalescer.search(query, time_left))

    @in_callers_terms
    async def BatchSearch(self, request: search_pb2.BatchSearchRequest, context: grpc.aio.ServicerContext):
        self._check_read(context, "BatchSearch")
        count = len(request.searches)
        require(count > 0, f"searches is empty: send 1 to {self.settings.max_batch_searches}")
        limit(count, self.settings.max_batch_searches, "number of searches")
        BATCH_ITEMS.labels("search", "BatchSearch").observe(count)
        queries = [await self._search_query(r, f"searches[{i}].") for i, r in enumerate(request.searches)]
        outcomes = await self.pipeline.search_many(queries, time_left)
        return search_pb2.BatchSearchResponse(responses=[search_response(o) for o in outcomes])

    @in_callers_terms
    async def Rerank(self, request: search_pb2.RerankRequest, context: grpc.aio.ServicerContext):
        self._check_read(context, "Rerank")
        s = self.settings
        count = len(request.candidates)
        require(count > 0, f"candidates is empty: send 1 to {s.max_rerank_candidates}")
        limit(count, s.max_rerank_candidates, "number of candidates")
        require(request.top_k >= 0, "top_k must not be negative")
        collection = self._collection(request.collection)
        text = self._text(request.text, "text")
        bias = requests.modality_bias(request.modality)
        ids: list[str] = []
        inline: list[IndexItem] = []
        order: list[tuple[str, int]] = []
        for i, candidate in enumerate(request.candidates):
            source = candidate.WhichOneof("source")
            if source == "id":
                check_id(candidate.id, f"candidates[{i}].id")
                order.append(("id", len(ids)))
                ids.append(candidate.id)
            elif source == "inline":
                order.append(("inline", len(inline)))
                inline.append(self._inline(candidate.inline, f"candidates[{i}].inline"))
            else:
                raise InvalidArgument(f"candidates[{i}]: set id or inline")
        BATCH_ITEMS.labels("search", "Rerank").observe(count)
        outcome = await self.pipeline.rerank(
            collection,
            text,
            ids,
            inline,
            order,
            not request.skip_auto_tags,
            request.top_k,
            request.explain,
            bias,
            time_left,
            s.analyse_max_batch,
        )
        return search_response(outcome)

    def _inline(self, image: search_pb2.InlineImage, what: str) -> IndexItem:
        """An inline candidate, checked like an item to index (its id is the caller's, any text)."""
        require(0 < len(image.id) <= 128, f"{what}.id must be 1..128 characters")
        item = search_pb2.ImageItem(
            id="inline",
            image=image.image,
            title=image.title,
            tags=image.tags,
            metadata=image.metadata,
            keywords=image.keywords,
        )
        problem = self._item_problem(item)
        if problem is not None:
            error = InvalidArgument if problem.error_code == "INVALID_ARGUMENT" else ResourceExhausted
            raise error(f"{what}: {problem.error}")
        return IndexItem(
            image.id,
            image.image,
            image.title,
            list(image.tags),
            dict(image.metadata),
            [(k.text, k.confidence) for k in image.keywords],
        )

    # --- Get, Delete, Stats --------------------------------------------------------------------

    def _ids(self, ids, what: str = "ids") -> list[str]:
        require(len(ids) > 0, f"{what} is empty")
        limit(len(ids), self.settings.max_get_ids, f"number of {what}")
        for i in ids:
            check_id(i, "id")
        return list(dict.fromkeys(ids))

    @in_callers_terms
    async def Get(self, request: search_pb2.GetRequest, context: grpc.aio.ServicerContext):
        self._check_read(context, "Get")
        ids = self._ids(request.ids)
        records = await self.pipeline.get(
            self._collection(request.collection), ids, request.include_features, request.include_thumbnails
        )
        images = []
        for i in ids:
            if i not in records:
                continue
            r = records[i]
            features = (
                common_pb2.ImageFeatures(
                    embedding=to_tensor(r.embedding), regions=to_tensor(dequantize_regions(r.regions, r.region_scales))
                )
                if request.include_features
                else None
            )
            images.append(
                search_pb2.IndexedImage(
                    id=r.id,
                    title=r.title,
                    keywords=keyword_messages(r.keywords),
                    metadata=r.metadata,
                    features=features,
                    thumbnail=r.thumbnail if request.include_thumbnails else b"",
                )
            )
        return search_pb2.GetResponse(images=images, missing_ids=[i for i in ids if i not in records])

    @in_callers_terms
    async def Delete(self, request: search_pb2.DeleteRequest, context: grpc.aio.ServicerContext):
        check_bearer(context.invocation_metadata(), self.settings.auth_token, "Delete")
        ids = self._ids(request.ids)
        deleted = set(await self.pipeline.delete(self._collection(request.collection), ids))
        return search_pb2.DeleteResponse(deleted_count=len(deleted), missing_ids=[i for i in ids if i not in deleted])

    @in_callers_terms
    async def Stats(self, request: search_pb2.StatsRequest, context: grpc.aio.ServicerContext):
        self._check_read(context, "Stats")
        stats = await self.pipeline.stats(self._collection(request.collection))
        INDEX_IMAGES.labels(stats.collection).set(stats.image_count)
        return search_pb2.StatsResponse(
            image_count=stats.image_count,
            collection=stats.collection,
            index_backend=stats.index_backend,
            model_builds=stats.model_builds,
            index_version=INDEX_VERSION,
            ann_mode=stats.ann_mode,
        )

    # --- collections ---------------------------------------------------------------------------

    @in_callers_terms
    async def CreateCollection(self, request: search_pb2.CreateCollectionRequest, context: grpc.aio.ServicerContext):
        check_bearer(context.invocation_metadata(), self.settings.auth_token, "CreateCollection")
        require(bool(request.name), "name is empty: the default collection always exists")
        created = await self.pipeline.create_collection(self._collection(request.name))
        return search_pb2.CreateCollectionResponse(created=created)

    @in_callers_terms
    async def DropCollection(self, request: search_pb2.DropCollectionRequest, context: grpc.aio.ServicerContext):
        check_bearer(context.invocation_metadata(), self.settings.auth_token, "DropCollection")
        require(bool(request.name), "name is empty: the default collection cannot be dropped")
        deleted = await self.pipeline.drop_collection(self._collection(request.name))
        return search_pb2.DropCollectionResponse(deleted_images=deleted)

    @in_callers_terms
    async def ListCollections(self, request: search_pb2.ListCollectionsRequest, context: grpc.aio.ServicerContext):
        self._check_read(context, "ListCollections")
        infos = []
        for internal, count in await self.pipeline.collection_counts():
            name = requests.public_collection_name(internal, self.default_collection)
            if name is not None:
                infos.append(search_pb2.CollectionInfo(name=name, image_count=count))
        infos.sort(key=lambda info: (info.name != "", info.name))
        return search_pb2.ListCollectionsResponse(collections=infos)
