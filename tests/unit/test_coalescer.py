"""The gateway's Search coalescer on its own: batches form only while others run, every caller
gets its own answer, a failure that may be one Search's own fails that Search alone.

The pipeline here is a recording stand-in for SearchPipeline.search_many (the coalescer's only
dependency); the served path, with every real service, is in tests/integration/test_search.py."""

from __future__ import annotations

import asyncio
import contextvars

import pytest
from amcsearch.runtime.errors import InvalidArgument, Unavailable
from amcsearch.search.coalescer import SearchCoalescer


class RecordingPipeline:
    def __init__(self, fail_on: str | None = None, shared_failure: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.deadlines: list[float | None] = []
        self.fail_on = fail_on
        self.shared_failure = shared_failure
        self.release = asyncio.Event()

    async def search_many(self, searches, time_left):
        self.batches.append(list(searches))
        self.deadlines.append(time_left())
        await self.release.wait()
        if self.shared_failure:
            raise Unavailable("QueryEncoder is not answering")
        if self.fail_on in searches and len(searches) > 0:
            raise InvalidArgument(f"bad search {self.fail_on}")
        return [f"answer to {s}" for s in searches]


async def turns() -> None:
    """Let every task that is ready run (a few loop iterations)."""
    for _ in range(5):
        await asyncio.sleep(0)


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_lone_search_runs_at_once_and_the_ones_that_wait_go_together():
    async def scenario():
        pipeline = RecordingPipeline()
        coalescer = SearchCoalescer(pipeline, max_batch=4, in_flight=1)
        first = asyncio.ensure_future(coalescer.search("q0", lambda: 5.0))
        await turns()
        assert pipeline.batches == [["q0"]]  # nothing else ran: no waiting
        rest = [asyncio.ensure_future(coalescer.search(f"q{i}", lambda: 5.0)) for i in range(1, 7)]
        await turns()
        assert len(pipeline.batches) == 1  # one batch in flight: the others wait
        pipeline.release.set()
        answers = await asyncio.gather(first, *rest)
        assert answers == [f"answer to q{i}" for i in range(7)]
        assert pipeline.batches == [["q0"], ["q1", "q2", "q3", "q4"], ["q5", "q6"]]

    run(scenario())


def test_a_batch_runs_under_its_longest_deadline_and_no_deadline_wins():
    async def scenario():
        pipeline = RecordingPipeline()
        pipeline.release.set()
        coalescer = SearchCoalescer(pipeline, max_batch=8, in_flight=1)
        blocker = asyncio.ensure_future(coalescer.search("first", lambda: 1.0))
        waiting = [coalescer.search("a", lambda: 2.0), coalescer.search("b", lambda: 7.0)]
        await asyncio.gather(blocker, *waiting)
        assert pipeline.deadlines == [1.0, 7.0]
        pipeline.deadlines.clear()
        blocker = asyncio.ensure_future(coalescer.search("first", lambda: 1.0))
        await asyncio.gather(blocker, coalescer.search("a", lambda: 2.0), coalescer.search("b", lambda: None))
        assert pipeline.deadlines == [1.0, None]

    run(scenario())


def test_each_callers_deadline_is_read_in_its_own_context():
    """The servicer passes runtime.deadlines.time_left, which reads the RPC's deadline from the
    caller's context: the batch (a task of its own) must still see each caller's."""
    deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)

    async def caller(coalescer, name: str, seconds: float):
        deadline.set(seconds)
        return await coalescer.search(name, deadline.get)

    async def scenario():
        pipeline = RecordingPipeline()
        pipeline.release.set()
        coalescer = SearchCoalescer(pipeline, max_batch=8, in_flight=1)
        blocker = asyncio.ensure_future(caller(coalescer, "first", 1.5))
        await asyncio.gather(blocker, caller(coalescer, "a", 2.5), caller(coalescer, "b", 4.5))
        assert pipeline.deadlines == [1.5, 4.5]

    run(scenario())


def test_a_failure_of_one_search_fails_it_alone_and_a_shared_one_fails_all():
    async def scenario(pipeline):
        coalescer = SearchCoalescer(pipeline, max_batch=8, in_flight=1)
        blocker = asyncio.ensure_future(coalescer.search("first", lambda: 5.0))
        await turns()
        batch = [asyncio.ensure_future(coalescer.search(q, lambda: 5.0)) for q in ("good", "bad", "fine")]
        await turns()
        pipeline.release.set()
        return await asyncio.gather(blocker, *batch, return_exceptions=True)

    pipeline = RecordingPipeline(fail_on="bad")
    first, good, bad, fine = run(scenario(pipeline))
    assert (first, good, fine) == ("answer to first", "answer to good", "answer to fine")
    assert isinstance(bad, InvalidArgument) and "bad search bad" in str(bad)
    assert pipeline.batches == [["first"], ["good", "bad", "fine"], ["good"], ["bad"], ["fine"]]

    pipeline = RecordingPipeline(shared_failure=True)
    answers = run(scenario(pipeline))
    assert all(isinstance(a, Unavailable) for a in answers)
    assert pipeline.batches == [["first"], ["good", "bad", "fine"]]  # not run again one by one


def test_a_caller_that_leaves_while_waiting_is_left_out_of_the_batch():
    async def scenario():
        pipeline = RecordingPipeline()
        coalescer = SearchCoalescer(pipeline, max_batch=8, in_flight=1)
        blocker = asyncio.ensure_future(coalescer.search("first", lambda: 5.0))
        gone = asyncio.ensure_future(coalescer.search("gone", lambda: 5.0))
        kept = asyncio.ensure_future(coalescer.search("kept", lambda: 5.0))
        await turns()
        gone.cancel()
        await turns()
        pipeline.release.set()
        assert await blocker == "answer to first" and await kept == "answer to kept"
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert pipeline.batches == [["first"], ["kept"]]

    run(scenario())


def test_coalescing_off_answers_each_search_alone():
    async def scenario():
        pipeline = RecordingPipeline()
        pipeline.release.set()
        coalescer = SearchCoalescer(pipeline, max_batch=1, in_flight=1)
        answers = await asyncio.gather(*(coalescer.search(f"q{i}", lambda: 5.0) for i in range(3)))
        assert answers == ["answer to q0", "answer to q1", "answer to q2"]
        assert pipeline.batches == [["q0"], ["q1"], ["q2"]]

    run(scenario())
