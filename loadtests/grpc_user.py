"""The GrpcUser base: every RPC goes through a client interceptor that fires locust's request event.

The pattern of locust's examples/grpc: gRPC runs on gevent, one channel per user, and an
interceptor times each call. Two additions: a call can name itself for the statistics
(`Search text` rather than one `Search` row for every kind of query), and a reply that carries
degradations (a stage skipped) or failed items counts as a failure, because the caller did not
get the full answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from grpc_interceptor import ClientInterceptor
from grpc_interceptor.client import ClientCallDetails
from locust import User
from locust.exception import LocustError

from loadtests.replies import IncompleteReplyError, reply_problem

grpc_gevent.init_gevent()

NAME_KEY = "x-locust-name"
"""Metadata key a call may set to name itself in the statistics; stripped before sending."""


class LocustInterceptor(ClientInterceptor):
    def __init__(self, environment) -> None:
        self.env = environment

    def intercept(self, method: Callable, request_or_iterator: Any, call_details: grpc.ClientCallDetails):
        name = call_details.method.rsplit("/", 1)[-1]
        metadata = []
        for key, value in call_details.metadata or ():
            if key == NAME_KEY:
                name = value
            else:
                metadata.append((key, value))
        details = ClientCallDetails(
            call_details.method,
            call_details.timeout,
            metadata or None,
            call_details.credentials,
            call_details.wait_for_ready,
            call_details.compression,
        )
        exception: Exception | None = None
        response_length = 0
        start = time.perf_counter()
        response = method(request_or_iterator, details)
        try:
            reply = response.result()
            response_length = reply.ByteSize()
            problem = reply_problem(reply)
            if problem:
                exception = IncompleteReplyError(problem)
        except grpc.RpcError as error:
            exception = error
        self.env.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=response_length,
            response=response,
            context=None,
            exception=exception,
        )
        return response


class GrpcUser(User):
    """A locust user with `self.stub`, a `stub_class` stub on a channel to `host` (HOST:PORT)."""

    abstract = True
    stub_class: type | None = None
    timeout_seconds = 30.0

    def __init__(self, environment) -> None:
        super().__init__(environment)
        if not self.host or self.stub_class is None:
            raise LocustError("GrpcUser needs host (--host HOST:PORT) and stub_class")
        self._channel = grpc.insecure_channel(self.host)
        channel = grpc.intercept_channel(self._channel, LocustInterceptor(environment))
        self.stub = self.stub_class(channel)

    def call(
        self, rpc: str, request: Any, name: str | None = None, metadata: list[tuple[str, str]] | None = None
    ) -> Any:
        """Call `rpc` on the stub; failures are recorded by the interceptor, not raised."""
        metadata = [*(metadata or []), *([(NAME_KEY, name)] if name else [])]
        try:
            return getattr(self.stub, rpc)(request, timeout=self.timeout_seconds, metadata=metadata or None)
        except grpc.RpcError:
            return None

    def on_stop(self) -> None:
        self._channel.close()
