"""When an OK reply still failed its caller (no locust import: the test suite uses this too)."""

from __future__ import annotations

from typing import Any


class IncompleteReplyError(Exception):
    """The RPC answered OK but not with the whole result."""


def reply_problem(reply: Any) -> str | None:
    """Why an OK reply is a failure for its caller, or None: a Search that skipped a stage
    (degradations), an Index that left items out (failed_count), a BatchSearch with such a search."""
    for response in getattr(reply, "responses", []):
        problem = reply_problem(response)
        if problem:
            return problem
    degradations = getattr(reply, "degradations", None)
    if degradations:
        return "; ".join(f"{d.stage}: {d.reason}" for d in degradations)
    failed = getattr(reply, "failed_count", 0)
    if failed:
        errors = [f"{r.id}: {r.error_code} {r.error}" for r in reply.results if not r.indexed]
        return f"{failed} items not indexed ({'; '.join(errors[:3])})"
    return None
