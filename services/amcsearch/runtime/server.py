"""grpc.aio server bootstrap shared by every service.

Health checking (SERVING only while the service's dependencies answer), reflection, message
size and concurrency limits, the metrics/error interceptor, a /metrics port, and graceful
shutdown on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from threadpoolctl import threadpool_limits

from amcsearch.runtime.interceptor import ServiceInterceptor
from amcsearch.runtime.metrics import READY, serve_metrics
from amcsearch.runtime.settings import ServerSettings

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[bool]]
HEALTH_POLL_SECONDS = 2.0


@dataclass
class RunningServer:
    """A started server and what stops it."""

    name: str
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    service_names: list[str]
    grace_seconds: float
    _tasks: list[asyncio.Task] = field(default_factory=list)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.server.stop(self.grace_seconds)


async def _set_serving(running: RunningServer, serving: bool) -> None:
    READY.labels(running.name).set(1 if serving else 0)
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *running.service_names]:
        await running.health.set(name, status)


async def _watch_readiness(running: RunningServer, readiness: ReadinessCheck) -> None:
    """Poll the dependencies and publish the result on the health service."""
    last: bool | None = None
    while True:
        try:
            ready = await readiness()
        except Exception as error:  # a failing check means "not ready", never a dead loop
            log.warning("%s readiness check failed: %s", running.name, error)
            ready = False
        if ready != last:
            log.info("%s is %s", running.name, "SERVING" if ready else "NOT_SERVING")
            await _set_serving(running, ready)
            last = ready
        await asyncio.sleep(HEALTH_POLL_SECONDS)


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS when a certificate is configured; mTLS when a client CA is configured too."""
    if not settings.tls_cert_file:
        return None
    client_ca = _read(settings.tls_client_ca_file) if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(_read(settings.tls_key_file), _read(settings.tls_cert_file))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


async def start_server(
    name: str,
    settings: ServerSettings,
    add_servicers: Callable[[grpc.aio.Server], list[str]],
    readiness: ReadinessCheck | None = None,
    internal: bool = True,
) -> RunningServer:
    """Start a service. `add_servicers` registers servicers and returns their full names;
    `internal` services require the internal token when one is set (the gateway has its own)."""
    token = settings.internal_token if internal else ""
    server = grpc.aio.server(
        interceptors=[ServiceInterceptor(name, settings.default_deadline_seconds, token)],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    service_names = add_servicers(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    address = f"{settings.host}:{settings.port}"
    credentials = server_credentials(settings)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"{name} could not bind {settings.host}:{settings.port}")
    metrics_port = serve_metrics(settings.metrics_port, settings.host)
    await server.start()
    running = RunningServer(name, server, health_servicer, service_names, settings.grace_seconds)
    await _set_serving(running, readiness is None)
    if readiness is not None:
        running._tasks.append(asyncio.create_task(_watch_readiness(running, readiness)))
    log.info("%s listening on %s:%d (metrics :%d)", name, settings.host, port, metrics_port)
    return running


async def serve_until_signalled(running: RunningServer, on_stop: Callable[[], Awaitable[None]] | None = None) -> None:
    """Block until SIGTERM or SIGINT, then drain in-flight RPCs within the grace period."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("%s stopping (grace %.1fs)", running.name, running.grace_seconds)
    await _set_serving(running, False)
    await running.stop()
    if on_stop is not None:
        await on_stop()


def limit_blas_threads() -> None:
    """One BLAS thread per service process (AMCSEARCH_BLAS_THREADS changes it).

    The services' BLAS calls are small (the gateway's exact top-N and candidate cosines are
    matrix-vector products) and come from several threads. OpenBLAS's worker threads spin-wait
    after each call rather than sleep: measured on 2 cores, the gateway's one worker burnt 0.8 of
    a core at 33 Searches/s (8 of 10 s of its CPU at concurrency 1), nearly all of a Search's
    gateway CPU. One thread does the same products with no worker to spin."""
    threadpool_limits(limits=int(os.environ.get("AMCSEARCH_BLAS_THREADS", "1")), user_api="blas")


async def run_service(
    name: str,
    settings: ServerSettings,
    add_servicers: Callable[[grpc.aio.Server], list[str]],
    readiness: ReadinessCheck | None,
    closers: list[Callable[[], Awaitable[None]]],
    internal: bool = True,
) -> None:
    """A service's whole life: start, serve until signalled, drain, close its clients."""
    limit_blas_threads()
    running = await start_server(name, settings, add_servicers, readiness, internal)

    async def close_all() -> None:
        for close in closers:
            await close()

    await serve_until_signalled(running, close_all)
