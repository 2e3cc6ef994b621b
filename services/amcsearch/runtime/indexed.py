"""The Redis copy of an indexed image's rescoring features, shared by the gateway and rescorer.

The search gateway writes it when it indexes (and drops it when it deletes); the attention
rescorer reads it by id with one MGET and falls back to the index of record on a miss.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

from amcsearch.runtime.cache import decode_array, encode_array


@dataclass(frozen=True)
class IndexedFeatures:
    id: str
    regions: np.ndarray
    keywords: list[tuple[str, float]]


def indexed_key(collection: str, image_id: str) -> str:
    return f"indexed:{collection}:{image_id}"


def encode_indexed(features: IndexedFeatures) -> bytes:
    header = json.dumps({"id": features.id, "keywords": features.keywords}).encode()
    return struct.pack("<I", len(header)) + header + encode_array(features.regions)


def decode_indexed(blob: bytes) -> IndexedFeatures:
    (length,) = struct.unpack_from("<I", blob)
    header = json.loads(blob[4 : 4 + length])
    keywords = [(str(text), float(confidence)) for text, confidence in header["keywords"]]
    return IndexedFeatures(header["id"], decode_array(blob[4 + length :]), keywords)
