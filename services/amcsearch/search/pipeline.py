"""The gateway's flows: index a batch, search, and the model-service calls behind them.

Every model service is called once per request with the whole batch; protobuf of the internal
services stays here, plain values go out to the servicer.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from amcsearch.runtime.clients import call
from amcsearch.runtime.contract import CROSS_DOMAIN_TAG_WEIGHT, EMBEDDING_DIM, NO_BIAS
from amcsearch.runtime.errors import (
    AmcsearchError,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from amcsearch.runtime.images import decode_image, decoder_pool, thumbnail
from amcsearch.runtime.keywords import normalize_keyword
from amcsearch.runtime.metrics import DEGRADATIONS, stage
from amcsearch.runtime.quantize import dequantize_regions, quantize_regions
from amcsearch.runtime.rescoring import top_attention
from amcsearch.runtime.settings import ImageLimits
from amcsearch.runtime.tensors import to_array, to_tensor
from amcsearch.search.index import Index
from amcsearch.search.records import (
    PLACEMENT,
    Candidates,
    Filter,
    Hit,
    Merge,
    Record,
    Shop,
    ranking_then_rest,
    slot_columns,
    usable_keywords,
)
from amcsearch.search.synonyms import expand_query
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
GIVEN = common_pb2.Keyword.GIVEN
AUTO = common_pb2.Keyword.AUTO


def merge_keywords(
    tags: list[str],
    weighted: list[tuple[str, float]],
    auto: list[tuple[str, float]],
    placements: Sequence[tuple[str, float]] = (),
) -> list[tuple[str, float, int]]:
    """Tags (confidence 1), then the caller's weighted keywords, then automatic ones, then the
    tagger's placements ("red@top-left"); the first occurrence of a text wins."""
    merged: dict[str, tuple[str, float, int]] = {}
    for text, confidence, source in (
        [(t, 1.0, GIVEN) for t in tags]
        + [(t, c, GIVEN) for t, c in weighted]
        + [(t, c, AUTO) for t, c in auto]
        + [(t, c, PLACEMENT) for t, c in placements]
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

    def without_attention(self) -> None:
        self.regions, self.keywords, self.candidate_regions = [], [], []


@dataclass
class Scored:
    """One query's columnar Rescore: every candidate's score and weights, and the attention of
    the candidates the page shows (position -> (regions, keywords))."""

    scores: np.ndarray
    weights: np.ndarray
    learned: np.ndarray
    attention: dict[int, tuple[list[tuple[int, float]], list[tuple[str, float]]]]

    def evidence(self, position: int) -> Evidence:
        regions, keywords = self.attention.get(position, ([], []))
        return Evidence(
            float(self.scores[position]),
            float(self.weights[position, 0]),
            float(self.weights[position, 1]),
            float(self.learned[position, 0]),
            float(self.learned[position, 1]),
            regions,
            keywords,
        )

    @classmethod
    def split(
        cls,
        reply: attention_rescorer_pb2.RescoreResponse,
        texts: np.ndarray,
        request: attention_rescorer_pb2.RescoreRequest,
        sizes: list[int],
    ) -> list[Scored]:
        """Per query of a columnar reply; `texts` are the request's keyword texts."""
        scores, weights, learned = (to_array(t) for t in (reply.scores, reply.modality_weights, reply.learned_weights))
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        out = [cls(scores[a:b], weights[a:b], learned[a:b], {}) for a, b in zip(starts[:-1], starts[1:], strict=True)]
        if reply.explained.shape and reply.explained.shape[0]:
            slots = to_array(request.keyword_slots)
            region_index, region_weight = to_array(reply.region_index), to_array(reply.region_weight)
            keyword_slot, keyword_weight = to_array(reply.keyword_slot), to_array(reply.keyword_weight)
            for m, row in enumerate(to_array(reply.explained).tolist()):  # the shown rows only
                q = int(np.searchsorted(starts, row, side="right")) - 1
                regions = [(int(i), float(w)) for i, w in zip(region_index[m], region_weight[m], strict=True)]
                keywords = [
                    (str(texts[slots[row, j]]), float(w))
                    for j, w in zip(keyword_slot[m], keyword_weight[m], strict=True)
                    if j >= 0
                ]
                out[q].attention[row - starts[q]] = (regions, keywords)
        return out


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
        synonyms: Callable[[], Awaitable[Mapping[str, str]]] | None = None,
    ) -> None:
        self.index = index
        self.synonyms = synonyms
        """The query synonym table's source (search/synonyms.py ServedSynonyms.table); None: none."""
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
        loop = asyncio.get_running_loop()
        thumbnails = dict(
            zip(
                [item.id for item in good],
                await loop.run_in_executor(self.decoder, lambda: [thumbnail(p) for p in pixels]),
                strict=True,
            )
        )
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
                    thumbnails.get(item.id, b""),
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
        with stage(SERVICE, "tag"):
            tagged = await call(
                self.services.tagger.Tag,
                keyword_tagger_pb2.TagRequest(pixels=tensor, threshold=self.tagger_threshold),
                timeout,
                "KeywordTagger",
            )
        # Placements are always kept (the keyword route's "where"); skip_auto_tags drops only the
        # automatic keywords.
        auto = [[(k.text, k.confidence) for k in r.keywords] if auto_tags else [] for r in tagged.results]
        where = [[(k.text, k.confidence) for k in r.placements] for r in tagged.results]
        merged = [merge_keywords(item.tags, item.keywords, a, w) for item, a, w in zip(items, auto, where, strict=True)]
        tags = (
            [feature_extractor_pb2.TagList(tags=[k[0] for k in m if k[2] != PLACEMENT]) for m in merged] if shop else []
        )
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
        texts = sorted({text for r in records for text, _ in usable_keywords(r.keywords)})
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

    async def get(
        self, collection: str, ids: list[str], with_features: bool, with_thumbnails: bool = False
    ) -> dict[str, Record]:
        return await self.index.get(collection, ids, with_features, with_thumbnails)

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
        """One QueryEncoder call, each search's candidates as columns (the keyword route runs
        while the queries are encoded), one columnar Rescore for all of them; only the returned
        page is described (id, title, metadata) and explained."""
        synonyms = await self._synonym_table() if any(self._uses_keywords(s.options) for s in searches) else {}
        encoding = asyncio.ensure_future(self.encode_many([s.query for s in searches], timeout_of()))
        await calls_under_way()
        keyword_routes = {
            i: asyncio.ensure_future(self._keyword_keys(s, None, synonyms))
            for i, s in enumerate(searches)
            if self._uses_keywords(s.options) and not self.index.keyword_needs_vector
        }
        try:
            vectors = await encoding
        except BaseException:
            for task in [encoding, *keyword_routes.values()]:
                task.cancel()
            await asyncio.gather(encoding, *keyword_routes.values(), return_exceptions=True)
            raise
        pages: list[list[Result]] = [[] for _ in searches]
        candidates = await self._candidates_of(searches, vectors, keyword_routes, synonyms)
        for i, (search, vector) in enumerate(zip(searches, vectors, strict=True)):
            if not search.options.rescore:
                pages[i] = await self._unscored_page(search, vector)
        rescored = [i for i in candidates if len(candidates[i])]
        scored, degradations = await self._rescore_or_degrade(searches, vectors, candidates, rescored, timeout_of)
        for i, found in candidates.items():
            pages[i] = await self._scored_page(searches[i], found, scored.get(i))
        outcomes = []
        for i, search in enumerate(searches):
            o = search.options
            stages = ["encode", *candidate_stages(o)] + (["rescore"] if i in scored else [])
            explanation = ""
            if o.explain and i not in rescored:
                explanation = NO_ATTENTION.get(search.query.WhichOneof("kind") or "", "")
            if not o.explain:
                for result in pages[i]:
                    if result.evidence is not None:
                        result.evidence.without_attention()
            outcomes.append(SearchOutcome(pages[i], stages, degradations if i in rescored else [], explanation))
        return outcomes

    async def _rescore_or_degrade(
        self,
        searches: list[SearchQuery],
        vectors: np.ndarray,
        candidates: dict[int, Candidates],
        rescored: list[int],
        timeout_of,
    ) -> tuple[dict[int, Scored], list[tuple[str, str]]]:
        """The rescored searches' scores, or none and the degradation when AttentionRescorer
        failed or took more than its share of the deadline."""
        if not rescored:
            return {}, []
        remaining = timeout_of()
        budget = None if remaining is None else remaining * self.rescore_budget_share
        try:
            found = await self._rescore(
                vectors[rescored],
                [candidates[i] for i in rescored],
                any(searches[i].options.explain for i in rescored),
                [searches[i].options.modality_bias for i in rescored],
                [searches[i].options.offset + searches[i].options.top_k for i in rescored],
                budget,
            )
        except (Unavailable, NotFound, DeadlineExceeded) as error:
            log.warning("rescoring skipped: %s", error)
            reason = (
                f"AttentionRescorer did not answer within its budget ({budget:.2f} s)"
                if isinstance(error, DeadlineExceeded)
                else f"AttentionRescorer failed ({error})"
            )
            DEGRADATIONS.labels("rescore").inc()
            return {}, [("rescore", f"{reason}: ANN order returned")]
        return dict(zip(rescored, found, strict=True)), []

    @staticmethod
    def _uses_keywords(options: SearchOptions) -> bool:
        return options.rescore and options.source in ("keyword", "hybrid")

    async def _keyword_keys(
        self, search: SearchQuery, vector: np.ndarray | None, synonyms: Mapping[str, str]
    ) -> np.ndarray:
        o = search.options
        with stage(SERVICE, "keyword_search"):
            text = expand_query(o.text, synonyms)
            return await self.index.keyword_candidates(search.collection, text, o.candidates, o.condition, vector)

    async def _synonym_table(self) -> Mapping[str, str]:
        """The served query synonyms, read once per batch of searches; none (the words as written,
        counted as a degradation and logged) while Triton cannot say what they are."""
        if self.synonyms is None:
            return {}
        try:
            return await self.synonyms()
        except AmcsearchError as error:
            log.warning("query synonyms unavailable, the keyword route takes the words as written: %s", error)
            DEGRADATIONS.labels("synonyms").inc()
            return {}

    async def _candidates_of(
        self,
        searches: list[SearchQuery],
        vectors: np.ndarray,
        keyword_routes: Mapping[int, asyncio.Future],
        synonyms: Mapping[str, str],
    ) -> dict[int, Candidates]:
        """The candidates of each search to rescore. The searches of a BatchSearch that take
        vector candidates from one collection without a filter share one engine read: one pass
        over the vectors and one read of every candidate's packed columns."""
        groups: dict[tuple[str, int], list[int]] = {}
        for i, search in enumerate(searches):
            o = search.options
            if o.rescore and o.source in ("vector", "hybrid") and o.condition.empty:
                groups.setdefault((search.collection, o.candidates), []).append(i)
        shared = [members for members in groups.values() if len(members) > 1]
        batched = {i for members in shared for i in members}
        candidates: dict[int, Candidates] = {}
        for members in shared:
            first = searches[members[0]]
            keyword_keys = [
                await self._route_keys(searches[i], vectors[i], keyword_routes.get(i), synonyms)
                if searches[i].options.source == "hybrid"
                else None
                for i in members
            ]
            with stage(SERVICE, "ann"):
                joined = await self.index.vector_candidates_many(
                    first.collection,
                    vectors[members],
                    first.options.candidates,
                    keyword_keys,
                    [self._merge_of(searches[i]) for i in members],
                )
            candidates.update(zip(members, joined, strict=True))
        for i, search in enumerate(searches):
            if search.options.rescore and i not in batched:
                candidates[i] = await self._candidate_columns(search, vectors[i], keyword_routes.get(i), synonyms)
        return dict(sorted(candidates.items()))

    async def _route_keys(
        self, search: SearchQuery, vector: np.ndarray, keyword_route, synonyms: Mapping[str, str]
    ) -> np.ndarray:
        """The keyword route's keys: the task started while the query was encoded, or now."""
        return await (keyword_route if keyword_route is not None else self._keyword_keys(search, vector, synonyms))

    def _merge_of(self, search: SearchQuery) -> Merge | None:
        """How a hybrid search picks its candidates from the two routes' keys (the index calls it
        before it gathers any candidate's columns); None for the other sources."""
        if search.options.source != "hybrid":
            return None
        limit = search.options.candidates

        def merge(vector_keys: np.ndarray, keyword_keys: np.ndarray) -> np.ndarray:
            with stage(SERVICE, "merge"):
                return fuse_keys(vector_keys, keyword_keys, limit, self.hybrid_merge)

        return merge

    async def _candidate_columns(
        self, search: SearchQuery, vector: np.ndarray, keyword_route, synonyms: Mapping[str, str]
    ) -> Candidates:
        """The candidates to rescore, as columns in ANN (or fused) order: from the vector index,
        keyword retrieval, or both fused, as the options ask."""
        o = search.options
        keyword_keys = None
        if o.source in ("keyword", "hybrid"):
            keyword_keys = await self._route_keys(search, vector, keyword_route, synonyms)
        if o.source == "keyword":
            assert keyword_keys is not None
            with stage(SERVICE, "feature_read"):
                return await self.index.candidate_features(search.collection, keyword_keys, vector)
        with stage(SERVICE, "ann"):  # the keyword-only candidates' features come in the same read
            return await self.index.vector_candidates(
                search.collection, vector, o.candidates, o.condition, keyword_keys, self._merge_of(search)
            )

    async def _unscored_page(self, search: SearchQuery, vector: np.ndarray) -> list[Result]:
        o = search.options
        with stage(SERVICE, "ann"):
            hits = await self.index.search(search.collection, vector, o.offset + o.top_k, o.condition)
        return [Result(h.id, h.ann_score, h.ann_score, h.title, h.metadata) for h in hits][o.offset :]

    async def _scored_page(self, search: SearchQuery, candidates: Candidates, scored: Scored | None) -> list[Result]:
        """The page of a rescored search (ANN order when rescoring failed), described."""
        o = search.options
        if scored is None:
            order = np.arange(len(candidates))
            scores = candidates.ann_scores
        else:
            order = np.argsort(-scored.scores, kind="stable")  # ties keep the ANN order
            scores = scored.scores
        page = order[o.offset : o.offset + o.top_k]
        described = await self.index.describe(search.collection, candidates.keys[page])
        results = []
        for position, about in zip(page.tolist(), described, strict=True):
            if about is None:
                continue  # deleted since it was found
            evidence = None if scored is None else scored.evidence(position)
            results.append(
                Result(
                    about.id,
                    float(scores[position]),
                    float(candidates.ann_scores[position]),
                    about.title,
                    about.metadata,
                    evidence,
                )
            )
        return results

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
        candidates: list[Candidates],
        explain: bool,
        biases: list[tuple[float, float, float] | None],
        shown: list[int],
        timeout: float | None,
    ) -> list[Scored]:
        """Columnar Rescores for the candidates of every query (one call unless they exceed the
        rescorer's limit); with explain, attention for each query's best `shown[q]` only."""
        bias = None
        if any(b is not None for b in biases):
            bias = np.asarray([b if b is not None else NO_BIAS for b in biases], dtype=np.float32)
        out: list[Scored] = []
        with stage(SERVICE, "rescore"):
            for part in chunk_queries([len(c) for c in candidates], self.rescorer_max_candidates):
                request, texts = columnar_request(
                    vectors[part], [candidates[q] for q in part], explain, None if bias is None else bias[part]
                )
                request.explain_ranks.CopyFrom(to_tensor(np.asarray([shown[q] for q in part], dtype=np.int32)))
                reply = await call(self.services.rescorer.Rescore, request, timeout, "AttentionRescorer")
                out.extend(Scored.split(reply, texts, request, [len(candidates[q]) for q in part]))
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
        shown = top_k or len(chosen)
        (scored,) = await self._rescore(
            vectors, [rerank_columns(chosen)], explain, [modality_bias], [shown], timeout_of()
        )
        results = []
        for position in np.argsort(-scored.scores, kind="stable")[:shown].tolist():
            one = chosen[position]
            evidence = scored.evidence(position)
            results.append(Result(one.id, evidence.score, 0.0, one.title, one.metadata, evidence))
        return SearchOutcome(results, ["encode", "rescore"], [])

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


