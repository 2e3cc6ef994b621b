"""The gateway's flows: index a batch, search, and the model-service calls behind them.

Every model service is called once per request with the whole batch; protobuf of the internal
services stays here, plain values go out to the servicer.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np

from amcsearch.runtime.cache import EmbeddingCache
from amcsearch.runtime.clients import call
from amcsearch.runtime.errors import DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from amcsearch.runtime.indexed import IndexedFeatures, encode_indexed, indexed_key
from amcsearch.runtime.metrics import DEGRADATIONS, stage
from amcsearch.runtime.tensors import to_array, to_tensor
from amcsearch.search.index import MilvusIndex, Record
from amcsearch.v1 import (
    attention_rescorer_pb2,
    common_pb2,
    feature_extractor_pb2,
    keyword_tagger_pb2,
    query_encoder_pb2,
)

log = logging.getLogger(__name__)
SERVICE = "search"
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
KEYWORD_WARM_BATCH = 256
"""QueryEncoder's default batch limit."""
ITEM_ERRORS = (InvalidArgument, ResourceExhausted)
"""Errors that belong to one item of a batch (its image), not to the request."""
GIVEN = common_pb2.Keyword.GIVEN
AUTO = common_pb2.Keyword.AUTO


def normalize_keyword(text: str) -> str:
    return " ".join(text.split()).lower()


def merge_keywords(tags: list[str], weighted: list[tuple[str, float]],
                   auto: list[tuple[str, float]]) -> list[tuple[str, float, int]]:
    """Tags (confidence 1), then the caller's weighted keywords, then automatic ones; the first
    occurrence of a text wins."""
    merged: dict[str, tuple[str, float, int]] = {}
    for text, confidence, source in ([(t, 1.0, GIVEN) for t in tags] + [(t, c, GIVEN) for t, c in weighted]
                                     + [(t, c, AUTO) for t, c in auto]):
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
class Result:
    id: str
    score: float
    ann_score: float
    title: str
    metadata: dict[str, str]
    evidence: common_pb2.Evidence | None = None


@dataclass
class SearchOutcome:
    results: list[Result]
    stages: list[str]
    degradations: list[tuple[str, str]]


@dataclass
class ModelServices:
    """Stubs of the four model services."""

    encoder: object
    tagger: object
    extractor: object
    rescorer: object


