"""Pure logic of the shared runtime: settings, cached-array format, breaker, single flight, images."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest
from amcsearch.query_encoder.settings import QueryEncoderSettings
from amcsearch.runtime.cache import CircuitBreaker, content_key, decode_array, encode_array
from amcsearch.runtime.errors import InvalidArgument, ResourceExhausted
from amcsearch.runtime.images import decode_image
from amcsearch.runtime.settings import ImageLimits, SettingsError, from_env
from amcsearch.runtime.singleflight import SingleFlight
from amcsearch.runtime.tensors import from_tensor, to_tensor
from PIL import Image


def test_settings_read_prefixed_and_shared_variables():
    env = {
        "QUERY_ENCODER_PORT": "5005",
        "QUERY_ENCODER_MAX_BATCH": "7",
        "TRITON_URL": "triton:8001",
        "REDIS_URL": "redis://cache:6379/1",
        "CACHE_FLOAT16": "true",
        "QUERY_ENCODER_MAX_IMAGE_BYTES": "10",
    }
    settings = from_env(QueryEncoderSettings, "QUERY_ENCODER", env)
    assert settings.server.port == 5005
    assert settings.max_batch == 7
    assert settings.triton.url == "triton:8001"
    assert settings.cache.redis_url == "redis://cache:6379/1"
    assert settings.cache.float16 is True
    assert settings.images.max_image_bytes == 10


def test_defaults_work_without_any_variable():
    settings = from_env(QueryEncoderSettings, "QUERY_ENCODER", {})
    assert settings.server.host == "127.0.0.1"
    assert settings.cache.timeout_seconds == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("QUERY_ENCODER_PORT", "http"),
        ("QUERY_ENCODER_PORT", "70000"),
        ("CACHE_ENABLED", "maybe"),
        ("QUERY_ENCODER_MAX_BATCH", "0"),
    ],
)
def test_bad_values_fail_fast_naming_the_variable(variable, value):
    with pytest.raises(SettingsError) as raised:
        from_env(QueryEncoderSettings, "QUERY_ENCODER", {variable: value})
    assert variable in str(raised.value) or "must be" in str(raised.value) or "port" in str(raised.value)


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("SEARCH_COALESCE_MAX_BATCH", "0", "SEARCH_COALESCE_MAX_BATCH"),
        ("SEARCH_COALESCE_MAX_BATCH", "33", "SEARCH_COALESCE_MAX_BATCH"),
        ("SEARCH_COALESCE_IN_FLIGHT", "0", "SEARCH_COALESCE_IN_FLIGHT"),
        ("INDEX_FEATURE_CACHE_MIB", "-1", "INDEX_FEATURE_CACHE_MIB"),
    ],
)
def test_gateway_settings_out_of_range_fail_fast(variable, value, fragment):
    from amcsearch.search.settings import PREFIX, SearchSettings

    with pytest.raises(SettingsError, match=fragment):
        from_env(SearchSettings, PREFIX, {variable: value}).validate()


@pytest.mark.parametrize("float16", [False, True])
def test_cached_arrays_round_trip(float16):
    array = np.random.default_rng(0).standard_normal((36, 128)).astype(np.float32)
    restored = decode_array(encode_array(array, float16))
    assert restored.shape == (36, 128) and restored.dtype == np.float32
    np.testing.assert_allclose(restored, array, rtol=1e-3 if float16 else 0, atol=1e-3 if float16 else 0)


def test_cache_keys_separate_kind_model_build_and_content():
    key = content_key("query", "text_encoder", "abc123", "red circle")
    assert key.startswith("query:text_encoder:abc123:") and len(key.rsplit(":", 1)[1]) == 64
    assert key != content_key("query", "text_encoder", "def456", "red circle")
    assert key != content_key("query", "text_encoder", "abc123", "blue circle")


def test_breaker_opens_after_consecutive_failures_and_half_opens_later():
    breaker = CircuitBreaker(failures=3, reset_seconds=0.05)
    for _ in range(2):
        breaker.record(False)
    assert breaker.allow()
    breaker.record(False)
    assert not breaker.allow()
    time.sleep(0.06)
    assert breaker.allow()  # one trial call
    breaker.record(False)
    assert not breaker.allow()  # failed trial: open again at once
    time.sleep(0.06)
    assert breaker.allow()
    breaker.record(True)
    assert breaker.allow() and not breaker.open


def test_single_flight_computes_each_key_once():
    async def scenario():
        flight: SingleFlight[int] = SingleFlight()
        mine, theirs = flight.claim(["a", "b"])
        mine2, theirs2 = flight.claim(["b", "c"])
        assert mine == ["a", "b"] and theirs == {}
        assert mine2 == ["c"] and set(theirs2) == {"b"}
        flight.resolve({"a": 1, "b": 2})
        flight.resolve({"c": 3})
        return await SingleFlight.wait(theirs2)

    assert asyncio.run(scenario()) == {"b": 2}


def _png(width: int, height: int, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color=(255, 0, 0) if mode == "RGB" else 128).save(buffer, format=fmt)
    return buffer.getvalue()


def test_images_decode_to_uint8_of_the_model_size():
    limits = ImageLimits()
    for fmt in ("PNG", "JPEG", "WEBP"):
        pixels = decode_image(_png(300, 200, fmt=fmt), limits)
        assert pixels.shape == (128, 128, 3) and pixels.dtype == np.uint8
    assert decode_image(_png(64, 64, mode="L"), limits).shape == (128, 128, 3)


def test_image_errors_name_the_item_and_the_limit():
    with pytest.raises(InvalidArgument, match="^image 3 cannot be decoded as JPEG, PNG or WebP$"):
        decode_image(b"definitely not an image", ImageLimits(), "image 3")  # no "<_io.BytesIO ... at 0x"
    with pytest.raises(ResourceExhausted, match="limit is 10 bytes"):
        decode_image(_png(32, 32), ImageLimits(max_image_bytes=10))
    with pytest.raises(ResourceExhausted, match="pixels, the limit is 1000"):
        decode_image(_png(64, 64), ImageLimits(max_image_pixels=1000))
    with pytest.raises(ResourceExhausted, match="a side is longer than 50 pixels"):
        decode_image(_png(64, 8), ImageLimits(max_image_side=50))
    with pytest.raises(ResourceExhausted, match="aspect ratio 8:1, the limit is 4:1"):
        decode_image(_png(64, 8), ImageLimits(max_aspect_ratio=4))
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    with pytest.raises(InvalidArgument, match="accepted: JPEG, PNG, WebP"):
        decode_image(gif.getvalue(), ImageLimits(), "image 1")
    truncated = _png(64, 64)[:60]
    with pytest.raises(InvalidArgument, match="^image is truncated or corrupt"):
        decode_image(truncated, ImageLimits())


def test_tensors_round_trip_and_reject_wrong_shapes():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(from_tensor(to_tensor(array), (3, -1), "x"), array)
    with pytest.raises(InvalidArgument, match=r"shape \[3, 4\] is not \[4, 3\]"):
        from_tensor(to_tensor(array), (4, 3), "x")
    broken = to_tensor(array)
    broken.data = broken.data[:-4]
    with pytest.raises(InvalidArgument, match="bytes do not hold"):
        from_tensor(broken, (3, 4), "x")
    with pytest.raises(InvalidArgument, match="NaN"):
        from_tensor(to_tensor(np.array([np.nan], dtype=np.float32)), (1,), "x")


def test_bearer_check():
    from amcsearch.runtime.auth import check_bearer
    from amcsearch.runtime.errors import PermissionDenied, Unauthenticated

    check_bearer([], "", "Index")  # auth off
    check_bearer([("authorization", "Bearer abc")], "abc", "Index")
    check_bearer([("Authorization", b"bearer abc")], "abc", "Index")
    with pytest.raises(Unauthenticated):
        check_bearer([], "abc", "Index")
    with pytest.raises(Unauthenticated):
        check_bearer([("authorization", "abc")], "abc", "Index")
    with pytest.raises(PermissionDenied):
        check_bearer([("authorization", "Bearer abd")], "abc", "Index")


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    """Listening ports from free_port never come from the range the kernel hands to outgoing
    connections, and one process never gets the same port twice."""
    import socket

    from amcsearch.processes import _ephemeral_range, free_port

    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    low, high = _ephemeral_range()
    assert not any(low <= p <= high for p in ports)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", ports[0]))
