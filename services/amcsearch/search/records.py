"""Plain values of the index layer: what is stored per image, what a search returns, and the
structured filter every engine compiles for itself (never a string spliced by the caller)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from amcsearch.runtime import contract as c
from amcsearch.runtime.rescoring import keyword_slots

MAX_KEYWORD_CHARS = 64
"""Longest keyword AttentionRescorer accepts (its ATTENTION_RESCORER_MAX_KEYWORD_CHARS default)."""
PLACEMENT = 3
"""Keyword.Source PLACEMENT (common.proto): the tagger's "red@top-left", for the keyword route only."""


@dataclass
class Shop:
    """The cross-domain features of a catalogue image (ynet_shop), float32."""

    embedding: np.ndarray
    """[YNET_DIM] TagYNet's tag-attended vector, L2-normalised: the cross-domain ANN vector."""
    context: np.ndarray
    """[YNET_DIM] CtxYNet's context of the image."""
    attention: np.ndarray
    """[REGION_COUNT] the tag attention over the region grid."""

    def packed(self) -> np.ndarray:
        return np.concatenate([self.embedding, self.context, self.attention]).astype("<f4")

    @classmethod
    def unpack(cls, blob: bytes) -> Shop:
        flat = np.frombuffer(blob, dtype="<f4")
        d = c.YNET_DIM
        return cls(flat[:d], flat[d : 2 * d], flat[2 * d :])


@dataclass
class Record:
    """One indexed image."""

    id: str
    embedding: np.ndarray
    """float32 [EMBEDDING_DIM], L2-normalised."""
    regions: np.ndarray
    """int8 [REGION_COUNT, REGION_DIM] (runtime.quantize)."""
    region_scales: np.ndarray
    """float32 [REGION_COUNT]."""
    title: str = ""
    keywords: list[tuple[str, float, int]] = field(default_factory=list)
    """(text, confidence, Keyword.Source), normalised texts, distinct."""
    metadata: dict[str, str] = field(default_factory=dict)
    shop: Shop | None = None
    """Cross-domain features; None when the model repository had no ynet_shop at indexing."""
    thumbnail: bytes = b""
    """A small JPEG of the image as indexed (Get include_thumbnails); empty where none is kept."""


@dataclass
class Hit:
    """One search result of the index, with the candidate's rescoring features when asked for."""

    id: str
    ann_score: float
    title: str
    metadata: dict[str, str]
    keywords: list[tuple[str, float, int]] = field(default_factory=list)
    regions: np.ndarray | None = None
    region_scales: np.ndarray | None = None
    shop: Shop | None = None
    """Cross-domain hits: the candidate's stored cross-domain features."""


@dataclass(frozen=True)
class MetadataClause:
    """One condition on the metadata map.

    op "eq": the value equals values[0]; "in": it is one of values; "exists": the key is set;
    "range": the value parses as a number within [lower, upper] (either bound optional, each
    inclusive or not).
    """

    key: str
    op: str
    values: tuple[str, ...] = ()
    lower: float | None = None
    upper: float | None = None
    lower_inclusive: bool = True
    upper_inclusive: bool = True


def metadata_number(value: str) -> float | None:
    """A metadata value as a number for "range" clauses, when it parses as a finite one."""
    try:
        number = float(value)
    except ValueError:
        return None
    return number if np.isfinite(number) else None


@dataclass(frozen=True)
class MetadataFilter:
    """AND or OR of clauses and nested filters."""

    op: str  # "and" | "or"
    clauses: tuple[MetadataClause, ...] = ()
    groups: tuple[MetadataFilter, ...] = ()


@dataclass(frozen=True)
class Filter:
    """Conditions an image must meet to be a result; all of them (AND)."""

    keywords: tuple[str, ...] = ()
    """Every one of these (normalised) keywords."""
    within_ids: tuple[str, ...] = ()
    """Only these ids (empty: no restriction)."""
    exclude_ids: tuple[str, ...] = ()
    metadata: MetadataFilter | None = None

    @property
    def empty(self) -> bool:
        return not (self.keywords or self.within_ids or self.exclude_ids or self.metadata)


