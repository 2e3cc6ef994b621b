"""The scale-out engine: a Milvus server or cluster through pymilvus (INDEX_URI=http://host:19530).

One Milvus collection per amcsearch collection, one row per image holding everything search
needs, so an upsert or a delete is one write (no item half in one collection and half in
another). The region grid travels as base64 text of its int8 bytes and scales: Milvus 2.3 allows
one vector field per collection, and a 36 x 128 x 8-bit binary vector would pass its 32,768
dimension limit. Filters are compiled to Milvus expressions with every string escaped for its
parser (quotes, backslashes, control characters as \\u escapes, NUL included: a raw or \\x00 NUL
in a JSON key never matches; non-ASCII passes through as UTF-8), and every AND or OR chain is a
balanced tree: Milvus 2.3 fails a left-nested chain of ~48 conditions ("unsupported expr proto
node"), and the API allows 64 metadata conditions, each up to three terms.

Searches and reads use Session consistency: this gateway sees its own acknowledged upserts at
once, without Strong consistency's wait for every channel (~270 ms a search on 2 cores).
pymilvus does not carry a delete's timestamp into the session (seen with Milvus 2.3.5), so Delete
returns only after a Strong read no longer finds the ids: from then on no read shows them.

Cross-domain search needs a second vector per image (TagYNet's, 64-d), and Milvus 2.3 allows one
vector field per collection: those images also get a row in a companion collection
("xd_<collection>": the same filter fields, that vector, and the CtxYNet context and attention).
An upsert writes the main row first, a delete removes the companion row too and then checks
both; an Index or Delete that fails half-way returns an error and is safe to retry.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from amcsearch.runtime import contract as c
from amcsearch.runtime.errors import NotFound, Unavailable
from amcsearch.search.records import (
    MAX_KEYWORD_CHARS,
    Candidates,
    Described,
    Filter,
    Hit,
    Merge,
    MetadataClause,
    MetadataFilter,
    Record,
    Shop,
    metadata_number,
    positions_of,
    ranking_then_rest,
    slot_columns,
    usable_keywords,
)

log = logging.getLogger(__name__)

MAX_KEYWORDS = 64
FEATURE_BYTES = c.REGION_COUNT * c.REGION_DIM + 4 * c.REGION_COUNT
CONSISTENCY = "Session"
HIT_FIELDS = ["title", "metadata", "keywords"]
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SHOP_PREFIX = "xd_"
"""Companion collections of cross-domain vectors: "xd_<collection>" (never an API collection,
whose engine names all start with the default collection's name)."""


def shop_collection(name: str) -> str:
    return SHOP_PREFIX + name


def quote(value: str) -> str:
    """A Milvus expression string literal holding exactly `value`."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", escaped) + '"'


def joined(parts: list[str], op: str) -> str:
    """`parts` combined by `op` ("and", "or") as a balanced tree of parenthesised pairs."""
    if len(parts) == 1:
        return f"({parts[0]})"
    middle = len(parts) // 2
    return f"({joined(parts[:middle], op)} {op} {joined(parts[middle:], op)})"


def _strings(values) -> str:
    return "[" + ", ".join(quote(v) for v in values) + "]"


def _clause_expression(clause: MetadataClause) -> str:
    key = quote(clause.key)
    if clause.op == "exists":
        return f"array_contains(metadata_keys, {key})"
    if clause.op == "eq":
        return f"metadata[{key}] == {quote(clause.values[0])}"
    if clause.op == "in":
        return f"metadata[{key}] in {_strings(clause.values)}"
    if clause.op == "range":
        parts = [f"array_contains(number_keys, {key})"]
        if clause.lower is not None:
            parts.append(f"numbers[{key}] {'>=' if clause.lower_inclusive else '>'} {clause.lower!r}")
        if clause.upper is not None:
            parts.append(f"numbers[{key}] {'<=' if clause.upper_inclusive else '<'} {clause.upper!r}")
        return joined(parts, "and")
    raise ValueError(f"unknown metadata operator {clause.op!r}")


def _metadata_expression(group: MetadataFilter) -> str:
    parts = [_clause_expression(cl) for cl in group.clauses] + [_metadata_expression(g) for g in group.groups]
    if not parts:
        return "true"
    return joined(parts, group.op)


def filter_expression(condition: Filter) -> str:
    clauses = []
    if condition.keywords:
        clauses.append(f"array_contains_all(keyword_texts, {_strings(condition.keywords)})")
    if condition.within_ids:
        clauses.append(f"id in {_strings(condition.within_ids)}")
    if condition.exclude_ids:
        clauses.append(f"id not in {_strings(condition.exclude_ids)}")
    if condition.metadata is not None:
        clauses.append(_metadata_expression(condition.metadata))
    return joined(clauses, "and") if clauses else ""


def encode_features(regions: np.ndarray, scales: np.ndarray) -> str:
    blob = np.asarray(regions, dtype=np.int8).tobytes() + np.asarray(scales, dtype="<f4").tobytes()
    return base64.b64encode(blob).decode("ascii")


def encode_shop(shop: Shop) -> str:
    return base64.b64encode(shop.packed().tobytes()).decode("ascii")


def decode_shop(text: str) -> Shop:
    return Shop.unpack(base64.b64decode(text))


def decode_features(text: str) -> tuple[np.ndarray, np.ndarray]:
    blob = base64.b64decode(text)
    split = c.REGION_COUNT * c.REGION_DIM
    return (
        np.frombuffer(blob[:split], dtype=np.int8).reshape(c.REGION_COUNT, c.REGION_DIM),
        np.frombuffer(blob[split:], dtype="<f4"),
    )


class MilvusIndex:
    backend = "milvus"

    def __init__(self, uri: str, default_collection: str, token: str = "", ef_search: int = 256) -> None:
        self.uri = uri
        self.default_collection = default_collection
        self.token = token
        self.ef_search = ef_search
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="milvus")
        self.client: MilvusClient | None = None
        self.known: set[str] = set()

    async def _run(self, function, *args, **kwargs):
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, lambda: function(*args, **kwargs))
        except MilvusException as error:
            if _collection_missing(error) and args and isinstance(args[0], str):
                name = args[0].removeprefix(SHOP_PREFIX)
                self.known.discard(name)
                raise NotFound(f"collection {name!r} does not exist") from error
            raise Unavailable(f"index ({self.backend}) failed: {error.message}") from error

    async def open(self) -> None:
        def connect() -> None:
            self.client = MilvusClient(self.uri, token=self.token) if self.token else MilvusClient(self.uri)
            if not self.client.has_collection(self.default_collection):
                self._create(self.default_collection)
            if not self.client.has_collection(shop_collection(self.default_collection)):
                self._create_shop(self.default_collection)  # a deployment from before cross-domain search
            self.client.load_collection(self.default_collection)
            self.client.load_collection(shop_collection(self.default_collection))
            fields = {f["name"] for f in self.client.describe_collection(self.default_collection)["fields"]}
            if "features" not in fields:
                raise Unavailable(
                    f"collection {self.default_collection} has an older schema (regions apart): "
                    "re-index into a new INDEX_COLLECTION"
                )
            self.known = {self.default_collection}

        await self._run(connect)

    def _create(self, name: str) -> None:
        self._create_collection(name, c.EMBEDDING_DIM, "features", 2 * FEATURE_BYTES)
        self._create_shop(name)

    def _create_shop(self, name: str) -> None:
        self._create_collection(shop_collection(name), c.YNET_DIM, "shop", 2 * 4 * (2 * c.YNET_DIM + c.REGION_COUNT))

    def _create_collection(self, name: str, dim: int, blob_field: str, blob_length: int) -> None:
        """A collection of one row per image: its id, one vector, the filter fields, and a base64
        text field of what search needs back (`blob_field`)."""
        assert self.client is not None
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=128)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("title", DataType.VARCHAR, max_length=4096)
        schema.add_field(
            "keyword_texts",
            DataType.ARRAY,
            element_type=DataType.VARCHAR,
            max_capacity=MAX_KEYWORDS,
            max_length=4 * MAX_KEYWORD_CHARS,
        )
        schema.add_field("keywords", DataType.JSON)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field(
            "metadata_keys", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=256, max_length=1024
        )
        schema.add_field("numbers", DataType.JSON)
        schema.add_field(
            "number_keys", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=256, max_length=1024
        )
        schema.add_field(blob_field, DataType.VARCHAR, max_length=blob_length)
        index_params = self.client.prepare_index_params()
        index_params.add_index(
            "embedding", index_type="HNSW", metric_type="COSINE", params={"M": 16, "efConstruction": 128}
        )
        self.client.create_collection(name, schema=schema, index_params=index_params, consistency_level=CONSISTENCY)

    async def close(self) -> None:
        if self.client is not None:
            await self._run(self.client.close)
        self.executor.shutdown(wait=False)

    async def healthy(self) -> bool:
        assert self.client is not None
        try:
            return bool(await self._run(self.client.has_collection, self.default_collection))
        except Unavailable as error:
            log.warning("index not healthy: %s", error)
            return False

    # --- collections -----------------------------------------------------------------------------

    async def _require(self, collection: str) -> None:
        if collection in self.known:
            return
        assert self.client is not None
        if not await self._run(self.client.has_collection, collection):
            raise NotFound(f"collection {collection!r} does not exist")
        await self._run(self.client.load_collection, collection)
        if not await self._run(self.client.has_collection, shop_collection(collection)):
            await self._run(self._create_shop, collection)
        await self._run(self.client.load_collection, shop_collection(collection))
        self.known.add(collection)

    async def collections(self) -> list[str]:
        assert self.client is not None
        return sorted(n for n in await self._run(self.client.list_collections) if not n.startswith(SHOP_PREFIX))

    async def create_collection(self, name: str) -> bool:
        assert self.client is not None
        if await self._run(self.client.has_collection, name):
            return False
        await self._run(self._create, name)
        self.known.add(name)
        return True

    async def drop_collection(self, name: str) -> int:
        await self._require(name)
        count = await self.count(name)
        assert self.client is not None
        await self._run(self.client.drop_collection, name)
        if await self._run(self.client.has_collection, shop_collection(name)):
            await self._run(self.client.drop_collection, shop_collection(name))
        self.known.discard(name)
        return count

    # --- writes ----------------------------------------------------------------------------------

    async def upsert(self, collection: str, records: list[Record]) -> None:
        await self._require(collection)
        rows, shop_rows = [], []
        for r in records:
            numbers = {k: n for k, v in r.metadata.items() if (n := metadata_number(v)) is not None}
            fields = {
                "id": r.id,
                "title": r.title,
                "keyword_texts": [k[0] for k in r.keywords][:MAX_KEYWORDS],
                "keywords": {"list": [[k[0], float(k[1]), int(k[2])] for k in r.keywords][:MAX_KEYWORDS]},
                "metadata": dict(r.metadata),
                "metadata_keys": sorted(r.metadata),
                "numbers": numbers,
                "number_keys": sorted(numbers),
            }
            rows.append(
                fields
                | {
                    "embedding": np.asarray(r.embedding, dtype=np.float32).tolist(),
                    "features": encode_features(r.regions, r.region_scales),
                }
            )
            if r.shop is not None:
                shop_rows.append(
                    fields
                    | {
                        "embedding": np.asarray(r.shop.embedding, dtype=np.float32).tolist(),
                        "shop": encode_shop(r.shop),
                    }
                )
        assert self.client is not None
        await self._run(self.client.upsert, collection, rows)
        if shop_rows:
            await self._run(self.client.upsert, shop_collection(collection), shop_rows)
        without = [r.id for r in records if r.shop is None]
        if without:  # a replaced image that had cross-domain features loses them
            await self._run(self.client.delete, shop_collection(collection), ids=without)

    async def delete(self, collection: str, ids: list[str]) -> list[str]:
        present = list(await self.get(collection, ids, with_features=False))
        if present:
            assert self.client is not None
            for name in (collection, shop_collection(collection)):
                await self._run(self.client.delete, name, ids=present)
            for name in (collection, shop_collection(collection)):
                left = await self._run(
                    self.client.query,
                    name,
                    filter=f"id in {_strings(present)}",
                    output_fields=["id"],
                    consistency_level="Strong",
                )
                if left:
                    raise Unavailable(f"index (milvus) still holds {len(left)} deleted ids; retry the Delete")
        return [i for i in ids if i in set(present)]

    # --- reads -----------------------------------------------------------------------------------

    async def count(self, collection: str) -> int:
        await self._require(collection)
        assert self.client is not None
        rows = await self._run(
            self.client.query, collection, filter="", output_fields=["count(*)"], consistency_level="Strong"
        )
        return int(rows[0]["count(*)"])

    async def ann_mode(self, collection: str) -> str:
        return "hnsw"

    async def search(
        self, collection: str, vector: np.ndarray, limit: int, condition: Filter, with_features: bool = False
    ) -> list[Hit]:
        return await self._search(collection, vector, limit, filter_expression(condition), with_features)

    async def search_shop(self, collection: str, vector: np.ndarray, limit: int, condition: Filter) -> list[Hit]:
        return await self._search(collection, vector, limit, filter_expression(condition), False, shop=True)

    async def _search(
        self, collection: str, vector: np.ndarray, limit: int, expression: str, with_features: bool, shop: bool = False
    ) -> list[Hit]:
        await self._require(collection)
        assert self.client is not None
        fields = HIT_FIELDS + (["features"] if with_features else []) + (["shop"] if shop else [])
        result = await self._run(
            self.client.search,
            shop_collection(collection) if shop else collection,
            [np.asarray(vector, dtype=np.float32).tolist()],
            anns_field="embedding",
            limit=limit,
            filter=expression,
            output_fields=fields,
            search_params={"metric_type": "COSINE", "params": {"ef": max(self.ef_search, limit)}},
            consistency_level=CONSISTENCY,
        )
        hits = []
        for h in result[0]:
            entity = h["entity"]
            hit = Hit(
                h["id"],
                float(h["distance"]),
                entity.get("title", ""),
                entity.get("metadata") or {},
                _keywords(entity.get("keywords")),
            )
            if with_features:
                hit.regions, hit.region_scales = decode_features(entity["features"])
            if shop:
                hit.shop = decode_shop(entity["shop"])
            hits.append(hit)
        return hits

    async def keyword_search(
        self, collection: str, vector: np.ndarray, text: str, limit: int, condition: Filter, with_features: bool = False
    ) -> list[Hit]:
        """Milvus 2.3 has no full-text search: images having any of the query's words as a keyword,
        ranked by the vector (on Milvus 2.5+, its BM25 function would be the engine's own)."""
        terms = sorted({t for t in re.findall(r"\w+", text.lower()) if len(t) > 1})
        if not terms:
            return []
        expression = filter_expression(condition)
        any_term = f"array_contains_any(keyword_texts, {_strings(terms)})"
        combined = f"({any_term}) and ({expression})" if expression else any_term
        return await self._search(collection, vector, limit, combined, with_features)

    # --- columnar candidates (the search path) ---------------------------------------------------

    keyword_needs_vector = True
    """Milvus 2.3's keyword route ranks by the vector: it waits for the query's encoding."""

    async def keyword_candidates(
        self, collection: str, text: str, limit: int, condition: Filter, vector: np.ndarray | None = None
    ) -> np.ndarray:
        assert vector is not None, "the Milvus keyword route ranks by the query vector"
        hits = await self.keyword_search(collection, vector, text, limit, condition)
        return np.asarray([h.id for h in hits], dtype=object)

    async def vector_candidates(
        self,
        collection: str,
        vector: np.ndarray,
        limit: int,
        condition: Filter,
        extra_keys: np.ndarray | None = None,
        merge: Merge | None = None,
    ) -> Candidates:
        nearest = hit_candidates(await self.search(collection, vector, limit, condition, with_features=True))
        if extra_keys is None:
            return nearest
        extra = np.asarray(extra_keys, dtype=object)
        keys = np.asarray((merge or ranking_then_rest)(nearest.keys, extra), dtype=object)
        ranked = np.isin(keys, nearest.keys)
        missing = await self.candidate_features(collection, keys[~ranked], vector)
        joined = Candidates.concat([nearest, missing])
        return joined.take(positions_of(joined.keys, keys))

    async def vector_candidates_many(
        self,
        collection: str,
        vectors: np.ndarray,
        limit: int,
        extra_keys: list[np.ndarray | None],
        merges: list[Merge | None],
    ) -> list[Candidates]:
        """One vector_candidates() per query: this engine shares no read between them."""
        return [
            await self.vector_candidates(collection, vector, limit, Filter(), extra, merge)
            for vector, extra, merge in zip(vectors, extra_keys, merges, strict=True)
        ]

    async def candidate_features(self, collection: str, keys: np.ndarray, vector: np.ndarray) -> Candidates:
        ids = [str(k) for k in keys]
        records = await self.get(collection, ids, with_features=True)
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        hits = []
        for i in ids:
            record = records.get(i)
            if record is not None:
                score = float(record.embedding @ query)
                hits.append(Hit(i, score, "", {}, record.keywords, record.regions, record.region_scales))
        return hit_candidates(hits)

    async def describe(self, collection: str, keys: np.ndarray) -> list[Described | None]:
        ids = [str(k) for k in keys]
        records = await self.get(collection, ids, with_features=False) if ids else {}
        return [Described(i, records[i].title, records[i].metadata) if i in records else None for i in ids]

    async def get(
        self, collection: str, ids: list[str], with_features: bool, with_thumbnails: bool = False
    ) -> dict[str, Record]:
        """`with_thumbnails` is accepted and answered with none: this engine keeps no thumbnails."""
        await self._require(collection)
        assert self.client is not None
        fields = ["title", "keywords", "metadata"] + (["embedding", "features"] if with_features else [])
        records = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await self._run(
                self.client.query,
                collection,
                filter=f"id in {_strings(chunk)}",
                output_fields=fields,
                consistency_level=CONSISTENCY,
            )
            shops = {}
            if with_features:
                shops = {
                    row["id"]: decode_shop(row["shop"])
                    for row in await self._run(
                        self.client.query,
                        shop_collection(collection),
                        filter=f"id in {_strings(chunk)}",
                        output_fields=["shop"],
                        consistency_level=CONSISTENCY,
                    )
                }
            for row in rows:
                if with_features:
                    regions, scales = decode_features(row["features"])
                    embedding = np.asarray(row["embedding"], dtype=np.float32)
                else:
                    regions, scales, embedding = np.zeros(0, np.int8), np.zeros(0, np.float32), np.zeros(0, np.float32)
                records[row["id"]] = Record(
                    row["id"],
                    embedding,
                    regions,
                    scales,
                    row.get("title", ""),
                    _keywords(row.get("keywords")),
                    row.get("metadata") or {},
                    shops.get(row["id"]),
                )
        return records


def _collection_missing(error: MilvusException) -> bool:
    """Milvus 2.3's CollectionNotExists (code 100), e.g. a collection dropped by another gateway."""
    return error.code == 100 or "collection not found" in str(error.message)


def _keywords(value) -> list[tuple[str, float, int]]:
    """Milvus 2.3 JSON fields hold objects only: the keyword list is stored as {"list": [...]}."""
    return [(str(k[0]), float(k[1]), int(k[2])) for k in (value or {}).get("list", [])]


def hit_candidates(hits: list[Hit]) -> Candidates:
    """Columns of hits read with their features (this engine stores them per row, not packed)."""
    if not hits:
        return Candidates.empty(object)
    dictionary: dict[str, int] = {}
    slots = [slot_columns(usable_keywords(h.keywords), dictionary) for h in hits]
    return Candidates(
        np.asarray([h.id for h in hits], dtype=object),
        np.asarray([h.ann_score for h in hits], dtype=np.float32),
        np.stack([np.asarray(h.regions) for h in hits]).astype(np.int8),
        np.stack([np.asarray(h.region_scales) for h in hits]).astype(np.float32),
        np.stack([ids for ids, _ in slots]),
        np.stack([confidences for _, confidences in slots]),
        np.asarray(list(dictionary), dtype=object),
    )
