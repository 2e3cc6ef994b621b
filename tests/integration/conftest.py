"""Session fixtures: the real stack (tritonserver from the wheel, redis-server, services)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from amcsearch.launcher import SERVICES, Stack
from amcsearch.runtime.metrics import sample_total
from PIL import Image

from tests.integration.tiny_models import write_tiny_repository


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory) -> Path:
    repository = tmp_path_factory.mktemp("tiny_model_repository")
    write_tiny_repository(repository)
    return repository


def start_stack(repository: Path, log_dir: Path, **env: str) -> Stack:
    stack = Stack(
        repository,
        log_dir,
        extra_env={"TRITON_CANARY_INTERVAL_SECONDS": "3600", **env},
        services=tuple(s for s in SERVICES if s.module == "query_encoder"),
    )
    stack.start(timeout=120)
    return stack


@pytest.fixture(scope="session")
def tiny_stack(tiny_repository, tmp_path_factory):
    stack = start_stack(tiny_repository, tmp_path_factory.mktemp("logs"))
    yield stack
    stack.stop()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when absent)."""
    return sample_total(text, name, **labels)


@pytest.fixture
def channel_to():
    channels = []

    def open_channel(address: str) -> grpc.Channel:
        channel = grpc.insecure_channel(address)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()


MODELS = (
    "text_encoder",
    "image_encoder",
    "keyword_tagger",
    "amc_rescorer",
    "composer",
    "ynet_shop",
    "ynet_street",
    "ctx_ynet",
)


@pytest.fixture(scope="session")
def model_repository() -> Path:
    from amcsearch.launcher import ROOT

    repository = ROOT / "model_repository"
    missing = [m for m in MODELS if not (repository / m / "1" / "model.pt").exists()]
    if missing:
        pytest.fail(f"models missing from {repository}: {missing}; run `make models` (make test does)")
    return repository


_REAL_STACKS: list[Stack] = []
_STACK_AT_FIRST_FAILURE: list[str] = []
"""What the shared real stack looked like when the first test using it failed (printed last)."""


@pytest.fixture(scope="session")
def real_stack(model_repository, tmp_path_factory):
    """Every service on the trained models, with its own Redis and embedded index file."""
    work = tmp_path_factory.mktemp("real-stack")
    stack = Stack(
        model_repository,
        work / "logs",
        extra_env={
            "TRITON_CANARY_INTERVAL_SECONDS": "3600",
            "INDEX_URI": str(work / "index.sqlite"),
            "FEATURE_EXTRACTOR_MAX_IMAGE_BYTES": "2000000",
            "FEATURE_EXTRACTOR_MAX_IMAGE_PIXELS": "4000000",
        },
    )
    stack.start(timeout=300)
    _REAL_STACKS.append(stack)
    yield stack
    stack.stop()


def _probe(check) -> str:
    try:
        return "ready" if check() else "NOT ready"
    except Exception as error:  # a probe of a sick process: say what it answered
        return f"NOT ready ({type(error).__name__})"


def _machine_state() -> str:
    """Load, free memory and free /dev/shm (the Python backend's tensors travel through it)."""
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    shm = shutil.disk_usage("/dev/shm")
    return (
        f"load average {os.getloadavg()[0]:.1f}, memory available {meminfo['MemAvailable'].strip()}"
        f" of {meminfo['MemTotal'].strip()}, /dev/shm {shm.free >> 20} MiB free of {shm.total >> 20} MiB"
    )


