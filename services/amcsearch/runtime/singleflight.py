"""Concurrent identical cache misses computed once: later callers await the first one's result."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

V = TypeVar("V")


class SingleFlight(Generic[V]):
    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[V]] = {}

    def claim(self, keys: list[str]) -> tuple[list[str], dict[str, asyncio.Future[V]]]:
        """Split `keys` (distinct) into those this caller computes and those already in flight."""
        mine: list[str] = []
        theirs: dict[str, asyncio.Future[V]] = {}
        loop = asyncio.get_running_loop()
        for key in keys:
            if key in self._inflight:
                theirs[key] = self._inflight[key]
            else:
                self._inflight[key] = loop.create_future()
                mine.append(key)
        return mine, theirs

    def resolve(self, values: dict[str, V]) -> None:
        for key, value in values.items():
            future = self._inflight.pop(key, None)
            if future is not None and not future.done():
                future.set_result(value)

    def fail(self, keys: list[str], error: BaseException) -> None:
        for key in keys:
            future = self._inflight.pop(key, None)
            if future is not None and not future.done():
                future.set_exception(error)
                future.exception()  # mark retrieved: nobody else may be waiting

    @staticmethod
    async def wait(theirs: dict[str, asyncio.Future[V]]) -> dict[str, V]:
        return {key: await asyncio.shield(future) for key, future in theirs.items()}
