"""Project exceptions, each carrying its gRPC status; mapped to statuses in one place."""

from __future__ import annotations

import grpc


class AmcsearchError(Exception):
    """Base of the errors a service answers with; the message is shown to the caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(AmcsearchError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(AmcsearchError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(AmcsearchError):
    """Too large or too many: the message says the size and the limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(AmcsearchError):
    """A dependency (Triton, a model service, the index) cannot be reached; retrying may help."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(AmcsearchError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(AmcsearchError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(AmcsearchError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Internal(AmcsearchError):
    """A bug in a service (ours or downstream): shown as such, never taken for an outage."""

    code = grpc.StatusCode.INTERNAL


_FROM_GRPC = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.UNKNOWN: Internal,
}


def from_rpc_error(error: grpc.RpcError, what: str) -> AmcsearchError:
    """Translate a downstream service's status into ours, naming the service that failed."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    cls = _FROM_GRPC.get(code, Unavailable)
    return cls(f"{what}: {details}")


def require(condition: bool, message: str) -> None:
    """Raise InvalidArgument with `message` unless `condition` holds."""
    if not condition:
        raise InvalidArgument(message)


def limit(value: int, maximum: int, what: str, unit: str = "") -> None:
    """Raise ResourceExhausted when `value` exceeds `maximum`, saying both."""
    if value > maximum:
        suffix = f" {unit}" if unit else ""
        raise ResourceExhausted(f"{what} is {value}{suffix}, the limit is {maximum}{suffix}")
