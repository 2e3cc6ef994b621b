"""The one cached-batch flow of the model services: one MGET, the misses computed once (even
across concurrent requests), one SET.

QueryEncoder and FeatureExtractor both turn a batch of inputs into arrays keyed by content:
look every distinct key up in Redis at once, compute the misses this request is the first to
ask for in one batched call (`compute`), store them, and wait for the misses another request is
already computing (SingleFlight). A cache error is a miss (runtime/cache.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np

from amcsearch.runtime.cache import EmbeddingCache
from amcsearch.runtime.metrics import stage
from amcsearch.runtime.singleflight import SingleFlight

Compute = Callable[[list[str]], Awaitable[dict[str, np.ndarray]]]


async def cached_batch(
    cache: EmbeddingCache,
    flight: SingleFlight[np.ndarray],
    service: str,
    kind: str,
    keys: list[str],
    compute: Compute,
    valid: Callable[[np.ndarray], bool] = lambda value: True,
) -> tuple[dict[str, np.ndarray], set[str]]:
    """(value of every key, the keys that were cache hits). `compute(missing_keys)` returns the
    value of each key it is given; `valid` rejects a cached value of the wrong form (a miss)."""
    unique = list(dict.fromkeys(keys))
    with stage(service, "cache_get"):
        cached = await cache.get_many(kind, unique)
    found = {key: value for key, value in zip(unique, cached, strict=True) if value is not None and valid(value)}
    hits = set(found)
    missing = [key for key in unique if key not in hits]
    if not missing:
        return found, hits
    mine, theirs = flight.claim(missing)
    try:
        computed = await compute(mine) if mine else {}
    except BaseException as error:
        flight.fail(mine, error)
        raise
    flight.resolve(computed)
    with stage(service, "cache_set"):
        await cache.set_many(computed)
    found.update(computed)
    found.update(await SingleFlight.wait(theirs))
    return found, hits
