"""`make up`'s launcher as a user runs it: everything healthy, then Ctrl-C leaves no process
behind; the variables place every listener; a taken port is one line naming its variable; its
Redis and Triton's admin protocols need a secret nobody sees; a crash-looping child backs off
while the others (text Search included) keep serving."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from amcsearch.launcher import SERVICES_ROOT
from amcsearch.processes import free_port, grpc_serving
from amcsearch.v1 import query_encoder_pb2, query_encoder_pb2_grpc

from tests.integration.conftest import metric_value, png, scrape

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def children(parent: int) -> list[int]:
    found = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                with open(f"/proc/{stat}/stat") as file:
                    fields = file.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == parent:
                found.append(int(stat))
    return found


def test_launcher_starts_everything_and_ctrl_c_stops_every_process(tiny_repository, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SERVICES_ROOT), TRITON_CANARY_INTERVAL_SECONDS="3600")
    env.pop("REDIS_URL", None)
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "amcsearch.launcher",
            "--free-ports",
            "--repository",
            str(tiny_repository),
            "--log-dir",
            str(tmp_path / "logs"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    started = time.monotonic()
    try:
        for line in launcher.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        else:
            pytest.fail("launcher exited before it was up:\n" + "".join(lines))
        output = "".join(lines)
        print(f"stack up in {time.monotonic() - started:.1f}s\n{output}")
        pids = {name: int(pid) for name, pid in re.findall(r"^(\S+)\s+(\d+)\s+\S+=", output, re.M)}
        assert {"redis-server", "tritonserver", "query_encoder"} <= set(pids)
        assert all(alive(pid) for pid in pids.values())
        stubs = children(pids["tritonserver"])
        assert stubs, "tritonserver runs its Python backend models in stub processes"
        pids.update({f"stub {pid}": pid for pid in stubs})
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [name for name, pid in pids.items() if alive(pid)]
    finally:
        if launcher.poll() is None:
            launcher.kill()


def pid_of(parent: int, module: str) -> int | None:
    """The child of `parent` running `module` (its setpriv wrapper execs into the program)."""
    for pid in children(parent):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                if module.encode() in file.read():
                    return pid
        except FileNotFoundError:
            continue
    return None


def wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen within {seconds:.0f}s")


class Launcher:
    """`python -m amcsearch.launcher` with the given variables; its output read as it comes."""

    def __init__(self, repository: Path, log_dir: Path, free_ports: bool = True, **variables: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(SERVICES_ROOT), TRITON_CANARY_INTERVAL_SECONDS="3600")
        for name in ("REDIS_URL", "TRITON_URL", "INTERNAL_AUTH_TOKEN", "TRITON_ADMIN_KEY"):
            env.pop(name, None)
        env.update(variables)
        argv = [sys.executable, "-m", "amcsearch.launcher", "--repository", str(repository), "--log-dir", str(log_dir)]
        self.log_dir = log_dir
        self.popen = subprocess.Popen(
            argv + (["--free-ports"] if free_ports else []),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.up = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)
            if "Ctrl-C stops everything" in line:
                self.up.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_up(self, seconds: float = 180) -> str:
        deadline = time.monotonic() + seconds
        while not self.up.wait(0.2):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.reader.join(5)
                pytest.fail("launcher is not up:\n" + self.output)
        return self.output

    def endpoint(self, process: str, kind: str) -> str:
        found = re.search(rf"^{re.escape(process)}\s+\d+\s+.*\b{kind}=(\S+)", self.output, re.M)
        assert found, f"no {kind} endpoint of {process} in:\n{self.output}"
        return found.group(1)

    def status_url(self) -> str:
        found = re.search(r"launcher: (http://\S+)/metrics", self.output)
        assert found, self.output
        return found.group(1)

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(60)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self.reader.join(10)
        return self.popen.returncode


def serving(address: str) -> bool:
    try:
        return grpc_serving(address)
    except grpc.RpcError:
        return False


def health_of(status: str) -> dict:
    """The launcher's /health (503 while a child is not running)."""
    try:
        with urllib.request.urlopen(f"{status}/health", timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        assert error.code == 503
        return json.loads(error.read())


def encode(address: str, text: str, token: str = "") -> query_encoder_pb2.EncodeReply:
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(address) as channel:
        stub = query_encoder_pb2_grpc.QueryEncoderStub(channel)
        request = query_encoder_pb2.EncodeRequest(queries=[query_encoder_pb2.QueryInput(text=text)])
        return stub.Encode(request, timeout=10, metadata=metadata)


def test_a_crash_looping_child_backs_off_while_the_others_serve_and_the_launcher_stays_up(tiny_repository, tmp_path):
    """kill -9 of redis-server costs cache misses only and it is started again; a query encoder
    killed each time it comes back is started again with a back-off, named on the launcher's
    /metrics, /health and log, and the launcher never stops by itself (it used to stop the whole
    stack after 6 deaths)."""
    launcher = Launcher(
        tiny_repository,
        tmp_path / "logs",
        LAUNCHER_RESTART_INITIAL_SECONDS="0.2",
        LAUNCHER_RESTART_MAX_SECONDS="1",
        LAUNCHER_RESTART_RESET_SECONDS="3600",
    )
    try:
        launcher.wait_up()
        address = launcher.endpoint("query_encoder", "grpc")
        status = launcher.status_url()
        redis = pid_of(launcher.popen.pid, "redis-server")
        os.kill(redis, signal.SIGKILL)
        assert len(encode(address, "redis is dead").embeddings) == 1, "a dead Redis must cost cache misses only"
        wait_for(lambda: (pid_of(launcher.popen.pid, "redis-server") or redis) != redis, 30, "redis-server restart")
        killed = 0
        for _ in range(8):  # kill the query encoder each time it comes back: a crash loop
            pid = wait_for(lambda: pid_of(launcher.popen.pid, "amcsearch.query_encoder"), 60, "query_encoder restart")
            os.kill(pid, signal.SIGKILL)
            killed += 1
            wait_for(lambda pid=pid: not alive(pid), 10, "query_encoder to die")
            assert launcher.popen.poll() is None, "the launcher stopped:\n" + launcher.output
        health = wait_for(
            lambda: (h := health_of(status))["children"]["query_encoder"]["exits_in_a_row"] == killed and h,
            10,
            "the launcher to see the last exit",
        )
        assert health["status"] == "degraded" and health["unhealthy"] == ["query_encoder"], health
        metrics = scrape(f"{status}/metrics")
        assert metric_value(metrics, "amcsearch_child_restarts", service="query_encoder") >= killed - 1
        assert metric_value(metrics, "amcsearch_child_state", service="query_encoder", state="crash_loop") == 1
        assert metric_value(metrics, "amcsearch_child_state", service="tritonserver", state="running") == 1
        assert metric_value(metrics, "amcsearch_child_restarts", service="redis-server") == 1
        wait_for(lambda: serving(address), 60, "query_encoder back, serving")
        assert len(encode(address, "back after the crash loop").embeddings) == 1
        assert launcher.popen.poll() is None
        assert f"query_encoder exited (code -9; crash-looping, {killed} exits in a row" in launcher.output
        assert "redis-server had exited: started again" in launcher.output
        assert "query_encoder.log" in launcher.output
    finally:
        code = launcher.stop()
    assert code == 0, launcher.output
    assert "stopped." in launcher.output


def test_a_taken_port_stops_the_start_with_one_line_naming_its_variable(tiny_repository, tmp_path):
    """It used to start and fail later with a log tail saying 'Address already in use'."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        launcher = Launcher(tiny_repository, tmp_path / "logs", QUERY_ENCODER_PORT=str(port))
        code = launcher.popen.wait(60)
        launcher.reader.join(10)
    lines = [line for line in launcher.lines if line.strip()]
    assert code == 1 and len(lines) == 1, launcher.output
    assert f"port {port} (query_encoder gRPC) is taken" in lines[0] and "set QUERY_ENCODER_PORT" in lines[0]
    assert not list((tmp_path / "logs").glob("*.log")), "nothing may start before the ports are checked"


TOKEN = "internal-t0ken-of-the-launcher-test"


@pytest.fixture(scope="module")
def secured(tiny_repository, tmp_path_factory):
    """A launcher with internal auth on and its ports moved by variables."""
    ports = {
        name: free_port()
        for name in ("QUERY_ENCODER_PORT", "QUERY_ENCODER_METRICS_PORT", "REDIS_PORT", "TRITON_HTTP_PORT")
    }
    ports["LAUNCHER_METRICS_PORT"] = free_port()
    launcher = Launcher(
        tiny_repository,
        tmp_path_factory.mktemp("secured") / "logs",
        INTERNAL_AUTH_TOKEN=TOKEN,
        **{name: str(port) for name, port in ports.items()},
    )
    launcher.wait_up()
    yield launcher, ports
    launcher.stop()


def child_environ(launcher: Launcher, module: str) -> dict[str, str]:
    pid = pid_of(launcher.popen.pid, module)
    with open(f"/proc/{pid}/environ", "rb") as file:
        pairs = [item.split(b"=", 1) for item in file.read().split(b"\0") if b"=" in item]
    return {k.decode(): v.decode() for k, v in pairs}


def test_port_variables_move_every_port(secured):
    """QUERY_ENCODER_PORT=... used to leave it on its default port (or a free one)."""
    launcher, ports = secured
    assert launcher.endpoint("query_encoder", "grpc") == f"127.0.0.1:{ports['QUERY_ENCODER_PORT']}"
    assert grpc_serving(f"127.0.0.1:{ports['QUERY_ENCODER_PORT']}")
    metrics = f"http://127.0.0.1:{ports['QUERY_ENCODER_METRICS_PORT']}/metrics"
    assert launcher.endpoint("query_encoder", "metrics") == metrics and "amcsearch_ready" in scrape(metrics)
    assert launcher.endpoint("redis-server", "redis") == f"redis://127.0.0.1:{ports['REDIS_PORT']}/0"
    assert launcher.endpoint("tritonserver", "http") == f"127.0.0.1:{ports['TRITON_HTTP_PORT']}"
    assert launcher.status_url() == f"http://127.0.0.1:{ports['LAUNCHER_METRICS_PORT']}"
    assert "amcsearch_child_up" in scrape(f"{launcher.status_url()}/metrics")


def test_its_redis_refuses_a_client_without_the_password_and_the_stack_has_it(secured):
    """The launcher's Redis had no password: any local process could overwrite a cached embedding."""
    import redis

    launcher, ports = secured
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=ports["REDIS_PORT"], socket_timeout=5).set("query:text_encoder:x:y", b"poison")
    url = child_environ(launcher, "amcsearch.query_encoder")["REDIS_URL"]
    assert re.fullmatch(rf"redis://:[\w-]{{20,}}@127\.0\.0\.1:{ports['REDIS_PORT']}/0", url)
    assert redis.Redis.from_url(url, socket_timeout=5).ping()
    address = launcher.endpoint("query_encoder", "grpc")
    assert not encode(address, "cached with AUTH", TOKEN).embeddings[0].cache_hit
    assert encode(address, "cached with AUTH", TOKEN).embeddings[0].cache_hit, "the services reach Redis with it"


