"""Calls from one service to another: channels with our limits, statuses translated once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from amcsearch.runtime.errors import DeadlineExceeded, from_rpc_error
from amcsearch.runtime.settings import ClientTLSSettings

R = TypeVar("R")
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def channel_credentials(tls: ClientTLSSettings) -> grpc.ChannelCredentials | None:
    if not tls.ca_file:
        return None

    def read(path: str) -> bytes | None:
        if not path:
            return None
        with open(path, "rb") as file:
            return file.read()

    return grpc.ssl_channel_credentials(read(tls.ca_file), read(tls.key_file), read(tls.cert_file))


def open_channel(address: str, tls: ClientTLSSettings | None = None) -> grpc.aio.Channel:
    """A channel (TLS when `tls` names a CA) that reconnects within ~1 s once a restarted peer
    is back (gRPC's default backoff grows to 120 s, which would keep a recovered service
    degraded for minutes)."""
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    credentials = channel_credentials(tls) if tls is not None else None
    interceptors = [BearerToken(tls.internal_token)] if tls is not None and tls.internal_token else None
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)


class BearerToken(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds 'authorization: Bearer <token>' to every call (the internal services' token)."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()), self.header)
        details = client_call_details._replace(metadata=metadata)
        return await continuation(details, request)


async def call(method: Callable[..., Awaitable[R]], request: Any, timeout: float | None, what: str) -> R:
    """Call `method` within the caller's remaining deadline; failures become project errors."""
    if timeout is not None and timeout <= 0:
        raise DeadlineExceeded(f"no time left to call {what}")
    try:
        return await method(request, timeout=timeout)
    except grpc.RpcError as error:
        raise from_rpc_error(error, what) from error
