"""Faults under a bounded search load on the real stack; the figures go to benchmarks/RELIABILITY.md.

- Redis killed and restarted while clients search: zero failed searches, the cache hit ratio
  recovers after the restart.
- SearchService SIGKILLed while a client indexes: no acknowledged item is lost.
- tritonserver killed while clients search: every failure is UNAVAILABLE or DEADLINE_EXCEEDED
  within the deadline (or a degraded reply), and searches succeed again by themselves once it is back.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import grpc
import pytest
from amcsearch import processes
from amcsearch.v1 import search_pb2, search_pb2_grpc

from tests.integration.conftest import metric_value, png, scrape
from tests.integration.reliability_report import ROWS

pytestmark = pytest.mark.integration
QUERIES = [
    "large red circle top-left",
    "festive images",
    "small blue square",
    "vintage green triangle",
    "purple circle",
    "sale picture with a yellow rectangle",
]


class Load:
    """Client threads searching in a loop until stopped; counts outcomes (bounded in time)."""

    def __init__(self, address: str, threads: int = 3, distinct: bool = False) -> None:
        """`distinct`: every query text new (query-cache misses: each needs the text model)."""
        self.address = address
        self.distinct = distinct
        self.stop = threading.Event()
        self.outcomes: Counter = Counter()
        self.failed_at: list[float] = []
        """monotonic times of the failed calls (the failure window)."""
        self.lock = threading.Lock()
        self.workers = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, worker: int) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            n = worker
            while not self.stop.is_set():
                text = QUERIES[n % len(QUERIES)] + (f" {worker}-{n}" if self.distinct else "")
                request = search_pb2.SearchRequest(text=text, top_k=5)
                n += 1
                try:
                    reply = stub.Search(request, timeout=5)
                    outcome = "degraded" if reply.degradations else "ok"
                except grpc.RpcError as error:
                    outcome = error.code().name
                with self.lock:
                    self.outcomes[outcome] += 1
                    if outcome not in ("ok", "degraded"):
                        self.failed_at.append(time.monotonic())

    def __enter__(self) -> Load:
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(timeout=30)

    def failures(self) -> Counter:
        return Counter({k: v for k, v in self.outcomes.items() if k not in ("ok", "degraded")})


@pytest.fixture(scope="module")
def seeded(real_stack, ci_corpus):
    with grpc.insecure_channel(real_stack.address("search")) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        items = [
            search_pb2.ImageItem(id=f"rel-{r.id}", image=png(p), keywords=[])
            for r, p in zip(ci_corpus.train.images[:48], ci_corpus.train.pixels[:48], strict=False)
        ]
        for start in range(0, len(items), 16):
            assert stub.Index(search_pb2.IndexRequest(items=items[start : start + 16]), timeout=120).indexed_count == 16
    yield
    with grpc.insecure_channel(real_stack.address("search")) as channel:
        search_pb2_grpc.SearchServiceStub(channel).Delete(
            search_pb2.DeleteRequest(ids=[i.id for i in items]), timeout=60
        )


def hit_ratio(stack) -> tuple[float, float]:
    text = scrape(stack.processes["query_encoder"].endpoints["metrics"])
    return metric_value(text, "amcsearch_cache_hits_total"), metric_value(text, "amcsearch_cache_misses_total")


def test_redis_killed_and_restarted_under_search_load(real_stack, seeded):
    redis = real_stack.processes["redis-server"]
    port = int(redis.endpoints["redis"].rsplit(":", 1)[1].split("/")[0])
    with Load(real_stack.address("search")) as load:
        time.sleep(3)
        redis.kill()
        time.sleep(4)
        redis.start()
        processes.wait_until(lambda: processes.redis_ready(port), 20, "redis restart", redis)
        hits_before, misses_before = hit_ratio(real_stack)
        time.sleep(5)
    hits_after, misses_after = hit_ratio(real_stack)
    recovered = (hits_after - hits_before) / max(1.0, (hits_after - hits_before) + (misses_after - misses_before))
    sent = sum(load.outcomes.values())
    ROWS.append(
        {
            "fault": "redis-server SIGKILL, restarted 4 s later",
            "sent": sent,
            "failed": sum(load.failures().values()),
            "degraded": load.outcomes["degraded"],
            "lost": 0,
            "codes": dict(load.failures()),
            "recovery": f"query-cache hit ratio {recovered:.2f} in the 5 s after the restart",
        }
    )
    assert sent > 0 and not load.failures(), load.outcomes
    assert recovered > 0.5


def test_triton_killed_under_search_load_fails_fast_and_resumes(real_stack, seeded):
    triton = real_stack.processes["tritonserver"]
    http_port = int(triton.endpoints["http"].rsplit(":", 1)[1])
    with Load(real_stack.address("search"), distinct=True) as load:
        time.sleep(3)
        killed = time.monotonic()
        triton.kill()
        time.sleep(4)
        triton.start()
        processes.wait_until(lambda: processes.triton_ready(http_port), 120, "tritonserver restart", triton)
        back = time.monotonic()
        resumed = None
        while time.monotonic() - back < 60:
            before = load.outcomes["ok"]
            time.sleep(1)
            if load.outcomes["ok"] > before:
                resumed = time.monotonic() - back
                break
    failures = load.failures()
    sent = sum(load.outcomes.values())
    window = (
        f"; failures from {load.failed_at[0] - killed:.1f} s to {load.failed_at[-1] - killed:.1f} s after the "
        f"kill, Triton ready {back - killed:.1f} s after it"
        if load.failed_at
        else ""
    )
    ROWS.append(
        {
            "fault": "tritonserver SIGKILL, restarted 4 s later; every query text new (query-cache misses)",
            "sent": sent,
            "failed": sum(failures.values()),
            "degraded": load.outcomes["degraded"],
            "lost": 0,
            "codes": dict(failures),
            "recovery": (
                f"full searches again {resumed:.1f} s after Triton was ready"
                if resumed is not None
                else "did not resume"
            )
            + window,
        }
    )
    assert set(failures) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, failures
    assert resumed is not None, "searches did not resume by themselves"


def test_search_killed_mid_indexing_loses_no_acknowledged_item(real_stack, ci_corpus):
    """SIGKILL the gateway while a client indexes in batches: every batch it acknowledged is
    there after the restart; the batch in flight failed visibly to the caller."""
    import threading

    images = [png(p) for p in ci_corpus.test.pixels[:64]]
    acknowledged: list[str] = []
    failed: list[str] = []
    process = real_stack.processes["search"]

    def index_loop() -> None:
        with grpc.insecure_channel(process.endpoints["grpc"]) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            for start in range(0, len(images), 4):
                ids = [f"crash-{start + i}" for i in range(4)]
                items = [
                    search_pb2.ImageItem(id=i, image=img)
                    for i, img in zip(ids, images[start : start + 4], strict=False)
                ]
                try:
                    reply = stub.Index(search_pb2.IndexRequest(items=items), timeout=10)
                    acknowledged.extend(r.id for r in reply.results if r.indexed)
                except grpc.RpcError:
                    failed.extend(ids)

    worker = threading.Thread(target=index_loop)
    worker.start()
    processes.wait_until(lambda: len(acknowledged) >= 12, 60, "some acknowledged batches")
    process.kill()
    worker.join(timeout=120)
    process.start()
    processes.wait_until(lambda: processes.grpc_serving(process.endpoints["grpc"]), 60, "search restart", process)
    with grpc.insecure_channel(process.endpoints["grpc"]) as channel:
        search = search_pb2_grpc.SearchServiceStub(channel)
        reply = search.Get(search_pb2.GetRequest(ids=acknowledged), timeout=30)
        ROWS.append(
            {
                "fault": "SearchService SIGKILL while indexing (then restarted)",
                "sent": f"{len(images)} items",
                "failed": f"{len(failed)} items reported failed to the caller",
                "degraded": "-",
                "lost": len(reply.missing_ids),
                "codes": "UNAVAILABLE",
                "recovery": "restarted by the test",
            }
        )
        # A batch whose call failed may still have been written before the kill (its reply was
        # lost), so the clean-up deletes every id tried, not only the acknowledged ones: later
        # tests share this index and must not find these items.
        search.Delete(search_pb2.DeleteRequest(ids=acknowledged + failed), timeout=30)
        assert failed, "the kill landed after the loop: nothing was in flight"
        assert not reply.missing_ids, f"acknowledged but lost: {list(reply.missing_ids)}"
