"""The launcher's supervision of its children, as Kubernetes restarts a container.

A child that exits is started again after a back-off that doubles with every exit in a row (1 s,
2 s, 4 s, ... up to a cap; CrashLoopBackOff), and a child that has run for a while is healthy
again (its next exit waits the first step again). The others keep serving meanwhile, and the
stack never stops by itself: only Ctrl-C or SIGTERM stop it. Each child's state and restarts are
on the launcher's /metrics and /health (StatusServer) and in its log.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from amcsearch.processes import Process

log = logging.getLogger(__name__)

STATES = ("running", "backoff", "crash_loop")
"""running: alive, at most one exit since it last ran healthily; backoff: waiting to be started
again after one exit; crash_loop: it exited twice or more in a row (waiting or briefly running)."""
CRASH_LOOP_EXITS = 2


@dataclass(frozen=True)
class RestartPolicy:
    """LAUNCHER_RESTART_* variables (read by the launcher's settings)."""

    initial_seconds: float = 1.0
    """The wait before the first restart; it doubles with each exit in a row."""
    max_seconds: float = 60.0
    """The longest wait between restarts."""
    reset_seconds: float = 120.0
    """A child alive this long since its last start ran healthily: its exits in a row reset."""

    def delay(self, exits_in_a_row: int) -> float:
        return min(self.max_seconds, self.initial_seconds * 2 ** max(0, exits_in_a_row - 1))


@dataclass
class Child:
    """What the supervisor knows of one child."""

    started_at: float
    restarts: int = 0
    exits_in_a_row: int = 0
    due: float | None = None
    """When it is to be started again (None while it runs)."""
    last_exit_code: int | None = None

    def state(self) -> str:
        if self.exits_in_a_row >= CRASH_LOOP_EXITS:
            return "crash_loop"
        return "backoff" if self.due is not None else "running"


@dataclass
class Supervisor:
    """Restarts the dead children of `processes` (a name -> Process mapping the stack owns)."""

    processes: dict[str, Process]
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    clock: Callable[[], float] = time.monotonic
    children: dict[str, Child] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self) -> list[str]:
        """One round: note every child that exited, start again those whose wait has passed;
        returns the names started again."""
        restarted = []
        with self.lock:
            now = self.clock()
            for name, process in list(self.processes.items()):
                child = self.children.setdefault(name, Child(started_at=now))
                if process.alive():
                    if child.exits_in_a_row and now - child.started_at >= self.policy.reset_seconds:
                        log.info("%s has run for %.0fs: healthy again", name, now - child.started_at)
                        child.exits_in_a_row = 0
                    continue
                if child.due is None:
                    self._exited(name, process, child, now)
                if child.due is not None and now >= child.due:
                    child.due = None
                    child.restarts += 1
                    child.started_at = now
                    try:
                        process.start()
                    except OSError as error:
                        log.error("%s could not be started again: %s", name, error)
                        continue  # still dead: the next round counts it as one more exit
                    restarted.append(name)
        return restarted

    def _exited(self, name: str, process: Process, child: Child, now: float) -> None:
        if now - child.started_at >= self.policy.reset_seconds:
            child.exits_in_a_row = 0
        child.exits_in_a_row += 1
        child.last_exit_code = process.popen.returncode if process.popen is not None else None
        wait = self.policy.delay(child.exits_in_a_row)
        child.due = now + wait
        crash_loop = "crash-looping, " if child.state() == "crash_loop" else ""
        log.warning(
            "%s exited (code %s; %s%d exits in a row, %d restarts so far); starting it again in %.1fs, "
            "the others keep serving. Its log: %s",
            name,
            child.last_exit_code,
            crash_loop,
            child.exits_in_a_row,
            child.restarts,
            wait,
            process.log_path,
        )

    def run(self, stopping: threading.Event, interval: float = 0.5) -> None:
        """Supervise until `stopping` is set. Run it in a thread that lives as long as the
        children: their parent-death signal (processes.py) follows the thread that started them."""
        while not stopping.is_set():
            self.check()
            stopping.wait(interval)

    def snapshot(self) -> dict[str, dict]:
        """Each child: state, alive, restarts, exits in a row, seconds until its next start."""
        with self.lock:
            now = self.clock()
            return {
                name: {
                    "state": child.state(),
                    "alive": self.processes[name].alive(),
                    "restarts": child.restarts,
                    "exits_in_a_row": child.exits_in_a_row,
                    "next_start_in_seconds": round(max(0.0, child.due - now), 1) if child.due is not None else None,
                    "last_exit_code": child.last_exit_code,
                }
                for name, child in self.children.items()
                if name in self.processes
            }


class SupervisorCollector:
    """The supervisor's state as Prometheus metrics, computed at each scrape."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        snapshot = self.supervisor.snapshot()
        restarts = CounterMetricFamily(
            "amcsearch_child_restarts", "Times the launcher started a child again after it exited", labels=["service"]
        )
        state = GaugeMetricFamily(
            "amcsearch_child_state",
            "1 for the child's current state (running, backoff, crash_loop)",
            labels=["service", "state"],
        )
        up = GaugeMetricFamily("amcsearch_child_up", "1 while the child process is alive", labels=["service"])
        wait = GaugeMetricFamily(
            "amcsearch_child_backoff_seconds",
            "Seconds until the child is started again (0 while it runs)",
            labels=["service"],
        )
        for name, child in snapshot.items():
            restarts.add_metric([name], child["restarts"])
            for each in STATES:
                state.add_metric([name, each], 1.0 if child["state"] == each else 0.0)
            up.add_metric([name], 1.0 if child["alive"] else 0.0)
            wait.add_metric([name], child["next_start_in_seconds"] or 0.0)
        yield from (restarts, state, up, wait)


class StatusServer:
    """The launcher's HTTP endpoint: /metrics (Prometheus) and /health (JSON: 200 when every
    child runs, 503 naming those that do not)."""

    def __init__(self, supervisor: Supervisor, host: str, port: int) -> None:
        registry = CollectorRegistry()
        registry.register(SupervisorCollector(supervisor))  # type: ignore[arg-type]

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path.split("?")[0] == "/metrics":
                    status, body, kind = 200, generate_latest(registry), "text/plain; version=0.0.4"
                elif self.path.split("?")[0] in ("/health", "/healthz"):
                    children = supervisor.snapshot()
                    down = sorted(n for n, c in children.items() if c["state"] != "running")
                    report = {"status": "degraded" if down else "ok", "unhealthy": down, "children": children}
                    status, body, kind = (503 if down else 200), json.dumps(report).encode(), "application/json"
                else:
                    status, body, kind = 404, b"/metrics or /health\n", "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name="launcher-status", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
