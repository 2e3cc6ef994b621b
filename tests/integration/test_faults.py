"""Dependencies dying under a running service: Redis costs misses only; Triton gives UNAVAILABLE."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
from amcsearch import processes
from amcsearch.v1 import query_encoder_pb2, query_encoder_pb2_grpc

from tests.integration.conftest import metric_value, scrape, start_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fault_stack(tiny_repository, tmp_path_factory):
    stack = start_stack(tiny_repository, tmp_path_factory.mktemp("fault-logs"))
    yield stack
    stack.stop()


def encode(stack, *texts, timeout=10.0):
    with grpc.insecure_channel(stack.address("query_encoder")) as channel:
        stub = query_encoder_pb2_grpc.QueryEncoderStub(channel)
        request = query_encoder_pb2.EncodeRequest(queries=[query_encoder_pb2.QueryInput(text=t) for t in texts])
        return stub.Encode(request, timeout=timeout)


def cache_errors(stack) -> float:
    return metric_value(scrape(stack.processes["query_encoder"].endpoints["metrics"]), "amcsearch_cache_errors_total")


def test_redis_killed_calls_still_succeed_and_errors_are_counted(fault_stack):
    encode(fault_stack, "cached before the crash")
    errors_before = cache_errors(fault_stack)
    redis = fault_stack.processes["redis-server"]
    redis.kill()
    started = time.monotonic()
    for i in range(20):
        reply = encode(fault_stack, "cached before the crash", f"new text {i}")
        assert len(reply.embeddings) == 2 and not reply.embeddings[0].cache_hit
    elapsed = time.monotonic() - started
    assert cache_errors(fault_stack) > errors_before
    health = processes.grpc_serving(fault_stack.address("query_encoder"))
    assert health, "a dead cache must not make the service NOT_SERVING"
    # Redis back: the breaker half-opens and caching resumes.
    redis.start()
    processes.wait_until(
        lambda: processes.redis_ready(int(redis.endpoints["redis"].rsplit(":", 1)[1].split("/")[0])),
        20,
        "redis restart",
        redis,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        encode(fault_stack, "after the restart")
        if encode(fault_stack, "after the restart").embeddings[0].cache_hit:
            break
        time.sleep(0.5)
    else:
        pytest.fail("cache never recovered after Redis came back")
    print(f"40 encodes with Redis dead took {elapsed:.2f}s")


def test_triton_killed_gives_unavailable_within_the_deadline_then_service_resumes(fault_stack):
    triton = fault_stack.processes["tritonserver"]
    triton.kill()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as raised:
        encode(fault_stack, "nobody computes this", timeout=5.0)
    assert raised.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert time.monotonic() - started < 5.5
    # Triton back on the same ports: the service resumes by itself, no restart.
    triton.start()
    http_port = int(triton.endpoints["http"].rsplit(":", 1)[1])
    processes.wait_until(lambda: processes.triton_ready(http_port), 60, "tritonserver restart", triton)
    processes.wait_until(
        lambda: len(encode(fault_stack, "computed again").embeddings) == 1, 30, "query_encoder to resume", interval=0.5
    )


def test_a_call_past_its_deadline_ends_on_time_and_triton_still_completes_it(fault_stack):
    """The caller gets DEADLINE_EXCEEDED when its deadline passes; the gRPC call to Triton is not
    cancelled but finishes, its answer dropped (docs/decisions/0008: Triton 2.51 can crash on a
    cancelled inference). A call cancelled with the deadline would never reach Triton here."""
    from amcsearch.runtime.errors import DeadlineExceeded
    from amcsearch.runtime.settings import TritonSettings
    from amcsearch.runtime.triton import TritonModels
    from prometheus_client import REGISTRY

    triton = fault_stack.processes["tritonserver"]
    ROWS = 64  # noqa: N806 (a constant of this test)

    def completed() -> float:
        """Rows Triton's text_encoder has inferred: the abandoned call's 64 stand out from a
        1-row canary that a health check may run meanwhile (after the Triton restart of the test
        before, one did, and a request count then saw one too many)."""
        return metric_value(scrape(triton.endpoints["metrics"]), "nv_inference_count", model="text_encoder")

    def abandoned() -> float:
        labels = {"service": "fault-test", "model": "text_encoder"}
        return REGISTRY.get_sample_value("amcsearch_triton_abandoned_total", labels) or 0.0

    async def call_past_deadline() -> float:
        models = TritonModels(TritonSettings(url=triton.endpoints["grpc"]), "fault-test")
        ids = np.ones((ROWS, 32), np.int64)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="deadline passed"):
            await models.infer(
                "text_encoder", {"input_ids": ids, "attention_mask": ids}, ["embedding__0"], timeout_seconds=0.0005
            )
        waited = time.monotonic() - started
        await models.close()  # waits for the abandoned call
        return waited

    before, abandoned_before = completed(), abandoned()
    waited = asyncio.run(call_past_deadline())
    assert waited < 1.0, f"the caller waited {waited:.2f} s past a 0.5 ms deadline"
    assert abandoned() == abandoned_before + 1
    deadline = time.monotonic() + 10
    while completed() < before + ROWS and time.monotonic() < deadline:
        time.sleep(0.1)
    # the abandoned call's rows, plus at most a few 1-row canaries; never a second call's
    assert ROWS <= completed() - before < 2 * ROWS, "Triton never completed the call whose caller stopped waiting"
