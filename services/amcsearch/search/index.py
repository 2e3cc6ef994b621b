"""The index of record: one interface, two engines, chosen by INDEX_URI.

- a file path: the embedded engine (embedded_index.py: SQLite + HNSW in the gateway process),
  the local default;
- http(s)://host:19530: a Milvus server or cluster (milvus_index.py), the scale-out engine.

The gateway's pipeline only sees the `Index` protocol below; the integration tests run the same
suite against both engines (tests/integration/test_index_engines.py).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from amcsearch.search.records import Candidates, Described, Filter, Hit, Merge, Record

INDEX_VERSION = "4"
"""Schema version of what an engine stores (3: int8 regions beside the item, one write; 4: the
embedded engine packs each item's keyword slots at index time and keeps keyword retrieval in its
own per-collection engine)."""


class Index(Protocol):
    backend: str
    default_collection: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def healthy(self) -> bool: ...
    async def collections(self) -> list[str]: ...
    async def create_collection(self, name: str) -> bool: ...
    async def drop_collection(self, name: str) -> int: ...
    async def upsert(self, collection: str, records: list[Record]) -> None: ...
    async def delete(self, collection: str, ids: list[str]) -> list[str]: ...
    async def count(self, collection: str) -> int: ...
    async def ann_mode(self, collection: str) -> str: ...
    async def search(
        self, collection: str, vector: np.ndarray, limit: int, condition: Filter, with_features: bool = False
    ) -> list[Hit]: ...
    async def keyword_search(
        self, collection: str, vector: np.ndarray, text: str, limit: int, condition: Filter, with_features: bool = False
    ) -> list[Hit]: ...
    async def search_shop(self, collection: str, vector: np.ndarray, limit: int, condition: Filter) -> list[Hit]:
        """Cross-domain: the images whose TagYNet vector is nearest `vector`, with their Shop."""
        ...

    async def get(
        self, collection: str, ids: list[str], with_features: bool, with_thumbnails: bool = False
    ) -> dict[str, Record]: ...

    # The search path: candidates as columns, described for the returned page only.
    keyword_needs_vector: bool
    """True when keyword candidates are ranked with the query vector (then they wait for it)."""

    async def keyword_candidates(
        self, collection: str, text: str, limit: int, condition: Filter, vector: np.ndarray | None = None
    ) -> np.ndarray:
        """Keys of the best `limit` images for the text's words, best first."""
        ...

    async def vector_candidates(
        self,
        collection: str,
        vector: np.ndarray,
        limit: int,
        condition: Filter,
        extra_keys: np.ndarray | None = None,
        merge: Merge | None = None,
    ) -> Candidates:
        """The `limit` nearest with their features, nearest first; with `extra_keys`, what `merge`
        picks of both (default: the nearest, then `extra_keys` not among them)."""
        ...

    async def vector_candidates_many(
        self,
        collection: str,
        vectors: np.ndarray,
        limit: int,
        extra_keys: list[np.ndarray | None],
        merges: list[Merge | None],
    ) -> list[Candidates]:
        """vector_candidates() of each row of `vectors` (no filter): a BatchSearch's queries."""
        ...

    async def candidate_features(self, collection: str, keys: np.ndarray, vector: np.ndarray) -> Candidates: ...
    async def describe(self, collection: str, keys: np.ndarray) -> list[Described | None]: ...


def is_server_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "tcp://"))


def open_index(
    uri: str,
    default_collection: str,
    token: str = "",
    hnsw_min_rows: int = 20_000,
    ef_search: int = 256,
    read_cache_mib: int = 128,
    reads_on_loop: bool = True,
    keyword_share: str = "full",
    feature_cache_mib: int = 1024,
) -> Index:
    """The engine for `uri` (not opened yet)."""
    if is_server_uri(uri):
        from amcsearch.search.milvus_index import MilvusIndex

        return MilvusIndex(uri, default_collection, token, ef_search)
    from amcsearch.search.embedded_index import EmbeddedIndex

    return EmbeddedIndex(
        uri,
        default_collection,
        hnsw_min_rows,
        ef_search,
        read_cache_mib,
        reads_on_loop,
        keyword_share,
        feature_cache_mib,
    )
