"""The server interceptor: RPC latency and in-flight metrics, and errors mapped to statuses.

This is the one place where exceptions become gRPC statuses: a project error aborts with its
own code and message; anything else is logged with its traceback and answered INTERNAL with a
short message, so a caller never sees a stack trace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from amcsearch.runtime.errors import AmcsearchError, InvalidArgument
from amcsearch.runtime.metrics import RPC_IN_FLIGHT, RPC_SECONDS

log = logging.getLogger(__name__)


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: str) -> None:
        self.service = service

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        return grpc.unary_unary_rpc_method_handler(
            self._wrap(handler.unary_unary, method),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _wrap(self, behavior: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            in_flight = RPC_IN_FLIGHT.labels(self.service, method)
            in_flight.inc()
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if isinstance(request, MalformedRequest):
                    raise InvalidArgument(f"the request is not a valid {method} message: {request.reason}")
                return await behavior(request, context)
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
