"""The whole system as child processes: tritonserver, redis-server and the services, placed
where the environment says (README's "`make up`"), started, checked healthy, stopped.

The launcher (`make up`), the demo, the load test, the benchmarks and the integration tests all
start it through `Stack`, so that tests run exactly what users run.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from amcsearch import processes
from amcsearch.ports import REDIS_PORT, SERVICES, TRITON_PORTS, ServiceSpec
from amcsearch.processes import Process, connect_host, free_port, port_taken, wait_until
from amcsearch.runtime.redact import redact, secret_values
from amcsearch.runtime.settings import SettingsError
from amcsearch.supervisor import RestartPolicy, Supervisor

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
SERVICES_ROOT = ROOT / "services"
FREE_PORTS_HINT = "or start with --free-ports (make up ARGS=--free-ports)"
BY_PREFIX = {spec.module: spec.prefix for spec in SERVICES}


class PortTakenError(RuntimeError):
    """A port the stack is to listen on is taken; the message is one line naming the variable
    that moves it."""


@dataclass(frozen=True)
class Listener:
    what: str
    variable: str
    host: str
    port: int
    explicit: bool
    """The port came from its variable (so --free-ports would not move it)."""


@dataclass
class Stack:
    """The whole system as child processes. Ports are free ones unless `fixed_ports` (the
    defaults of ports.py); a variable of `environ` or `extra_env` always wins."""

    repository: Path
    log_dir: Path
    fixed_ports: bool = False
    redis_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    services: tuple[ServiceSpec, ...] | None = None
    environ: Mapping[str, str] = field(default_factory=dict)
    """Variables that place things (main() passes os.environ): <SERVICE>_PORT, _METRICS_PORT and
    _HOST move a service; <SERVICE>_ADDR says it runs elsewhere (not started; the others call it
    there; SEARCH_ADDR, which nothing in the stack calls, gives the gateway's port instead);
    TRITON_URL and REDIS_URL name a Triton and a Redis of your own (none started);
    TRITON_GRPC_PORT, TRITON_HTTP_PORT, TRITON_METRICS_PORT and REDIS_PORT move the launcher's."""
    processes: dict[str, Process] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    """Values never printed (tokens, Redis's password, Triton's key): table() and main() redact them."""
    listeners: list[Listener] = field(default_factory=list)
    reserved: list[Listener] = field(default_factory=list)
    """Ports checked with the stack's own though the stack does not bind them (the launcher's)."""

    @property
    def variables(self) -> dict[str, str]:
        return {**self.environ, **self.extra_env}

    def models_present(self) -> set[str]:
        return {p.parent.parent.name for p in self.repository.glob("*/configs/pyt.pbtxt")}

    def external_services(self) -> dict[str, str]:
        """module -> address of the internal services an *_ADDR variable places elsewhere."""
        variables = self.variables
        return {
            s.module: variables[f"{s.prefix}_ADDR"]
            for s in SERVICES
            if s.module != "search" and variables.get(f"{s.prefix}_ADDR")
        }

    def selected_services(self) -> list[ServiceSpec]:
        present = self.models_present()
        chosen = self.services if self.services is not None else SERVICES
        external = self.external_services()
        return [s for s in chosen if set(s.models) <= present and s.module not in external]

    def _port(self, variable: str, default: int, what: str, host: str = "127.0.0.1", raw: str | None = None) -> int:
        """The port `variable` gives (0: a free one; -1: none, for metrics), else the default
        (`fixed_ports`) or a free one; recorded as a listener to check."""
        raw = self.variables.get(variable, "").strip() if raw is None else raw
        if raw:
            try:
                port = int(raw)
            except ValueError:
                raise SettingsError(f"{variable}={raw!r}: expected a port number") from None
            if not -1 <= port <= 65535 or (port == -1 and not variable.endswith("METRICS_PORT")):
                raise SettingsError(f"{variable}={raw!r}: expected a port in 1..65535 (0: a free one)")
            if port <= 0:
                return free_port() if port == 0 else -1
        else:
            port = default if self.fixed_ports else free_port()
        self.listeners.append(Listener(what, variable, host, port, bool(raw)))
        return port

    def check_ports(self) -> None:
        """Fail with one line when a port is given twice or something already listens on it."""
        seen: dict[int, Listener] = {}
        for listener in [*self.listeners, *self.reserved]:
            other = seen.setdefault(listener.port, listener)
            if other is not listener:
                raise PortTakenError(
                    f"port {listener.port} is given to both {other.what} ({other.variable}) and "
                    f"{listener.what} ({listener.variable}): set one of them to another port"
                )
        taken = [listener for listener in seen.values() if port_taken(listener.port, listener.host)]
        if taken:
            first = taken[0]
            hint = "" if first.explicit or not self.fixed_ports else f", {FREE_PORTS_HINT}"
            more = ", ".join(f"{t.port} ({t.variable})" for t in taken[1:])
            raise PortTakenError(
                f"port {first.port} ({first.what}) is taken on {first.host}: set {first.variable} to a free port"
                + hint
                + (f"; taken too: {more} (another `make up`?)" if more else "")
            )

    def start(self, timeout: float = 120.0) -> None:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        started = time.monotonic()
        variables = self.variables
        self.secrets += secret_values(variables)
        self.redis_url = self.redis_url or variables.get("REDIS_URL") or None
        triton_url = variables.get("TRITON_URL", "").strip()
        specs = self.selected_services()

        self.listeners = []
        redis_port = self._port(REDIS_PORT[0], REDIS_PORT[1], "redis-server") if self.redis_url is None else 0
        triton_ports = {} if triton_url else {e: self._port(v, d, f"tritonserver {e}") for e, v, d in TRITON_PORTS}
        ports: dict[str, tuple[str, int, int]] = {}
        for spec in specs:
            host = variables.get(f"{spec.prefix}_HOST", "").strip() or "127.0.0.1"
            variable, raw = f"{spec.prefix}_PORT", None
            if spec.module == "search" and not variables.get(variable) and variables.get("SEARCH_ADDR"):
                variable, raw = "SEARCH_ADDR", variables["SEARCH_ADDR"].rsplit(":", 1)[-1]
            port = self._port(variable, spec.port, f"{spec.module} gRPC", host, raw)
            metrics = self._port(f"{spec.prefix}_METRICS_PORT", spec.metrics_port, f"{spec.module} metrics", host)
            ports[spec.module] = (host, port, metrics)
        self.check_ports()

        if self.redis_url is None:
            password = secrets.token_urlsafe(24)
            self.secrets.append(password)
            redis = processes.redis_process(redis_port, self.log_dir, password)
            self._launch(redis)
            wait_until(lambda: processes.redis_ready(redis_port), 20, "redis-server", redis)
            self.redis_url = f"redis://:{password}@127.0.0.1:{redis_port}/0"
        triton = None
        admin_key = variables.get("TRITON_ADMIN_KEY", "")
        if not triton_url:
            if variables.get("INTERNAL_AUTH_TOKEN") and not admin_key:
                admin_key = secrets.token_urlsafe(24)
                self.secrets.append(admin_key)
            triton = processes.triton_process(
                self.repository,
                self.log_dir,
                triton_ports["grpc"],
                triton_ports["http"],
                triton_ports["metrics"],
                admin_key=admin_key,
            )
            self._launch(triton)
            triton_url = triton.endpoints["grpc"]
        self.env = {"TRITON_URL": triton_url, "REDIS_URL": self.redis_url}
        if admin_key:
            self.env["TRITON_ADMIN_KEY"] = admin_key
        self.env.update(self.extra_env)
        for module, address in self.external_services().items():
            self.env[f"{BY_PREFIX[module]}_ADDR"] = address
        for spec in specs:
            host, port, _ = ports[spec.module]
            self.env[f"{spec.prefix}_ADDR"] = f"{connect_host(host)}:{port}"
        if triton is not None:
            wait_until(lambda: processes.triton_ready(triton_ports["http"]), timeout, "tritonserver", triton)
        for spec in specs:
            host, port, metrics = ports[spec.module]
            self._launch(
                processes.service_process(
                    spec.module, spec.prefix, port, metrics, self.env, self.log_dir, SERVICES_ROOT, host
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

    def supervisor(self, policy: RestartPolicy | None = None) -> Supervisor:
        """A supervisor of this stack's children (run it with .run(stopping) or .check())."""
        return Supervisor(self.processes, policy or RestartPolicy())

    def address(self, module: str) -> str:
        return self.processes[module].endpoints["grpc"]

    def stop(self) -> None:
        """Services first (they drain), then Triton, then Redis."""
        order = [p for name, p in self.processes.items() if name not in ("tritonserver", "redis-server")]
        order += [self.processes[n] for n in ("tritonserver", "redis-server") if n in self.processes]
        for process in order:
            process.stop()

    def table(self) -> str:
        """Where each process listens, secrets redacted."""
        rows = [("process", "pid", "endpoints")]
        for name, process in self.processes.items():
            pid = str(process.popen.pid) if process.popen else "-"
            rows.append((name, pid, "  ".join(f"{k}={v}" for k, v in process.endpoints.items())))
        if "redis-server" not in self.processes and self.redis_url:
            rows.append(("redis (external)", "-", f"redis={self.redis_url}"))
        if "tritonserver" not in self.processes and self.env.get("TRITON_URL"):
            rows.append(("tritonserver (external)", "-", f"grpc={self.env['TRITON_URL']}"))
        for module, address in self.external_services().items():
            rows.append((f"{module} (external)", "-", f"grpc={address}"))
        widths = [max(len(r[i]) for r in rows) for i in range(2)]
        lines = (f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]}" for r in rows)
        return redact("\n".join(lines), self.secrets)
