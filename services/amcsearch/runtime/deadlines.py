"""The deadline of the RPC being handled, for every downstream call it makes.

The server interceptor sets it: the caller's deadline, or the service's default_deadline_seconds
when the caller set none (a call without a deadline must not hang as long as a stopped
dependency does). Handlers read what is left with time_left().
"""

from __future__ import annotations

import contextvars
import time

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("amcsearch_deadline", default=None)


def start(seconds: float) -> contextvars.Token:
    return _DEADLINE.set(time.monotonic() + seconds)


def reset(token: contextvars.Token) -> None:
    _DEADLINE.reset(token)


def time_left() -> float | None:
    """Seconds left to the current RPC's deadline (never negative); None outside an RPC."""
    deadline = _DEADLINE.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())
