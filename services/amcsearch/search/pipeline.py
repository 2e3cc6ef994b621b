"""The gateway's flows: index a batch, search, and the model-service calls behind them.

Every model service is called once per request with the whole batch; protobuf of the internal
services stays here, plain values go out to the servicer.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from amcsearch.runtime.clients import call
from amcsearch.runtime.contract import CROSS_DOMAIN_TAG_WEIGHT, NO_BIAS
from amcsearch.runtime.errors import DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from amcsearch.runtime.images import decode_image, decoder_pool
from amcsearch.runtime.keywords import normalize_keyword
from amcsearch.runtime.metrics import DEGRADATIONS, stage
from amcsearch.runtime.quantize import dequantize_regions, quantize_regions
from amcsearch.runtime.rescoring import pack, rescore_request, top_attention
from amcsearch.runtime.settings import ImageLimits
from amcsearch.runtime.tensors import to_array, to_tensor
from amcsearch.search.index import Index
from amcsearch.search.records import Filter, Hit, Record, Shop
from amcsearch.v1 import (
    attention_rescorer_pb2,
    common_pb2,
    feature_extractor_pb2,
    keyword_tagger_pb2,
    query_encoder_pb2,
)

log = logging.getLogger(__name__)
SERVICE = "search"
ID_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
"""Image ids; always matched with fullmatch (match with ^...$ would accept a trailing newline)."""
ITEM_ERRORS = (InvalidArgument, ResourceExhausted)
"""Errors that belong to one item of a batch (its image), not to the request."""
MAX_KEYWORD_CHARS = 64
"""Longest keyword AttentionRescorer accepts (its ATTENTION_RESCORER_MAX_KEYWORD_CHARS default)."""
GIVEN = common_pb2.Keyword.GIVEN
AUTO = common_pb2.Keyword.AUTO


def merge_keywords(
    tags: list[str], weighted: list[tuple[str, float]], auto: list[tuple[str, float]]
) -> list[tuple[str, float, int]]:
    """Tags (confidence 1), then the caller's weighted keywords, then automatic ones; the first
    occurrence of a text wins."""
    merged: dict[str, tuple[str, float, int]] = {}
    for text, confidence, source in (
        [(t, 1.0, GIVEN) for t in tags] + [(t, c, GIVEN) for t, c in weighted] + [(t, c, AUTO) for t, c in auto]
    ):
        text = normalize_keyword(text)
        if text:
            merged.setdefault(text, (text, float(confidence), source))
    return list(merged.values())


@dataclass
class IndexItem:
    id: str
    image: bytes
    title: str = ""
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    keywords: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class ItemOutcome:
    id: str
    indexed: bool
    error_code: str = ""
    error: str = ""
    keywords: list[tuple[str, float, int]] = field(default_factory=list)


@dataclass
class Evidence:
    """Why a result scored what it did: AMC's modality weights and attention (text queries), or
    CtxYNet's query attention and TagYNet's candidate attention (cross-domain queries).
    Regions are (row-major grid index, weight), strongest first."""

    score: float
    visual_weight: float = 1.0
    keyword_weight: float = 0.0
    learned_visual_weight: float = 1.0
    learned_keyword_weight: float = 0.0
    regions: list[tuple[int, float]] = field(default_factory=list)
    keywords: list[tuple[str, float]] = field(default_factory=list)
    candidate_regions: list[tuple[int, float]] = field(default_factory=list)

    @classmethod
    def of_rescored(cls, message: common_pb2.Evidence) -> Evidence:
        return cls(
            message.score,
            message.visual_weight,
            message.keyword_weight,
            message.learned_visual_weight,
            message.learned_keyword_weight,
            [(r.index, r.weight) for r in message.regions],
            [(k.keyword, k.weight) for k in message.keywords],
        )

    def without_attention(self) -> None:
        self.regions, self.keywords, self.candidate_regions = [], [], []


@dataclass
class Result:
    id: str
    score: float
    ann_score: float
    title: str
    metadata: dict[str, str]
    evidence: Evidence | None = None


@dataclass
class SearchOutcome:
    results: list[Result]
    stages: list[str]
    degradations: list[tuple[str, str]]
    explanation: str = ""
    """With explain, when the results carry no attention: why."""


NO_ATTENTION = {
    "image": (
        "same-domain image queries are one global-embedding lookup: no attention to show "
        "(image_match CROSS_DOMAIN attends to regions)"
    ),
    "composed": (
        "composed queries are one composed embedding (image plus modification) and a lookup: "
        "the composer has no attention to show"
    ),
}
"""The reply's explanation when explain is asked of a query whose model cannot explain."""
CROSS_DOMAIN_EXPLAIN_TOP = 5