Merge = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Picks a hybrid search's candidates: (the vector ranking's keys, the keyword route's keys) ->
the keys to rescore, in order (pipeline.fuse_keys under the search's settings)."""


def ranking_then_rest(vector_keys: np.ndarray, keyword_keys: np.ndarray) -> np.ndarray:
    """The plainest Merge: the vector ranking, then the keyword route's keys not in it (the
    engines' default, and fuse_keys' "union")."""
    return np.concatenate([vector_keys, keyword_keys[~np.isin(keyword_keys, vector_keys)]])


@dataclass
class Candidates:
    """N candidates of one search as columns: what AttentionRescorer needs, read in one go.

    `keys` are the engine's own (store rows for the embedded engine, ids for Milvus); title,
    metadata and id are read later, for the returned page only (Index.describe)."""

    keys: np.ndarray
    """[N] engine keys."""
    ann_scores: np.ndarray
    """float32 [N]: cosine of the query and each candidate's embedding."""
    regions: np.ndarray
    """int8 [N, REGION_COUNT, REGION_DIM]."""
    region_scales: np.ndarray
    """float32 [N, REGION_COUNT]."""
    keyword_ids: np.ndarray
    """int32 [N, KEYWORD_SLOTS]: rows of keyword_texts, most confident first, -1 past the last."""
    confidences: np.ndarray
    """float32 [N, KEYWORD_SLOTS] (0 past the last keyword)."""
    keyword_texts: np.ndarray
    """object [D]: the texts keyword_ids point into (may hold texts no candidate uses)."""

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, positions: np.ndarray) -> Candidates:
        return Candidates(
            self.keys[positions],
            self.ann_scores[positions],
            self.regions[positions],
            self.region_scales[positions],
            self.keyword_ids[positions],
            self.confidences[positions],
            self.keyword_texts,
        )

    @classmethod
    def empty(cls, keys_dtype=np.int64) -> Candidates:
        return cls(
            np.zeros(0, dtype=keys_dtype),
            np.zeros(0, np.float32),
            np.zeros((0, c.REGION_COUNT, c.REGION_DIM), np.int8),
            np.zeros((0, c.REGION_COUNT), np.float32),
            np.zeros((0, c.KEYWORD_SLOTS), np.int32),
            np.zeros((0, c.KEYWORD_SLOTS), np.float32),
            np.zeros(0, dtype=object),
        )

    @classmethod
    def concat(cls, parts: list[Candidates]) -> Candidates:
        """One column set of several, each keeping its own keyword texts (offset into the joint
        list: a text may then appear twice, which the Rescore request folds)."""
        parts = [p for p in parts if len(p)] or parts[:1]
        if not parts:
            return cls.empty()
        if all(p.keyword_texts is parts[0].keyword_texts for p in parts):
            offsets, texts = [0] * len(parts), parts[0].keyword_texts
        else:
            sizes = [len(p.keyword_texts) for p in parts]
            offsets = list(np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int))
            texts = np.concatenate([p.keyword_texts for p in parts])
        return cls(
            np.concatenate([p.keys for p in parts]),
            np.concatenate([p.ann_scores for p in parts]),
            np.concatenate([p.regions for p in parts]),
            np.concatenate([p.region_scales for p in parts]),
            np.concatenate(
                [np.where(p.keyword_ids >= 0, p.keyword_ids + o, -1) for p, o in zip(parts, offsets, strict=True)]
            ).astype(np.int32),
            np.concatenate([p.confidences for p in parts]),
            texts,
        )


@dataclass(frozen=True)
class Described:
    """What a result shows besides its scores: read for the returned page only."""

    id: str
    title: str
    metadata: dict[str, str]


def slot_columns(keywords: list[tuple[str, float]], dictionary: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """An image's KEYWORD_SLOTS most confident keywords (ties by text) as (dictionary ids, -1
    past the last; confidences): computed once, at index time. `dictionary` gets new texts."""
    chosen = keyword_slots(keywords)
    ids = np.full(c.KEYWORD_SLOTS, -1, dtype=np.int32)
    confidences = np.zeros(c.KEYWORD_SLOTS, dtype=np.float32)
    for j, (text, confidence) in enumerate(chosen):
        ids[j] = dictionary.setdefault(text, len(dictionary))
        confidences[j] = confidence
    return ids, confidences


def usable_keywords(keywords: list[tuple[str, float, int]]) -> list[tuple[str, float]]:
    """The keywords a candidate can be rescored with: what an older index stored beyond today's
    limits (empty, over-long, confidence outside [0, 1]) is left out rather than failing the
    whole Search. Placements (source PLACEMENT) are for the keyword route only, never rescored."""
    return [
        (t, conf)
        for t, conf, source in keywords
        if t and len(t) <= MAX_KEYWORD_CHARS and 0.0 <= conf <= 1.0 and source != PLACEMENT
    ]


def locate(keys: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of `wanted`: its position in `keys` (distinct), and whether it is there at all."""
    if not len(keys):
        return np.zeros(len(wanted), dtype=np.int64), np.zeros(len(wanted), dtype=bool)
    order = np.argsort(keys, kind="stable")
    at = order[np.minimum(np.searchsorted(keys[order], wanted), len(keys) - 1)]
    return at, keys[at] == wanted


def positions_of(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The position in `keys` (distinct) of each of `wanted` that is there, in `wanted`'s order."""
    at, found = locate(keys, wanted)
    return at[found]
