"""The Redis embedding cache: batched, fast-failing, never the reason a request fails.

Keys are `{kind}:{model}:{build}:{sha256 of the content}`; values a small header plus the raw
float32 (or float16) array. One MGET per batch, one pipelined SET with TTL per batch. Timeouts
are ~50 ms with no retries, and a circuit breaker skips Redis for a while after consecutive
errors: a dead cache costs a miss, never a failed or stalled request (redis-py's defaults would
turn it into 50 s stalls).
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from typing import Any

import numpy as np
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from amcsearch.runtime.metrics import CACHE_ERRORS, CACHE_HITS, CACHE_MISSES
from amcsearch.runtime.settings import CacheSettings

log = logging.getLogger(__name__)

_MAGIC = b"AV1"
_DTYPES = {b"f": np.float32, b"e": np.float16}


def content_key(kind: str, model: str, build: str, content: bytes | str) -> str:
    """The cache key of `content` (text or encoded bytes) for one model build."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    return f"{kind}:{model}:{build}:{hashlib.sha256(data).hexdigest()}"


def encode_array(array: np.ndarray, float16: bool = False) -> bytes:
    """Header (magic, dtype char, ndim, shape) then little-endian elements."""
    stored = np.ascontiguousarray(array, dtype=np.float16 if float16 else np.float32)
    header = _MAGIC + stored.dtype.char.encode() + struct.pack(f"<B{stored.ndim}I", stored.ndim, *stored.shape)
    return header + stored.astype(stored.dtype.newbyteorder("<"), copy=False).tobytes()


def decode_array(blob: bytes) -> np.ndarray:
    """Inverse of encode_array; always returns float32."""
    if blob[:3] != _MAGIC:
        raise ValueError("not a cached array")
    dtype = np.dtype(_DTYPES[blob[3:4]]).newbyteorder("<")
    ndim = blob[4]
    shape = struct.unpack_from(f"<{ndim}I", blob, 5)
    offset = 5 + 4 * ndim
    return np.frombuffer(blob, dtype=dtype, offset=offset).reshape(shape).astype(np.float32)


class CircuitBreaker:
    """Open after `failures` consecutive errors; half-open again after `reset_seconds`."""

    def __init__(self, failures: int, reset_seconds: float) -> None:
        self.failures = failures
        self.reset_seconds = reset_seconds
        self._consecutive = 0
        self._opened_at: float | None = None

    def allow(self) -> bool:
        if self._opened_at is None:
            return True
        if time.monotonic() - self._opened_at >= self.reset_seconds:
            self._opened_at = None  # half-open: let the next call try
            self._consecutive = self.failures - 1
            return True
        return False

    def record(self, ok: bool) -> None:
        if ok:
            self._consecutive = 0
            self._opened_at = None
            return
        self._consecutive += 1
        if self._consecutive >= self.failures and self._opened_at is None:
            self._opened_at = time.monotonic()

    @property
    def open(self) -> bool:
        return self._opened_at is not None


class EmbeddingCache:
    """Batched get/set of arrays in Redis; every failure is logged, counted and a miss."""

    def __init__(self, settings: CacheSettings, service: str) -> None:
        self.settings = settings
        self.service = service
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_seconds)
        self.redis = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.timeout_seconds,
            socket_connect_timeout=settings.timeout_seconds,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )

    async def close(self) -> None:
        await self.redis.aclose()

    def _usable(self) -> bool:
        if not self.settings.enabled:
            return False
        if self.breaker.allow():
            return True
        CACHE_ERRORS.labels(self.service, "breaker_open").inc()
        return False

    def _failed(self, operation: str, error: Exception) -> None:
        self.breaker.record(False)
        CACHE_ERRORS.labels(self.service, operation).inc()
        log.warning("cache %s failed (%s): treated as a miss", operation, type(error).__name__)

    async def get_many(self, kind: str, keys: list[str]) -> list[np.ndarray | None]:
        """One MGET for all keys; None where missing or unreadable."""
        if not keys:
            return []
        found: list[Any] = [None] * len(keys)
        if self._usable():
            try:
                blobs = await self.redis.mget(keys)
                self.breaker.record(True)
                for i, blob in enumerate(blobs):
                    found[i] = (
                        decode_array(blob if isinstance(blob, bytes) else blob.encode()) if blob is not None else None
                    )
            except (redis.RedisError, OSError, ValueError, KeyError) as error:
                self._failed("get", error)
        hits = sum(value is not None for value in found)
        CACHE_HITS.labels(self.service, kind).inc(hits)
        CACHE_MISSES.labels(self.service, kind).inc(len(keys) - hits)
        return found

    async def set_many(self, items: dict[str, np.ndarray]) -> None:
        """One pipelined round trip of SET key value EX ttl."""
        if not items or not self._usable():
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, array in items.items():
                    blob = encode_array(array, self.settings.float16)
                    pipe.set(key, blob, ex=self.settings.ttl_seconds)
                await pipe.execute()
            self.breaker.record(True)
        except (redis.RedisError, OSError) as error:
            self._failed("set", error)
