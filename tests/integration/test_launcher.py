"""`make up`'s launcher as a user runs it: everything healthy, then Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from amcsearch.launcher import SERVICES_ROOT

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


def test_launcher_restarts_a_dead_child_and_stops_on_a_crash_loop(tiny_repository, tmp_path):
    """kill -9 of redis-server costs cache misses only: the launcher starts it again and the
    query encoder keeps answering; a child that keeps dying stops the stack with a message."""
    import grpc
    from amcsearch.v1 import query_encoder_pb2, query_encoder_pb2_grpc

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
    lines: list[str] = []
    try:
        for line in launcher.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        output = "".join(lines)
        address = re.search(r"^query_encoder\s+\d+\s+grpc=(\S+)", output, re.M).group(1)

        def encode(text: str) -> bool:
            with grpc.insecure_channel(address) as channel:
                stub = query_encoder_pb2_grpc.QueryEncoderStub(channel)
                reply = stub.Encode(
                    query_encoder_pb2.EncodeRequest(queries=[query_encoder_pb2.QueryInput(text=text)]), timeout=10
                )
                return len(reply.embeddings) == 1

        redis = pid_of(launcher.pid, "redis-server")
        os.kill(redis, signal.SIGKILL)
        assert encode("redis is dead"), "a dead Redis must cost cache misses only"
        wait_for(lambda: (pid_of(launcher.pid, "redis-server") or redis) != redis, 30, "redis-server restart")
        assert encode("redis is back")
        for _ in range(8):  # kill the query encoder each time it comes back: a crash loop
            pid = wait_for(
                lambda: pid_of(launcher.pid, "amcsearch.query_encoder") or launcher.poll() is not None,
                90,
                "query_encoder restart (or the launcher's exit)",
            )
            if pid is True:
                break  # the launcher stopped the stack
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
        rest = launcher.communicate(timeout=90)[0]
        assert launcher.returncode == 3, rest
        assert "crash loop: query_encoder died" in rest and "query_encoder.log" in rest
        assert "redis-server had exited: started again" in rest
    finally:
        if launcher.poll() is None:
            launcher.kill()
