"""The gateway's flows: index a batch, search, and the model-service calls behind them.

Every model service is called once per request with the whole batch; protobuf of the internal
services stays here, plain values go out to the servicer.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field

import numpy as np

from amcsearch.runtime.clients import call
from amcsearch.runtime.errors import DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from amcsearch.runtime.keywords import normalize_keyword
from amcsearch.runtime.metrics import DEGRADATIONS, stage
from amcsearch.runtime.quantize import dequantize_regions, quantize_regions
from amcsearch.runtime.rescoring import pack, rescore_request
from amcsearch.runtime.tensors import to_array, to_tensor
from amcsearch.search.index import Index
from amcsearch.search.records import Filter, Hit, Record
from amcsearch.v1 import (
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


@dataclass(frozen=True)
class SearchOptions:
    """What a Search asks for besides its query."""

    top_k: int
    candidates: int
    """ANN candidates rescored (text queries); at least top_k."""
    rescore: bool
    condition: Filter = Filter()
    explain: bool = False


@dataclass
class ModelServices:
    """Stubs of the four model services."""

    encoder: object
    tagger: object
    extractor: object
    rescorer: object


class SearchPipeline:
    def __init__(self, index: Index, services: ModelServices, tagger_threshold: float,
                 encoder_max_batch: int = 256) -> None:
        self.index = index
        self.services = services
        self.tagger_threshold = tagger_threshold
        self.encoder_max_batch = encoder_max_batch
        self.model_builds: dict[str, str] = {}
        """build_id per model, as last reported by QueryEncoder."""

    # --- indexing ------------------------------------------------------------------------------

    async def index_items(self, collection: str, items: list[IndexItem], auto_tags: bool,
                          timeout: float | None) -> list[ItemOutcome]:
        """Features and keywords for the whole batch in one call each; a bad image fails alone."""
        outcomes: dict[str, ItemOutcome] = {}
        good = list(items)
        try:
            features, keywords = await self._analyse([i.image for i in good], auto_tags, timeout)
        except ITEM_ERRORS:
            good, features, keywords = await self._analyse_one_by_one(good, outcomes, auto_tags, timeout)
        records = []
        for item, f, kws in zip(good, features, keywords):
            regions, scales = quantize_regions(to_array(f.regions))
            records.append(Record(item.id, to_array(f.embedding), regions, scales, item.title,
                                  merge_keywords(item.tags, item.keywords, kws), item.metadata))
        if records:
            with stage(SERVICE, "index_write"):
                await self.index.upsert(collection, records)
            await self._warm_keyword_vectors(records, timeout)
        for record in records:
            outcomes[record.id] = ItemOutcome(record.id, True, keywords=record.keywords)
        return [outcomes[item.id] for item in items]

    async def _analyse(self, images: list[bytes], auto_tags: bool, timeout: float | None):
        """FeatureExtractor and KeywordTagger, concurrently."""
        async def extract():
            with stage(SERVICE, "extract"):
                return await call(self.services.extractor.Extract, feature_extractor_pb2.ExtractRequest(images=images),
                                  timeout, "FeatureExtractor")

        async def tag():
            if not auto_tags:
                return None
            with stage(SERVICE, "tag"):
                return await call(self.services.tagger.Tag,
                                  keyword_tagger_pb2.TagRequest(images=images, threshold=self.tagger_threshold),
                                  timeout, "KeywordTagger")

        extracted, tagged = await asyncio.gather(extract(), tag())
        features = [r.features for r in extracted.results]
        if tagged is None:
            return features, [[] for _ in images]
        return features, [[(k.text, k.confidence) for k in r.keywords] for r in tagged.results]

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

    async def _warm_keyword_vectors(self, records: list[Record], timeout: float | None) -> None:
        """Embed the batch's keywords now (QueryEncoder caches them), so the first searches that
        rescore these images find them cached. Best effort: indexing succeeded."""
        texts = sorted({k[0] for r in records for k in r.keywords})
        queries = [query_encoder_pb2.QueryInput(text=t) for t in texts]
        try:
            with stage(SERVICE, "warm_keywords"):
                for start in range(0, len(queries), self.encoder_max_batch):
                    await call(self.services.encoder.Encode, query_encoder_pb2.EncodeRequest(
                        queries=queries[start : start + self.encoder_max_batch]), timeout, "QueryEncoder")
        except (Unavailable, DeadlineExceeded, InvalidArgument, ResourceExhausted) as error:
            log.warning("keyword vectors not warmed: %s", error)

    async def delete(self, collection: str, ids: list[str]) -> list[str]:
        return await self.index.delete(collection, ids)

    # --- search --------------------------------------------------------------------------------

    async def encode(self, query: query_encoder_pb2.QueryInput, timeout: float | None) -> np.ndarray:
        with stage(SERVICE, "encode"):
            reply = await call(self.services.encoder.Encode, query_encoder_pb2.EncodeRequest(queries=[query]),
                               timeout, "QueryEncoder")
        self.model_builds.update(reply.model_builds)
        return to_array(reply.embeddings[0].embedding)

    async def indexed_image(self, collection: str, image_id: str) -> common_pb2.ImageInput:
        records = await self.index.get(collection, [image_id], with_features=True)
        if image_id not in records:
            raise NotFound(f"image id {image_id!r} is not in the index")
        record = records[image_id]
        regions = dequantize_regions(record.regions, record.region_scales)
        return common_pb2.ImageInput(features=common_pb2.ImageFeatures(
            embedding=to_tensor(record.embedding), regions=to_tensor(regions)))

    async def search(self, collection: str, query: query_encoder_pb2.QueryInput, options: SearchOptions,
                     timeout_of) -> SearchOutcome:
        """`timeout_of()` gives the caller's remaining deadline before each downstream call."""
        stages = ["encode"]
        vector = await self.encode(query, timeout_of())
        stages.append("ann")
        with stage(SERVICE, "ann"):
            hits = await self.index.search(collection, vector, options.candidates if options.rescore else options.top_k,
                                           options.condition, with_features=options.rescore)
        results = [Result(h.id, h.ann_score, h.ann_score, h.title, h.metadata) for h in hits]
        degradations: list[tuple[str, str]] = []
        if options.rescore and results:
            try:
                results = await self._rescore(vector, hits, results, options.explain, timeout_of())
                stages.append("rescore")
            except (Unavailable, NotFound) as error:
                log.warning("rescoring skipped: %s", error)
                degradations.append(("rescore", f"AttentionRescorer failed ({error}): ANN order returned"))
                DEGRADATIONS.labels("rescore").inc()
        return SearchOutcome(results[: options.top_k], stages, degradations)

    async def _rescore(self, vector: np.ndarray, hits: list[Hit], results: list[Result], explain: bool,
                       timeout: float | None) -> list[Result]:
        batch = pack([h.id for h in hits], [h.regions for h in hits], [h.region_scales for h in hits],
                     [[(t, conf) for t, conf, _ in h.keywords] for h in hits])
        with stage(SERVICE, "rescore"):
            reply = await call(self.services.rescorer.Rescore, rescore_request(vector, batch, explain), timeout,
                               "AttentionRescorer")
        for result, scored in zip(results, reply.results, strict=True):
            result.score = scored.evidence.score
            result.evidence = scored.evidence
        return sorted(results, key=lambda r: -r.score)
