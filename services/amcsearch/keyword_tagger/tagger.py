"""Keywords of a batch of images in one Triton call.

Triton's classification extension turns the probabilities into "score:index:label" top-k
strings with the label files of the model repository (keyword_tagger/keywords.txt, and
placements.txt for where things are: "red@top-left"), so the vocabulary lives only beside the
model that predicts it.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from amcsearch.runtime import contract as c
from amcsearch.runtime.images import decode_images
from amcsearch.runtime.metrics import stage
from amcsearch.runtime.settings import ImageLimits
from amcsearch.runtime.triton import TritonModels

SERVICE = "keyword_tagger"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tag:
    text: str
    confidence: float


def parse_classes(entries: list[bytes], threshold: float) -> list[Tag]:
    """Triton's classification strings, best first, kept when >= threshold."""
    tags = []
    for entry in entries:
        score, _index, label = entry.decode("utf-8").split(":", 2)
        if float(score) >= threshold and label:
            tags.append(Tag(label, float(score)))
    return tags


class KeywordTagger:
    def __init__(self, triton: TritonModels, limits: ImageLimits, executor: Executor | None = None) -> None:
        self.triton = triton
        self.limits = limits
        self.executor = executor
        self._warned = False

    async def tag(
        self,
        images: list[bytes] | np.ndarray,
        threshold: float,
        top_k: int,
        timeout: float | None,
        placements: tuple[float, int],
    ) -> list[tuple[list[Tag], list[Tag]]]:
        """(keywords, placements) per image. `images`: encoded bytes, or decoded uint8 pixels
        [B, size, size, 3]; `placements`: their (threshold, top k)."""
        if isinstance(images, np.ndarray):
            pixels = images
        else:
            with stage(SERVICE, "decode"):
                pixels = await decode_images(images, self.limits, self.executor)
        outputs = [c.PROBABILITIES_OUT] + ([c.PLACEMENTS_OUT] if await self.has_placements() else [])
        with stage(SERVICE, "triton"):
            result = await self.triton.infer(
                c.KEYWORD_TAGGER,
                {"image": pixels},
                outputs,
                timeout,
                class_counts={c.PROBABILITIES_OUT: top_k, c.PLACEMENTS_OUT: placements[1]},
            )
        keywords = result[c.PROBABILITIES_OUT].reshape(len(images), -1)
        if c.PLACEMENTS_OUT not in result:
            return [(parse_classes(list(k), threshold), []) for k in keywords]
        where = result[c.PLACEMENTS_OUT].reshape(len(images), -1)
        return [
            (parse_classes(list(k), threshold), parse_classes(list(p), placements[0]))
            for k, p in zip(keywords, where, strict=True)
        ]

    async def has_placements(self) -> bool:
        """Whether the served keyword_tagger says where things are (placements__1). A repository
        exported before placement keywords still tags, without them: images indexed meanwhile
        get no placements (a warning says so, once), until `make models` re-exports it."""
        outputs = {o.get("name") for o in (await self.triton.config(c.KEYWORD_TAGGER)).get("output", [])}
        found = c.PLACEMENTS_OUT in outputs
        if not found and not self._warned:
            log.warning(
                "keyword_tagger has no %s output (exported before placement keywords): images are indexed "
                "without placements, so layout queries lose their placement candidates; run `make models`",
                c.PLACEMENTS_OUT,
            )
            self._warned = True
        return found
