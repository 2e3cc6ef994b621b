"""Plain query values and their cache identities; protobuf stays in the servicer."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from amcsearch.query_encoder.tokenize import normalize_text


@dataclass(frozen=True)
class ImageSource:
    """Encoded bytes, or features of an image already processed (embedding and regions)."""

    data: bytes | None = None
    embedding: np.ndarray | None = None
    regions: np.ndarray | None = None

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        if self.data is not None:
            digest.update(b"bytes:" + self.data)
        else:
            assert self.embedding is not None and self.regions is not None
            digest.update(b"features:" + self.embedding.tobytes() + self.regions.tobytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class Query:
    """Exactly one of: text; image; image + modification (composed); a street shot (an image
    given as bytes, encoded for cross-domain search)."""

    text: str | None = None
    image: ImageSource | None = None
    cross_domain: bool = False

    @property
    def kind(self) -> str:
        if self.image is None:
            return "text"
        if self.text is not None:
            return "composed"
        return "street" if self.cross_domain else "image"

    def normalized_text(self) -> str:
        return normalize_text(self.text or "")

    def cache_content(self) -> str:
        """What identifies the query's embedding for one set of model builds."""
        if self.kind == "text":
            return f"text\0{self.normalized_text()}"
        assert self.image is not None
        if self.kind == "image":
            return f"image\0{self.image.fingerprint()}"
        return f"composed\0{self.image.fingerprint()}\0{self.normalized_text()}"


@dataclass
class Encoded:
    embedding: np.ndarray
    cache_hit: bool
    truncated: bool
    normalized_text: str
    locations: np.ndarray | None = None
    """Street queries: the CtxYNet street map [36, 64]."""
