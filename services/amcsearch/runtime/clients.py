"""Calls from one service to another: channels with our limits, statuses translated once."""

from __future__ import annotations

import json
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


SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": ""},
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)
"""Every channel: round robin over the peer's replicas, only to replicas whose health service
says SERVING, and an UNAVAILABLE call tried again (on another replica) within its deadline.
Every RPC of the project may be retried: searches read, Index upserts, Delete is idempotent."""


def target(address: str) -> str:
    """A gRPC target for one address, a comma-separated list of replicas (host:port,host:port),
    or a name a resolver expands (dns:///search-headless:50050 on Kubernetes)."""
    replicas = [a.strip() for a in address.split(",") if a.strip()]
    if len(replicas) > 1:
        return "ipv4:" + ",".join(replicas)
    return replicas[0] if replicas else address


def channel_options() -> list[tuple[str, object]]:
    """Our limits, the replica/retry service config, and a reconnect within ~1 s once a
    restarted peer is back (gRPC's default backoff grows to 120 s)."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.service_config", SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
    ]


def open_channel(address: str, tls: ClientTLSSettings | None = None) -> grpc.aio.Channel:
    """A channel to a service's replicas (TLS when `tls` names a CA; the internal token when set)."""
    options = channel_options()
    address = target(address)
    credentials = channel_credentials(tls) if tls is not None else None
    interceptors = [BearerToken(tls.internal_token)] if tls is not None and tls.internal_token else None
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)


class BearerToken(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds 'authorization: Bearer <token>' to every call (the internal services' token)."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
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
