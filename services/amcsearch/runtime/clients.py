"""Calls from one service to another: channels with our limits, statuses translated once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from amcsearch.runtime.errors import DeadlineExceeded, from_rpc_error

R = TypeVar("R")
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def open_channel(address: str) -> grpc.aio.Channel:
    """A channel that reconnects within ~1 s once a restarted peer is back (gRPC's default
    backoff grows to 120 s, which would keep a recovered service degraded for minutes)."""
    return grpc.aio.insecure_channel(address, options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ])


async def call(method: Callable[..., Awaitable[R]], request: Any, timeout: float | None, what: str) -> R:
    """Call `method` within the caller's remaining deadline; failures become project errors."""
    if timeout is not None and timeout <= 0:
        raise DeadlineExceeded(f"no time left to call {what}")
    try:
        return await method(request, timeout=timeout)
    except grpc.RpcError as error:
        raise from_rpc_error(error, what) from error