@dataclass(frozen=True)
class CollectionStats:
    """What Stats reports of one collection."""

    collection: str
    image_count: int
    index_backend: str
    ann_mode: str
    model_builds: dict[str, str]


@dataclass(frozen=True)
class SearchOptions:
    """What a Search asks for besides its query."""

    top_k: int
    candidates: int
    """ANN candidates rescored (text queries); at least offset + top_k."""
    rescore: bool
    condition: Filter = Filter()
    explain: bool = False
    offset: int = 0
    """Ranks to skip (paging)."""
    modality_bias: tuple[float, float, float] | None = None
    """(keyword scale, min, max keyword weight) for amc_rescorer; None: the learned weights."""
    source: str = "vector"
    """Candidates (text queries): "vector", "keyword" (BM25 over keywords) or "hybrid" (both, merged)."""
    text: str = ""
    """The query text, for keyword retrieval."""
    cross_domain: bool = False
    """An image query matched street-to-shop: TagYNet candidates, CtxYNet re-rank."""


@dataclass
class SearchQuery:
    """One search of a batch: its collection, its query for QueryEncoder and its options."""

    collection: str
    query: query_encoder_pb2.QueryInput
    options: SearchOptions


@dataclass
class Candidate:
    """A candidate for Rerank: an indexed image's features, or an inline image analysed now."""

    id: str
    title: str
    metadata: dict[str, str]
    regions: np.ndarray
    region_scales: np.ndarray
    keywords: list[tuple[str, float, int]]


@dataclass
class ModelServices:
    """Stubs of the four model services (their generated *Stub classes)."""

    encoder: Any
    tagger: Any
    extractor: Any
    rescorer: Any


