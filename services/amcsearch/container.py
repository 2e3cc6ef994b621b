"""`python -m amcsearch.container SERVICE [ARGS]`: the container image's entrypoint.

SERVICE names a service (search, query_encoder, ...; dashes work too). Inside a container,
loopback is unreachable from other containers and port 0 means "a free port", so unless the
environment says otherwise the service binds 0.0.0.0 on its default ports (amcsearch/ports.py).
Anything else runs as a command (`amcsearch stats`, `python -m ...`).
"""

from __future__ import annotations

import os
import sys

from amcsearch.ports import BY_MODULE


def main(argv: list[str]) -> None:
    name = (argv[0] if argv else "search").replace("-", "_")
    spec = BY_MODULE.get(name)
    if spec is None:
        os.execvp(argv[0], argv)  # does not return
        return
    for suffix, value in (("HOST", "0.0.0.0"), ("PORT", spec.port), ("METRICS_PORT", spec.metrics_port)):
        os.environ.setdefault(f"{spec.prefix}_{suffix}", str(value))
    os.execvp(sys.executable, [sys.executable, "-m", f"amcsearch.{spec.module}", *argv[1:]])


if __name__ == "__main__":
    main(sys.argv[1:])
