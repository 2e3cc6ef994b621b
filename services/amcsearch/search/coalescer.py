"""Concurrent Searches answered together: one QueryEncoder call, one vector pass and one
AttentionRescorer call for several callers.

Why: on 2 cores a Search's model forwards cost ~8 ms of CPU, but each Search also paid for its
own Encode and Rescore RPCs, their Triton requests, and a pass over the vectors; BatchSearch,
which shares them, serves 2.3x the queries of single Searches. Callers who each send one Search
get the same sharing here.

How: batch while busy, as Triton's dynamic batcher and Nagle do, with no timer. A Search that
arrives while fewer than `in_flight` batches are running starts one at once (so a lone caller
waits for nothing); one that arrives while `in_flight` batches run waits, and joins every other
Search that arrived meanwhile, up to `max_batch`, in the next batch. A batch is
SearchPipeline.search_many, the code path BatchSearch takes.

A batch runs under the longest deadline among its Searches: one whose own deadline passes first
is cancelled by gRPC as usual, without failing the others. If a batch fails for a reason that
can be one Search's own (not an unavailable or slow dependency, which every Search of the batch
would meet), each of its Searches runs again alone, so each caller gets its own answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from amcsearch.runtime.errors import DeadlineExceeded, Unavailable
from amcsearch.runtime.metrics import COALESCED_SEARCHES
from amcsearch.search.pipeline import SearchOutcome, SearchPipeline, SearchQuery

log = logging.getLogger(__name__)

SHARED_FAILURES = (Unavailable, DeadlineExceeded)
"""Failures a batch's Searches would each meet alone: not worth running them again one by one."""


@dataclass
class _Waiting:
    query: SearchQuery
    time_left: Callable[[], float | None]
    outcome: asyncio.Future[SearchOutcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class SearchCoalescer:
    def __init__(self, pipeline: SearchPipeline, max_batch: int, in_flight: int) -> None:
        self.pipeline = pipeline
        self.max_batch = max(1, max_batch)
        self.in_flight = max(1, in_flight)
        self.running = 0
        self.waiting: list[_Waiting] = []
        self.batches: set[asyncio.Task] = set()
        """The running batches (the event loop keeps only weak references to tasks)."""

    async def search(self, query: SearchQuery, time_left: Callable[[], float | None]) -> SearchOutcome:
        if self.max_batch == 1:
            return (await self.pipeline.search_many([query], time_left))[0]
        # time_left reads the caller's deadline from its context (runtime/deadlines.py): the
        # batch runs in a context of its own, so it asks in the caller's
        context = contextvars.copy_context()
        waiting = _Waiting(query, lambda: context.run(time_left))
        self.waiting.append(waiting)
        self._start_batches()
        try:
            return await waiting.outcome
        except asyncio.CancelledError:
            if waiting in self.waiting:  # gone before its batch started: it never will
                self.waiting.remove(waiting)
            raise

    def _start_batches(self) -> None:
        while self.waiting and self.running < self.in_flight:
            batch, self.waiting = self.waiting[: self.max_batch], self.waiting[self.max_batch :]
            self.running += 1
            COALESCED_SEARCHES.observe(len(batch))
            # a context of its own: the batch belongs to none of its callers
            task = asyncio.get_running_loop().create_task(self._run(batch), context=contextvars.Context())
            self.batches.add(task)
            task.add_done_callback(self.batches.discard)

    async def _run(self, batch: list[_Waiting]) -> None:
        try:
            await self._answer(batch)
        finally:
            for w in batch:  # the batch itself was cancelled (shutdown): so are its Searches
                if not w.outcome.done():
                    w.outcome.cancel()
            self.running -= 1
            self._start_batches()

    async def _answer(self, batch: list[_Waiting]) -> None:
        def longest() -> float | None:
            """The longest time left among the callers; None (no limit) if any has none."""
            left = [w.time_left() for w in batch]
            known = [t for t in left if t is not None]
            return max(known) if len(known) == len(left) else None

        try:
            outcomes = await self.pipeline.search_many([w.query for w in batch], longest)
        except SHARED_FAILURES as error:
            for w in batch:
                _settle(w.outcome, error=error)
            return
        except Exception as error:
            if len(batch) == 1:
                _settle(batch[0].outcome, error=error)
                return
            log.info("a batch of %d Searches failed (%s): each runs alone", len(batch), type(error).__name__)
            await asyncio.gather(*(self._answer([w]) for w in batch))
            return
        for w, outcome in zip(batch, outcomes, strict=True):
            _settle(w.outcome, outcome)


def _settle(
    future: asyncio.Future[SearchOutcome], outcome: SearchOutcome | None = None, error: BaseException | None = None
) -> None:
    if future.done():  # its caller went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(outcome)  # type: ignore[arg-type]
