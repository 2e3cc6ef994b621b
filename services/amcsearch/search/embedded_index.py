"""The embedded index engine, the local default: SQLite as the store of record, usearch HNSW and
numpy for vector search, all inside the gateway process (no port, no second process).

Why (docs/decisions/0001-index-engine.md has the measurements): SQLite gives durable, atomic
writes (WAL, synchronous=FULL: an acknowledged Index survives kill -9 and power loss), one
transaction for an item and everything that belongs to it, bound parameters for every filter
value (nothing a caller sends is spliced into a query). The vector side (vector_index.py) and
keyword retrieval (keyword_index.py) are derived state, rebuilt or patched at start. A search
reads its candidates' rescoring features as a few packed blobs per row (regions, scales, keyword
slots as dictionary ids and confidences), prepared once at index time.

One gateway process owns a store file at a time (an exclusive lock beside it); running several
gateways means the Milvus server engine (milvus_index.py), which has the same interface.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import numpy as np

from amcsearch.runtime import contract as c
from amcsearch.runtime.errors import NotFound, Unavailable
from amcsearch.search import derived
from amcsearch.search.feature_cache import FeatureCache
from amcsearch.search.keyword_index import KeywordIndex
from amcsearch.search.records import (
    Candidates,
    Described,
    Filter,
    Hit,
    Merge,
    MetadataClause,
    MetadataFilter,
    Record,
    Shop,
    locate,
    metadata_number,
    ranking_then_rest,
    slot_columns,
    usable_keywords,
)
from amcsearch.search.store_files import StoreFiles
from amcsearch.search.vector_index import VectorIndex

log = logging.getLogger(__name__)

SCHEMA_VERSION = "4"
"""4: each item's rescoring keyword slots packed beside its regions (keyword_ids,
keyword_confidences) with a store-wide keyword dictionary; keyword retrieval in keyword_index.py
(3's FTS5 table is dropped). A version 3 store is migrated when it opens."""
SCHEMA = """
CREATE TABLE IF NOT EXISTS store_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS collections (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    embedding BLOB NOT NULL,
    regions BLOB NOT NULL,
    region_scales BLOB NOT NULL,
    title TEXT NOT NULL,
    keywords TEXT NOT NULL,
    metadata TEXT NOT NULL,
    keyword_ids BLOB,
    keyword_confidences BLOB,
    thumbnail BLOB,
    UNIQUE (collection, id)
);
CREATE TABLE IF NOT EXISTS keyword_dictionary (id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS item_keywords (
    text TEXT NOT NULL, row INTEGER NOT NULL, PRIMARY KEY (text, row)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS item_keywords_by_row ON item_keywords (row);
CREATE TABLE IF NOT EXISTS item_metadata (
    key TEXT NOT NULL, value TEXT NOT NULL, row INTEGER NOT NULL, number REAL,
    PRIMARY KEY (key, value, row)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS item_metadata_by_row ON item_metadata (row);
CREATE INDEX IF NOT EXISTS item_metadata_by_number ON item_metadata (key, number);
CREATE TABLE IF NOT EXISTS item_shop (row INTEGER PRIMARY KEY, features BLOB NOT NULL);
"""
SHOP_SNAPSHOT = "shop.hnsw"
GENERATION_SUFFIX = ".generation"
"""A file beside the store with the generation of its last acknowledged write (see _commit)."""


class SqlFilter:
    """A Filter as SQL over `items` with bound parameters: values never become SQL text."""

    def __init__(self) -> None:
        self.sql: list[str] = []
        self.params: list[object] = []

    @classmethod
    def compile(cls, collection: str, condition: Filter) -> SqlFilter:
        compiled = cls()
        compiled.add("collection = ?", collection)
        for keyword in condition.keywords:
            compiled.add("row IN (SELECT row FROM item_keywords WHERE text = ?)", keyword)
        if condition.within_ids:
            compiled.add(f"id IN ({', '.join('?' * len(condition.within_ids))})", *condition.within_ids)
        if condition.exclude_ids:
            compiled.add(f"id NOT IN ({', '.join('?' * len(condition.exclude_ids))})", *condition.exclude_ids)
        if condition.metadata is not None:
            sql, params = _metadata_sql(condition.metadata)
            compiled.add(sql, *params)
        return compiled

    def add(self, sql: str, *params: object) -> None:
        self.sql.append(sql)
        self.params.extend(params)

    @property
    def where(self) -> str:
        return " AND ".join(f"({s})" for s in self.sql)


def _clause_sql(clause: MetadataClause) -> tuple[str, list[object]]:
    params: list[object]
    head = "row IN (SELECT row FROM item_metadata WHERE key = ?"
    if clause.op == "exists":
        return head + ")", [clause.key]
    if clause.op in ("eq", "in"):
        return head + f" AND value IN ({', '.join('?' * len(clause.values))}))", [clause.key, *clause.values]
    if clause.op == "range":
        sql, params = head + " AND number IS NOT NULL", [clause.key]
        if clause.lower is not None:
            sql += " AND number >= ?" if clause.lower_inclusive else " AND number > ?"
            params.append(clause.lower)
        if clause.upper is not None:
            sql += " AND number <= ?" if clause.upper_inclusive else " AND number < ?"
            params.append(clause.upper)
        return sql + ")", params
    raise ValueError(f"unknown metadata operator {clause.op!r}")


def _metadata_sql(group: MetadataFilter) -> tuple[str, list[object]]:
    parts: list[str] = []
    params: list[object] = []
    for clause in group.clauses:
        sql, values = _clause_sql(clause)
        parts.append(sql)
        params.extend(values)
    for nested in group.groups:
        sql, values = _metadata_sql(nested)
        parts.append(sql)
        params.extend(values)
    if not parts:
        return "1", []
    joiner = " AND " if group.op == "and" else " OR "
    return joiner.join(f"({p})" for p in parts), params


class EmbeddedIndex:
    backend = "embedded"

    def __init__(
        self,
        path: str | Path,
        default_collection: str,
        hnsw_min_rows: int = 20_000,
        ef_search: int = 256,
        read_cache_mib: int = 128,
        reads_on_loop: bool = True,
        keyword_share: str = "full",
        feature_cache_mib: int = 1024,
    ) -> None:
        self.read_cache_mib = read_cache_mib
        self.reads_on_loop = reads_on_loop
        """Reads run on the event loop (a Search's are ~2 ms of numpy and SQLite that hold the GIL
        anyway): measured at 10k and 16 callers, 7.1 ms of gateway CPU per Search and 80 Searches/s
        against 7.9-8.2 ms and 73/s through a reader thread, whose hand-offs cost more than they
        overlap. Writes keep their thread (fsync)."""
        self.keyword_share = keyword_share
        """"coverage": the keyword route returns limit x KeywordIndex.coverage(text) images, so a
        query the keywords barely know leaves its candidate slots to the vector route; "full":
        always `limit`."""
        self.path = Path(path)
        self.default_collection = default_collection
        self.hnsw_min_rows = hnsw_min_rows
        self.ef_search = ef_search
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-write")
        self.reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-read")
        self._write_db: sqlite3.Connection | None = None
        self._read_db: sqlite3.Connection | None = None
        self._lock_file: TextIO | None = None
        self.vectors: dict[str, VectorIndex] = {}
        self.shop_vectors: dict[str, VectorIndex] = {}
        """Per collection, the cross-domain (TagYNet) vectors of the items that have them."""
        self.generation = 0
        self.keywords: dict[str, KeywordIndex] = {}
        """Per collection, BM25 keyword retrieval (keyword_index.py), derived from the store."""
        self.keyword_lock = threading.Lock()
        """Keyword indexes change in the writer thread and are read in the reader thread."""
        self.feature_cache = FeatureCache(feature_cache_mib)
        """Candidate columns by store row (feature_cache.py), warmed in the background at open."""
        self._warming: threading.Thread | None = None
        self._stop_warming = threading.Event()
        self.keyword_dictionary: dict[str, int] = {}
        """Every keyword text of the store -> its id in items.keyword_ids."""
        self.keyword_texts = np.zeros(0, dtype=object)
        """id -> text; replaced (never changed in place) when texts are added."""
        self.store_id = ""
        """The store's identity (store_info 'store_id'): what its derived files name as their source."""
        self._files: StoreFiles | None = None
        self._fault: str | None = None
        """Why the store is no longer trusted while the gateway runs (health NOT_SERVING, writes refused)."""
        self._reads_refused = False
        """Reads refused too: the store's bytes are damaged (not only a file gone, whose content
        SQLite still holds open and the rescue checkpoint copied)."""

    # --- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._write(self._open)
        if self.feature_cache.capacity:
            self._warming = threading.Thread(target=self._warm_features, name="feature-warm", daemon=True)
            self._warming.start()

    def _warm_features(self, chunk: int = 1000) -> None:
        """Fills the feature cache from the store in the background, oldest rows first, up to its
        budget: after a restart, Searches read their candidates from memory from the start
        instead of one SQLite read each (at 100k images: ann 4.8 ms at concurrency 1 cold).
        Its own connection; a pause between chunks leaves the event loop the GIL."""
        started, last = time.monotonic(), 0
        db = self._connect()
        try:
            while not self._stop_warming.is_set() and len(self.feature_cache) < self.feature_cache.capacity:
                epoch = self.feature_cache.epoch
                rows = db.execute(
                    f"SELECT {PACKED_COLUMNS} FROM items WHERE row > ? ORDER BY row LIMIT ?", (last, chunk)
                ).fetchall()
                if not rows:
                    break
                read = _packed(rows)
                self.feature_cache.put(epoch, *read)
                last = int(read[0][-1])
                self._stop_warming.wait(0.002)
        except sqlite3.Error as error:
            log.warning("feature cache not warmed past row %d: %s", last, error)
        finally:
            db.close()
        log.info("feature cache: %d images in memory after %.1fs", len(self.feature_cache), time.monotonic() - started)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # held open (and locked) for the process's life: the lock is what keeps a second gateway out
        self._lock_file = open(self.path.with_name(self.path.name + ".lock"), "w")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise Unavailable(
                f"another process holds the index at {self.path}: one gateway per index file; "
                "run several gateways on the Milvus server engine"
            ) from error
        self._write_db = self._connect()
        self._write_db.executescript(SCHEMA)
        version = self._write_db.execute("SELECT value FROM store_info WHERE key = 'schema'").fetchone()
        if version is None:
            self._write_db.execute("INSERT INTO store_info VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif version[0] == "3":
            self._migrate_from_3()
        elif version[0] == SCHEMA_VERSION:
            self._add_missing_columns(self._write_db)
        elif version[0] != SCHEMA_VERSION:
            raise Unavailable(
                f"index at {self.path} has schema version {version[0]}, this server reads "
                f"{SCHEMA_VERSION}: re-index into a new INDEX_URI"
            )
        self._write_db.execute("INSERT OR IGNORE INTO store_info VALUES ('generation', '0')")
        self._write_db.execute("INSERT OR IGNORE INTO store_info VALUES ('store_id', ?)", (uuid.uuid4().hex,))
        self.store_id = self._write_db.execute("SELECT value FROM store_info WHERE key = 'store_id'").fetchone()[0]
        self._write_db.execute(
            "INSERT OR IGNORE INTO collections VALUES (?, ?)", (self.default_collection, time.time())
        )
        self.generation = int(
            self._write_db.execute("SELECT value FROM store_info WHERE key = 'generation'").fetchone()[0]
        )
        recorded = read_generation(self.generation_path)
        if recorded is not None and recorded > self.generation:
            raise Unavailable(
                f"the index at {self.path} is at write {self.generation} but write {recorded} was acknowledged: "
                f"{recorded - self.generation} acknowledged writes are missing (a damaged write-ahead log?). Refusing "
                "to serve an index that could show deleted items again; restore it from a backup, or run "
                "`make check-index ACCEPT_LOSS=1` to serve it as it is"
            )
        write_generation(self.generation_path, self.generation)
        self._fill_keyword_slots()
        self._read_db = self._connect()
        # A Search reads ~150 rows of ~5 KB (packed candidate columns); SQLite's default 2 MiB
        # page cache made each read parse pages again: 0.95 ms at 10k against 0.45 ms warm in
        # 128 MiB. Not mmap: a store file truncated under the gateway would then crash it (SIGBUS).
        self._read_db.execute(f"PRAGMA cache_size = -{self.read_cache_mib * 1024}")
        self._read_db.execute("SELECT count(*) FROM store_info").fetchone()  # the read side opens the log too
        self._files = StoreFiles(self.path, self._write_db.execute("PRAGMA page_size").fetchone()[0])
        self._files.seal()
        self._load_vectors()
        self._load_keywords()

    def _migrate_from_3(self) -> None:
        """Schema 3 -> 4 in place: the keyword slot columns (filled by _fill_keyword_slots, in
        the same start) and no FTS5 table. Nothing indexed is lost: the slots are derived from
        each item's stored keywords."""
        db = self._write_db
        assert db is not None
        log.info("index %s: migrating schema 3 -> 4 (packed keyword slots, keyword engine)", self.path)
        db.execute("BEGIN IMMEDIATE")
        try:
            self._add_missing_columns(db)
            db.execute("DROP TABLE IF EXISTS item_text")
            db.execute("UPDATE store_info SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @staticmethod
    def _add_missing_columns(db: sqlite3.Connection) -> None:
        """Schema 4's item columns that an older store lacks (thumbnails came after the first
        schema 4 stores): added empty, never rewritten."""
        columns = {r[1] for r in db.execute("PRAGMA table_info(items)")}
        for column in ("keyword_ids", "keyword_confidences", "thumbnail"):
            if column not in columns:
                db.execute(f"ALTER TABLE items ADD COLUMN {column} BLOB")

    def _fill_keyword_slots(self) -> None:
        """Items without packed keyword slots (a migrated store) get them, in batches."""
        db = self._write_db
        assert db is not None
        self._load_dictionary()
        missing = db.execute("SELECT count(*) FROM items WHERE keyword_ids IS NULL").fetchone()[0]
        if not missing:
            return
        log.info("index %s: packing keyword slots of %d items", self.path, missing)
        while True:
            rows = db.execute("SELECT row, keywords FROM items WHERE keyword_ids IS NULL LIMIT 5000").fetchall()
            if not rows:
                return
            with self._transaction() as tx:
                known = len(self.keyword_dictionary)
                packed = [(*self._slots(_keywords(keywords)), row) for row, keywords in rows]
                self._store_dictionary(tx, known)
                tx.executemany("UPDATE items SET keyword_ids = ?, keyword_confidences = ? WHERE row = ?", packed)

    def _load_dictionary(self) -> None:
        db = self._write_db
        assert db is not None
        texts = [t for (t,) in db.execute("SELECT text FROM keyword_dictionary ORDER BY id")]
        self.keyword_dictionary = {t: i for i, t in enumerate(texts)}
        self.keyword_texts = np.asarray(texts, dtype=object)

    def _slots(self, keywords: list[tuple[str, float, int]]) -> tuple[bytes, bytes]:
        """An item's packed keyword slots (dictionary ids and confidences); new texts join the
        in-memory dictionary (stored by _store_dictionary in the same transaction)."""
        ids, confidences = slot_columns(usable_keywords(keywords), self.keyword_dictionary)
        return ids.astype("<i4").tobytes(), confidences.astype("<f4").tobytes()

    def _store_dictionary(self, db: sqlite3.Connection, known: int) -> None:
        """Store the texts added to the dictionary since it held `known`, and publish them to
        readers before the items that use them commit."""
        if len(self.keyword_dictionary) == known:
            return
        new = list(self.keyword_dictionary)[known:]
        db.executemany("INSERT INTO keyword_dictionary VALUES (?, ?)", [(known + i, t) for i, t in enumerate(new)])
        self.keyword_texts = np.concatenate([self.keyword_texts, np.asarray(new, dtype=object)])

    def _load_keywords(self) -> None:
        """Every collection's keyword index, from the stored keywords (derived state)."""
        assert self._write_db is not None
        started = time.monotonic()
        by_collection: dict[str, tuple[list[int], list[list[str]]]] = {n: ([], []) for n in self.vectors}
        for collection, row, keywords in self._write_db.execute(
            "SELECT collection, row, keywords FROM items ORDER BY row"
        ):
            rows, texts = by_collection.setdefault(collection, ([], []))
            rows.append(row)
            texts.append([t for t, _, _ in _keywords(keywords)])
        for name, (rows, texts) in by_collection.items():
            index = KeywordIndex()
            index.add(rows, texts)
            index.warm()
            self.keywords[name] = index
        log.info("index %s: keyword indexes built in %.1fs", self.path, time.monotonic() - started)

    def _new_vector_index(self) -> VectorIndex:
        return VectorIndex(c.EMBEDDING_DIM, self.hnsw_min_rows, self.ef_search)

    def _new_shop_index(self) -> VectorIndex:
        return VectorIndex(c.YNET_DIM, self.hnsw_min_rows, self.ef_search)

    def _snapshot_path(self, collection: str, suffix: str = "hnsw") -> Path:
        return self.path.with_name(f"{self.path.name}.{collection}.{suffix}")

    def _load_vectors(self) -> None:
        assert self._write_db is not None
        started = time.monotonic()
        names = [r[0] for r in self._write_db.execute("SELECT name FROM collections")]
        for name in names:
            self.vectors[name] = self._loaded(
                self._new_vector_index(),
                "SELECT row, embedding FROM items WHERE collection = ? ORDER BY row",
                name,
                self._snapshot_path(name),
                lambda blob: np.frombuffer(blob, dtype="<f4"),
            )
            self.shop_vectors[name] = self._loaded(
                self._new_shop_index(),
                "SELECT s.row, s.features FROM item_shop s JOIN items i ON i.row = s.row"
                " WHERE i.collection = ? ORDER BY s.row",
                name,
                self._snapshot_path(name, SHOP_SNAPSHOT),
                lambda blob: Shop.unpack(blob).embedding,
            )
        log.info(
            "index %s: %d collections, %d vectors loaded in %.1fs",
            self.path,
            len(names),
            sum(v.count for v in self.vectors.values()),
            time.monotonic() - started,
        )

    def _loaded(self, index: VectorIndex, query: str, collection: str, snapshot: Path, vector_of) -> VectorIndex:
        """`index` filled with the (row, blob) rows of `query`, its graph restored from `snapshot`
        when that is current, else rebuilt."""
        assert self._write_db is not None
        batch_keys, batch_vectors = [], []
        for row, blob in self._write_db.execute(query, (collection,)):
            batch_keys.append(row)
            batch_vectors.append(vector_of(blob))
            if len(batch_keys) == 10_000:
                self._add_loaded(index, batch_keys, batch_vectors)
                batch_keys, batch_vectors = [], []
        self._add_loaded(index, batch_keys, batch_vectors)
        if not self._restored(index, collection, snapshot):
            index.ensure_graph()
        return index

    def _restored(self, index: VectorIndex, collection: str, snapshot: Path) -> bool:
        """Whether `index` got its graph from `snapshot`: only a snapshot whose record says it was
        derived from this store and collection, not ahead of it, with its bytes intact."""
        if index.count < self.hnsw_min_rows or not snapshot.exists():
            return False
        source, why = derived.verify(snapshot, self.store_id, collection, self.generation, self._max_row())
        if source is None:
            log.warning("HNSW snapshot %s not used: %s; rebuilding the graph from the store", snapshot, why)
            return False
        return index.restore_graph(snapshot, source.rows)

    def _max_row(self) -> int:
        """The highest row id the store has issued (AUTOINCREMENT: never reused)."""
        assert self._write_db is not None
        row = self._write_db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _add_loaded(index: VectorIndex, keys: list[int], vectors: list[np.ndarray]) -> None:
        if keys:
            index.add(np.asarray(keys), np.stack(vectors), build_graph=False)  # one graph build, after loading

    async def close(self) -> None:
        self._stop_warming.set()
        if self._warming is not None:
            self._warming.join()
        await self._write(self._close)
        self.writer.shutdown(wait=True)
        self.reader.shutdown(wait=True)

    def _close(self) -> None:
        if self._fault is None:
            self._save_snapshots()
        else:
            log.warning("HNSW snapshots not saved: the store is not trusted (%s)", self._fault)
        for db in (self._read_db, self._write_db):
            if db is not None:
                db.close()
        if self._lock_file is not None:
            self._lock_file.close()

    def _save_snapshots(self) -> None:
        """Each collection's graph (built from the store, or a verified snapshot patched to it),
        with the record of what it was derived from."""
        snapshots = [(n, self._snapshot_path(n), v) for n, v in self.vectors.items()] + [
            (n, self._snapshot_path(n, SHOP_SNAPSHOT), v) for n, v in self.shop_vectors.items()
        ]
        max_row = self._max_row()
        for name, path, index in snapshots:
            with index.lock:
                if index.graph is None or index.mode != "hnsw":
                    continue
                source = derived.Source(self.store_id, name, self.generation, max_row, len(index.graph))
                try:
                    derived.save(path, index.save_graph, source)
                except (OSError, RuntimeError) as error:
                    log.warning("HNSW snapshot %s not saved: %s", path, error)

    async def _write(self, function, *args):
        return await self._run(self.writer, function, *args)

    async def _read(self, function, *args):
        if self._reads_refused:
            raise Unavailable(self._refusal())
        return await self._run(self.reader, function, *args)

    async def _run(self, executor: ThreadPoolExecutor, function, *args):
        loop = asyncio.get_running_loop()
        try:
            if executor is self.reader and self.reads_on_loop:
                return function(*args)
            return await loop.run_in_executor(executor, function, *args)
        except sqlite3.Error as error:
            if _damaged(error) and not self._reads_refused:
                self._fault = self._fault or f"the index file {self.path} is damaged ({error})"
                self._reads_refused = True
                log.error("index not trusted from now on: %s", self._fault)
            raise Unavailable(f"index ({self.backend}) failed: {error}") from error

    @property
    def generation_path(self) -> Path:
        return self.path.with_name(self.path.name + GENERATION_SUFFIX)

    @contextmanager
    def _transaction(self):
        """One write transaction: BEGIN IMMEDIATE ... COMMIT, the store's generation counted up
        inside it, then recorded beside the store (written and fsynced, then renamed).

        At the next start a store whose generation is behind the recorded one lost acknowledged
        writes (a damaged write-ahead log is cut at the first bad frame, and a delete lost that
        way would bring the item back without a word): the engine refuses to open it."""
        self._check_store()
        db = self._write_db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("UPDATE store_info SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            generation = int(db.execute("SELECT value FROM store_info WHERE key = 'generation'").fetchone()[0])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._load_dictionary()  # texts added by the rolled-back writes are not in the store
            raise
        self.generation = generation
        write_generation(self.generation_path, generation)
        if self._files is None:
            return  # while opening: sealed once open
        try:
            self._files.seal()
        except OSError as error:  # committed, but its log cannot be read back: trust ends here
            self._fault = f"the write-ahead log of {self.path} cannot be read back ({error.strerror})"
            raise Unavailable(f"{self._fault}: the write may not be durable, retry it after a restart") from error

    def _check_store(self) -> None:
        """Refuse to write into a store whose files were deleted, replaced or overwritten under us
        (store_files.py). Once found, the fault stays until a restart: the store must be opened
        (and checked, `make check-index`) again before it is trusted."""
        if self._fault is None and self._files is not None and (found := self._files.problem()):
            self._fault, rescuable = found
            log.error("index not trusted from now on: %s", self._fault)
            if rescuable:
                self._rescue()
            else:
                self._reads_refused = True
        if self._fault is not None:
            raise Unavailable(self._refusal())

    def _refusal(self) -> str:
        if self._reads_refused:
            return f"{self._fault}; reads and writes are refused (restart the gateway after `make check-index`)"
        return f"{self._fault}; writes are refused (restart the gateway to open the store again)"

    def _rescue(self) -> None:
        """The log or its index was deleted or replaced, the store file was not: SQLite still has
        the old ones open, so copy the acknowledged writes into the store file (a restart keeps them)."""
        assert self._write_db is not None
        try:
            busy, frames, copied = self._write_db.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
        except sqlite3.Error as error:
            log.error("the acknowledged writes could not be copied into %s: %s", self.path, error)
            return
        log.warning("checkpoint into %s: %d of %d log frames copied (busy %d)", self.path, copied, frames, busy)

    async def healthy(self) -> bool:
        """The store's files are the ones opened, its log holds what was committed (checked on the
        writer thread, between commits), and a read of it answers."""

        def read() -> bool:
            assert self._read_db is not None
            self._read_db.execute("SELECT value FROM store_info WHERE key = 'generation'").fetchone()
            return True

        try:
            await self._write(self._check_store)
            return await self._read(read)
        except Unavailable as error:
            log.warning("index not healthy: %s", error)
            return False

    # --- collections -----------------------------------------------------------------------------

    def _vectors_of(self, collection: str) -> VectorIndex:
        index = self.vectors.get(collection)
        if index is None:
            raise NotFound(f"collection {collection!r} does not exist")
        return index

    async def collections(self) -> list[str]:
        return sorted(self.vectors)

    async def create_collection(self, name: str) -> bool:
        """True when it was created, False when it already existed."""

        def create() -> bool:
            with self._transaction() as db:
                created = bool(
                    db.execute("INSERT OR IGNORE INTO collections VALUES (?, ?)", (name, time.time())).rowcount
                )
            if created:
                self.vectors[name] = self._new_vector_index()
                self.shop_vectors[name] = self._new_shop_index()
                with self.keyword_lock:
                    self.keywords[name] = KeywordIndex()
            return created

        return await self._write(create)

    async def drop_collection(self, name: str) -> int:
        """Deletes the collection and its items; returns how many items it held."""

        def drop() -> int:
            self._vectors_of(name)
            with self._transaction() as db:
                rows = "SELECT row FROM items WHERE collection = ?"
                db.execute(f"DELETE FROM item_shop WHERE row IN ({rows})", (name,))
                db.execute(f"DELETE FROM item_keywords WHERE row IN ({rows})", (name,))
                db.execute(f"DELETE FROM item_metadata WHERE row IN ({rows})", (name,))
                count = db.execute("DELETE FROM items WHERE collection = ?", (name,)).rowcount
                db.execute("DELETE FROM collections WHERE name = ?", (name,))
            self.feature_cache.clear()
            self.vectors.pop(name, None)
            self.shop_vectors.pop(name, None)
            with self.keyword_lock:
                self.keywords.pop(name, None)
            derived.remove(self._snapshot_path(name))
            derived.remove(self._snapshot_path(name, SHOP_SNAPSHOT))
            return count

        return await self._write(drop)

    # --- writes ----------------------------------------------------------------------------------

    async def upsert(self, collection: str, records: list[Record]) -> None:
        await self._write(self._upsert, collection, records)

    def _upsert(self, collection: str, records: list[Record]) -> None:
        vectors = self._vectors_of(collection)
        shop_vectors = self.shop_vectors[collection]
        replaced, added, added_shop, packed = [], [], [], []
        with self._transaction() as db:
            known = len(self.keyword_dictionary)
            for r in records:
                old = db.execute("SELECT row FROM items WHERE collection = ? AND id = ?", (collection, r.id)).fetchone()
                if old is not None:
                    self._delete_row(db, old[0])
                    replaced.append(old[0])
                regions = np.asarray(r.regions, dtype=np.int8).tobytes()
                region_scales = np.asarray(r.region_scales, dtype="<f4").tobytes()
                slots = self._slots(r.keywords)
                cursor = db.execute(
                    "INSERT INTO items (collection, id, embedding, regions, region_scales, title, keywords, metadata,"
                    " keyword_ids, keyword_confidences, thumbnail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        collection,
                        r.id,
                        np.asarray(r.embedding, dtype="<f4").tobytes(),
                        regions,
                        region_scales,
                        r.title,
                        json.dumps([[t, float(conf), int(s)] for t, conf, s in r.keywords]),
                        json.dumps(r.metadata, sort_keys=True),
                        *slots,
                        r.thumbnail or None,
                    ),
                )
                row = cursor.lastrowid
                packed.append((row, regions, region_scales, *slots))  # PACKED_COLUMNS, as stored
                db.executemany(
                    "INSERT OR IGNORE INTO item_keywords VALUES (?, ?)", [(t, row) for t, _, _ in r.keywords]
                )
                db.executemany(
                    "INSERT INTO item_metadata VALUES (?, ?, ?, ?)",
                    [(k, v, row, metadata_number(v)) for k, v in r.metadata.items()],
                )
                if r.shop is not None:
                    db.execute("INSERT INTO item_shop VALUES (?, ?)", (row, r.shop.packed().tobytes()))
                    added_shop.append((row, r.shop.embedding))
                added.append((row, r.embedding))
            self._store_dictionary(db, known)
        self.feature_cache.forget(replaced)
        # Write-through, once committed: the new rows' first Searches read them from memory. A
        # gateway that had just indexed 100k images read nearly every candidate from SQLite
        # (ann 23 ms at concurrency 1, against 3 ms once restarted on the same index).
        self.feature_cache.put(self.feature_cache.epoch, *_packed(packed))
        vectors.remove(replaced)
        vectors.add(np.asarray([row for row, _ in added]), np.stack([e for _, e in added]))
        with self.keyword_lock:
            keywords = self.keywords.setdefault(collection, KeywordIndex())
            keywords.remove(replaced)
            keywords.add([row for row, _ in added], [[t for t, _, _ in r.keywords] for r in records])
        shop_vectors.remove(replaced)
        if added_shop:
            shop_vectors.add(np.asarray([row for row, _ in added_shop]), np.stack([e for _, e in added_shop]))

    @staticmethod
    def _delete_row(db: sqlite3.Connection, row: int) -> None:
        db.execute("DELETE FROM item_keywords WHERE row = ?", (row,))
        db.execute("DELETE FROM item_metadata WHERE row = ?", (row,))
        db.execute("DELETE FROM item_shop WHERE row = ?", (row,))
        db.execute("DELETE FROM items WHERE row = ?", (row,))

    async def delete(self, collection: str, ids: list[str]) -> list[str]:
        """Deletes the ids that exist; returns them."""

        def delete() -> list[str]:
            vectors = self._vectors_of(collection)
            with self._transaction() as db:
                found = self._rows_of(db, collection, ids)
                for row in found.values():
                    self._delete_row(db, row)
            self.feature_cache.forget(found.values())
            vectors.remove(found.values())
            self.shop_vectors[collection].remove(found.values())
            with self.keyword_lock:
                self.keywords[collection].remove(found.values())
            return [i for i in ids if i in found]

        return await self._write(delete)

    @staticmethod
    def _rows_of(db: sqlite3.Connection, collection: str, ids: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            query = f"SELECT id, row FROM items WHERE collection = ? AND id IN ({', '.join('?' * len(chunk))})"
            found.update(db.execute(query, (collection, *chunk)).fetchall())
        return found

    # --- reads -----------------------------------------------------------------------------------

    async def count(self, collection: str) -> int:
        def count() -> int:
            self._vectors_of(collection)
            assert self._read_db is not None
            return int(
                self._read_db.execute("SELECT count(*) FROM items WHERE collection = ?", (collection,)).fetchone()[0]
            )

        return await self._read(count)

    async def ann_mode(self, collection: str) -> str:
        return self._vectors_of(collection).mode

    async def search(
        self, collection: str, vector: np.ndarray, limit: int, condition: Filter, with_features: bool = False
    ) -> list[Hit]:
        return await self._read(self._search, collection, vector, limit, condition, with_features)

    def _search(
        self,
        collection: str,
        vector: np.ndarray,
        limit: int,
        condition: Filter,
        with_features: bool,
        shop: bool = False,
    ) -> list[Hit]:
        main = self._vectors_of(collection)
        vectors = self.shop_vectors[collection] if shop else main
        db = self._read_db
        assert db is not None
        allowed = None
        if not condition.empty:
            compiled = SqlFilter.compile(collection, condition)
            allowed = np.fromiter(
                (r[0] for r in db.execute(f"SELECT row FROM items WHERE {compiled.where}", compiled.params)),
                dtype=np.int64,
            )
        keys, scores = vectors.search(vector, limit, allowed)
        rows = self._rows(db, keys.tolist(), with_features, shop)
        return [
            self._hit(rows[key], float(score), with_features, shop)
            for key, score in zip(keys.tolist(), scores, strict=False)
            if key in rows
        ]  # a row deleted since the vector search is not a result

    async def search_shop(self, collection: str, vector: np.ndarray, limit: int, condition: Filter) -> list[Hit]:
        return await self._read(self._search, collection, vector, limit, condition, False, True)

    async def keyword_search(
        self, collection: str, vector: np.ndarray, text: str, limit: int, condition: Filter, with_features: bool = False
    ) -> list[Hit]:
        """BM25 over the indexed keywords of the query text's words (keyword_index.py), best
        first; each hit's ann_score is still the cosine of the query and its embedding."""
        return await self._read(self._keyword_search, collection, vector, text, limit, condition, with_features)

    def _keyword_search(
        self, collection: str, vector: np.ndarray, text: str, limit: int, condition: Filter, with_features: bool
    ) -> list[Hit]:
        keys = self._keyword_keys(collection, text, limit, condition)
        scores = self._vectors_of(collection).scores(keys, vector)
        db = self._read_db
        assert db is not None
        rows = self._rows(db, keys.tolist(), with_features)
        return [
            self._hit(rows[key], float(score), with_features)
            for key, score in zip(keys.tolist(), scores, strict=True)
            if key in rows
        ]

    def _allowed(self, collection: str, condition: Filter) -> np.ndarray | None:
        """The rows a non-empty filter lets through (None: no filter)."""
        if condition.empty:
            return None
        db = self._read_db
        assert db is not None
        compiled = SqlFilter.compile(collection, condition)
        return np.fromiter(
            (r[0] for r in db.execute(f"SELECT row FROM items WHERE {compiled.where}", compiled.params)),
            dtype=np.int64,
        )

    def _keyword_keys(self, collection: str, text: str, limit: int, condition: Filter) -> np.ndarray:
        self._vectors_of(collection)
        allowed = self._allowed(collection, condition)
        with self.keyword_lock:
            index = self.keywords.get(collection)
            if index is None:
                return np.zeros(0, np.int64)
            if self.keyword_share == "coverage":
                limit = int(round(limit * index.coverage(text)))
            keys, _ = index.search(text, limit, allowed)
        return keys

    # --- columnar candidates (the search path) ---------------------------------------------------

    keyword_needs_vector = False
    """Keyword candidates come from the text alone (they run while the query is encoded)."""

    async def keyword_candidates(
        self, collection: str, text: str, limit: int, condition: Filter, vector: np.ndarray | None = None
    ) -> np.ndarray:
        """Store rows of the best `limit` images by BM25 of `text`, best first."""
        return await self._read(self._keyword_keys, collection, text, limit, condition)

    async def vector_candidates(
        self,
        collection: str,
        vector: np.ndarray,
        limit: int,
        condition: Filter,
        extra_keys: np.ndarray | None = None,
        merge: Merge | None = None,
    ) -> Candidates:
        """The `limit` nearest images with their rescoring features, nearest first; with the
        keyword route's `extra_keys`, what `merge` picks of both (default: the nearest, then those
        of `extra_keys` not among them). Only the picked candidates' columns are gathered."""

        def nearest() -> Candidates:
            index = self._vectors_of(collection)
            found = index.search(vector, limit, self._allowed(collection, condition))
            return self._features(*_merged(index, vector, found, extra_keys, merge))

        return await self._read(nearest)

    async def vector_candidates_many(
        self,
        collection: str,
        vectors: np.ndarray,
        limit: int,
        extra_keys: list[np.ndarray | None],
        merges: list[Merge | None],
    ) -> list[Candidates]:
        """vector_candidates() of each query of a BatchSearch (no filter), in one read: one pass
        over the vectors for all the queries, then each query's picked candidates gathered."""

        def nearest_many() -> list[Candidates]:
            index = self._vectors_of(collection)
            found = index.search_many(vectors, limit)
            return [
                self._features(*_merged(index, v, f, extra, merge))
                for v, f, extra, merge in zip(vectors, found, extra_keys, merges, strict=True)
            ]

        return await self._read(nearest_many)

    async def candidate_features(self, collection: str, keys: np.ndarray, vector: np.ndarray) -> Candidates:
        """The rescoring features of `keys` (in that order), with the cosine of each to `vector`."""

        def read() -> Candidates:
            wanted = np.asarray(keys, dtype=np.int64)
            return self._features(wanted, self._vectors_of(collection).scores(wanted, vector))

        return await self._read(read)

    def _features(self, keys: np.ndarray, scores: np.ndarray) -> Candidates:
        """The packed columns of `keys`, in their order (a row deleted since its key was found is
        left out), with their ANN scores: gathered from memory (feature_cache.py), the rows not
        held yet read from the store in one query first and kept as the budget allows. No Python
        loop per candidate."""
        texts = self.keyword_texts  # taken before the rows: every id they hold is in it
        keys = np.asarray(keys, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        held, cached = self.feature_cache.lookup(keys)
        if held.all():
            return Candidates(keys, scores, *cached, texts)
        epoch = self.feature_cache.epoch  # before the read: a delete meanwhile keeps it out
        read_keys, *read = self._read_columns(np.unique(keys[~held]))
        self.feature_cache.put(epoch, read_keys, *read)
        held, cached = self.feature_cache.lookup(keys)
        if held.all():
            return Candidates(keys, scores, *cached, texts)
        # the budget is spent (or a row went meanwhile): join what is held with what was read
        rest = np.flatnonzero(~held)
        at, found = locate(read_keys, keys[rest])
        keep = held.copy()
        keep[rest[found]] = True

        def joined(from_memory: np.ndarray, from_store: np.ndarray) -> np.ndarray:
            column = np.empty((len(keys), *from_store.shape[1:]), dtype=from_store.dtype)
            column[held] = from_memory
            column[rest[found]] = from_store[at[found]]
            return column[keep]

        regions, region_scales, ids, confidences = (joined(a, b) for a, b in zip(cached, read, strict=True))
        return Candidates(keys[keep], scores[keep], regions, region_scales, ids, confidences, texts)

    def _read_columns(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(rows, regions, region_scales, keyword_ids, confidences) of the rows of `keys` that
        the store holds, in its order: the rows are transposed and joined in C."""
        db = self._read_db
        assert db is not None
        parts = []
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500].tolist()
            sql = f"SELECT {PACKED_COLUMNS} FROM items WHERE row IN ({', '.join('?' * len(chunk))})"
            parts.extend(db.execute(sql, chunk).fetchall())
        return _packed(parts)

    async def describe(self, collection: str, keys: np.ndarray) -> list[Described | None]:
        """Id, title and metadata of each key (None for one deleted meanwhile): the returned page."""

        def read() -> list[Described | None]:
            db = self._read_db
            assert db is not None
            wanted = [int(k) for k in keys]
            rows = {
                r[0]: Described(r[1], r[2], json.loads(r[3]))
                for r in db.execute(
                    f"SELECT row, id, title, metadata FROM items WHERE row IN ({', '.join('?' * len(wanted))})", wanted
                )
            }
            return [rows.get(k) for k in wanted]

        return await self._read(read) if len(keys) else []

    @staticmethod
    def _rows(db: sqlite3.Connection, rows: list[int], with_features: bool, shop: bool = False) -> dict[int, tuple]:
        columns = "i.row, i.id, i.title, i.metadata, i.keywords" + (
            ", i.regions, i.region_scales" if with_features else ""
        )
        source = "items i"
        if shop:
            columns += ", s.features"
            source = "items i JOIN item_shop s ON s.row = i.row"
        found: dict[int, tuple] = {}
        for start in range(0, len(rows), 500):
            chunk = rows[start : start + 500]
            query = f"SELECT {columns} FROM {source} WHERE i.row IN ({', '.join('?' * len(chunk))})"
            found.update((r[0], r) for r in db.execute(query, chunk))
        return found

    @staticmethod
    def _hit(row: tuple, score: float, with_features: bool, shop: bool = False) -> Hit:
        hit = Hit(row[1], score, row[2], json.loads(row[3]), _keywords(row[4]))
        if with_features:
            hit.regions = np.frombuffer(row[5], dtype=np.int8).reshape(c.REGION_COUNT, c.REGION_DIM)
            hit.region_scales = np.frombuffer(row[6], dtype="<f4")
        if shop:
            hit.shop = Shop.unpack(row[-1])
        return hit

    async def get(
        self, collection: str, ids: list[str], with_features: bool, with_thumbnails: bool = False
    ) -> dict[str, Record]:
        def get() -> dict[str, Record]:
            self._vectors_of(collection)
            db = self._read_db
            assert db is not None
            records = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                query = (
                    "SELECT i.id, i.title, i.keywords, i.metadata, i.embedding, i.regions, i.region_scales, s.features,"
                    f" {'i.thumbnail' if with_thumbnails else 'NULL'}"
                    " FROM items i LEFT JOIN item_shop s ON s.row = i.row"
                    f" WHERE i.collection = ? AND i.id IN ({', '.join('?' * len(chunk))})"
                )
                for row in db.execute(query, (collection, *chunk)):
                    records[row[0]] = Record(
                        row[0],
                        np.frombuffer(row[4], dtype="<f4") if with_features else np.zeros(0, np.float32),
                        np.frombuffer(row[5], dtype=np.int8).reshape(c.REGION_COUNT, c.REGION_DIM)
                        if with_features
                        else np.zeros(0, np.int8),
                        np.frombuffer(row[6], dtype="<f4") if with_features else np.zeros(0, np.float32),
                        row[1],
                        _keywords(row[2]),
                        json.loads(row[3]),
                        Shop.unpack(row[7]) if with_features and row[7] is not None else None,
                        bytes(row[8] or b""),
                    )
            return records

        return await self._read(get)


def _merged(
    index: VectorIndex,
    vector: np.ndarray,
    found: tuple[np.ndarray, np.ndarray],
    extra_keys: np.ndarray | None,
    merge: Merge | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(keys, cosine scores) of a search's candidates: the vector ranking `found`, or what
    `merge` picks of it and `extra_keys` (the keyword route's; default: the ranking, then those of
    `extra_keys` not in it), the picked keys outside the ranking scored against `vector`."""
    nearest = np.asarray(found[0], dtype=np.int64)
    scores = np.asarray(found[1], dtype=np.float32)
    if extra_keys is None:
        return nearest, scores
    extra = np.asarray(extra_keys, dtype=np.int64)
    keys = np.asarray((merge or ranking_then_rest)(nearest, extra), dtype=np.int64)
    at, ranked = locate(nearest, keys)
    picked_scores = np.empty(len(keys), dtype=np.float32)
    picked_scores[ranked] = scores[at[ranked]]
    if not ranked.all():
        picked_scores[~ranked] = index.scores(keys[~ranked], vector)
    return keys, picked_scores


PACKED_COLUMNS = "row, regions, region_scales, keyword_ids, keyword_confidences"
"""What a candidate is rescored with, as the store holds it (see _packed)."""


def _packed(rows: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows, regions, region_scales, keyword_ids, confidences) of rows of PACKED_COLUMNS: the
    rows are transposed and joined in C."""
    if not rows:
        empty = Candidates.empty()
        return empty.keys, empty.regions, empty.region_scales, empty.keyword_ids, empty.confidences
    keys, regions, region_scales, ids, confidences = zip(*rows, strict=True)
    n = len(keys)
    return (
        np.asarray(keys, dtype=np.int64),
        np.frombuffer(b"".join(regions), dtype=np.int8).reshape(n, c.REGION_COUNT, c.REGION_DIM),
        np.frombuffer(b"".join(region_scales), dtype="<f4").reshape(n, c.REGION_COUNT),
        np.frombuffer(b"".join(ids), dtype="<i4").reshape(n, c.KEYWORD_SLOTS),
        np.frombuffer(b"".join(confidences), dtype="<f4").reshape(n, c.KEYWORD_SLOTS),
    )


def _damaged(error: sqlite3.Error) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB: the file's bytes are not what SQLite wrote."""
    code = getattr(error, "sqlite_errorcode", 0) & 0xFF
    return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _keywords(blob: str) -> list[tuple[str, float, int]]:
    return [(str(t), float(conf), int(s)) for t, conf, s in json.loads(blob)]


def read_generation(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # a torn or foreign file: the store's own counter stands


def write_generation(path: Path, generation: int) -> None:
    """Durably: write a temporary file, fsync it, rename it over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as file:
        file.write(f"{generation}\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
