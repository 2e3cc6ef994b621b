"""The in-memory vector side of one collection of the embedded index: exact search while the
collection is small, an HNSW graph (usearch) once it is large, exact search over the allowed
rows when a filter is selective.

The store of record is SQLite (embedded_index.py); everything here is derived from it and is
rebuilt, or patched from a snapshot, when the gateway starts. Keys are SQLite row ids.

Why both: exact search is perfect recall and costs 0.4 ms at 10k vectors on 2 cores but ~9 ms
at 100k (memory bandwidth); the graph costs ~0.5 ms at 100k. A filter that keeps few rows
(1% of 100k = 1,000) is cheapest as an exact scan of those rows, and never starves top-k the way
post-filtering a graph search does.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from itertools import repeat
from pathlib import Path

import numpy as np
from usearch.index import Index as UsearchIndex

log = logging.getLogger(__name__)


class VectorIndex:
    def __init__(
        self, dim: int, hnsw_min_rows: int, ef_search: int, connectivity: int = 16, ef_construction: int = 128
    ) -> None:
        self.dim = dim
        self.hnsw_min_rows = hnsw_min_rows
        self.ef_search = ef_search
        self.connectivity = connectivity
        self.ef_construction = ef_construction
        self.lock = threading.RLock()
        self.keys = np.zeros(0, dtype=np.int64)
        self.matrix = np.zeros((0, dim), dtype=np.float32)
        self.live = np.zeros(0, dtype=bool)
        self.used = 0
        """Slots 0..used-1 hold vectors (live or dead)."""
        self.slot_of: dict[int, int] = {}
        self.graph: UsearchIndex | None = None
        self._building = False
        self._pending: list[tuple[str, np.ndarray, np.ndarray]] = []
        """Changes made while the graph is built in the background, replayed onto it."""

    # --- writes ----------------------------------------------------------------------------------

    def add(self, keys: np.ndarray, vectors: np.ndarray, build_graph: bool = True) -> None:
        """Add vectors under new keys; `build_graph` False defers the graph (bulk loads)."""
        keys = np.asarray(keys, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        if keys.size == 0:
            return
        with self.lock:
            self._grow(self.used + keys.size)
            slots = np.arange(self.used, self.used + keys.size)
            self.keys[slots] = keys
            self.matrix[slots] = vectors
            self.live[slots] = True
            self.used += keys.size
            self.slot_of.update(zip(keys.tolist(), slots.tolist(), strict=False))
            if self.graph is not None:
                self.graph.add(keys.astype(np.uint64), vectors, threads=1)
            if self._building:
                self._pending.append(("add", keys, vectors))
        if build_graph:
            self.ensure_graph()

    def remove(self, keys) -> None:
        keys = [int(k) for k in keys]
        if not keys:
            return
        with self.lock:
            present = [k for k in keys if k in self.slot_of]
            for key in present:
                self.live[self.slot_of.pop(key)] = False
            if self.graph is not None and present:
                self.graph.remove(np.asarray(present, dtype=np.uint64))
            if self._building and present:
                self._pending.append(("remove", np.asarray(present, dtype=np.int64), np.zeros(0)))
            if self.used > 1024 and self.count < self.used // 2:
                self._compact()

    def _grow(self, needed: int) -> None:
        if needed <= self.keys.size:
            return
        capacity = max(needed, 2 * self.keys.size, 1024)
        for name, fill in (("keys", 0), ("live", False)):
            old = getattr(self, name)
            new = np.full(capacity, fill, dtype=old.dtype)
            new[: old.size] = old
            setattr(self, name, new)
        matrix = np.zeros((capacity, self.dim), dtype=np.float32)
        matrix[: self.used] = self.matrix[: self.used]
        self.matrix = matrix

    def _compact(self) -> None:
        alive = np.flatnonzero(self.live[: self.used])
        self.keys[: alive.size] = self.keys[alive]
        self.matrix[: alive.size] = self.matrix[alive]
        self.live[:] = False
        self.live[: alive.size] = True
        self.used = alive.size
        self.slot_of = dict(zip(self.keys[: alive.size].tolist(), range(alive.size), strict=False))

    # --- the graph -------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """How search() runs now: "exact", "hnsw" or "exact, hnsw building"."""
        if self._building:
            return "exact, hnsw building"
        return "hnsw" if self.graph is not None and self.count >= self.hnsw_min_rows else "exact"

    @property
    def count(self) -> int:
        return len(self.slot_of)

    def _new_graph(self) -> UsearchIndex:
        return UsearchIndex(
            ndim=self.dim,
            metric="cos",
            dtype="f16",
            connectivity=self.connectivity,
            expansion_add=self.ef_construction,
            expansion_search=self.ef_search,
        )

    def ensure_graph(self, background: bool = True) -> None:
        """Start building the graph when the collection is large enough and has none."""
        with self.lock:
            if self.graph is not None or self._building or self.count < self.hnsw_min_rows:
                return
            self._building = True
            self._pending = []
            alive = np.flatnonzero(self.live[: self.used])
            keys, vectors = self.keys[alive].copy(), self.matrix[alive].copy()
        if background:
            threading.Thread(target=self._build, args=(keys, vectors), name="hnsw-build", daemon=True).start()
        else:
            self._build(keys, vectors)

    def _build(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        started = time.monotonic()
        graph = self._new_graph()
        graph.add(keys.astype(np.uint64), vectors, threads=2)
        with self.lock:
            for kind, changed, added in self._pending:
                if kind == "add":
                    graph.add(changed.astype(np.uint64), added, threads=1)
                else:
                    graph.remove(changed.astype(np.uint64))
            self._pending = []
            self.graph = graph
            self._building = False
        log.info("HNSW graph of %d vectors built in %.1fs", keys.size, time.monotonic() - started)

    def wait_for_graph(self, timeout: float = 600.0) -> bool:
        """For benchmarks and tests: block until a pending background build has finished."""
        deadline = time.monotonic() + timeout
        while self._building and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self._building

    def save_graph(self, path: Path) -> None:
        with self.lock:
            if self.graph is not None and not self._building:
                self.graph.save(str(path))

    def restore_graph(self, path: Path, rows: int | None = None) -> bool:
        """Load a saved graph and patch it to the current rows; False when it cannot be used:
        unreadable, not the `rows` vectors its record says, or vectors that are not this index's.
        Its sampled recall@10 against exact search is logged, not judged: it depends on the data
        (random 384-d vectors give ~0.6 at 20k, a rebuilt graph the same), so only the snapshot's
        record and checksum (derived.py) say whether it is sound."""
        try:
            graph = self._new_graph()
            graph.load(str(path))
        except (OSError, RuntimeError, ValueError) as error:
            log.warning("HNSW snapshot %s not usable (%s): rebuilding", path, error)
            return False
        saved = np.asarray(graph.keys, dtype=np.int64)
        if rows is not None and saved.size != rows:
            log.warning("HNSW snapshot %s holds %d vectors, its record says %d: rebuilding", path, saved.size, rows)
            return False
        with self.lock:
            if not self._same_vectors(graph, saved):
                log.warning("HNSW snapshot %s holds vectors that are not the store's: rebuilding", path)
                return False
            current, in_graph = set(self.slot_of), set(saved.tolist())
            stale = sorted(in_graph - current)
            missing = sorted(current - in_graph)
            if stale:
                graph.remove(np.asarray(stale, dtype=np.uint64))
            if missing:
                slots = [self.slot_of[k] for k in missing]
                graph.add(np.asarray(missing, dtype=np.uint64), self.matrix[slots], threads=2)
            recall = self.graph_recall(graph)
            self.graph = graph
        log.info(
            "HNSW snapshot restored: %d vectors, %d stale removed, %d added, sampled recall@10 %s",
            saved.size,
            len(stale),
            len(missing),
            "-" if recall is None else f"{recall:.2f}",
        )
        return True

    def _same_vectors(self, graph: UsearchIndex, saved: np.ndarray, samples: int = 64) -> bool:
        """Whether a sample of the graph's vectors (those still in the index) are the index's own
        (cosine > 0.99: the graph stores float16)."""
        keys = [k for k in saved[:: max(1, saved.size // samples)].tolist() if k in self.slot_of][:samples]
        if not keys:
            return True
        stored = graph.get(np.asarray(keys, dtype=np.uint64), dtype="f32")
        vectors = [v for v in (stored if isinstance(stored, tuple) else [stored]) if v is not None]
        if len(vectors) != len(keys):
            return False
        ours = self.matrix[[self.slot_of[k] for k in keys]]
        theirs = np.stack(vectors).reshape(len(keys), self.dim).astype(np.float32)
        theirs = theirs / np.maximum(np.linalg.norm(theirs, axis=1, keepdims=True), 1e-12)
        return bool(np.all(np.sum(ours * theirs, axis=1) > 0.99))

    def graph_recall(self, graph: UsearchIndex | None = None, k: int = 10, samples: int = 32) -> float | None:
        """Mean recall@k of `graph` (default: the index's own) against exact search, queried with
        `samples` of the stored vectors; None without a graph or vectors."""
        graph = self.graph if graph is None else graph
        with self.lock:
            alive = np.flatnonzero(self.live[: self.used])
            if graph is None or alive.size == 0:
                return None
            k = min(k, alive.size)
            queries = self.matrix[alive[:: max(1, alive.size // samples)][:samples]]
            found = np.asarray(graph.search(queries, k, threads=1).keys, dtype=np.int64).reshape(len(queries), k)
            scores = self.matrix[: self.used] @ queries.T  # one pass over the vectors for all queries
            scores[~self.live[: self.used]] = -np.inf
        hits = 0
        for column, keys in enumerate(found):
            exact = self.keys[_top(scores[:, column], k)]
            hits += len(set(exact.tolist()) & set(keys.tolist()))
        return hits / (k * len(queries))

    # --- search ----------------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(keys, cosine scores) of the top-k, best first; `allowed` restricts to those keys."""
        query = _unit(query)
        with self.lock:
            if allowed is not None:
                return self._search_allowed(query, k, np.asarray(allowed, dtype=np.int64))
            if self.graph is not None and self.count >= self.hnsw_min_rows:
                return self._search_graph(query, k)
            return self._exact_all(query, k)

    def search_many(self, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """search() of each row of `queries` [Q, D] (no filter). Exact: one matrix product reads
        the vectors once for all the queries (a BatchSearch of 8 read them 8 times, ~2 ms each at
        10,000 here, memory-bound). With a graph: one graph search per query."""
        queries = np.stack([_unit(query) for query in np.asarray(queries, dtype=np.float32)])
        with self.lock:
            if self.graph is not None and self.count >= self.hnsw_min_rows:
                return [self._search_graph(query, k) for query in queries]
            return [self._best(column, k) for column in (self.matrix[: self.used] @ queries.T).T]

    def scores(self, keys: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Cosine of the query and each key's vector (0 for keys not in the index)."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        wanted = np.asarray(keys, dtype=np.int64).tolist()
        with self.lock:  # the key -> slot lookups run in C (map over dict.get), not a Python loop
            slots = np.fromiter(map(self.slot_of.get, wanted, repeat(-1)), dtype=np.int64, count=len(wanted))
            out = np.zeros(len(slots), dtype=np.float32)
            present = slots >= 0
            if present.any():
                out[present] = self.matrix[slots[present]] @ query
        return out

    def _search_graph(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.graph is not None
        matches = self.graph.search(query, k, threads=1)
        return np.asarray(matches.keys, dtype=np.int64), 1.0 - np.asarray(matches.distances, dtype=np.float32)

    def _search_allowed(self, query: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        slots = np.fromiter((self.slot_of[key] for key in allowed.tolist() if key in self.slot_of), dtype=np.int64)
        if self.graph is not None and slots.size > self.hnsw_min_rows:
            # A broad filter: oversample the graph by the filter's selectivity, keep the allowed.
            wanted = min(self.count, math.ceil(2 * k * self.count / slots.size))
            keys, scores = self._search_graph(query, wanted)
            keep = np.isin(keys, allowed)
            if int(keep.sum()) >= min(k, slots.size):
                return keys[keep][:k], scores[keep][:k]
        return self._exact(query, k, slots)

    def _exact_all(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Every live vector, scored in place (no copy of the matrix)."""
        return self._best(self.matrix[: self.used] @ query, k)

    def _best(self, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys, scores) of the k best live slots of `scores` (one per used slot; deleted slots
        are masked in place)."""
        if self.count < self.used:
            scores[~self.live[: self.used]] = -np.inf
        top = _top(scores, min(k, self.count))
        return self.keys[top], scores[top].astype(np.float32)

    def _exact(self, query: np.ndarray, k: int, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The given slots only (a gathered copy: meant for selective filters)."""
        scores = self.matrix[slots] @ query
        top = _top(scores, k)
        return self.keys[slots[top]], scores[top].astype(np.float32)


def _unit(query: np.ndarray) -> np.ndarray:
    """The query as a flat float32 unit vector (a zero vector stays zero)."""
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(query))
    return query / norm if norm > 0 else query


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first (ties in index order)."""
    if k <= 0 or scores.size == 0:
        return np.zeros(0, dtype=np.int64)
    if scores.size > k:
        top = np.argpartition(-scores, k - 1)[:k]
        return top[np.argsort(-scores[top], kind="stable")]
    return np.argsort(-scores, kind="stable")
