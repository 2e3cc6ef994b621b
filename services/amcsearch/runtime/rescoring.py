"""The columnar form of a Rescore: N candidates as a few arrays, built once by the caller.

The gateway packs the candidates it read from the index (and BatchSearch the candidates of
several queries); AttentionRescorer validates the arrays and maps keyword texts to model rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from amcsearch.runtime import contract as c
from amcsearch.runtime.tensors import to_tensor
from amcsearch.v1 import attention_rescorer_pb2


def top_attention(weights: np.ndarray, count: int) -> list[tuple[int, float]]:
    """The `count` largest weights as (index, weight), largest first (ties by index): the
    explanation of an attention map, the same for every service that reports one."""
    order = np.argsort(-weights, kind="stable")[:count]
    return [(int(i), float(weights[i])) for i in order]


def keyword_slots(keywords: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """The KEYWORD_SLOTS most confident keywords (ties by text, for determinism)."""
    return sorted(keywords, key=lambda kw: (-kw[1], kw[0]))[: c.KEYWORD_SLOTS]


@dataclass
class CandidateBatch:
    ids: list[str]
    regions: np.ndarray
    """int8 [N, REGION_COUNT, REGION_DIM]."""
    region_scales: np.ndarray
    """float32 [N, REGION_COUNT]."""
    query_index: np.ndarray
    """int32 [N]: each candidate's query row."""
    keyword_texts: list[str]
    slots: np.ndarray
    """int32 [N, KEYWORD_SLOTS]: a row of keyword_texts, -1 for an empty slot."""
    confidences: np.ndarray
    """float32 [N, KEYWORD_SLOTS]."""

    def __len__(self) -> int:
        return len(self.ids)

    def slot_texts(self, i: int) -> list[str]:
        return [self.keyword_texts[j] for j in self.slots[i] if j >= 0]


def pack(
    ids: list[str],
    regions: list[np.ndarray],
    scales: list[np.ndarray],
    keywords: list[list[tuple[str, float]]],
    query_index: list[int] | None = None,
) -> CandidateBatch:
    """Columns of N candidates; each keeps its KEYWORD_SLOTS most confident keywords."""
    n = len(ids)
    row_of: dict[str, int] = {}
    slots = np.full((n, c.KEYWORD_SLOTS), -1, dtype=np.int32)
    confidences = np.zeros((n, c.KEYWORD_SLOTS), dtype=np.float32)
    for i, candidate_keywords in enumerate(keywords):
        for j, (text, confidence) in enumerate(keyword_slots(candidate_keywords)):
            slots[i, j] = row_of.setdefault(text, len(row_of))
            confidences[i, j] = confidence
    empty = np.zeros((0, c.REGION_COUNT), dtype=np.float32)
    return CandidateBatch(
        list(ids),
        np.stack(regions).astype(np.int8, copy=False) if n else np.zeros((0, c.REGION_COUNT, c.REGION_DIM), np.int8),
        np.stack(scales).astype(np.float32, copy=False) if n else empty,
        np.asarray(query_index if query_index is not None else [0] * n, dtype=np.int32),
        list(row_of),
        slots,
        confidences,
    )


def rescore_request(
    queries: np.ndarray,
    batch: CandidateBatch,
    explain: bool,
    explain_top: int = 0,
    modality_bias: np.ndarray | None = None,
) -> attention_rescorer_pb2.RescoreRequest:
    """`modality_bias` [Q, 3]: per query (keyword scale, min, max keyword weight); None: none."""
    request = attention_rescorer_pb2.RescoreRequest(
        queries=to_tensor(np.asarray(queries, dtype=np.float32).reshape(-1, c.EMBEDDING_DIM)),
        ids=batch.ids,
        regions=to_tensor(batch.regions),
        region_scales=to_tensor(batch.region_scales),
        query_index=to_tensor(batch.query_index),
        keyword_texts=batch.keyword_texts,
        keyword_slots=to_tensor(batch.slots),
        keyword_confidences=to_tensor(batch.confidences),
        explain=explain,
        explain_top=explain_top,
    )
    if modality_bias is not None:
        request.modality_bias.CopyFrom(to_tensor(np.asarray(modality_bias, dtype=np.float32).reshape(-1, 3)))
    return request
