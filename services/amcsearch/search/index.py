"""The index of record in Milvus (milvus-lite file by default, a server or cluster by URI).

pymilvus is synchronous, so every call runs in one dedicated thread: the event loop never
blocks and milvus-lite sees one caller at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from amcsearch.runtime import contract as c
from amcsearch.runtime.errors import Unavailable

log = logging.getLogger(__name__)

INDEX_VERSION = "1"
MAX_KEYWORDS = 64


@dataclass
class Record:
    id: str
    embedding: np.ndarray
    regions: np.ndarray
    title: str = ""
    keywords: list[tuple[str, float, int]] = field(default_factory=list)
    """(text, confidence, Keyword.Source)."""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Hit:
    id: str
    ann_score: float
    title: str
    metadata: dict[str, str]


def quote(value: str) -> str:
    return json.dumps(value)


def build_filter(keywords: list[str], within_ids: list[str], exclude_ids: list[str]) -> str:
    clauses = []
    if keywords:
        clauses.append(f"array_contains_all(keyword_texts, [{', '.join(quote(k) for k in keywords)}])")
    if within_ids:
        clauses.append(f"id in [{', '.join(quote(i) for i in within_ids)}]")
    if exclude_ids:
        clauses.append(f"id not in [{', '.join(quote(i) for i in exclude_ids)}]")
    return " and ".join(clauses)


class MilvusIndex:
    def __init__(self, uri: str, collection: str, token: str = "") -> None:
        self.uri = uri
        self.collection = collection
        self.token = token
        self.backend = "milvus" if uri.startswith(("http://", "https://", "tcp://")) else "milvus-lite"
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="milvus")
        self.client: MilvusClient | None = None

    async def _run(self, function, *args, **kwargs):
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, lambda: function(*args, **kwargs))
        except MilvusException as error:
            raise Unavailable(f"index ({self.backend}) failed: {error.message}") from error

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        if self.backend == "milvus-lite":
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
        self.client = MilvusClient(self.uri, token=self.token) if self.token else MilvusClient(self.uri)
        if self.client.has_collection(self.collection):
            self.client.load_collection(self.collection)
            return
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=128)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=c.EMBEDDING_DIM)
        schema.add_field("regions", DataType.FLOAT_VECTOR, dim=c.REGION_COUNT * c.REGION_DIM)
        schema.add_field("title", DataType.VARCHAR, max_length=1024)
        schema.add_field("keyword_texts", DataType.ARRAY, element_type=DataType.VARCHAR,
                         max_capacity=MAX_KEYWORDS, max_length=64)
        schema.add_field("keywords", DataType.JSON)
        schema.add_field("metadata", DataType.JSON)
        index_params = self.client.prepare_index_params()
        index_params.add_index("embedding", index_type="FLAT" if self.backend == "milvus-lite" else "HNSW",
                               metric_type="COSINE")
        index_params.add_index("regions", index_type="FLAT", metric_type="L2")
        self.client.create_collection(self.collection, schema=schema, index_params=index_params)

    async def close(self) -> None:
        if self.client is not None:
            await self._run(self.client.close)

    async def upsert(self, records: list[Record]) -> None:
        rows = [{
            "id": r.id,
            "embedding": r.embedding.astype(np.float32).tolist(),
            "regions": r.regions.astype(np.float32).reshape(-1).tolist(),
            "title": r.title[:1024],
            "keyword_texts": [k[0][:64] for k in r.keywords][:MAX_KEYWORDS],
            "keywords": [[k[0], float(k[1]), int(k[2])] for k in r.keywords][:MAX_KEYWORDS],
            "metadata": dict(r.metadata),
        } for r in records]
        assert self.client is not None
        await self._run(self.client.upsert, self.collection, rows)

    async def search(self, vector: np.ndarray, limit: int, keywords: list[str], within_ids: list[str],
                     exclude_ids: list[str]) -> list[Hit]:
        assert self.client is not None
        result = await self._run(
            self.client.search, self.collection, [vector.astype(np.float32).tolist()], anns_field="embedding",
            limit=limit, filter=build_filter(keywords, within_ids, exclude_ids),
            output_fields=["title", "metadata"], search_params={"metric_type": "COSINE"},
        )
        return [Hit(h["id"], float(h["distance"]), h["entity"].get("title", ""), h["entity"].get("metadata") or {})
                for h in result[0]]

    async def get(self, ids: list[str], with_features: bool) -> dict[str, Record]:
        assert self.client is not None
        fields = ["title", "keywords", "metadata"] + (["embedding", "regions"] if with_features else [])
        rows = await self._run(self.client.get, self.collection, ids=ids, output_fields=fields)
        records = {}
        for row in rows:
            embedding = np.asarray(row["embedding"], dtype=np.float32) if with_features else np.zeros(0)
            regions = (np.asarray(row["regions"], dtype=np.float32).reshape(c.REGION_COUNT, c.REGION_DIM)
                       if with_features else np.zeros(0))
            keywords = [(str(k[0]), float(k[1]), int(k[2])) for k in row.get("keywords") or []]
            records[row["id"]] = Record(row["id"], embedding, regions, row.get("title", ""), keywords,
                                        row.get("metadata") or {})
        return records

    async def delete(self, ids: list[str]) -> list[str]:
        """Deletes the ids that exist; returns them."""
        present = list(await self.get(ids, with_features=False))
        if present:
            assert self.client is not None
            await self._run(self.client.delete, self.collection, ids=present)
        return present

    async def count(self) -> int:
        assert self.client is not None
        rows = await self._run(self.client.query, self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])