class SearchPipeline:
    def __init__(self, index: MilvusIndex, services: ModelServices, cache: EmbeddingCache,
                 tagger_threshold: float) -> None:
        self.index = index
        self.services = services
        self.cache = cache
        self.tagger_threshold = tagger_threshold
        self.model_builds: dict[str, str] = {}
        """build_id per model, as last reported by QueryEncoder."""

    # --- indexing ------------------------------------------------------------------------------

    async def index_items(self, items: list[IndexItem], auto_tags: bool, timeout: float | None) -> list[ItemOutcome]:
        """Features and keywords for the whole batch in one call each; a bad image fails alone."""
        outcomes: dict[str, ItemOutcome] = {}
        good = list(items)
        try:
            features, keywords = await self._analyse([i.image for i in good], auto_tags, timeout)
        except ITEM_ERRORS:
            good, features, keywords = await self._analyse_one_by_one(good, outcomes, auto_tags, timeout)
        records = [
            Record(item.id, to_array(f.embedding), to_array(f.regions), item.title,
                   merge_keywords(item.tags, item.keywords, kws), item.metadata)
            for item, f, kws in zip(good, features, keywords)
        ]
        if records:
            with stage(SERVICE, "index_write"):
                await self.index.upsert(records)
            await self._warm_cache(records)
            await self._warm_keyword_vectors(records, timeout)
        for record in records:
            outcomes[record.id] = ItemOutcome(record.id, True, keywords=record.keywords)
        return [outcomes[item.id] for item in items]

    async def _analyse(self, images: list[bytes], auto_tags: bool, timeout: float | None):
        with stage(SERVICE, "extract"):
            extracted = await call(self.services.extractor.Extract,
                                   feature_extractor_pb2.ExtractRequest(images=images), timeout, "FeatureExtractor")
        if not auto_tags:
            return [r.features for r in extracted.results], [[] for _ in images]
        with stage(SERVICE, "tag"):
            tagged = await call(self.services.tagger.Tag,
                                keyword_tagger_pb2.TagRequest(images=images, threshold=self.tagger_threshold),
                                timeout, "KeywordTagger")
        features = [r.features for r in extracted.results]
        keywords = [[(k.text, k.confidence) for k in r.keywords] for r in tagged.results]
        return features, keywords

    async def _analyse_one_by_one(self, items: list[IndexItem], outcomes: dict[str, ItemOutcome],
                                  auto_tags: bool, timeout: float | None):
        """The rare path after a batch was refused: isolate the bad items, keep the good ones."""
        good, features, keywords = [], [], []
        for item in items:
            try:
                f, k = await self._analyse([item.image], auto_tags, timeout)
            except ITEM_ERRORS as error:
                message = str(error).replace("image 0", "image")
                outcomes[item.id] = ItemOutcome(item.id, False, error.code.name, message)
                continue
            good.append(item)
            features.extend(f)
            keywords.extend(k)
        return good, features, keywords

    async def _warm_cache(self, records: list[Record]) -> None:
        await self.cache.set_many(
            {indexed_key(self.index.collection, r.id): IndexedFeatures(r.id, r.regions, [(k[0], k[1]) for k in r.keywords])
             for r in records},
            encode=encode_indexed,
        )

    async def _warm_keyword_vectors(self, records: list[Record], timeout: float | None) -> None:
        """Embed the batch's keywords now (one Encode call; QueryEncoder caches them), so the first
        searches that rescore these images do not pay for it. Best effort: indexing succeeded."""
        texts = sorted({k[0] for r in records for k in r.keywords})
        queries = [query_encoder_pb2.QueryInput(text=t) for t in texts]
        try:
            with stage(SERVICE, "warm_keywords"):
                for start in range(0, len(queries), KEYWORD_WARM_BATCH):
                    await call(self.services.encoder.Encode, query_encoder_pb2.EncodeRequest(
                        queries=queries[start : start + KEYWORD_WARM_BATCH]), timeout, "QueryEncoder")
        except (Unavailable, DeadlineExceeded, InvalidArgument, ResourceExhausted) as error:
            log.warning("keyword vectors not warmed: %s", error)

    async def delete(self, ids: list[str]) -> list[str]:
        deleted = await self.index.delete(ids)
        await self.cache.delete_many([indexed_key(self.index.collection, i) for i in deleted])
        return deleted

    # --- search --------------------------------------------------------------------------------

    async def encode(self, query: query_encoder_pb2.QueryInput, timeout: float | None) -> np.ndarray:
        with stage(SERVICE, "encode"):
            reply = await call(self.services.encoder.Encode, query_encoder_pb2.EncodeRequest(queries=[query]),
                               timeout, "QueryEncoder")
        self.model_builds.update(reply.model_builds)
        return to_array(reply.embeddings[0].embedding)

    async def indexed_image(self, image_id: str) -> common_pb2.ImageInput:
        records = await self.index.get([image_id], with_features=True)
        if image_id not in records:
            raise NotFound(f"image id {image_id!r} is not in the index")
        record = records[image_id]
        return common_pb2.ImageInput(features=common_pb2.ImageFeatures(
            embedding=to_tensor(record.embedding), regions=to_tensor(record.regions)))

    async def search(self, query: query_encoder_pb2.QueryInput, rescore: bool, top_k: int, candidates: int,
                     keyword_filter: list[str], within_ids: list[str], exclude_ids: list[str], explain: bool,
                     timeout_of) -> SearchOutcome:
        """`timeout_of()` gives the caller's remaining deadline before each downstream call."""
        stages = ["encode"]
        vector = await self.encode(query, timeout_of())
        stages.append("ann")
        with stage(SERVICE, "ann"):
            hits = await self.index.search(vector, candidates if rescore else top_k, keyword_filter,
                                           within_ids, exclude_ids)
        results = [Result(h.id, h.ann_score, h.ann_score, h.title, h.metadata) for h in hits]
        degradations: list[tuple[str, str]] = []
        if rescore and results:
            try:
                results = await self._rescore(vector, results, explain, timeout_of())
                stages.append("rescore")
            except (Unavailable, NotFound) as error:
                log.warning("rescoring skipped: %s", error)
                degradations.append(("rescore", f"AttentionRescorer failed ({error}): ANN order returned"))
                DEGRADATIONS.labels("rescore").inc()
        return SearchOutcome(results[:top_k], stages, degradations)

    async def _rescore(self, vector: np.ndarray, results: list[Result], explain: bool,
                       timeout: float | None) -> list[Result]:
        request = attention_rescorer_pb2.RescoreRequest(
            query=to_tensor(vector), explain=explain,
            candidates=[attention_rescorer_pb2.Candidate(id=r.id) for r in results])
        with stage(SERVICE, "rescore"):
            reply = await call(self.services.rescorer.Rescore, request, timeout, "AttentionRescorer")
        for result, scored in zip(results, reply.results):
            result.score = scored.evidence.score
            result.evidence = scored.evidence
        return sorted(results, key=lambda r: -r.score)
