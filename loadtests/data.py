"""The load test's data: images to index and to query with, and a query distribution with repeats.

Built from the synthetic corpus's *train* split (the integration tests use the test split, so a
load test never warms the caches they measure). Text queries follow a Zipf law over a fixed pool:
a few popular queries repeat often (cache hits), a long tail rarely (misses), as search logs do.
The data travels to locust's process as one JSON file (LOADTEST_DATA).
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ID_PREFIX = "lt-"
"""Every id the load test indexes starts with this, so that cleanup removes exactly those."""
ZIPF_EXPONENT = 1.1


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Seeded:
    """An image indexed before the load starts."""

    id: str
    png: bytes
    keywords: list[tuple[str, float]]
    title: str


@dataclass
class LoadData:
    texts: list[str]
    modifications: list[str]
    seeded: list[Seeded]
    to_index: list[tuple[str, bytes]] = field(default_factory=list)
    """(id, png) for the Index task; ids repeat (upserts) so the index stays bounded."""

    def save(self, path: Path) -> None:
        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        payload = {
            "texts": self.texts,
            "modifications": self.modifications,
            "seeded": [{**asdict(s), "png": b64(s.png)} for s in self.seeded],
            "to_index": [[i, b64(p)] for i, p in self.to_index],
        }
        path.write_text(json.dumps(payload))

    @classmethod
    def load(cls, path: Path) -> LoadData:
        payload = json.loads(Path(path).read_text())
        return cls(
            texts=payload["texts"],
            modifications=payload["modifications"],
            seeded=[
                Seeded(s["id"], base64.b64decode(s["png"]), [tuple(k) for k in s["keywords"]], s["title"])
                for s in payload["seeded"]
            ],
            to_index=[(i, base64.b64decode(p)) for i, p in payload["to_index"]],
        )

    def all_ids(self) -> list[str]:
        return [s.id for s in self.seeded] + sorted({i for i, _ in self.to_index})


def build(seeded: int = 60, to_index: int = 24, seed: int = 0) -> LoadData:
    """`seeded` images indexed up front, `to_index` more for the Index task, from the ci corpus."""
    from models.corpus import load_or_build_corpus

    split = load_or_build_corpus("ci", seed).train
    if seeded + to_index > len(split.images):
        raise ValueError(f"the ci train split has {len(split.images)} images, asked for {seeded + to_index}")
    records = list(zip(split.images, split.pixels, strict=True))
    texts = list(dict.fromkeys(q.text for q in split.text_queries))
    modifications = list(dict.fromkeys(q.modification for q in split.composed_queries))
    return LoadData(
        texts=texts,
        modifications=modifications,
        seeded=[
            Seeded(f"{ID_PREFIX}{r.id}", png(p), [(k, float(c)) for k, c in r.noisy_keywords], r.caption)
            for r, p in records[:seeded]
        ],
        to_index=[(f"{ID_PREFIX}new-{r.id}", png(p)) for r, p in records[seeded : seeded + to_index]],
    )


class Zipf:
    """Draws from `items` with probability proportional to 1 / rank^s (rank 1 = items[0])."""

    def __init__(self, items: list, exponent: float = ZIPF_EXPONENT, rng: random.Random | None = None) -> None:
        if not items:
            raise ValueError("Zipf needs at least one item")
        self.items = items
        self.weights = [1.0 / (rank**exponent) for rank in range(1, len(items) + 1)]
        self.rng = rng or random.Random()

    def draw(self):
        return self.rng.choices(self.items, weights=self.weights, k=1)[0]


def data_path() -> Path:
    path = os.environ.get("LOADTEST_DATA")
    if not path:
        raise RuntimeError(
            "LOADTEST_DATA is not set: run `python -m loadtests.run`, or "
            "`python -m loadtests.run --prepare-only` and export the path it prints"
        )
    return Path(path)