def stack_state(stack: Stack, log_lines: int = 12) -> str:
    """Each process of `stack`: alive or its exit code, ready or not, and the last lines of the
    log of every process that is dead or not ready."""
    from amcsearch import processes

    lines, tails = [], []
    for name, process in stack.processes.items():
        if not process.alive():
            code = process.popen.returncode if process.popen else "?"
            lines.append(f"  {name}: exited with code {code}")
            tails.append(process)
            continue
        if name == "tritonserver":
            port = int(process.endpoints["http"].rsplit(":", 1)[1])
            state = _probe(lambda port=port: processes.triton_ready(port))
        elif name == "redis-server":
            port = int(process.endpoints["redis"].rsplit(":", 1)[1].split("/")[0])
            state = _probe(lambda port=port: processes.redis_ready(port))
        else:
            state = _probe(lambda process=process: processes.grpc_serving(process.endpoints["grpc"]))
        lines.append(f"  {name}: alive, {state}")
        if state != "ready":
            tails.append(process)
    lines.append(f"  machine: {_machine_state()}")
    for process in tails:
        lines.append(f"  --- last lines of {process.log_path.name} ---")
        lines.extend(f"  {line[:300]}" for line in process.log_tail(log_lines).splitlines())
    return "\n".join(lines)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """When the first test on the shared real stack fails, keep the stack's state: one sick
    process fails every later test that uses it, and the first failure says which one."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _REAL_STACKS and not _STACK_AT_FIRST_FAILURE and "real_stack" in item.fixturenames:
        _STACK_AT_FIRST_FAILURE.append(f"after {item.nodeid} ({report.when}):\n{stack_state(_REAL_STACKS[0])}")


def pytest_terminal_summary(terminalreporter):
    if _STACK_AT_FIRST_FAILURE:
        terminalreporter.section("the real stack when its first test failed")
        terminalreporter.write_line(_STACK_AT_FIRST_FAILURE[0])


@pytest.fixture(scope="session")
def ci_corpus():
    from models.corpus import load_or_build_corpus

    return load_or_build_corpus("ci", 0)


@pytest.fixture(scope="session")
def local(model_repository):
    """The exported TorchScript files, run in this process: the reference for served outputs."""
    modules = {m: torch.jit.load(str(model_repository / m / "1" / "model.pt")).eval() for m in MODELS}
    vocab = (model_repository / "keyword_tagger" / "keywords.txt").read_text().splitlines()
    return modules, vocab


def run(module, *arrays):
    with torch.inference_mode():
        out = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
    return [o.numpy() for o in out] if isinstance(out, tuple) else [out.numpy()]


@contextlib.contextmanager
def own_gateway(real_stack: Stack, work: Path, what: str, **env: str) -> Iterator[str]:
    """A SearchService of its own on the real stack's model services (`env` on top of the
    stack's, e.g. INDEX_URI or tokens): its gRPC address while serving, stopped afterwards."""
    from amcsearch.launcher import SERVICES_ROOT
    from amcsearch.processes import free_port, grpc_serving, service_process, wait_until

    process = service_process(
        "search", "SEARCH", free_port(), free_port(), {**real_stack.env, **env}, work, SERVICES_ROOT
    )
    process.start()
    try:
        wait_until(lambda: grpc_serving(process.endpoints["grpc"]), 120, what, process)
        yield process.endpoints["grpc"]
    finally:
        process.stop()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A real Milvus 2.3 standalone server (the `milvus` wheel's binary) on free loopback ports;
    its URI. Started once per session (~10 s)."""
    from amcsearch.processes import free_port
    from milvus import MilvusServer

    server = MilvusServer()
    server.set_base_dir(str(tmp_path_factory.mktemp("milvus")))
    server.listen_port = free_port()
    server.start()
    yield f"http://127.0.0.1:{server.listen_port}"
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def reliability_report():
    """benchmarks/RELIABILITY.md from the rows the fault tests added (if any ran)."""
    yield
    from tests.integration.reliability_report import write_report

    write_report()


def chromium_dom(
    page: Path, probe_js: str, profile: Path, screenshot: Path | None = None, window: tuple[int, int] = (1400, 900)
) -> str:
    """The DOM of `page` in headless Chromium after `probe_js` ran on load (it sets
    document.title to what the test checks); with `screenshot`, a PNG of the window too (one
    screen pixel a CSS pixel, no scrollbars)."""
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed: `make setup` installs it (Debian package chromium)"
    page.write_text(
        page.read_text().replace(
            "</body>", f"<script>window.addEventListener('load', () => {{ {probe_js} }});</script></body>"
        )
    )
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={window[0]},{window[1]}",
        f"--user-data-dir={profile}",
    ]
    if screenshot is not None:
        subprocess.run(
            [chromium, *flags, f"--screenshot={screenshot}", page.as_uri()],
            capture_output=True,
            timeout=60,
        )
    return subprocess.run(
        [chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=60
    ).stdout
