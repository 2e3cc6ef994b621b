"""The server interceptor: RPC latency and in-flight metrics, and errors mapped to statuses.

This is the one place where exceptions become gRPC statuses: a project error aborts with its
own code and message; anything else is logged with its traceback and answered INTERNAL with a
short message, so a caller never sees a stack trace. It also bounds every RPC by a deadline: the
caller's, or default_deadline_seconds when the caller set none (runtime/deadlines.py), and it
answers INVALID_ARGUMENT for a request that does not parse.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from amcsearch.runtime import deadlines
from amcsearch.runtime.auth import check_bearer
from amcsearch.runtime.errors import AmcsearchError, InvalidArgument
from amcsearch.runtime.metrics import RPC_IN_FLIGHT, RPC_SECONDS

log = logging.getLogger(__name__)
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Answered without the internal token: orchestrators probe health, operators list services."""


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: str, default_deadline_seconds: float = 30.0, required_token: str = "") -> None:
        """`required_token`: when set, every RPC of the service's own API must carry it."""
        self.service = service
        self.default_deadline_seconds = default_deadline_seconds
        self.required_token = required_token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        open_method = handler_call_details.method.startswith(OPEN_SERVICES)
        return grpc.unary_unary_rpc_method_handler(
            self._wrap(handler.unary_unary, method, "" if open_method else self.required_token),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _wrap(
        self, behavior: Callable[..., Awaitable[Any]], method: str, required_token: str
    ) -> Callable[..., Awaitable[Any]]:
        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            in_flight = RPC_IN_FLIGHT.labels(self.service, method)
            in_flight.inc()
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            remaining = context.time_remaining()
            seconds = self.default_deadline_seconds if remaining is None else remaining
            deadline_token = deadlines.start(seconds)
            try:
                check_bearer(context.invocation_metadata(), required_token, method, "internal calls")
                if isinstance(request, MalformedRequest):
                    raise InvalidArgument(f"the request is not a valid {method} message: {request.reason}")
                return await asyncio.wait_for(behavior(request, context), timeout=max(seconds, 0.001))
            except AmcsearchError as error:
                code = error.code
                await context.abort(code, str(error))
            except TimeoutError:
                code = grpc.StatusCode.DEADLINE_EXCEEDED
                await context.abort(code, f"{method} did not finish within the deadline")
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as error:  # aborts raised by context.abort land here too
                aborted = context.code() if hasattr(context, "code") else None
                if aborted is not None and aborted != grpc.StatusCode.OK:
                    code = aborted
                    raise
                code = grpc.StatusCode.INTERNAL
                log.exception("%s.%s failed", self.service, method)
                await context.abort(code, f"internal error in {self.service}.{method}: {type(error).__name__}")
            finally:
                deadlines.reset(deadline_token)
                RPC_SECONDS.labels(self.service, method, code.name).observe(time.perf_counter() - start)
                in_flight.dec()

        return observed


class MalformedRequest:
    """What a request that does not parse becomes, so the RPC can answer INVALID_ARGUMENT
    (gRPC itself answers UNKNOWN "Unexpected DecodeError" when the deserializer raises)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:
            return MalformedRequest(str(error) or "it does not decode")

    return parse