class SearchPipeline:
    def __init__(
        self,
        index: Index,
        services: ModelServices,
        tagger_threshold: float,
        encoder_max_batch: int = 256,
        rescorer_max_candidates: int = 8192,
        image_limits: ImageLimits | None = None,
        rescore_budget_share: float = 0.5,
        hybrid_merge: str = "rrf",
    ) -> None:
        self.index = index
        self.hybrid_merge = hybrid_merge
        self.rescore_budget_share = rescore_budget_share
        """The share of the remaining deadline the rescore stage may take before the Search
        degrades to ANN order (so a hung rescorer never costs the caller's whole deadline)."""
        self.image_limits = image_limits or ImageLimits()
        self.decoder = decoder_pool(self.image_limits)
        self.rescorer_max_candidates = rescorer_max_candidates
        self.services = services
        self.tagger_threshold = tagger_threshold
        self.encoder_max_batch = encoder_max_batch
        self.model_builds: dict[str, str] = {}
        """build_id per model, as last reported by QueryEncoder."""

    # --- indexing ------------------------------------------------------------------------------

    async def index_items(
        self, collection: str, items: list[IndexItem], auto_tags: bool, timeout_of
    ) -> list[ItemOutcome]:
        """Each image decoded once, here; features and keywords for the whole batch in one call
        each; a bad image fails alone. `timeout_of()` gives the remaining deadline."""
        outcomes: dict[str, ItemOutcome] = {}
        good, pixels = await self._decode(items, outcomes)
        try:
            extracted, keywords = await self._analyse(good, pixels, auto_tags, timeout_of())
        except ITEM_ERRORS:
            good, extracted, keywords = await self._analyse_one_by_one(good, pixels, outcomes, auto_tags, timeout_of())
        records = []
        for item, e, merged in zip(good, extracted, keywords, strict=True):
            regions, scales = quantize_regions(to_array(e.features.regions))
            records.append(
                Record(
                    item.id,
                    to_array(e.features.embedding),
                    regions,
                    scales,
                    item.title,
                    merged,
                    item.metadata,
                    shop_of(e),
                )
            )
        if records:
            with stage(SERVICE, "index_write"):
                await self.index.upsert(collection, records)
            await self._warm_keyword_vectors(records, timeout_of())
        for record in records:
            outcomes[record.id] = ItemOutcome(record.id, True, keywords=record.keywords)
        return [outcomes[item.id] for item in items]

    async def _decode(
        self, items: list[IndexItem], outcomes: dict[str, ItemOutcome]
    ) -> tuple[list[IndexItem], np.ndarray]:
        """The items whose image decodes within the budget, and their pixels; the others get
        their outcome."""
        loop = asyncio.get_running_loop()

        async def one(item: IndexItem):
            try:
                return await loop.run_in_executor(self.decoder, decode_image, item.image, self.image_limits, "image")
            except ITEM_ERRORS as error:
                outcomes[item.id] = ItemOutcome(item.id, False, error.code.name, str(error))
                return None

        with stage(SERVICE, "decode"):
            decoded = await asyncio.gather(*(one(item) for item in items))
        good = [item for item, pixels in zip(items, decoded, strict=True) if pixels is not None]
        size = self.image_limits.image_size
        pixels = np.stack([p for p in decoded if p is not None]) if good else np.zeros((0, size, size, 3), np.uint8)
        return good, pixels

    async def _analyse(
        self,
        items: list[IndexItem],
        pixels: np.ndarray,
        auto_tags: bool,
        timeout: float | None,
        shop: bool = True,
        max_batch: int = 64,
    ):
        """(FeatureExtractor's result, merged keywords) per item, on the same decoded pixels:
        KeywordTagger first (unless skipped), so that FeatureExtractor computes the cross-domain
        shop features (unless `shop` is False) with every keyword, given or automatic, as the
        image's tags. More than `max_batch` images (the smaller of the two services' limits per
        call, KEYWORD_TAGGER_MAX_BATCH and FEATURE_EXTRACTOR_MAX_BATCH) go in several calls."""
        if len(pixels) == 0:
            return [], []
        if len(items) > max_batch:
            extracted_all, merged_all = [], []
            for start in range(0, len(items), max_batch):
                part = slice(start, start + max_batch)
                e, m = await self._analyse(items[part], pixels[part], auto_tags, timeout, shop, max_batch)
                extracted_all.extend(e)
                merged_all.extend(m)
            return extracted_all, merged_all
        tensor = to_tensor(pixels)
        auto: list[list[tuple[str, float]]] = [[] for _ in items]
        if auto_tags:
            with stage(SERVICE, "tag"):
                tagged = await call(
                    self.services.tagger.Tag,
                    keyword_tagger_pb2.TagRequest(pixels=tensor, threshold=self.tagger_threshold),
                    timeout,
                    "KeywordTagger",
                )
            auto = [[(k.text, k.confidence) for k in r.keywords] for r in tagged.results]
        merged = [merge_keywords(item.tags, item.keywords, a) for item, a in zip(items, auto, strict=True)]
        tags = [feature_extractor_pb2.TagList(tags=[k[0] for k in m]) for m in merged] if shop else []
        with stage(SERVICE, "extract"):
            extracted = await call(
                self.services.extractor.Extract,
                feature_extractor_pb2.ExtractRequest(pixels=tensor, tags=tags),
                timeout,
                "FeatureExtractor",
            )
        return list(extracted.results), merged

    async def _analyse_one_by_one(
        self,
        items: list[IndexItem],
        pixels: np.ndarray,
        outcomes: dict[str, ItemOutcome],
        auto_tags: bool,
        timeout: float | None,
    ):
        """The rare path after a batch was refused: isolate the bad items, keep the good ones."""
        good, features, keywords = [], [], []
        for item, image in zip(items, pixels, strict=True):
            try:
                f, k = await self._analyse([item], image[None], auto_tags, timeout)
            except ITEM_ERRORS as error:
                outcomes[item.id] = ItemOutcome(item.id, False, error.code.name, str(error))
                continue
            good.append(item)
            features.extend(f)
            keywords.extend(k)
        return good, features, keywords

    async def _warm_keyword_vectors(self, records: list[Record], timeout: float | None) -> None:
        """Embed the batch's keywords now (QueryEncoder caches them), so the first searches that
        rescore these images find them cached. Best effort: indexing succeeded."""
        texts = sorted({k[0] for r in records for k in r.keywords})
        queries = [query_encoder_pb2.QueryInput(text=t) for t in texts]
        try:
            with stage(SERVICE, "warm_keywords"):
                for start in range(0, len(queries), self.encoder_max_batch):
                    await call(
                        self.services.encoder.Encode,
                        query_encoder_pb2.EncodeRequest(queries=queries[start : start + self.encoder_max_batch]),
                        timeout,
                        "QueryEncoder",
                    )
        except (Unavailable, DeadlineExceeded, InvalidArgument, ResourceExhausted) as error:
            log.warning("keyword vectors not warmed: %s", error)

    async def delete(self, collection: str, ids: list[str]) -> list[str]:
        return await self.index.delete(collection, ids)

    # --- reads and collections -----------------------------------------------------------------

    @property
    def default_collection(self) -> str:
        return self.index.default_collection

    async def require_collection(self, collection: str) -> None:
        """NotFound unless `collection` exists: checked before any model work is spent."""
        await self.index.count(collection)

    async def get(self, collection: str, ids: list[str], with_features: bool) -> dict[str, Record]:
        return await self.index.get(collection, ids, with_features)

    async def stats(self, collection: str) -> CollectionStats:
        return CollectionStats(
            collection=collection,
            image_count=await self.index.count(collection),
            index_backend=self.index.backend,
            ann_mode=await self.index.ann_mode(collection),
            model_builds=dict(self.model_builds),
        )

    async def create_collection(self, collection: str) -> bool:
        return await self.index.create_collection(collection)

    async def drop_collection(self, collection: str) -> int:
        return await self.index.drop_collection(collection)

    async def collection_counts(self) -> list[tuple[str, int]]:
        """(internal name, image count) of every collection; one dropped meanwhile is left out."""
        counts = []
        for internal in await self.index.collections():
            try:
                counts.append((internal, await self.index.count(internal)))
            except NotFound:
                continue
        return counts

    # --- search --------------------------------------------------------------------------------

    async def indexed_image(self, collection: str, image_id: str) -> common_pb2.ImageInput:
        records = await self.index.get(collection, [image_id], with_features=True)
        if image_id not in records:
            raise NotFound(f"image id {image_id!r} is not in the index")
        record = records[image_id]
        regions = dequantize_regions(record.regions, record.region_scales)
        return common_pb2.ImageInput(
            features=common_pb2.ImageFeatures(embedding=to_tensor(record.embedding), regions=to_tensor(regions))
        )

    async def search(
        self, collection: str, query: query_encoder_pb2.QueryInput, options: SearchOptions, timeout_of
    ) -> SearchOutcome:
        """`timeout_of()` gives the caller's remaining deadline before each downstream call."""
        return (await self.search_many([SearchQuery(collection, query, options)], timeout_of))[0]

    async def search_many(self, searches: list[SearchQuery], timeout_of) -> list[SearchOutcome]:
        """Several searches with one QueryEncoder call and one AttentionRescorer call per kind of
        search (same-domain or text; cross-domain)."""
        cross = [i for i, s in enumerate(searches) if s.options.cross_domain]
        others = [i for i in range(len(searches)) if i not in set(cross)]
        outcomes: dict[int, SearchOutcome] = {}
        if others:
            found = await self._search_same_domain([searches[i] for i in others], timeout_of)
            outcomes.update(zip(others, found, strict=True))
        if cross:
            found = await self._search_cross_domain([searches[i] for i in cross], timeout_of)
            outcomes.update(zip(cross, found, strict=True))
        return [outcomes[i] for i in range(len(searches))]

    async def _search_same_domain(self, searches: list[SearchQuery], timeout_of) -> list[SearchOutcome]:
        vectors = await self.encode_many([s.query for s in searches], timeout_of())
        hits = [await self._candidates(search, vector) for search, vector in zip(searches, vectors, strict=True)]
        results = [[Result(h.id, h.ann_score, h.ann_score, h.title, h.metadata) for h in found] for found in hits]
        rescored = [i for i, s in enumerate(searches) if s.options.rescore and hits[i]]
        degradations: list[tuple[str, str]] = []
        if rescored:
            remaining = timeout_of()
            budget = None if remaining is None else remaining * self.rescore_budget_share
            try:
                scored = await self._rescore(
                    vectors[rescored],
                    [hits[i] for i in rescored],
                    any(searches[i].options.explain for i in rescored),
                    [searches[i].options.modality_bias for i in rescored],
                    budget,
                )
                for i, evidence in zip(rescored, scored, strict=True):
                    results[i] = apply_scores(results[i], evidence)
            except (Unavailable, NotFound, DeadlineExceeded) as error:
                log.warning("rescoring skipped: %s", error)
                reason = (
                    f"AttentionRescorer did not answer within its budget ({budget:.2f} s)"
                    if isinstance(error, DeadlineExceeded)
                    else f"AttentionRescorer failed ({error})"
                )
                degradations.append(("rescore", f"{reason}: ANN order returned"))
                DEGRADATIONS.labels("rescore").inc()
        outcomes = []
        for i, search in enumerate(searches):
            o = search.options
            stages = ["encode", *candidate_stages(o)] + (["rescore"] if i in rescored and not degradations else [])
            page = results[i][o.offset : o.offset + o.top_k]
            explanation = ""
            if o.explain and i not in rescored:
                explanation = NO_ATTENTION.get(search.query.WhichOneof("kind") or "", "")
            if not o.explain:
                for result in page:
                    if result.evidence is not None:
                        result.evidence.without_attention()
            outcomes.append(SearchOutcome(page, stages, degradations if i in rescored else [], explanation))
        return outcomes

    # --- cross-domain search -------------------------------------------------------------------

    async def _search_cross_domain(self, searches: list[SearchQuery], timeout_of) -> list[SearchOutcome]:
        """Street-to-shop: one QueryEncoder call (ynet_street), TagYNet's nearest candidates per
        search, one RescoreCrossDomain call (ctx_ynet) for every candidate of every search."""
        vectors, locations = await self._encode_street([s.query for s in searches], timeout_of())
        hits = []
        for search, vector in zip(searches, vectors, strict=True):
            with stage(SERVICE, "ann_cross_domain"):
                hits.append(
                    await self.index.search_shop(
                        search.collection, vector, search.options.candidates, search.options.condition
                    )
                )
        distances: list[list[tuple[float, list[tuple[int, float]]]]] | None = None
        degradations: list[tuple[str, str]] = []
        if any(hits):
            remaining = timeout_of()
            budget = None if remaining is None else remaining * self.rescore_budget_share
            explain = any(s.options.explain for s in searches)
            try:
                distances = await self._rescore_cross_domain(locations, hits, explain, budget)
            except (Unavailable, DeadlineExceeded) as error:
                log.warning("cross-domain re-rank skipped: %s", error)
                degradations.append(
                    ("rescore_cross_domain", f"CtxYNet re-rank failed ({error}): TagYNet order returned")
                )
                DEGRADATIONS.labels("rescore_cross_domain").inc()
        outcomes = []
        for q, (search, found) in enumerate(zip(searches, hits, strict=True)):
            o = search.options
            results = [
                cross_domain_result(h, None if distances is None else distances[q][j]) for j, h in enumerate(found)
            ]
            results.sort(key=lambda r: -r.score)  # stable: ties keep TagYNet's order
            page = results[o.offset : o.offset + o.top_k]
            if not o.explain:
                for result in page:
                    if result.evidence is not None:
                        result.evidence.without_attention()
            stages = ["encode", "ann_cross_domain"] + ([] if degradations or not found else ["rescore_cross_domain"])
            outcomes.append(SearchOutcome(page, stages, degradations if found else []))
        return outcomes

    async def _encode_street(self, queries: list[query_encoder_pb2.QueryInput], timeout: float | None):
        """TagYNet street vectors [Q, 64] and CtxYNet street maps [Q, 36, 64]."""
        with stage(SERVICE, "encode"):
            encoded = await self._encode_batched(queries, timeout)
            embeddings = [to_array(e.embedding) for e in encoded]
            locations = [to_array(e.locations) for e in encoded]
        return np.stack(embeddings), np.stack(locations)

    async def _rescore_cross_domain(
        self, locations: np.ndarray, hits: list[list[Hit]], explain: bool, timeout: float | None
    ) -> list[list[tuple[float, list[tuple[int, float]]]]]:
        """Per search, per candidate: (CtxYNet distance, the query's attended regions)."""
        flat = [(q, h) for q, found in enumerate(hits) for h in found]
        results: list[tuple[float, list[tuple[int, float]]]] = []
        with stage(SERVICE, "rescore_cross_domain"):
            for start in range(0, len(flat), self.rescorer_max_candidates):  # one call unless huge
                part = flat[start : start + self.rescorer_max_candidates]
                used = sorted({q for q, _ in part})
                row = {q: i for i, q in enumerate(used)}
                request = attention_rescorer_pb2.CrossDomainRequest(
                    locations=to_tensor(locations[used]),
                    ids=[h.id for _, h in part],
                    query_index=to_tensor(np.asarray([row[q] for q, _ in part], dtype=np.int32)),
                    contexts=to_tensor(np.stack([shop_context(h) for _, h in part])),
                    explain=explain,
                    explain_top=CROSS_DOMAIN_EXPLAIN_TOP,
                )
                reply = await call(self.services.rescorer.RescoreCrossDomain, request, timeout, "AttentionRescorer")
                results.extend((r.distance, [(g.index, g.weight) for g in r.regions]) for r in reply.results)
        out, start = [], 0
        for found in hits:
            out.append(results[start : start + len(found)])
            start += len(found)
        return out

    async def _candidates(self, search: SearchQuery, vector: np.ndarray) -> list[Hit]:
        """The hits to rescore (or, unrescored, to return): from the vector index, keyword
        retrieval, or both merged, as the options ask."""
        o = search.options
        if not o.rescore:
            with stage(SERVICE, "ann"):
                return await self.index.search(search.collection, vector, o.offset + o.top_k, o.condition)
        vector_hits: list[Hit] = []
        keyword_hits: list[Hit] = []
        if o.source in ("vector", "hybrid"):
            with stage(SERVICE, "ann"):
                vector_hits = await self.index.search(
                    search.collection, vector, o.candidates, o.condition, with_features=True
                )
        if o.source in ("keyword", "hybrid"):
            with stage(SERVICE, "keyword_search"):
                keyword_hits = await self.index.keyword_search(
                    search.collection, vector, o.text, o.candidates, o.condition, with_features=True
                )
        if o.source == "vector":
            return vector_hits
        if o.source == "keyword":
            return keyword_hits
        with stage(SERVICE, "merge"):
            return merge_candidates(vector_hits, keyword_hits, o.candidates, self.hybrid_merge)

    async def encode_many(self, queries: list[query_encoder_pb2.QueryInput], timeout: float | None) -> np.ndarray:
        """Embeddings [Q, 384] of the queries, in QueryEncoder calls of at most its batch limit."""
        with stage(SERVICE, "encode"):
            embeddings = [to_array(e.embedding) for e in await self._encode_batched(queries, timeout)]
        return np.stack(embeddings)

    async def _encode_batched(
        self, queries: list[query_encoder_pb2.QueryInput], timeout: float | None
    ) -> list[query_encoder_pb2.EncodedQuery]:
        """The QueryEncoder's answer for each query, in calls of at most its batch limit; notes
        the model builds each reply names."""
        encoded: list[query_encoder_pb2.EncodedQuery] = []
        for start in range(0, len(queries), self.encoder_max_batch):
            reply = await call(
                self.services.encoder.Encode,
                query_encoder_pb2.EncodeRequest(queries=queries[start : start + self.encoder_max_batch]),
                timeout,
                "QueryEncoder",
            )
            self.model_builds.update(reply.model_builds)
            encoded.extend(reply.embeddings)
        return encoded

    async def _rescore(
        self,
        vectors: np.ndarray,
        candidates: list[list],
        explain: bool,
        biases: list[tuple[float, float, float] | None],
        timeout: float | None,
    ) -> list[list]:
        """One Rescore for the candidates of every query; per query, the Evidence of each candidate
        in order. `candidates` items have id, regions, region_scales and keywords (Hit, Candidate)."""
        flat = [(q, c) for q, found in enumerate(candidates) for c in found]
        bias = None
        if any(b is not None for b in biases):
            bias = np.asarray([b if b is not None else NO_BIAS for b in biases], dtype=np.float32)
        evidence: list[common_pb2.Evidence] = []
        with stage(SERVICE, "rescore"):
            for start in range(0, len(flat), self.rescorer_max_candidates):  # one call unless huge
                part = flat[start : start + self.rescorer_max_candidates]
                batch = pack(
                    [c.id for _, c in part],
                    [c.regions for _, c in part],
                    [c.region_scales for _, c in part],
                    [usable_keywords(c.keywords) for _, c in part],
                    [q for q, _ in part],
                )
                reply = await call(
                    self.services.rescorer.Rescore,
                    rescore_request(vectors, batch, explain, 0, bias),
                    timeout,
                    "AttentionRescorer",
                )
                evidence.extend(r.evidence for r in reply.results)
        out, start = [], 0
        for found in candidates:
            out.append(evidence[start : start + len(found)])
            start += len(found)
        return out

    # --- rerank --------------------------------------------------------------------------------

    async def rerank(
        self,
        collection: str,
        text: str,
        ids: list[str],
        inline: list[IndexItem],
        order: list[tuple[str, int]],
        auto_tags: bool,
        top_k: int,
        explain: bool,
        modality_bias: tuple[float, float, float] | None,
        timeout_of,
        analyse_max_batch: int = 64,
    ) -> SearchOutcome:
        """AMC scores of caller-supplied candidates: indexed ids (`ids`) and inline images
        (`inline`, analysed now, never stored, `analyse_max_batch` images a model-service call),
        in the caller's `order` of ("id"|"inline", i)."""
        by_id = await self.index.get(collection, ids, with_features=True) if ids else {}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise NotFound(f"{len(missing)} candidate ids are not in the collection: {', '.join(missing[:10])}")
        analysed: list[Candidate] = []
        if inline:
            extracted, keywords = await self._analyse_inline(inline, auto_tags, timeout_of(), analyse_max_batch)
            for item, e, merged in zip(inline, extracted, keywords, strict=True):
                regions, scales = quantize_regions(to_array(e.features.regions))
                analysed.append(Candidate(item.id, item.title, item.metadata, regions, scales, merged))
        candidates = [
            Candidate(r.id, r.title, r.metadata, r.regions, r.region_scales, r.keywords)
            for r in (by_id[i] for i in ids)
        ]
        chosen = [candidates[i] if kind == "id" else analysed[i] for kind, i in order]
        vectors = await self.encode_many([query_encoder_pb2.QueryInput(text=text)], timeout_of())
        (evidence,) = await self._rescore(vectors, [chosen], explain, [modality_bias], timeout_of())
        results = apply_scores([Result(c.id, 0.0, 0.0, c.title, c.metadata) for c in chosen], evidence)
        return SearchOutcome(results[: top_k or len(results)], ["encode", "rescore"], [])

    async def _analyse_inline(
        self, items: list[IndexItem], auto_tags: bool, timeout: float | None, max_batch: int = 64
    ):
        outcomes: dict[str, ItemOutcome] = {}
        good, pixels = await self._decode(items, outcomes)
        if outcomes:
            index, bad = next((i, outcomes[item.id]) for i, item in enumerate(items) if item.id in outcomes)
            error = InvalidArgument if bad.error_code == "INVALID_ARGUMENT" else ResourceExhausted
            raise error(f"inline candidate {index} ({bad.id!r}): {bad.error}")
        return await self._analyse(items, pixels, auto_tags, timeout, shop=False, max_batch=max_batch)