LOOP_TURNS_TO_SEND = 3
"""Event-loop turns a just-made gRPC aio unary call needs before its request is out: the call
invokes from a task of its own (one turn), and a client interceptor adds a task or two."""


async def calls_under_way() -> None:
    """Let the calls just made send their requests. The keyword route that follows runs on the
    event loop (the embedded engine's reads do) and holds it for 1-4 ms at 100k images; started
    first, it delayed the QueryEncoder request by that much (encode stage 17.4 ms at 100k against
    14.1 ms at 1k), so it ran before the encoding instead of while the encoder worked."""
    for _ in range(LOOP_TURNS_TO_SEND):
        await asyncio.sleep(0)


def candidate_stages(options: SearchOptions) -> list[str]:
    if not options.rescore or options.source == "vector":
        return ["ann"]
    return ["keyword_search"] if options.source == "keyword" else ["ann", "keyword_search", "merge"]


RRF_K = 60
"""Reciprocal rank fusion's constant (Cormack et al. 2009): score = sum over lists of 1 / (60 + rank)."""


def fuse_keys(
    vector_keys: np.ndarray, keyword_keys: np.ndarray, limit: int, method: str, keyword_weight: float = 1.0
) -> np.ndarray:
    """The merge stage of hybrid candidate generation, on the two rankings' keys.

    "rrf": reciprocal rank fusion of the two rankings, the best `limit` (the rescoring cost of a
    vector-only search); ties keep the first-seen (vector) order. "union": every distinct key of
    both (up to 2 x limit), vector ones first. Either way AMC then scores each candidate; the
    merge only decides which. `keyword_weight` scales the keyword ranking's RRF terms (the
    service's is 1; benchmarks/LAYOUT.md measured others on validation and kept 1)."""
    vector_keys, keyword_keys = np.asarray(vector_keys), np.asarray(keyword_keys)
    if method == "union":
        return ranking_then_rest(vector_keys, keyword_keys)
    keys = np.concatenate([vector_keys, keyword_keys])
    if not len(keys):
        return keys
    ranks = np.concatenate([np.arange(1, len(vector_keys) + 1), np.arange(1, len(keyword_keys) + 1)])
    weights = np.concatenate([np.ones(len(vector_keys)), np.full(len(keyword_keys), keyword_weight)])
    distinct, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    fused = np.bincount(inverse.reshape(-1), weights=weights / (RRF_K + ranks))
    return distinct[np.lexsort((first, -fused))][:limit]


