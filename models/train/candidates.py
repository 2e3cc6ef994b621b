"""Candidates as a Search draws them, in process: the service's own index code over a gallery.

The embedded engine of services/amcsearch/search (exact vector search below its HNSW threshold,
keyword_index.py's BM25 with the query synonyms), the gateway's merge, and the gallery indexed
as the service indexes it. Training draws AMC Full's service candidates with it
(models/train/amc.py); the whole-index evaluation ranks what it draws (models/eval/whole_index.py).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from amcsearch.keyword_tagger.settings import KeywordTaggerSettings
from amcsearch.runtime.quantize import quantize_regions
from amcsearch.search.embedded_index import EmbeddedIndex
from amcsearch.search.pipeline import merge_candidates, merge_keywords
from amcsearch.search.records import Filter, Record
from amcsearch.search.settings import SearchSettings
from amcsearch.search.synonyms import expand_query
from torch import nn

from models.corpus.vocab import PLACEMENT_LABELS
from models.nets.image_encoder import cells_from_regions
from models.train.amc import ImageFeatures

CANDIDATES = 100
"""The gateway's default SEARCH candidates (and SEARCH_CANDIDATES of the served test)."""


def gallery_records(split: Any, images: ImageFeatures, tagger: nn.Module | None = None) -> list[Record]:
    """A split's gallery as the service indexes it (benchmarks/served_quality.py, the served
    test): the noisy keywords as the caller's weighted keywords, no automatic ones, and the
    tagger's placements ("red@top-left"), which the service stores even with skip_auto_tags."""
    records = []
    regions, scales = quantize_regions(images.regions.numpy())
    where = placements(tagger, images.regions) if tagger is not None else [[] for _ in split.images]
    for row, r in enumerate(split.images):
        keywords = merge_keywords([], [(k, float(c)) for k, c in r.noisy_keywords], [], where[row])
        records.append(Record(r.id, images.embedding[row].numpy(), regions[row], scales[row], r.caption, keywords, {}))
    return records


def placements(tagger: nn.Module, regions: torch.Tensor) -> list[list[tuple[str, float]]]:
    """Per image, the tagger's placements as KeywordTagger serves them: its placement head on the
    cells of the encoder's regions (what the exported tagger computes from the pixels), the
    KEYWORD_TAGGER_MAX_PLACEMENTS most probable kept when >= KEYWORD_TAGGER_PLACEMENT_THRESHOLD."""
    settings = KeywordTaggerSettings()
    with torch.no_grad():
        probabilities = torch.sigmoid(tagger.placements(cells_from_regions(regions))).numpy()
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, : settings.max_placements]
    return [
        [(PLACEMENT_LABELS[j], float(p[j])) for j in row if p[j] >= settings.placement_threshold]
        for row, p in zip(order, probabilities, strict=True)
    ]


class CandidateSource:
    """The service's candidate generation over one in-process embedded index of the gallery."""

    def __init__(
        self,
        records: list[Record],
        directory: Path,
        keyword_share: str = SearchSettings.keyword_share,
        synonyms: Mapping[str, str] | None = None,
    ) -> None:
        self.synonyms = dict(synonyms or {})
        """The query synonym table the keyword route reads (the served text_encoder's, as the
        gateway applies it: search/synonyms.py)."""
        self.loop = asyncio.new_event_loop()
        self.index = EmbeddedIndex(directory / "whole_index.sqlite", "gallery", keyword_share=keyword_share)
        self.run(self.index.open())
        self.run(self.index.upsert("gallery", records))

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        self.run(self.index.close())
        self.loop.close()

    def candidates(
        self, vector: np.ndarray, text: str, source: str, limit: int = CANDIDATES, keyword_weight: float = 1.0
    ) -> list[str]:
        vector_ids = self.run(self.index.search("gallery", vector, limit, Filter()))
        keyword_text = expand_query(text, self.synonyms)
        keyword_ids = self.run(self.index.keyword_search("gallery", vector, keyword_text, limit, Filter()))
        if source == "vector":
            hits = vector_ids
        elif source == "keyword":
            hits = keyword_ids
        else:
            method = "rrf" if source == "hybrid" else source
            hits = merge_candidates(vector_ids, keyword_ids, limit, method, keyword_weight)
        return [h.id for h in hits]


def candidate_lists(
    split: Any,
    images: ImageFeatures,
    queries: list[Any],
    embeddings: torch.Tensor,
    sources: tuple[str, ...],
    limit: int = CANDIDATES,
    tagger: nn.Module | None = None,
    synonyms: Mapping[str, str] | None = None,
) -> dict[str, list[list[str]]]:
    """Per source, each query's candidate ids over the split's whole gallery, drawn as a Search
    draws them (the gallery indexed as gallery_records indexes it)."""
    with tempfile.TemporaryDirectory() as directory:
        source = CandidateSource(gallery_records(split, images, tagger), Path(directory), synonyms=synonyms)
        try:
            return {
                s: [source.candidates(embeddings[i].numpy(), q.text, s, limit) for i, q in enumerate(queries)]
                for s in sources
            }
        finally:
            source.close()
