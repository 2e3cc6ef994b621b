"""`make up`: tritonserver, redis-server (unless REDIS_URL is set) and every service, healthy.

`python -m amcsearch.launcher` starts them where the environment says (README's table of
variables; defaults otherwise), waits until each answers, prints where each listens, supervises
them (amcsearch/supervisor.py: a child that exits is started again with a doubling back-off while
the others keep serving; the stack never stops by itself), and stops them all on Ctrl-C or
SIGTERM. Its Redis gets a generated password; with INTERNAL_AUTH_TOKEN set, Triton's admin and
shared-memory protocols need a generated key. No secret is printed. `Stack` (amcsearch/stack.py)
is the same thing as a library, used by the integration tests and the demo.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from amcsearch.ports import LAUNCHER_METRICS_PORT, SERVICES, ServiceSpec
from amcsearch.processes import connect_host, free_port
from amcsearch.runtime.redact import RedactingFilter, redact, secret_values
from amcsearch.runtime.settings import SettingsError, from_env, nested
from amcsearch.stack import ROOT, SERVICES_ROOT, Listener, PortTakenError, Stack
from amcsearch.supervisor import RestartPolicy, StatusServer, Supervisor

__all__ = ["ROOT", "SERVICES", "SERVICES_ROOT", "PortTakenError", "ServiceSpec", "Stack"]


@dataclass(frozen=True)
class LauncherSettings:
    """LAUNCHER_* variables."""

    host: str = "127.0.0.1"
    """Where the launcher's /metrics and /health listen."""
    metrics_port: int = LAUNCHER_METRICS_PORT[1]
    """The launcher's /metrics and /health port; 0 picks a free one, -1 turns them off."""
    restart: RestartPolicy = nested(RestartPolicy, "LAUNCHER_RESTART")
    """LAUNCHER_RESTART_INITIAL_SECONDS, _MAX_SECONDS, _RESET_SECONDS (supervisor.py)."""


def load_settings(environ: Mapping[str, str]) -> LauncherSettings:
    settings = from_env(LauncherSettings, "LAUNCHER", environ)
    policy = settings.restart
    if policy.initial_seconds <= 0 or policy.max_seconds < policy.initial_seconds or policy.reset_seconds <= 0:
        raise SettingsError("LAUNCHER_RESTART_*: need 0 < INITIAL_SECONDS <= MAX_SECONDS and RESET_SECONDS > 0")
    return settings


def status_listener(settings: LauncherSettings, environ: Mapping[str, str], free: bool) -> Listener | None:
    """Where the launcher's /metrics and /health are to listen (None: LAUNCHER_METRICS_PORT=-1)."""
    explicit = bool(environ.get(LAUNCHER_METRICS_PORT[0]))
    port = settings.metrics_port
    if port < 0:
        return None
    if port == 0 or (free and not explicit):
        port = free_port()
    return Listener("the launcher's /metrics and /health", LAUNCHER_METRICS_PORT[0], settings.host, port, explicit)


def start_status_server(supervisor: Supervisor, listener: Listener | None) -> StatusServer | None:
    if listener is None:
        return None
    try:
        return StatusServer(supervisor, listener.host, listener.port)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        raise PortTakenError(
            f"port {listener.port} ({listener.what}) is taken on {listener.host}: "
            f"set {listener.variable} to a free port (-1: none)"
        ) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repository", type=Path, default=Path(os.environ.get("MODEL_REPOSITORY", ROOT / "model_repository"))
    )
    parser.add_argument("--log-dir", type=Path, default=ROOT / "var" / "log")
    parser.add_argument(
        "--free-ports", action="store_true", help="pick free ports instead of the defaults (variables still win)"
    )
    parser.add_argument("--timeout", type=float, default=120.0)
    return parser.parse_args(argv)


def serve(stack: Stack, supervisor: Supervisor, stopping: threading.Event, status_server: StatusServer | None) -> None:
    """Supervise until Ctrl-C or SIGTERM, then stop every process."""
    try:
        while not stopping.is_set():
            for name in supervisor.check():
                print(f"{name} had exited: started again", flush=True)
            stopping.wait(0.5)
    finally:
        stack.stop()
        if status_server is not None:
            status_server.close()
        print("stopped.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hidden = secret_values(os.environ)
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter(hidden))
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(message)s", handlers=[handler])

    def fail(message: str, status: int = 1) -> int:
        print(redact(message, hidden), file=sys.stderr, flush=True)
        return status

    if not any(args.repository.glob("*/configs/pyt.pbtxt")):
        return fail(f"no models in {args.repository}: run `make models` first", 2)
    try:
        settings = load_settings(os.environ)
    except SettingsError as error:
        return fail(f"amcsearch: {error}", 2)
    stack = Stack(args.repository, args.log_dir, fixed_ports=not args.free_ports, environ=os.environ, secrets=hidden)
    listener = status_listener(settings, os.environ, args.free_ports)
    stack.reserved = [listener] if listener is not None else []
    supervisor = stack.supervisor(settings.restart)
    stopping, up = threading.Event(), threading.Event()

    def request_stop(signum, _frame):
        stopping.set()
        if not up.is_set():  # still starting: stop now (Stack.start stops what it started)
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    started = time.monotonic()
    status_server = None
    try:
        stack.start(args.timeout)
        status_server = start_status_server(supervisor, listener)
        up.set()
    except (PortTakenError, SettingsError) as error:
        stack.stop()
        return fail(f"amcsearch: {error}")
    except (TimeoutError, RuntimeError, OSError) as error:
        return fail(f"stack failed to start: {error}")
    except KeyboardInterrupt:
        return fail("stopped before the stack was up.", 0)
    print(f"\namcsearch is up ({time.monotonic() - started:.1f}s). Logs in {args.log_dir}.\n")
    print(stack.table())
    if status_server is not None:
        print(
            f"\nlauncher: http://{connect_host(settings.host)}:{status_server.port}/metrics and /health (each child's state)"
        )
    print("\nCtrl-C stops everything.", flush=True)
    serve(stack, supervisor, stopping, status_server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
