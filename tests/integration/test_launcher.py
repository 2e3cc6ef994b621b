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
        [sys.executable, "-m", "amcsearch.launcher", "--free-ports", "--repository", str(tiny_repository),
         "--log-dir", str(tmp_path / "logs")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
