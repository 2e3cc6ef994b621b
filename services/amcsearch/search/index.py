"""The index of record in Milvus (milvus-lite file by default, a server or cluster by URI).

Two collections: `<collection>` holds what search needs (id, global embedding, title, keywords,
metadata) and `<collection>_regions` the 36 x 128 region grids that only rescoring and composed
queries read by id. milvus-lite materialises every field of every hit, so keeping the 4,608-float
grids out of the searched collection is what keeps ANN cheap (it was 64% of Search p50).

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
from amcsearch.runtime.metrics import INDEX_IMAGES

log = logging.getLogger(__name__)

INDEX_VERSION = "2"
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

    @property
    def regions_collection(self) -> str:
        return f"{self.collection}_regions"

    def _open(self) -> None:
        if self.backend == "milvus-lite":
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
        self.client = MilvusClient(self.uri, token=self.token) if self.token else MilvusClient(self.uri)
        for name, create in ((self.collection, self._create_images), (self.regions_collection, self._create_regions)):
            if self.client.has_collection(name):
                self.client.load_collection(name)
            else:
                create(name)
        fields = {f["name"] for f in self.client.describe_collection(self.collection)["fields"]}
        if "regions" in fields:
            raise Unavailable(f"collection {self.collection} has the version-1 schema (regions inline); "
                              "re-index into a new INDEX_COLLECTION or a new INDEX_URI")

    def _create_images(self, name: str) -> None:
        assert self.client is not None
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=128)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=c.EMBEDDING_DIM)
        schema.add_field("title", DataType.VARCHAR, max_length=1024)
        schema.add_field("keyword_texts", DataType.ARRAY, element_type=DataType.VARCHAR,
                         max_capacity=MAX_KEYWORDS, max_length=64)
        schema.add_field("keywords", DataType.JSON)
        schema.add_field("metadata", DataType.JSON)
        index_params = self.client.prepare_index_params()
        index_params.add_index("embedding", index_type="FLAT" if self.backend == "milvus-lite" else "HNSW",
                               metric_type="COSINE")
        self.client.create_collection(name, schema=schema, index_params=index_params)

    def _create_regions(self, name: str) -> None:
        assert self.client is not None
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=128)
        schema.add_field("regions", DataType.FLOAT_VECTOR, dim=c.REGION_COUNT * c.REGION_DIM)
        index_params = self.client.prepare_index_params()
        index_params.add_index("regions", index_type="FLAT", metric_type="L2")
        self.client.create_collection(name, schema=schema, index_params=index_params)

    async def close(self) -> None:
        if self.client is not None:
            await self._run(self.client.close)

    async def upsert(self, records: list[Record]) -> None:
        regions = [{"id": r.id, "regions": r.regions.astype(np.float32).reshape(-1).tolist()} for r in records]
        rows = [{
            "id": r.id,
            "embedding": r.embedding.astype(np.float32).tolist(),
            "title": r.title[:1024],
            "keyword_texts": [k[0][:64] for k in r.keywords][:MAX_KEYWORDS],
            "keywords": [[k[0], float(k[1]), int(k[2])] for k in r.keywords][:MAX_KEYWORDS],
            "metadata": dict(r.metadata),
        } for r in records]
        assert self.client is not None
        # Regions first: an item becomes searchable only once everything it needs is stored.
        await self._run(self.client.upsert, self.regions_collection, regions)
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
        fields = ["title", "keywords", "metadata"] + (["embedding"] if with_features else [])
        rows = await self._run(self.client.get, self.collection, ids=ids, output_fields=fields)
        grids = {}
        if with_features and rows:
            found = [row["id"] for row in rows]
            grids = {g["id"]: g["regions"] for g in
                     await self._run(self.client.get, self.regions_collection, ids=found, output_fields=["regions"])}
        records = {}
        for row in rows:
            if with_features and row["id"] not in grids:
                continue  # half-written item (its write was never acknowledged): not in the index
            embedding = np.asarray(row["embedding"], dtype=np.float32) if with_features else np.zeros(0)
            regions = (np.asarray(grids[row["id"]], dtype=np.float32).reshape(c.REGION_COUNT, c.REGION_DIM)
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
            await self._run(self.client.delete, self.regions_collection, ids=present)
        return present

    async def count(self) -> int:
        assert self.client is not None
        rows = await self._run(self.client.query, self.collection, filter="", output_fields=["count(*)"])
        count = int(rows[0]["count(*)"])
        INDEX_IMAGES.labels(self.collection).set(count)  # refreshed by every readiness poll and Stats
        return count
