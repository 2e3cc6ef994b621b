"""Start and stop the real processes of the stack: tritonserver, redis-server, the services.

Used by the launcher (`make up`, `make demo`) and by the integration tests, so that tests run
exactly what users run. Every child gets a parent-death signal (setpriv --pdeathsig), so none
outlives the launcher even if the launcher itself is killed.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from amcsearch.runtime.settings import TRITON_ADMIN_HEADER

log = logging.getLogger(__name__)


def _die_with_parent(argv: list[str]) -> list[str]:
    """Prefix `argv` with util-linux's setpriv so the child gets SIGTERM if we die.

    Not a preexec_fn: running Python code between fork and exec can deadlock in a process with
    threads (gRPC has several), which hung a test here.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


LISTEN_PORTS = (20000, 32000)
"""Where free_port looks first: below Linux's default ephemeral range (32768-60999)."""
_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int, host: str = "127.0.0.1", reuse: bool = False) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if reuse:  # as servers bind: connections in TIME_WAIT on the port are no conflict
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something on this machine holds `port` on `host` (so a child could not bind it)."""
    return not _bindable(port, host, reuse=True)


def connect_host(host: str) -> str:
    """Where to reach a listener bound to `host`: loopback for the wildcard addresses."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host


def free_port() -> int:
    """A port nothing listens on now, for a child to bind soon, outside the ephemeral range.

    Binding port 0 would hand out an ephemeral port, and the kernel gives those to outgoing
    connections too: one can take it before the child binds it (a metrics port failed so, with
    EADDRINUSE, in CI). A random port below the range, not handed out before by this process,
    avoids that; where the range leaves no room below it, port 0 it is.
    """
    low, high = LISTEN_PORTS
    ephemeral_low, ephemeral_high = _ephemeral_range()
    if ephemeral_low <= high and ephemeral_high >= low:  # the range overlaps ours: stay below it
        high = min(high, ephemeral_low - 1)
    if high - low > 1000:
        for _ in range(200):
            port = random.randint(low, high)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    """A child process with a name, its log file and the signal that stops it gracefully."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    stop_signal: int = signal.SIGTERM
    endpoints: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen | None = None
    stdin_data: bytes | None = None
    """Written to the child's stdin at every start, then closed: configuration that must not
    appear on its command line (`ps` shows argv to every local user), such as Redis's password."""

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:  # the child keeps its own copy of the descriptor
            self.popen = subprocess.Popen(
                _die_with_parent(self.argv),
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL if self.stdin_data is None else subprocess.PIPE,
                start_new_session=True,
            )
        if self.stdin_data is not None:
            assert self.popen.stdin is not None
            try:
                self.popen.stdin.write(self.stdin_data)
                self.popen.stdin.close()
            except BrokenPipeError:  # it died at once: the supervisor sees it exit
                pass

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        assert self.popen is not None
        self.popen.send_signal(self.stop_signal)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs: killing it", self.name, timeout)
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def kill(self) -> None:
        """SIGKILL, for fault tests."""
        if self.alive():
            assert self.popen is not None
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_until(check, timeout: float, what: str, process: Process | None = None, interval: float = 0.2) -> None:
    """Poll `check()` until true; fail with the process's log tail when it dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise RuntimeError(f"{what}: {process.name} exited early. Log tail:\n{process.log_tail()}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(interval)
    tail = process.log_tail() if process is not None else ""
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s. Log tail:\n{tail}")


# --- tritonserver from the nvidia-pytriton wheel -------------------------------------------

TRITON_RESTRICTED = ("model-config", "model-repository", "shared-memory", "trace", "logging")


def pytriton_server_dir() -> Path:
    import pytriton  # the wheel ships the tritonserver binary and its backends

    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def prepare_python_backend(server_dir: Path) -> None:
    """Put the stub built for this Python next to libtriton_python.so (idempotent)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
    target = server_dir / "backends" / "python" / "triton_python_backend_stub"
    if not stub.exists():
        raise FileNotFoundError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    if not target.exists() or target.stat().st_size != stub.stat().st_size:
        shutil.copy2(stub, target)


def triton_environment(server_dir: Path) -> dict[str, str]:
    """PATH and LD_LIBRARY_PATH as pytriton sets them: the stub finds Python through PATH."""
    env = dict(os.environ)
    libs = server_dir.parent.parent / "nvidia_pytriton.libs"
    library_path = [str(libs), sysconfig.get_config_var("LIBDIR") or ""]
    if env.get("LD_LIBRARY_PATH"):
        library_path.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(p for p in library_path if p)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    # Each Python-backend model is its own stub process with its own OpenMP pool; by default
    # idle OpenMP threads spin, so on a few cores one model's pool starves the next model's
    # forward (a Search p50 of 105 ms instead of 33 ms on 2 cores). Passive threads sleep.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("GLIBC_TUNABLES", MALLOC_TUNABLES)
    return env


MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=268435456"
"""Keep freed megabyte buffers in the process's heap instead of giving them back to the kernel.
Set for the Triton stubs and every service. Without it, every amc_rescorer forward in a stub took
~550 fresh pages (1,660 minor faults per request of three forwards, none in-process) and ran in
5 ms instead of 2.2-3 ms, and the gateway and AttentionRescorer paid the same for each Rescore's
megabytes of tensors (a BatchSearch of 8: 3.4 -> 1.5 ms of AttentionRescorer CPU per query,
5.0 -> 3.3 ms of gateway CPU, 56 -> 72 queries/s). docs/decisions/0003-python-backend.md."""


def triton_process(
    repository: Path,
    log_dir: Path,
    grpc_port: int,
    http_port: int,
    metrics_port: int,
    models: list[str] | None = None,
    host: str = "127.0.0.1",
    admin_key: str = "",
) -> Process:
    server_dir = pytriton_server_dir()
    prepare_python_backend(server_dir)
    cache_dir = Path(tempfile.mkdtemp(prefix="amcsearch-triton-cache-"))
    argv = [
        str(server_dir / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={server_dir / 'backends'}",
        f"--cache-directory={cache_dir}",
        "--model-config-name=pyt",
        f"--grpc-port={grpc_port}",
        f"--http-port={http_port}",
        f"--metrics-port={metrics_port}",
        # loopback only: Triton listens on every interface unless told otherwise
        f"--grpc-address={host}",
        f"--http-address={host}",
        f"--metrics-address={host}",
        "--allow-metrics=true",
        "--log-verbose=0",
        "--exit-timeout-secs=10",
    ]
    if admin_key:
        # Only callers sending this header may read model configs, manage the repository,
        # register shared memory or change tracing and logging (inference and health stay open).
        restricted = f"{','.join(TRITON_RESTRICTED)}:{TRITON_ADMIN_HEADER}={admin_key}"
        argv += [f"--grpc-restricted-protocol={restricted}", f"--http-restricted-api={restricted}"]
    if models:
        argv.append("--model-control-mode=explicit")
        argv.extend(f"--load-model={model}" for model in models)
    return Process(
        "tritonserver",
        argv,
        triton_environment(server_dir),
        log_dir / "tritonserver.log",
        stop_signal=signal.SIGINT,
        endpoints={
            "grpc": f"127.0.0.1:{grpc_port}",
            "http": f"127.0.0.1:{http_port}",
            "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
        },
    )


def triton_ready(http_port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=1) as response:
        return response.status == 200


# --- redis-server ----------------------------------------------------------------------------


def redis_process(port: int, log_dir: Path, password: str = "") -> Process:
    """redis-server on loopback; with `password`, clients must AUTH (the password travels on
    stdin as a config line, `redis-server -`, so that `ps` does not show it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed: run `make setup` or set REDIS_URL")
    argv = [
        binary,
        *(["-"] if password else []),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxmemory",
        "512mb",
        "--maxmemory-policy",
        "allkeys-lru",
    ]
    return Process(
        "redis-server",
        argv,
        dict(os.environ),
        log_dir / "redis.log",
        endpoints={"redis": f"redis://127.0.0.1:{port}/0"},
        stdin_data=f"requirepass {password}\n".encode() if password else None,
    )


def redis_ready(port: int) -> bool:
    """Redis answers (a PONG, or the NOAUTH of one that has a password)."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))


# --- the amcsearch services ------------------------------------------------------------------


def service_process(
    module: str,
    prefix: str,
    port: int,
    metrics_port: int,
    env: dict[str, str],
    log_dir: Path,
    services_root: Path,
    host: str | None = None,
) -> Process:
    child_env = dict(os.environ)
    child_env.setdefault("GLIBC_TUNABLES", MALLOC_TUNABLES)
    child_env.update(env)
    child_env[f"{prefix}_PORT"] = str(port)
    child_env[f"{prefix}_METRICS_PORT"] = str(metrics_port)
    if host is not None:
        child_env[f"{prefix}_HOST"] = host
    reach = connect_host(host or "127.0.0.1")
    endpoints = {"grpc": f"{reach}:{port}"}
    if metrics_port >= 0:
        endpoints["metrics"] = f"http://{reach}:{metrics_port}/metrics"
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in [str(services_root), child_env.get("PYTHONPATH", "")] if p)
    return Process(
        module,
        [sys.executable, "-m", f"amcsearch.{module}"],
        child_env,
        log_dir / f"{module}.log",
        endpoints=endpoints,
    )


def grpc_serving(address: str, service: str = "") -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
        return reply.status == health_pb2.HealthCheckResponse.SERVING
