"""numpy <-> amcsearch.v1.Tensor, with the shape checks every service needs at its edge."""

from __future__ import annotations

from typing import Any

import numpy as np

from amcsearch.runtime.errors import InvalidArgument
from amcsearch.v1 import common_pb2

_DTYPES: dict[Any, np.dtype] = {
    common_pb2.Tensor.FLOAT32: np.dtype("<f4"),
    common_pb2.Tensor.FLOAT16: np.dtype("<f2"),
    common_pb2.Tensor.INT8: np.dtype("i1"),
    common_pb2.Tensor.INT32: np.dtype("<i4"),
    common_pb2.Tensor.UINT8: np.dtype("u1"),
}
_INTEGER: dict[np.dtype, Any] = {
    np.dtype("i1"): common_pb2.Tensor.INT8,
    np.dtype("int32"): common_pb2.Tensor.INT32,
    np.dtype("u1"): common_pb2.Tensor.UINT8,
}
FLOATS = (common_pb2.Tensor.FLOAT32, common_pb2.Tensor.FLOAT16)


def to_tensor(array: np.ndarray, float16: bool = False) -> common_pb2.Tensor:
    """An int8, int32 or uint8 array keeps its type; any other becomes FLOAT32 (FLOAT16 with `float16`)."""
    integer = _INTEGER.get(np.asarray(array).dtype)
    dtype = integer if integer is not None else common_pb2.Tensor.FLOAT16 if float16 else common_pb2.Tensor.FLOAT32
    data = np.ascontiguousarray(array, dtype=_DTYPES[dtype])
    return common_pb2.Tensor(shape=list(data.shape), dtype=dtype, data=data.tobytes())


def to_array(tensor: common_pb2.Tensor) -> np.ndarray:
    """The array of a tensor from one of our own services (trusted: no shape checks): float32,
    or the integer type of INT8 / INT32."""
    dtype = _DTYPES.get(tensor.dtype, _DTYPES[common_pb2.Tensor.FLOAT32])
    array = np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape))
    return array if dtype.kind in "iu" else array.astype(np.float32)


def from_tensor(
    tensor: common_pb2.Tensor, expected_shape: tuple[int, ...], what: str, dtypes: tuple[int, ...] = FLOATS
) -> np.ndarray:
    """The array of `expected_shape` (-1 = any), float32 (or the integer type of an allowed INT8 /
    INT32), or InvalidArgument saying what is wrong."""
    if tensor.dtype not in dtypes:
        names = " or ".join(common_pb2.Tensor.DType.Name(d) for d in dtypes)
        raise InvalidArgument(f"{what}: dtype must be {names}")
    shape = tuple(int(d) for d in tensor.shape)
    if len(shape) != len(expected_shape) or any(e not in (-1, s) for e, s in zip(expected_shape, shape, strict=False)):
        raise InvalidArgument(f"{what}: shape {list(shape)} is not {list(expected_shape)}")
    dtype = _DTYPES[tensor.dtype]
    if any(d < 0 for d in shape) or len(tensor.data) != int(np.prod(shape)) * dtype.itemsize:
        raise InvalidArgument(f"{what}: {len(tensor.data)} bytes do not hold a {list(shape)} {dtype.name} array")
    array = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    if dtype.kind in "iu":
        return array
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise InvalidArgument(f"{what}: contains NaN or infinity")
    return array
