"""Start the whole stack for a tool run, with all its state under one work directory."""

from __future__ import annotations

from pathlib import Path

from amcsearch.launcher import Stack


def start_stack(repository: Path, work: Path, extra_env: dict[str, str] | None = None) -> Stack:
    """Triton, Redis and every service on free loopback ports; logs and SearchService's
    embedded index file under `work`, apart from `make up`'s var/."""
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    stack = Stack(
        repository.resolve(), work / "logs", extra_env={"INDEX_URI": str(work / "index.sqlite"), **(extra_env or {})}
    )
    stack.start(timeout=300)
    return stack
