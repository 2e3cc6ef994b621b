"""Start the whole stack for a tool run, with all its state under one work directory."""

from __future__ import annotations

import os
from pathlib import Path

from amcsearch.launcher import Stack


def start_stack(repository: Path, work: Path, extra_env: dict[str, str] | None = None) -> Stack:
    """Triton, Redis and every service on free loopback ports; logs in `work`/logs. The services
    start with `work` as their directory, so SearchService's milvus-lite file (its default
    INDEX_URI, var/milvus.db, is relative) lands there too, apart from `make up`'s."""
    work.mkdir(parents=True, exist_ok=True)
    stack = Stack(repository.resolve(), work.resolve() / "logs", extra_env=dict(extra_env or {}))
    previous = Path.cwd()
    os.chdir(work)
    try:
        stack.start(timeout=300)
    finally:
        os.chdir(previous)
    return stack
