"""The foundation against real processes: health, reflection, metrics, cache, error statuses."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from amcsearch.v1 import common_pb2, query_encoder_pb2, query_encoder_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.integration.conftest import metric_value, scrape

pytestmark = pytest.mark.integration


def encoder_stub(stack, channel_to):
    return query_encoder_pb2_grpc.QueryEncoderStub(channel_to(stack.address("query_encoder")))


def encode(stub, *texts, timeout=30):
    request = query_encoder_pb2.EncodeRequest(queries=[query_encoder_pb2.QueryInput(text=t) for t in texts])
    return stub.Encode(request, timeout=timeout)


def vector(tensor: common_pb2.Tensor) -> np.ndarray:
    return np.frombuffer(tensor.data, dtype="<f4").reshape(tuple(tensor.shape))


def triton_inferences(stack, model: str) -> float:
    return metric_value(scrape(stack.processes["tritonserver"].endpoints["metrics"]), "nv_inference_count", model=model)


def test_health_is_serving_for_server_and_service(tiny_stack, channel_to):
    health = health_pb2_grpc.HealthStub(channel_to(tiny_stack.address("query_encoder")))
    for service in ("", "amcsearch.v1.QueryEncoder"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service_health_and_reflection(tiny_stack, channel_to):
    database = ProtoReflectionDescriptorDatabase(channel_to(tiny_stack.address("query_encoder")))
    services = set(database.get_services())
    assert {
        "amcsearch.v1.QueryEncoder",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    method = database.FindFileContainingSymbol("amcsearch.v1.QueryEncoder")
    assert method.name == "amcsearch/v1/query_encoder.proto"


def test_second_identical_encode_is_a_cache_hit_without_triton_call(tiny_stack, channel_to):
    stub = encoder_stub(tiny_stack, channel_to)
    first = encode(stub, "A large  RED circle")
    before = triton_inferences(tiny_stack, "text_encoder")
    second = encode(stub, "a large red circle")
    after = triton_inferences(tiny_stack, "text_encoder")
    assert not first.embeddings[0].cache_hit
    assert second.embeddings[0].cache_hit
    assert second.embeddings[0].normalized_text == "a large red circle"
    np.testing.assert_allclose(vector(first.embeddings[0].embedding), vector(second.embeddings[0].embedding))
    assert after == before


def test_batch_is_one_triton_call_and_duplicates_are_computed_once(tiny_stack, channel_to):
    stub = encoder_stub(tiny_stack, channel_to)
    before = triton_inferences(tiny_stack, "text_encoder")
    reply = encode(stub, "blue square", "green triangle", "blue square", "purple circle top-left")
    after = triton_inferences(tiny_stack, "text_encoder")
    assert len(reply.embeddings) == 4
    np.testing.assert_array_equal(vector(reply.embeddings[0].embedding), vector(reply.embeddings[2].embedding))
    assert after - before == 3  # three distinct texts, one request to Triton
    norms = [np.linalg.norm(vector(e.embedding)) for e in reply.embeddings]
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def test_long_text_is_truncated_and_reported(tiny_stack, channel_to):
    reply = encode(encoder_stub(tiny_stack, channel_to), " ".join(["word"] * 100))
    assert reply.embeddings[0].truncated


def test_metrics_exposition_after_a_call(tiny_stack, channel_to):
    encode(encoder_stub(tiny_stack, channel_to), "metrics please")
    text = scrape(tiny_stack.processes["query_encoder"].endpoints["metrics"])
    assert (
        metric_value(text, "amcsearch_rpc_duration_seconds_count", service="query_encoder", method="Encode", code="OK")
        >= 1
    )
    assert "amcsearch_rpc_in_flight" in text
    assert metric_value(text, "amcsearch_stage_duration_seconds_count", stage="triton_text_encoder") >= 1
    assert metric_value(text, "amcsearch_cache_misses_total", kind="query") >= 1


@pytest.mark.parametrize(
    ("queries", "code", "fragment"),
    [
        ([], grpc.StatusCode.INVALID_ARGUMENT, "queries is empty"),
        ([query_encoder_pb2.QueryInput(text="   ")], grpc.StatusCode.INVALID_ARGUMENT, "text is empty"),
        ([query_encoder_pb2.QueryInput()], grpc.StatusCode.INVALID_ARGUMENT, "set one of"),
        ([query_encoder_pb2.QueryInput(text="x" * 2001)], grpc.StatusCode.RESOURCE_EXHAUSTED, "limit is 2000"),
        ([query_encoder_pb2.QueryInput(text="ok")] * 257, grpc.StatusCode.RESOURCE_EXHAUSTED, "limit is 256"),
        (
            [query_encoder_pb2.QueryInput(image=common_pb2.ImageInput(data=b"\x89PNG"))],
            grpc.StatusCode.UNAVAILABLE,
            "image_encoder is not deployed",
        ),
    ],
)
def test_bad_requests_get_clear_statuses_and_the_server_stays_healthy(tiny_stack, channel_to, queries, code, fragment):
    stub = encoder_stub(tiny_stack, channel_to)
    with pytest.raises(grpc.RpcError) as raised:
        stub.Encode(query_encoder_pb2.EncodeRequest(queries=queries), timeout=10)
    assert raised.value.code() == code
    assert fragment in raised.value.details()
    assert "Traceback" not in raised.value.details()
    assert encode(stub, "still fine").embeddings


def test_oversized_message_is_resource_exhausted(tiny_stack, channel_to):
    stub = encoder_stub(tiny_stack, channel_to)
    huge = query_encoder_pb2.QueryInput(image=common_pb2.ImageInput(data=b"\0" * (65 * 1024 * 1024)))
    with pytest.raises(grpc.RpcError) as raised:
        stub.Encode(query_encoder_pb2.EncodeRequest(queries=[huge]), timeout=30)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_expired_deadline_is_deadline_exceeded(tiny_stack, channel_to):
    stub = encoder_stub(tiny_stack, channel_to)
    with pytest.raises(grpc.RpcError) as raised:
        encode(stub, "never in time " * 3, timeout=0.0005)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