def test_triton_admin_protocols_need_the_key_when_internal_auth_is_on(secured):
    """Model configs, the repository API and shared memory were open to every local process."""
    import tritonclient.grpc as triton_grpc
    from tritonclient.utils import InferenceServerException

    launcher, ports = secured
    http = f"http://127.0.0.1:{ports['TRITON_HTTP_PORT']}"
    key = child_environ(launcher, "amcsearch.query_encoder")["TRITON_ADMIN_KEY"]
    assert len(key) >= 20 and key != TOKEN

    def post(path: str, headers: dict[str, str]) -> int:
        request = urllib.request.Request(f"{http}{path}", data=b"{}", headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    assert post("/v2/repository/index", {}) == 403
    assert post("/v2/repository/index", {"admin-key": "wrong"}) == 403
    assert post("/v2/repository/index", {"admin-key": key}) == 200
    assert post("/v2/systemsharedmemory/region/x/register", {}) == 403
    client = triton_grpc.InferenceServerClient(launcher.endpoint("tritonserver", "grpc"))
    with pytest.raises(InferenceServerException, match="restricted"):
        client.get_model_repository_index()
    with pytest.raises(InferenceServerException, match="restricted"):
        client.get_model_config("text_encoder")
    assert client.get_model_config("text_encoder", headers={"triton-grpc-protocol-admin-key": key})
    assert client.is_model_ready("text_encoder"), "health stays open"
    # the services read model configs with the key: the canary ran, the encoder serves
    assert len(encode(launcher.endpoint("query_encoder", "grpc"), "through Triton", TOKEN).embeddings) == 1


def test_no_secret_is_printed_logged_or_on_a_command_line(secured):
    """The launcher's table used to print REDIS_URL with its password."""
    launcher, _ports = secured
    environ = child_environ(launcher, "amcsearch.query_encoder")
    password = re.match(r"redis://:([^@]+)@", environ["REDIS_URL"]).group(1)
    secrets = {"redis password": password, "internal token": TOKEN, "triton key": environ["TRITON_ADMIN_KEY"]}
    encode(launcher.endpoint("query_encoder", "grpc"), "something to log", TOKEN)
    texts = {"launcher output": launcher.output}
    texts.update({path.name: path.read_text(errors="replace") for path in launcher.log_dir.glob("*.log")})
    for name in ("redis-server", "amcsearch.query_encoder"):
        with open(f"/proc/{pid_of(launcher.popen.pid, name)}/cmdline", "rb") as file:
            texts[f"{name} command line"] = file.read().decode(errors="replace")
    for what, secret in secrets.items():
        for where, text in texts.items():
            assert secret not in text, f"the {what} is in the {where}"
    with open(f"/proc/{pid_of(launcher.popen.pid, 'tritonserver')}/cmdline", "rb") as file:
        assert TOKEN.encode() not in file.read(), "Triton's command line holds its own key, not the token"
    assert "redis=redis://127.0.0.1:" in launcher.output


def test_text_search_answers_while_the_keyword_tagger_crash_loops(real_stack, caplog):
    """A keyword_tagger killed 6 times in 18 s used to stop every process (316 Searches failed
    with UNAVAILABLE). Supervised, it restarts with a back-off, text Search keeps answering, and
    the launcher's metrics and log name it."""
    import logging

    from amcsearch.supervisor import RestartPolicy, StatusServer
    from amcsearch.v1 import search_pb2, search_pb2_grpc

    tagger = real_stack.processes["keyword_tagger"]
    supervisor = real_stack.supervisor(RestartPolicy(initial_seconds=0.2, max_seconds=1.0, reset_seconds=3600))
    status = StatusServer(supervisor, "127.0.0.1", 0)
    stopping = threading.Event()
    codes: dict[str, int] = {}
    collection = "launcher_crash_loop"
    channel = grpc.insecure_channel(real_stack.address("search"))
    search = search_pb2_grpc.SearchServiceStub(channel)
    search.CreateCollection(search_pb2.CreateCollectionRequest(name=collection), timeout=30)
    rng = np.random.default_rng(0)
    items = [search_pb2.ImageItem(id=f"c{i}", image=png(rng.integers(0, 255, (64, 64, 3), np.uint8))) for i in range(3)]
    assert search.Index(search_pb2.IndexRequest(collection=collection, items=items), timeout=120).indexed_count == 3
    index_codes: dict[str, int] = {}

    def searching() -> None:
        for turn in itertools.count():
            if stopping.is_set():
                return
            try:
                reply = search.Search(
                    search_pb2.SearchRequest(text="red circle", top_k=3, collection=collection), timeout=30
                )
                code = "OK" if len(reply.results) == 3 else "OK but short"
            except grpc.RpcError as error:
                code = error.code().name
            codes[code] = codes.get(code, 0) + 1
            if turn % 10 == 0:  # Index with automatic keywords needs the tagger: UNAVAILABLE while it is down
                try:
                    indexed = search.Index(search_pb2.IndexRequest(collection=collection, items=items[:1]), timeout=30)
                    code = "OK" if indexed.indexed_count == 1 else "item failed"
                except grpc.RpcError as error:
                    code = error.code().name
                index_codes[code] = index_codes.get(code, 0) + 1

    kills: list[int] = []

    def killing() -> None:
        """kill -9 the tagger each time it is back, 6 times."""
        for _ in range(6):
            deadline = time.monotonic() + 60
            while not (tagger.alive() and tagger.popen.pid not in kills) and time.monotonic() < deadline:
                time.sleep(0.05)
            kills.append(tagger.popen.pid)
            os.killpg(kills[-1], signal.SIGKILL)

    searcher = threading.Thread(target=searching, daemon=True)
    killer = threading.Thread(target=killing, daemon=True)
    caplog.set_level(logging.WARNING, logger="amcsearch.supervisor")
    searcher.start()
    killer.start()
    started = time.monotonic()
    tagger_address = real_stack.address("keyword_tagger")
    try:
        # Supervised from this thread: a child's parent-death signal follows the thread that
        # started it, so a supervisor thread that ends would take the children it restarted along.
        while killer.is_alive() or not serving(tagger_address):
            supervisor.check()
            time.sleep(0.1)
            assert time.monotonic() - started < 300, "keyword_tagger is not back after the crash loop"
        metrics = scrape(f"http://127.0.0.1:{status.port}/metrics")
    finally:
        stopping.set()
        searcher.join(60)
        status.close()
    elapsed = time.monotonic() - started
    search.DropCollection(search_pb2.DropCollectionRequest(name=collection), timeout=30)
    channel.close()
    print(f"while keyword_tagger was killed 6 times in {elapsed:.1f}s: Search {codes}, Index {index_codes}")
    assert set(codes) == {"OK"} and codes["OK"] > 0, codes
    assert metric_value(metrics, "amcsearch_child_restarts", service="keyword_tagger") == 6
    assert metric_value(metrics, "amcsearch_child_state", service="keyword_tagger", state="crash_loop") == 1
    assert metric_value(metrics, "amcsearch_child_restarts", service="search") == 0
    assert all(p.alive() for p in real_stack.processes.values())
    assert any("keyword_tagger exited (code -9; crash-looping" in r.getMessage() for r in caplog.records)