def candidate_stages(options: SearchOptions) -> list[str]:
    if not options.rescore or options.source == "vector":
        return ["ann"]
    return ["keyword_search"] if options.source == "keyword" else ["ann", "keyword_search", "merge"]


RRF_K = 60
"""Reciprocal rank fusion's constant (Cormack et al. 2009): score = sum over lists of 1 / (60 + rank)."""


def merge_candidates(vector_hits: list[Hit], keyword_hits: list[Hit], limit: int, method: str) -> list[Hit]:
    """The merge stage of hybrid candidate generation.

    "rrf": reciprocal rank fusion of the two rankings, the best `limit` (the rescoring cost of a
    vector-only search). "union": every distinct hit of both lists (up to 2 x limit), vector
    ones first. Either way AMC then scores each candidate; the merge only decides which."""
    if method == "union":
        seen = {h.id for h in vector_hits}
        return vector_hits + [h for h in keyword_hits if h.id not in seen]
    fused: dict[str, float] = {}
    by_id: dict[str, Hit] = {}
    for ranking in (vector_hits, keyword_hits):
        for rank, hit in enumerate(ranking, start=1):
            fused[hit.id] = fused.get(hit.id, 0.0) + 1.0 / (RRF_K + rank)
            by_id.setdefault(hit.id, hit)
    order = sorted(fused, key=lambda i: -fused[i])  # ties keep the first-seen (vector) order
    return [by_id[i] for i in order[:limit]]


