"""Plain values of the index layer: what is stored per image, what a search returns, and the
structured filter every engine compiles for itself (never a string spliced by the caller)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from amcsearch.runtime import contract as c


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
