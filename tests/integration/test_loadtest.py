"""A short, bounded locust run against the real stack: every load profile runs, nothing fails.

The same entry point as `make loadtest` (loadtests/run.py), pointed at the session's stack.
It indexes its own images (ids `lt-`, from the corpus's train split) and removes them again.
"""

from __future__ import annotations

import random

import grpc
from amcsearch.v1 import search_pb2, search_pb2_grpc

from loadtests import data as loaddata
from loadtests.replies import reply_problem
from loadtests.run import main, read_stats
from loadtests.steps import StepPlan

PROFILES = {"Search text", "Search composed", "Search text filtered", "BatchSearch 8", "Index"}
IMAGE_PROFILES = {"Search image id", "Search image bytes"}


def test_degraded_or_partial_replies_count_as_failures():
    assert reply_problem(search_pb2.SearchResponse()) is None
    degraded = search_pb2.SearchResponse(degradations=[search_pb2.Degradation(stage="rescore", reason="down")])
    assert reply_problem(degraded) == "rescore: down"
    partial = search_pb2.IndexResponse(
        failed_count=1,
        results=[
            search_pb2.IndexItemResult(id="a", indexed=False, error_code="INVALID_ARGUMENT", error="not an image")
        ],
    )
    assert "INVALID_ARGUMENT not an image" in reply_problem(partial)


def test_step_plan_adds_users_per_step_and_ends():
    plan = StepPlan(step_users=3, step_seconds=10, steps=2, spawn_rate=1)
    assert [plan.users_at(t) for t in (0, 9.9, 10, 19.9, 20)] == [3, 3, 6, 6, None]
    assert plan.duration == 20


def test_query_distribution_repeats_popular_queries():
    zipf = loaddata.Zipf([f"q{i}" for i in range(100)], rng=random.Random(0))
    draws = [zipf.draw() for _ in range(2000)]
    assert draws.count("q0") > 5 * draws.count("q9") > 0
    assert len(set(draws)) < 100


def test_short_load_run_ends_with_zero_failures(real_stack, tmp_path):
    target = real_stack.address("search")
    rc = main(
        [
            "--target",
            target,
            "--users",
            "13",
            "--spawn-rate",
            "13",
            "--run-time",
            "20s",
            "--seeded",
            "30",
            "--to-index",
            "8",
            "--out",
            str(tmp_path),
        ]
    )
    rows = {r.name: r for r in read_stats(tmp_path / "amcsearch")}
    total = rows["Aggregated"]
    assert total.requests > 0 and total.failures == 0, f"{total.failures} of {total.requests} requests failed"
    assert rc == 0
    assert set(rows) >= PROFILES, f"profiles that never ran: {PROFILES - set(rows)}"
    assert IMAGE_PROFILES & set(rows), "no image search ran"
    ids = loaddata.build(30, 8).all_ids()
    with grpc.insecure_channel(target) as channel:
        reply = search_pb2_grpc.SearchServiceStub(channel).Get(search_pb2.GetRequest(ids=ids), timeout=30)
    assert not reply.images, "the load test left its images in the index"