def usable_keywords(keywords: list[tuple[str, float, int]]) -> list[tuple[str, float]]:
    """The keywords a candidate can be rescored with: what an older index stored beyond today's
    limits (empty, over-long, confidence outside [0, 1]) is left out rather than failing the
    whole Search."""
    return [(t, conf) for t, conf, _ in keywords if t and len(t) <= MAX_KEYWORD_CHARS and 0.0 <= conf <= 1.0]


def apply_scores(results: list[Result], evidence: list) -> list[Result]:
    """Each result's AMC score and evidence, best first (stable: ties keep the ANN order)."""
    for result, found in zip(results, evidence, strict=True):
        result.score = found.score
        result.evidence = Evidence.of_rescored(found)
    return sorted(results, key=lambda r: -r.score)


def shop_of(extracted: feature_extractor_pb2.ExtractedImage) -> Shop | None:
    """The cross-domain features FeatureExtractor returned, or None (ynet_shop not deployed)."""
    if not extracted.HasField("shop"):
        return None
    s = extracted.shop
    return Shop(to_array(s.embedding), to_array(s.context), to_array(s.attention))


def shop_context(hit: Hit) -> np.ndarray:
    assert hit.shop is not None
    return hit.shop.context


def cross_domain_result(hit: Hit, rescored: tuple[float, list[tuple[int, float]]] | None) -> Result:
    """score: 1 - d / (2 (1 + w)) for the re-rank distance d = d_ctx + w d_tag (w =
    CROSS_DOMAIN_TAG_WEIGHT; squared distances of unit vectors, d_tag = 2 - 2 x TagYNet's cosine):
    at w = 1 the mean of CtxYNet's and TagYNet's cosines. TagYNet's cosine when the re-rank did
    not run."""
    assert hit.shop is not None
    if rescored is None:
        score, regions = hit.ann_score, []
    else:
        distance = rescored[0] + CROSS_DOMAIN_TAG_WEIGHT * (2.0 - 2.0 * hit.ann_score)
        score, regions = 1.0 - distance / (2.0 * (1.0 + CROSS_DOMAIN_TAG_WEIGHT)), rescored[1]
    evidence = Evidence(
        score, regions=regions, candidate_regions=top_attention(hit.shop.attention, CROSS_DOMAIN_EXPLAIN_TOP)
    )
    return Result(hit.id, score, hit.ann_score, hit.title, hit.metadata, evidence)
