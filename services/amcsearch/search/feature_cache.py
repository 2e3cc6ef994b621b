"""The embedded engine's candidate columns held in memory, within a budget.

A Search rescored ~150 candidates whose packed columns (int8 regions, scales, keyword slots:
about 5 KB an image) were read from SQLite each time: at 10,000 images that read was the largest
single share of the gateway's CPU (15% under 16 callers) and most of the `ann` stage. Those
columns never change once written: an upsert writes a new row (AUTOINCREMENT rows are never
reused) and a delete removes one. So a row's columns can be kept after their first read, with
no invalidation beyond forgetting deleted rows.

The cache is a few preallocated arrays indexed by slot, and a row -> slot column: a lookup of N
keys is a handful of numpy gathers. It fills from the store when the gateway opens it (in the
background), with the rows each upsert commits, and on reads; first come first kept, up to
INDEX_FEATURE_CACHE_MIB. Past that, reads go to SQLite as before (nothing is evicted, so a full
cache costs no bookkeeping on the search path).
"""

from __future__ import annotations

import threading

import numpy as np

from amcsearch.runtime import contract as c

ROW_BYTES = (
    c.REGION_COUNT * c.REGION_DIM  # int8 regions
    + 4 * c.REGION_COUNT  # float32 scales
    + 4 * c.KEYWORD_SLOTS  # int32 keyword ids
    + 4 * c.KEYWORD_SLOTS  # float32 confidences
    + 4  # its entry in the row -> slot column (about one per row)
)


class FeatureCache:
    """Packed candidate columns by store row (see the module docstring).

    Thread-safety: reads run on the gateway's event loop, deletes in the index's writer thread.
    A read that went to SQLite may have raced a delete of one of its rows: `epoch` counts
    deletes, and a read's rows are only kept when no delete happened since it began."""

    def __init__(self, budget_mib: int) -> None:
        self.capacity = max(0, int(budget_mib) * 2**20 // ROW_BYTES)
        self.lock = threading.Lock()
        self.epoch = 0
        self._clear()

    def _clear(self) -> None:
        self.slot_of = np.full(0, -1, dtype=np.int32)
        self.regions = np.zeros((0, c.REGION_COUNT, c.REGION_DIM), np.int8)
        self.region_scales = np.zeros((0, c.REGION_COUNT), np.float32)
        self.keyword_ids = np.zeros((0, c.KEYWORD_SLOTS), np.int32)
        self.confidences = np.zeros((0, c.KEYWORD_SLOTS), np.float32)
        self.used = 0
        self.free: list[int] = []

    def __len__(self) -> int:
        return self.used - len(self.free)

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        """The slot of each key, -1 where it is not held (the caller holds the lock)."""
        keys = np.asarray(keys, dtype=np.int64)
        out = np.full(len(keys), -1, dtype=np.int32)
        inside = (keys >= 0) & (keys < len(self.slot_of))
        out[inside] = self.slot_of[keys[inside]]
        return out

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Which of `keys` are held, and (regions, region_scales, keyword_ids, confidences) of
        those, in `keys`' order."""
        with self.lock:
            slots = self._slots(keys)
            held = slots >= 0
            slots = slots[held]
            return held, (
                self.regions[slots],
                self.region_scales[slots],
                self.keyword_ids[slots],
                self.confidences[slots],
            )

    def put(
        self,
        epoch: int,
        keys: np.ndarray,
        regions: np.ndarray,
        region_scales: np.ndarray,
        keyword_ids: np.ndarray,
        confidences: np.ndarray,
    ) -> None:
        """Keeps the columns of `keys` (read from the store when the epoch was `epoch`) as far as
        the budget allows; rows already held are left as they are."""
        with self.lock:
            if epoch != self.epoch or not len(keys):
                return
            keys = np.asarray(keys, dtype=np.int64)
            new = self._slots(keys) < 0
            keys, regions, region_scales = keys[new], regions[new], region_scales[new]
            keyword_ids, confidences = keyword_ids[new], confidences[new]
            room = self.capacity - len(self)
            if room <= 0 or not len(keys):
                return
            keys, regions, region_scales = keys[:room], regions[:room], region_scales[:room]
            keyword_ids, confidences = keyword_ids[:room], confidences[:room]
            slots = self._allocate(len(keys))
            self._grow_rows(int(keys.max()) + 1)
            self.regions[slots] = regions
            self.region_scales[slots] = region_scales
            self.keyword_ids[slots] = keyword_ids
            self.confidences[slots] = confidences
            self.slot_of[keys] = slots

    def forget(self, keys) -> None:
        """Rows deleted from the store: never served from here again."""
        keys = np.asarray(list(keys), dtype=np.int64)
        if not len(keys):
            return  # an upsert of new ids only: nothing read before can be stale
        with self.lock:
            self.epoch += 1
            slots = self._slots(keys)
            held = slots >= 0
            self.slot_of[keys[held]] = -1
            self.free.extend(slots[held].tolist())

    def clear(self) -> None:
        with self.lock:
            self.epoch += 1
            self._clear()

    def _allocate(self, n: int) -> np.ndarray:
        reused = [self.free.pop() for _ in range(min(n, len(self.free)))]
        fresh = np.arange(self.used, self.used + n - len(reused), dtype=np.int32)
        self.used += len(fresh)
        if self.used > len(self.regions):
            self._grow_slots(min(self.capacity, max(self.used, 2 * len(self.regions), 1024)))
        return np.concatenate([np.asarray(reused, dtype=np.int32), fresh])

    def _grow_slots(self, size: int) -> None:
        def grown(column: np.ndarray) -> np.ndarray:
            out = np.zeros((size, *column.shape[1:]), dtype=column.dtype)
            out[: len(column)] = column
            return out

        self.regions = grown(self.regions)
        self.region_scales = grown(self.region_scales)
        self.keyword_ids = grown(self.keyword_ids)
        self.confidences = grown(self.confidences)

    def _grow_rows(self, size: int) -> None:
        if size <= len(self.slot_of):
            return
        out = np.full(max(size, 2 * len(self.slot_of)), -1, dtype=np.int32)
        out[: len(self.slot_of)] = self.slot_of
        self.slot_of = out
