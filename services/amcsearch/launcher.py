"""`make up`: tritonserver, redis-server (unless REDIS_URL is set) and every service, healthy.

`python -m amcsearch.launcher` starts them, waits until each answers, prints where each listens,
supervises them (a child that dies is started again with backoff, as Kubernetes restarts a
container, while the others keep serving; only a crash loop stops the stack, with a message
naming the child and its log), and stops them all on Ctrl-C or SIGTERM. `Stack` is the same
thing as a library, used by the integration tests and the demo.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from amcsearch import processes
from amcsearch.ports import SERVICES, ServiceSpec
from amcsearch.processes import Process, free_port, wait_until

__all__ = ["SERVICES", "ServiceSpec", "Stack"]

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
SERVICES_ROOT = ROOT / "services"


RESTART_BACKOFF_SECONDS = (0.5, 1, 2, 4, 8, 15, 30)
CRASH_LOOP_RESTARTS = 5
CRASH_LOOP_WINDOW_SECONDS = 120.0
"""More than CRASH_LOOP_RESTARTS restarts of one child within the window is a crash loop."""


class CrashLoopError(RuntimeError):
    """A child keeps dying: the stack stops rather than restart it for ever."""


@dataclass
class Supervisor:
    """Restarts of each child: when it died, how often, when the next start is due."""

    restarts: dict[str, list[float]] = field(default_factory=dict)
    due: dict[str, float] = field(default_factory=dict)

    def check(self, processes: dict[str, Process], now: float) -> list[str]:
        """Start again every dead child whose backoff has passed; returns the names restarted.
        Raises CrashLoopError for a child that died too often."""
        restarted = []
        for name, process in processes.items():
            if process.alive():
                continue
            if name not in self.due:
                recent = [t for t in self.restarts.get(name, []) if now - t < CRASH_LOOP_WINDOW_SECONDS]
                if len(recent) >= CRASH_LOOP_RESTARTS:
                    raise CrashLoopError(
                        f"{name} died {len(recent) + 1} times within {CRASH_LOOP_WINDOW_SECONDS:.0f}s; "
                        f"stopping the stack. Its log: {process.log_path}\n{process.log_tail(15)}"
                    )
                self.restarts[name] = recent
                self.due[name] = now + RESTART_BACKOFF_SECONDS[min(len(recent), len(RESTART_BACKOFF_SECONDS) - 1)]
                log.warning(
                    "%s exited (code %s); starting it again in %.1fs",
                    name,
                    process.popen.returncode if process.popen else "?",
                    self.due[name] - now,
                )
            if now >= self.due[name]:
                del self.due[name]
                self.restarts[name].append(now)
                process.start()
                restarted.append(name)
        return restarted


@dataclass
class Stack:
    """The whole system as child processes. Ports are free ones unless `fixed_ports`."""

    repository: Path
    log_dir: Path
    fixed_ports: bool = False
    redis_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    services: tuple[ServiceSpec, ...] | None = None
    processes: dict[str, Process] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def _port(self, default: int) -> int:
        return default if self.fixed_ports else free_port()

    def models_present(self) -> set[str]:
        return {p.parent.parent.name for p in self.repository.glob("*/configs/pyt.pbtxt")}

    def selected_services(self) -> list[ServiceSpec]:
        present = self.models_present()
        chosen = self.services if self.services is not None else SERVICES
        return [s for s in chosen if set(s.models) <= present]

    def start(self, timeout: float = 120.0) -> None:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        started = time.monotonic()
        if self.redis_url is None:
            port = self._port(6380)
            redis = processes.redis_process(port, self.log_dir)
            self._launch(redis)
            wait_until(lambda: processes.redis_ready(port), 20, "redis-server", redis)
            self.redis_url = redis.endpoints["redis"]
        grpc_port, http_port, metrics_port = self._port(8001), self._port(8000), self._port(8002)
        triton = processes.triton_process(self.repository, self.log_dir, grpc_port, http_port, metrics_port)
        self._launch(triton)
        self.env = {"TRITON_URL": triton.endpoints["grpc"], "REDIS_URL": self.redis_url, **self.extra_env}
        specs = self.selected_services()
        ports = {s.module: (self._port(s.port), self._port(s.metrics_port)) for s in specs}
        for spec in specs:
            self.env[f"{spec.prefix}_ADDR"] = f"127.0.0.1:{ports[spec.module][0]}"
        wait_until(lambda: processes.triton_ready(http_port), timeout, "tritonserver", triton)
        for spec in specs:
            port, metrics = ports[spec.module]
            self._launch(
                processes.service_process(
                    spec.module, spec.prefix, port, metrics, self.env, self.log_dir, SERVICES_ROOT
                )
            )
        for spec in specs:
            process = self.processes[spec.module]
            remaining = max(5.0, timeout - (time.monotonic() - started))
            wait_until(
                lambda process=process: processes.grpc_serving(process.endpoints["grpc"]),
                remaining,
                spec.module,
                process,
                interval=0.5,
            )
        log.info("stack healthy in %.1fs", time.monotonic() - started)

    def _launch(self, process: Process) -> None:
        process.start()
        self.processes[process.name] = process

    def supervise(self, supervisor: Supervisor) -> list[str]:
        """One supervision round (see Supervisor.check)."""
        return supervisor.check(self.processes, time.monotonic())

    def address(self, module: str) -> str:
        return self.processes[module].endpoints["grpc"]

    def stop(self) -> None:
        """Services first (they drain), then Triton, then Redis."""
        order = [p for name, p in self.processes.items() if name not in ("tritonserver", "redis-server")]
        order += [self.processes[n] for n in ("tritonserver", "redis-server") if n in self.processes]
        for process in order:
            process.stop()

    def table(self) -> str:
        rows = [("process", "pid", "endpoints")]
        for name, process in self.processes.items():
            pid = str(process.popen.pid) if process.popen else "-"
            rows.append((name, pid, "  ".join(f"{k}={v}" for k, v in process.endpoints.items())))
        if "redis-server" not in self.processes and self.redis_url:
            rows.append(("redis (external)", "-", f"redis={self.redis_url}"))
        widths = [max(len(r[i]) for r in rows) for i in range(2)]
        return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]}" for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repository", type=Path, default=Path(os.environ.get("MODEL_REPOSITORY", ROOT / "model_repository"))
    )
    parser.add_argument("--log-dir", type=Path, default=ROOT / "var" / "log")
    parser.add_argument("--free-ports", action="store_true", help="pick free ports instead of the defaults")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(message)s")

    if not any(args.repository.glob("*/configs/pyt.pbtxt")):
        print(f"no models in {args.repository}: run `make models` first", file=sys.stderr)
        return 2
    stack = Stack(args.repository, args.log_dir, fixed_ports=not args.free_ports, redis_url=os.environ.get("REDIS_URL"))
    stopping = threading.Event()

    def request_stop(signum, _frame):
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    started = time.monotonic()
    try:
        stack.start(args.timeout)
    except (TimeoutError, RuntimeError, OSError) as error:
        print(f"stack failed to start: {error}", file=sys.stderr)
        return 1
    print(f"\namcsearch is up ({time.monotonic() - started:.1f}s). Logs in {args.log_dir}.\n")
    print(stack.table())
    print("\nCtrl-C stops everything.", flush=True)
    supervisor = Supervisor()
    status = 0
    try:
        while not stopping.is_set():
            try:
                for name in stack.supervise(supervisor):
                    print(f"{name} had exited: started again", flush=True)
            except CrashLoopError as error:
                print(f"crash loop: {error}", file=sys.stderr, flush=True)
                status = 3
                break
            stopping.wait(0.5)
    finally:
        stack.stop()
        print("stopped.")
    return status


if __name__ == "__main__":
    sys.exit(main())
