"""Record types of the scene corpus and their JSON form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from models.corpus.vocab import SceneObject


@dataclass(frozen=True)
class ImageRecord:
    id: str
    objects: tuple[SceneObject, ...]
    theme: str
    caption: str
    true_keywords: list[str]
    noisy_keywords: list[tuple[str, float]]
    label: int
    corrupted: bool
    corruption: str = ""  # "", "blur", "noise" or "contrast"


@dataclass(frozen=True)
class TextQuery:
    id: str
    text: str
    family: str  # "layout", "attribute", "theme" or "mixed"
    candidate_ids: list[str]
    relevance: list[int]  # 2 all constraints met, 1 partial, 0 none
    spec: dict[str, Any] = field(default_factory=dict)
    """The query's constraints: queries.grade(spec, image) grades any image (whole-index protocol)."""


@dataclass(frozen=True)
class ImageQuery:
    id: str
    image_id: str
    candidate_ids: list[str]
    relevance: list[float]  # caption tf-idf cosine (Gordo & Larlus proxy)


@dataclass(frozen=True)
class ComposedQuery:
    id: str
    source_id: str
    modification: str
    target_id: str
    target_label: int
    kind: str = ""  # "add", "remove", "size", "color" or "shape"


@dataclass
class Split:
    name: str
    images: list[ImageRecord]
    pixels: np.ndarray  # uint8 [N, 128, 128, 3], row i = images[i]
    text_queries: list[TextQuery] = field(default_factory=list)
    image_queries: list[ImageQuery] = field(default_factory=list)
    composed_queries: list[ComposedQuery] = field(default_factory=list)
    _index: dict[str, int] | None = field(default=None, repr=False, compare=False)

    def index_of(self, image_id: str) -> int:
        if self._index is None:
            self._index = {r.id: i for i, r in enumerate(self.images)}
        return self._index[image_id]

    @property
    def labels(self) -> np.ndarray:
        """int64 [N]: the scene label of every image, in row order."""
        return np.array([r.label for r in self.images], dtype=np.int64)


@dataclass
class Corpus:
    size: str
    seed: int
    train: Split
    test: Split
    keyword_vocab: list[str]


def image_to_json(r: ImageRecord) -> dict[str, Any]:
    d = asdict(r)
    d["objects"] = [[o.shape, o.color, o.size, o.cell] for o in r.objects]
    d["noisy_keywords"] = [[k, round(c, 4)] for k, c in r.noisy_keywords]
    return d


def image_from_json(d: dict[str, Any]) -> ImageRecord:
    return ImageRecord(
        id=d["id"],
        objects=tuple(SceneObject(s, c, z, int(cell)) for s, c, z, cell in d["objects"]),
        theme=d["theme"],
        caption=d["caption"],
        true_keywords=list(d["true_keywords"]),
        noisy_keywords=[(k, float(c)) for k, c in d["noisy_keywords"]],
        label=int(d["label"]),
        corrupted=bool(d["corrupted"]),
        corruption=d.get("corruption", ""),
    )


def split_to_json(s: Split) -> dict[str, Any]:
    return {
        "name": s.name,
        "images": [image_to_json(r) for r in s.images],
        "text_queries": [asdict(q) for q in s.text_queries],
        "image_queries": [{**asdict(q), "relevance": [round(x, 6) for x in q.relevance]} for q in s.image_queries],
        "composed_queries": [asdict(q) for q in s.composed_queries],
    }


def split_from_json(d: dict[str, Any], pixels: np.ndarray) -> Split:
    return Split(
        name=d["name"],
        images=[image_from_json(x) for x in d["images"]],
        pixels=pixels,
        text_queries=[TextQuery(**q) for q in d["text_queries"]],
        image_queries=[ImageQuery(**q) for q in d["image_queries"]],
        composed_queries=[ComposedQuery(**q) for q in d["composed_queries"]],
    )