def merge_candidates(
    vector_hits: list, keyword_hits: list, limit: int, method: str, keyword_weight: float = 1.0
) -> list:
    """fuse_keys on hits (anything with an id): the offline evaluation's form of the merge."""
    by_id = {}
    for hit in [*keyword_hits, *vector_hits]:
        by_id[hit.id] = hit  # the vector hit wins, as its ann_score is the same
    ids = fuse_keys(
        np.asarray([h.id for h in vector_hits], dtype=object),
        np.asarray([h.id for h in keyword_hits], dtype=object),
        limit,
        method,
        keyword_weight,
    )
    return [by_id[i] for i in ids.tolist()]


def chunk_queries(sizes: list[int], limit: int) -> list[list[int]]:
    """Queries grouped so that each group's candidates fit one call (a query is never split)."""
    groups: list[list[int]] = [[]]
    total = 0
    for q, size in enumerate(sizes):
        if groups[-1] and total + size > limit:
            groups.append([])
            total = 0
        groups[-1].append(q)
        total += size
    return [g for g in groups if g]


def columnar_request(
    vectors: np.ndarray, parts: list[Candidates], explain: bool, bias: np.ndarray | None
) -> tuple[attention_rescorer_pb2.RescoreRequest, np.ndarray]:
    """The Rescore of the queries' candidates as arrays: keyword slots become rows of the
    distinct texts the candidates use. Returns the request and those texts."""
    joined = Candidates.concat(parts)
    ids = joined.keyword_ids
    used = ids >= 0
    distinct_ids, inverse = np.unique(ids[used], return_inverse=True)
    texts, text_of_id = np.unique(joined.keyword_texts[distinct_ids].astype(str), return_inverse=True)
    slots = np.full(ids.shape, -1, dtype=np.int32)
    slots[used] = text_of_id.reshape(-1)[inverse.reshape(-1)]
    request = attention_rescorer_pb2.RescoreRequest(
        queries=to_tensor(np.asarray(vectors, dtype=np.float32).reshape(-1, EMBEDDING_DIM)),
        regions=to_tensor(joined.regions),
        region_scales=to_tensor(joined.region_scales),
        query_index=to_tensor(np.repeat(np.arange(len(parts), dtype=np.int32), [len(p) for p in parts])),
        keyword_texts=texts.tolist(),
        keyword_slots=to_tensor(slots),
        keyword_confidences=to_tensor(np.where(used, joined.confidences, 0.0).astype(np.float32)),
        explain=explain,
        columnar=True,
    )
    if bias is not None:
        request.modality_bias.CopyFrom(to_tensor(np.asarray(bias, dtype=np.float32).reshape(-1, 3)))
    return request, texts


def rerank_columns(chosen: list[Candidate]) -> Candidates:
    """Rerank's candidates (indexed or inline) as columns, with their own keyword texts."""
    dictionary: dict[str, int] = {}
    slots = [slot_columns(usable_keywords(one.keywords), dictionary) for one in chosen]
    return Candidates(
        np.arange(len(chosen)),
        np.zeros(len(chosen), np.float32),
        np.stack([one.regions for one in chosen]).astype(np.int8),
        np.stack([one.region_scales for one in chosen]).astype(np.float32),
        np.stack([ids for ids, _ in slots]),
        np.stack([confidences for _, confidences in slots]),
        np.asarray(list(dictionary), dtype=object),
    )


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
