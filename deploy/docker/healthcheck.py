"""Container health check: the standard gRPC health service of the service in this container.

`python healthcheck.py [HOST:PORT]`; without an address, the port comes from the service the
entrypoint started (PID 1's `python -m amcsearch.<module>`), its <PREFIX>_PORT variable and the
port table (amcsearch/ports.py).
Exit 0 when SERVING, 1 otherwise (Docker's HEALTHCHECK contract).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
from amcsearch.ports import BY_MODULE
from grpc_health.v1 import health_pb2, health_pb2_grpc


def address_of_pid1() -> str:
    argv = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    modules = [a.decode() for a in argv if a.startswith(b"amcsearch.")]
    if not modules:
        raise SystemExit("PID 1 is not an amcsearch service; pass HOST:PORT")
    spec = BY_MODULE[modules[0].removeprefix("amcsearch.")]
    return f"127.0.0.1:{os.environ.get(f'{spec.prefix}_PORT', spec.port)}"


def main(argv: list[str]) -> int:
    address = argv[1] if len(argv) > 1 else address_of_pid1()
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2.5)
    except grpc.RpcError as error:
        print(f"{address}: {error.code().name}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
